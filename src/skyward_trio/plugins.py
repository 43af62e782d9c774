"""Plugins: what a framework needs from a pool, given once in ``Compute(plugins=[...])``.

Built in: :func:`torch`, :func:`jax`, :func:`keras`, :func:`joblib` and :func:`sklearn`
(:data:`BUILT_IN`, by the names ``skyward.toml`` uses). Write your own with :class:`Plugin`
(``Plugin.create(name)`` and its ``with_*`` builders; ``with_launcher`` takes and returns a
:class:`LaunchCommand`).

The hooks that run on nodes (the built-ins' ``around_app``, ``around_process`` and
``decorate``) are defined here at module level, so they travel by reference and the node
imports this module, which loads only the stdlib, attrs and Skyward's records.

Layer 1: stdlib, attrs, ``_model`` and ``_plugin``; imported on nodes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import attrs

from ._info import InstanceInfo
from ._model import Image, PipIndex
from ._plugin import Cluster, LaunchCommand, LaunchContext, Plugin

__all__ = [
    "BUILT_IN",
    "Cluster",
    "LaunchCommand",
    "LaunchContext",
    "Plugin",
    "jax",
    "joblib",
    "keras",
    "sklearn",
    "torch",
]


# --- shared ---------------------------------------------------------------------------------


def _requirement(package: str, version: str | None) -> str:
    """``torch``, ``torch==2.5.1`` or ``torch>=2.4`` from a version as the plugins take it."""
    if version is None or version == "latest":
        return package
    if version[0] in "<>=!~":
        return f"{package}{version}"
    return f"{package}=={version}"


def _check_version(plugin: str, arg: str, value: object) -> None:
    if value is None or value == "latest":
        return
    if not isinstance(value, str) or not re.fullmatch(r"(==|>=|<=|~=|!=|<|>)?\s*[\w.+*-]+", value):
        raise ValueError(
            f'sky.plugins.{plugin}({arg}={value!r}): {arg} must be "latest", a version such as '
            f'"2.5.1", a specifier such as ">=2.4", or None. Pass e.g. {arg}="2.5.1".'
        )


def _names(image: Image) -> set[str]:
    from ._bootstrap import requirement_name

    return {requirement_name(r) for r in image.pip}


def _with_packages(
    image: Image,
    packages: list[str],
    *,
    index: str | None = None,
    env: dict[str, str] | None = None,
) -> Image:
    """``image`` with ``packages`` added to pip, except those it installs already (its own
    requirement wins), looked up on ``index`` first when given, and with ``env`` set."""
    from ._bootstrap import requirement_name

    have = _names(image)
    added = [p for p in packages if requirement_name(p) not in have]
    indexes = image.pip_indexes
    if index is not None and added:
        indexes = (*indexes, PipIndex(url=index, packages=[requirement_name(p) for p in added]))
    return attrs.evolve(
        image,
        pip=(*image.pip, *added),
        pip_indexes=indexes,
        env={**image.env, **(env or {})},
    )


# --- torch ----------------------------------------------------------------------------------

_TORCH_BACKENDS = ("nccl", "gloo", "mpi")
#: Accelerators PyTorch's CUDA and CPU wheels do not drive.
_NOT_CUDA = ("MI250", "MI300X", "TPUv5e", "TPUv5p", "Trainium2", "Inferentia2")


def torch(
    *,
    backend: str | None = None,
    cuda: str = "cu128",
    version: str | None = "latest",
    vision: str | None = None,
    audio: str | None = None,
) -> Plugin:
    """PyTorch on every node, and ``torch.distributed``'s environment for multi-node runs.

    Each worker gets ``MASTER_ADDR``/``MASTER_PORT`` (the head node's address and
    ``InstanceInfo.head_port``), ``WORLD_SIZE`` (nodes), ``RANK`` and ``NODE_RANK`` (this
    node), ``LOCAL_RANK`` 0 and ``LOCAL_WORLD_SIZE`` 1, so a function broadcast with ``@``
    calls ``dist.init_process_group(backend)`` with nothing else (the ``env://`` method).

    Args:
        backend: The backend the functions use (``"nccl"``, ``"gloo"`` or ``"mpi"``);
            checked on each node as its worker starts, so a node that cannot run it fails
            its tasks with why instead of hanging in the rendezvous. None checks nothing.
        cuda: The CUDA build of PyTorch's wheel index (``"cu128"``: download.pytorch.org/
            whl/cu128) for nodes with an NVIDIA accelerator; others get the CPU build.
        version: ``"latest"``, a version (``"2.8.0"``) or a specifier (``">=2.7"``); None
            installs no torch (the image already does).
        vision: torchvision to install too: None (none), ``"latest"``, or a version.
        audio: torchaudio to install too: None (none), ``"latest"``, or a version.
    """
    if backend is not None and backend not in _TORCH_BACKENDS:
        raise ValueError(
            f"sky.plugins.torch(backend={backend!r}): backend must be one of "
            f'{", ".join(map(repr, _TORCH_BACKENDS))} or None. Pass e.g. backend="nccl" for '
            'GPUs, backend="gloo" for CPUs.'
        )
    if not isinstance(cuda, str) or not re.fullmatch(r"cu\d{2,3}", cuda):
        raise ValueError(
            f'sky.plugins.torch(cuda={cuda!r}): cuda must name a CUDA build such as "cu128" '
            '(PyTorch\'s wheel index per CUDA version). Pass e.g. cuda="cu126".'
        )
    _check_version("torch", "version", version)
    _check_version("torch", "vision", vision)
    _check_version("torch", "audio", audio)
    packages = [
        _requirement(name, wanted)
        for name, wanted in (("torch", version), ("torchvision", vision), ("torchaudio", audio))
        if wanted is not None
    ]

    def transform(image: Image, cluster: Cluster) -> Image:
        if not packages:
            return image
        accelerator = cluster.accelerator
        if accelerator is not None and accelerator.name in _NOT_CUDA:
            raise ValueError(
                f"sky.plugins.torch() installs PyTorch's CUDA or CPU builds, which do not "
                f"drive {accelerator.name}: install the build for it with "
                "Image(pip=[...], pip_indexes=[...]) and pass sky.plugins.torch(version=None)"
            )
        build = cuda if accelerator is not None else "cpu"
        return _with_packages(image, packages, index=f"https://download.pytorch.org/whl/{build}")

    setup = _torch_setup if backend is None else _torch_setup_checked(backend)
    return (
        Plugin.create("torch", collective=True)
        .with_image_transform(transform)
        .with_around_app(setup)
        .with_around_process(setup)
    )


def torch_environment(info: InstanceInfo) -> dict[str, str]:
    """The variables ``torch.distributed``'s ``env://`` rendezvous reads, for this node."""
    return {
        "MASTER_ADDR": info.head_addr,
        "MASTER_PORT": str(info.head_port),
        "WORLD_SIZE": str(info.total_nodes),
        "RANK": str(info.node),
        "NODE_RANK": str(info.node),
        "LOCAL_RANK": "0",
        "LOCAL_WORLD_SIZE": "1",
    }


@contextmanager
def _torch_setup(info: InstanceInfo) -> Iterator[None]:
    os.environ.update(torch_environment(info))
    yield


def _torch_setup_checked(backend: str) -> Callable[[InstanceInfo], Any]:
    @contextmanager
    def setup(info: InstanceInfo) -> Iterator[None]:
        os.environ.update(torch_environment(info))
        _check_torch_backend(backend, info.node)
        yield

    return setup


def _check_torch_backend(backend: str, node: int) -> None:
    import torch as torch_module
    import torch.distributed as dist

    available = (
        dist.is_available()
        and {
            "nccl": dist.is_nccl_available,
            "gloo": dist.is_gloo_available,
            "mpi": dist.is_mpi_available,
        }[backend]()
    )
    if not available:
        raise RuntimeError(
            f"sky.plugins.torch(backend={backend!r}): this PyTorch build on node {node} "
            f"(torch {torch_module.__version__}) has no {backend} backend; pick one it has "
            '(backend="gloo" runs everywhere)'
        )
    if backend == "nccl" and not torch_module.cuda.is_available():
        raise RuntimeError(
            f"sky.plugins.torch(backend='nccl'): node {node} has no CUDA device PyTorch can "
            f"use (torch {torch_module.__version__}); nccl runs on NVIDIA GPUs only: ask for "
            'an accelerator, or pass backend="gloo"'
        )


# --- jax ------------------------------------------------------------------------------------

#: Where JAX's coordinator listens on the head node: ``InstanceInfo.head_port`` + this.
JAX_PORT_OFFSET = 1


def jax(*, cuda: str = "cu124", version: str | None = "latest") -> Plugin:
    """JAX on every node, and ``jax.distributed`` initialized across them.

    With more than one node, each worker calls ``jax.distributed.initialize`` as it
    starts (coordinator: the head node, at ``InstanceInfo.head_port + 1``; one process
    per node, this node's index as its id), so ``jax.devices()`` lists every node's
    devices and collectives span the pool; it shuts down when the worker stops. Tasks wait
    until every node has joined. Use the thread executor (the default): JAX allows one
    process per node in the group.

    Args:
        cuda: The CUDA version of the build for nodes with an NVIDIA accelerator
            (``"cu124"``: ``jax[cuda12]``); TPU nodes get ``jax[tpu]``, others the CPU build.
        version: ``"latest"``, a version (``"0.6.2"``) or a specifier; None installs no
            JAX (the image already does).
    """
    if not isinstance(cuda, str) or not re.fullmatch(r"cu\d{2,3}", cuda):
        raise ValueError(
            f'sky.plugins.jax(cuda={cuda!r}): cuda must name a CUDA build such as "cu124" '
            '(jax[cuda12] serves every CUDA 12). Pass e.g. cuda="cu128".'
        )
    _check_version("jax", "version", version)

    def transform(image: Image, cluster: Cluster) -> Image:
        if version is None:
            return image
        accelerator = cluster.accelerator
        if accelerator is None:
            extra = ""
        elif accelerator.name.startswith("TPU"):
            extra = "[tpu]"
        elif accelerator.name in _NOT_CUDA:
            raise ValueError(
                f"sky.plugins.jax() installs JAX's CUDA, TPU or CPU builds, which do not drive "
                f"{accelerator.name}: install the build for it with Image(pip=[...]) and "
                "pass sky.plugins.jax(version=None)"
            )
        else:
            extra = f"[cuda{cuda[2:4]}]"
        return _with_packages(image, [_requirement(f"jax{extra}", version)])

    return (
        Plugin.create("jax", collective=True)
        .with_image_transform(transform)
        .with_around_app(_jax_setup)
    )


@contextmanager
def _jax_setup(info: InstanceInfo) -> Iterator[None]:
    if info.total_nodes < 2:
        yield
        return
    import jax as jax_module

    jax_module.distributed.initialize(
        coordinator_address=f"{info.head_addr}:{info.head_port + JAX_PORT_OFFSET}",
        num_processes=info.total_nodes,
        process_id=info.node,
    )
    try:
        yield
    finally:
        jax_module.distributed.shutdown()


# --- keras ----------------------------------------------------------------------------------

_KERAS_BACKENDS = {"jax": "jax", "torch": "torch", "tensorflow": "tensorflow"}


def keras(*, backend: str = "jax") -> Plugin:
    """Keras 3 on every node, with ``KERAS_BACKEND`` set and that backend installed.

    Args:
        backend: ``"jax"``, ``"torch"`` or ``"tensorflow"``. Its package is installed
            unless the image (or a plugin before this one, such as ``torch()``) already
            installs it.
    """
    if backend not in _KERAS_BACKENDS:
        raise ValueError(
            f"sky.plugins.keras(backend={backend!r}): backend must be one of "
            f'{", ".join(map(repr, _KERAS_BACKENDS))}. Pass e.g. backend="jax".'
        )

    def transform(image: Image, cluster: Cluster) -> Image:
        return _with_packages(
            image, ["keras", _KERAS_BACKENDS[backend]], env={"KERAS_BACKEND": backend}
        )

    return Plugin.create("keras").with_image_transform(transform)


# --- joblib and scikit-learn ----------------------------------------------------------------


def joblib(*, version: str | None = None) -> Plugin:
    """joblib on every node, and ``joblib.Parallel`` inside the pool's block run on it.

    While the ``with sky.Compute(...)`` block is open, joblib's default backend is
    ``"skyward"``: ``Parallel(n_jobs=-1)(delayed(f)(x) for x in xs)`` sends each batch
    joblib makes to the pool as one call, so the fan-out is over nodes, not local cores
    (``n_jobs=-1`` is the pool's nodes times ``Worker(concurrency)``). For the sync face
    (``import skyward``).

    Args:
        version: A joblib version or specifier to install; None or ``"latest"`` takes
            the newest.
    """
    _check_version("joblib", "version", version)
    return _joblib_plugin("joblib", [_requirement("joblib", version)])


def sklearn(*, version: str | None = None) -> Plugin:
    """scikit-learn (and joblib) on every node, with :func:`joblib`'s backend, so an
    estimator's ``n_jobs=-1`` (``GridSearchCV``, ``cross_val_score``) runs on the pool.

    Args:
        version: A scikit-learn version or specifier to install; None or ``"latest"``
            takes the newest.
    """
    _check_version("sklearn", "version", version)
    return _joblib_plugin("sklearn", [_requirement("scikit-learn", version), "joblib"])


def _joblib_plugin(name: str, packages: list[str]) -> Plugin:
    def transform(image: Image, cluster: Cluster) -> Image:
        return _with_packages(image, packages)

    return Plugin.create(name).with_image_transform(transform).with_around_client(_joblib_backend)


def _run_batch(batch: Callable[[], Any]) -> Any:
    """One joblib batch, on a node."""
    return batch()


@contextmanager
def _joblib_backend(pool: Any, cluster: Cluster) -> Iterator[None]:
    core = getattr(pool, "_core", None)  # the sync face's pool wraps the trio one
    if core is None or not hasattr(pool, "run_async"):
        raise TypeError(
            "sky.plugins.joblib()/sklearn() route joblib.Parallel to a pool of the sync face "
            "(import skyward as sky; with sky.Compute(...)); this is "
            f"{type(pool).__module__}.{type(pool).__qualname__}"
        )
    import joblib as joblib_module

    backend = _skyward_backend_class()
    concurrency = core.worker_config.concurrency
    joblib_module.register_parallel_backend(
        "skyward", lambda **kw: backend(pool, concurrency, **kw)
    )
    with joblib_module.parallel_config(backend="skyward"):
        yield


_BACKEND: type | None = None


def _skyward_backend_class() -> type:
    """joblib's backend class for pools, made on first use (joblib is imported then)."""
    global _BACKEND
    if _BACKEND is not None:
        return _BACKEND
    from joblib.parallel import ParallelBackendBase, SequentialBackend

    from ._function import function

    run_batch = function(_run_batch)

    class SkywardBackend(ParallelBackendBase):  # type: ignore[misc]
        """Each batch joblib dispatches is one call on the pool."""

        supports_retrieve_callback = True
        supports_timeout = True
        uses_threads = False

        def __init__(
            self, pool: Any, concurrency: int, nesting_level: int | None = None, **kwargs: Any
        ) -> None:
            super().__init__(nesting_level=nesting_level, **kwargs)
            self.pool = pool
            self.concurrency = concurrency

        def effective_n_jobs(self, n_jobs: int | None) -> int:
            if n_jobs == 0:
                raise ValueError("n_jobs == 0 in Parallel has no meaning")
            slots: int = self.pool.current_nodes() * self.concurrency
            if n_jobs is None or n_jobs < 0:
                return max(1, slots)
            return n_jobs

        def submit(self, func: Callable[[], Any], callback: Any = None) -> Any:
            future = self.pool.run_async(run_batch(func))
            if callback is not None:
                future.add_done_callback(callback)
            return future

        def retrieve_result_callback(self, out: Any) -> Any:
            return out.result()

        def get_nested_backend(self) -> tuple[Any, None]:
            return SequentialBackend(nesting_level=(self.nesting_level or 0) + 1), None

    _BACKEND = SkywardBackend
    return _BACKEND


#: The built-in plugins by name, as ``plugins = [...]`` in ``skyward.toml`` names them.
BUILT_IN: dict[str, Callable[..., Plugin]] = {
    "torch": torch,
    "jax": jax,
    "keras": keras,
    "joblib": joblib,
    "sklearn": sklearn,
}

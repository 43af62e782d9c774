"""Plugins: what a framework needs from a pool, given once in ``Compute(plugins=[...])``.

Built in: :func:`torch`, :func:`jax`, :func:`accelerate`, :func:`keras`, :func:`joblib`,
:func:`sklearn`, :func:`mps`, :func:`mig` and :func:`cuml` (:data:`BUILT_IN`, by the names
``skyward.toml`` uses). Write your own with :class:`Plugin` (``Plugin.create(name)`` and its
``with_*`` builders; ``with_launcher`` takes and returns a :class:`LaunchCommand`).

The hooks that run on nodes (the built-ins' ``around_app``, ``around_process`` and
``decorate``) are defined here at module level, so they travel by reference and the node
imports this module, which loads only the stdlib, attrs and Skyward's records.

Layer 1: stdlib, attrs, ``_model`` and ``_plugin``; imported on nodes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
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
    "accelerate",
    "cuml",
    "jax",
    "joblib",
    "keras",
    "mig",
    "mps",
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

    Each worker is one rank and gets ``MASTER_ADDR``/``MASTER_PORT`` (the head node's
    address and ``InstanceInfo.head_port``), ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``,
    ``LOCAL_WORLD_SIZE`` and ``NODE_RANK``, so a function broadcast with ``@`` calls
    ``dist.init_process_group(backend)`` with nothing else (the ``env://`` method).

    By default a node is one rank (``LOCAL_RANK`` 0). Under
    ``Worker(executor="process", concurrency=N)`` each of a node's N subprocesses is a
    rank, as ``torchrun --nproc-per-node N`` would start them: ``WORLD_SIZE`` is nodes
    times N, ``LOCAL_RANK`` the subprocess's slot, and ``@`` runs the function in all N
    at once (the node's result is its local rank 0's). Each rank sees all the node's GPUs:
    call ``torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))`` before using one.

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
        Plugin.create("torch", collective=True, per_process=True)
        .with_image_transform(transform)
        .with_around_app(setup)
        .with_around_process(setup)
    )


def torch_environment(info: InstanceInfo) -> dict[str, str]:
    """The variables ``torch.distributed``'s ``env://`` rendezvous reads, for this worker
    (one rank: ``info.global_worker_index`` of ``info.total_workers``)."""
    return {
        "MASTER_ADDR": info.head_addr,
        "MASTER_PORT": str(info.head_port),
        "WORLD_SIZE": str(info.total_workers),
        "RANK": str(info.global_worker_index),
        "NODE_RANK": str(info.node),
        "LOCAL_RANK": str(info.worker),
        "LOCAL_WORLD_SIZE": str(info.workers_per_node),
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


# --- accelerate -----------------------------------------------------------------------------

#: The ``accelerate config`` keys Skyward sets from the pool, and what it sets each to.
_ACCELERATE_TOPOLOGY = {
    "num_machines": "the node count",
    "machine_rank": "each node's index",
    "main_process_ip": "the head node's address",
    "main_process_port": "InstanceInfo.head_port",
}
#: accelerate 1.x's ``DistributedType`` values (``XLA`` is refused: see below).
_ACCELERATE_TYPES = (
    "NO",
    "MULTI_CPU",
    "MULTI_GPU",
    "FSDP",
    "DEEPSPEED",
    "MEGATRON_LM",
    "MULTI_XPU",
    "MULTI_NPU",
    "MULTI_MLU",
    "MULTI_SDAA",
    "MULTI_MUSA",
    "MULTI_HPU",
    "MULTI_NEURON",
)
_ACCELERATE_PRECISIONS = ("no", "fp16", "bf16", "fp8")
#: What each top-level key of the config must be, where it must be one thing.
_ACCELERATE_KINDS: dict[str, tuple[type, ...]] = {
    "compute_environment": (str,),
    "distributed_type": (str,),
    "mixed_precision": (str,),
    "num_processes": (int,),
    "gpu_ids": (str, int),
    "rdzv_backend": (str,),
    "main_training_function": (str,),
    "use_cpu": (bool,),
    "debug": (bool,),
    "enable_cpu_affinity": (bool,),
    "downcast_bf16": (bool,),
    "same_network": (bool,),
    "fsdp_config": (dict,),
    "deepspeed_config": (dict,),
    "dynamo_config": (dict,),
    "fp8_config": (dict,),
    "parallelism_config": (dict,),
    "megatron_lm_config": (dict,),
    "mpirun_config": (dict,),
}


def accelerate(
    config: Mapping[str, Any] | None = None, *, version: str | None = "latest"
) -> Plugin:
    """Hugging Face Accelerate on every node, each worker set up as one rank of the pool.

    ``accelerate launch`` starts a script once per rank and exits when it returns; a
    Skyward worker is one long-lived process per node that runs many functions, so it
    cannot be wrapped by it. Instead each worker gets the environment ``accelerate
    launch`` would give the process it starts for that rank, worked out on the
    node by accelerate's own launcher code from ``config`` (as ``accelerate launch
    --config_file F --num_machines N --machine_rank R --main_process_ip HEAD
    --main_process_port P --num_processes N`` would), plus ``torch.distributed``'s
    rendezvous variables (see :func:`torch_environment`). So ``Accelerator()`` in a
    function broadcast with ``@`` joins one process group across the nodes, with the
    backend accelerate picks for the node (gloo on CPU nodes). The process group and
    accelerate's state then live as long as the worker: later functions'
    ``Accelerator()`` reuse them (so they cannot ask for other settings, such as another
    ``mixed_precision``, than the first one's).

    A node is one rank by default (``num_processes`` is the node count). Under
    ``Worker(executor="process", concurrency=N)`` each of its N subprocesses is a rank
    (``num_processes`` is nodes times N; each rank takes the GPU at its
    ``LOCAL_RANK``), and ``@`` runs the function in all N at once; the node's result is
    its local rank 0's.

    With no ``distributed_type`` in ``config`` a pool of several nodes gets
    ``"MULTI_GPU"`` on nodes with a GPU and ``"MULTI_CPU"`` (with ``use_cpu``) on
    others; one node gets ``"NO"``. A config accelerate on the node refuses, or one
    that needs a GPU on nodes without one, fails every task with why.

    Installs ``accelerate`` (and ``deepspeed`` for ``distributed_type="DEEPSPEED"``)
    unless the image or a plugin before this one names it. Accelerate needs PyTorch: list
    :func:`torch` before this plugin to choose its build (CUDA or CPU, from PyTorch's
    index); alone, pip brings PyTorch's default build from PyPI with accelerate.

    Args:
        config: The settings ``accelerate config`` writes, as a dict (its YAML file,
            loaded): ``distributed_type``, ``mixed_precision``, ``fsdp_config``,
            ``deepspeed_config``, ``dynamo_config``, ... ``num_processes``, if given,
            must be the pool's rank count (its nodes, times N under the process
            executor). ``num_machines``, ``machine_rank``,
            ``main_process_ip`` and ``main_process_port`` are set from the pool and
            refused here. None: accelerate's defaults, as above.
        version: ``"latest"``, a version (``"1.15.0"``) or a specifier (``">=1.10"``) of
            accelerate to install; None installs nothing (the image has it). Needs
            accelerate 1.x on the nodes.
    """
    settings = _accelerate_config(config)
    _check_version("accelerate", "version", version)
    packages = [] if version is None else [_requirement("accelerate", version)]
    if packages and settings.get("distributed_type") == "DEEPSPEED":
        packages.append("deepspeed")
    processes = settings.get("num_processes")

    def transform(image: Image, cluster: Cluster) -> Image:
        nodes = cluster.nodes.desired
        ranks = cluster.workers_per_node
        if processes is not None and processes != nodes * ranks:
            where = f"sky.plugins.accelerate(config={{'num_processes': {processes!r}, ...}})"
            plural = "s" if nodes != 1 else ""
            if ranks > 1:
                raise ValueError(
                    f"{where}: the pool has {nodes} node{plural} of {ranks} ranks each "
                    f"(Worker(executor='process', concurrency={ranks})), so num_processes is "
                    f"{nodes * ranks}. Leave num_processes out, or change nodes= or the "
                    "concurrency."
                )
            hint = (
                f"pass nodes={processes} to Compute"
                if processes % nodes
                else f"pass nodes={processes} to Compute, or run {processes // nodes} ranks "
                f"per node with options=sky.Options(worker=sky.Worker(executor='process', "
                f"concurrency={processes // nodes}))"
            )
            raise ValueError(
                f"{where}: the pool has {nodes} node{plural}, one rank each, so num_processes "
                f"is {nodes}. Leave num_processes out, or {hint}."
            )
        if not packages:
            return image
        return _with_packages(image, packages)

    setup = _accelerate_setup(settings)
    return (
        Plugin.create("accelerate", collective=True, per_process=True)
        .with_image_transform(transform)
        .with_around_app(setup)
        .with_around_process(setup)
    )


def _accelerate_config(config: object) -> dict[str, Any]:
    """``config`` checked as far as it can be off the node, as plain JSON data."""
    if config is None:
        return {}
    if not isinstance(config, Mapping):
        raise TypeError(
            f"sky.plugins.accelerate(config={config!r}): config must be a dict of the settings "
            "`accelerate config` writes (its YAML file, loaded), or None. Pass e.g. "
            'config={"mixed_precision": "bf16"}.'
        )
    settings: dict[str, Any] = _accelerate_plain(config, "config")
    for key, value in settings.items():
        where = f"sky.plugins.accelerate(config={{{key!r}: {value!r}, ...}})"
        if key in _ACCELERATE_TOPOLOGY:
            raise ValueError(
                f"{where}: {key} is set by Skyward from the pool ({_ACCELERATE_TOPOLOGY[key]}); "
                f"leave {key} out of config."
            )
        kinds = _ACCELERATE_KINDS.get(key)
        if kinds is not None and (
            not isinstance(value, kinds) or (bool not in kinds and isinstance(value, bool))
        ):
            named = " or ".join("a dict" if kind is dict else kind.__name__ for kind in kinds)
            raise ValueError(f"{where}: {key} must be {named}, got {type(value).__name__}.")
    _accelerate_refusals(settings)
    return settings


def _accelerate_refusals(settings: dict[str, Any]) -> None:
    """What ``accelerate config`` may write but this plugin cannot do, each with why."""
    where = "sky.plugins.accelerate(config={{{key!r}: {value!r}, ...}})".format
    kind = settings.get("distributed_type")
    if kind == "XLA":
        raise ValueError(
            f"{where(key='distributed_type', value=kind)}: accelerate launches TPU processes "
            "with torch_xla's own spawner, which this plugin does not set up. Use "
            "sky.plugins.jax() on TPUs, or leave distributed_type out."
        )
    if kind is not None and kind not in _ACCELERATE_TYPES:
        raise ValueError(
            f"{where(key='distributed_type', value=kind)}: distributed_type must be one of "
            f"{', '.join(map(repr, _ACCELERATE_TYPES))} (accelerate's names), or left out. "
            'Pass e.g. "FSDP".'
        )
    precision = settings.get("mixed_precision")
    if precision is not None and precision.lower() not in _ACCELERATE_PRECISIONS:
        raise ValueError(
            f"{where(key='mixed_precision', value=precision)}: mixed_precision must be one "
            f'of {", ".join(map(repr, _ACCELERATE_PRECISIONS))}. Pass e.g. "bf16".'
        )
    environment = settings.get("compute_environment", "LOCAL_MACHINE")
    if environment != "LOCAL_MACHINE":
        raise ValueError(
            f"{where(key='compute_environment', value=environment)}: Skyward's nodes are the "
            'compute environment; leave compute_environment out (or "LOCAL_MACHINE").'
        )
    if settings.get("mpirun_config"):
        raise ValueError(
            f"{where(key='mpirun_config', value=settings['mpirun_config'])}: Skyward starts "
            "the ranks itself (one per node, or Worker(executor='process', concurrency=N) "
            "per node), so accelerate's mpirun launcher has nothing to start; leave "
            "mpirun_config out."
        )
    if "gradient_accumulation_steps" in settings:
        steps = settings["gradient_accumulation_steps"]
        raise ValueError(
            f"{where(key='gradient_accumulation_steps', value=steps)}: accelerate's config "
            "has no top-level gradient_accumulation_steps (accelerate would refuse the "
            "file). Put it in deepspeed_config for DeepSpeed, or pass "
            f"Accelerator(gradient_accumulation_steps={steps!r}) in your function."
        )


def _accelerate_plain(value: object, where: str) -> Any:
    """``value`` as JSON data (what a YAML config file holds), or a ValueError at ``where``."""
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, Mapping):
        plain: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(
                    f"sky.plugins.accelerate(config=...): {where} has the key {key!r}; the "
                    "keys of accelerate's config are strings. Pass e.g. "
                    'config={"mixed_precision": "bf16"}.'
                )
            plain[key] = _accelerate_plain(item, f"{where}[{key!r}]")
        return plain
    if isinstance(value, list | tuple):
        return [_accelerate_plain(item, f"{where}[{k}]") for k, item in enumerate(value)]
    raise ValueError(
        f"sky.plugins.accelerate(config=...): {where} is {type(value).__qualname__}; a config "
        "holds what a YAML file can (strings, numbers, booleans, lists, dicts, None). Pass "
        "it as one of those."
    )


def _accelerate_setup(config: dict[str, Any]) -> Callable[[InstanceInfo], Any]:
    # One rank with no distributed_type is accelerate's "NO": `accelerate launch` gives
    # its one process no rendezvous variables, and with LOCAL_RANK set accelerate would
    # take a GPU node for MULTI_GPU (a process group and DDP around the model, for one).
    alone = config.get("distributed_type", "NO") == "NO"

    @contextmanager
    def setup(info: InstanceInfo) -> Iterator[None]:
        if info.total_workers > 1 or not alone:
            os.environ.update(torch_environment(info))
        os.environ.update(accelerate_environment(config, info))
        yield

    return setup


def accelerate_environment(config: Mapping[str, Any], info: InstanceInfo) -> dict[str, str]:
    """What ``accelerate launch`` would add to the environment of the process it starts
    for this node's rank, given ``config`` (checked) and the pool's topology.

    Runs on the node, with accelerate's own launcher code: the config is written to a
    file, ``accelerate launch``'s parser and checks read it with the topology flags, and
    the launcher it would pick (simple, multi-GPU or DeepSpeed) makes the environment.
    Only the variables it sets or changes are returned; ``os.environ`` is not changed.

    Raises:
        RuntimeError: accelerate's launcher cannot be imported, accelerate refuses the
            config (its error chained), or the config spans the nodes through a GPU this
            node does not have.
    """
    where = f"sky.plugins.accelerate(config=...) on node {info.node}"
    if info.workers_per_node > 1:
        where += f" (rank {info.global_worker_index})"
    try:
        import accelerate as accelerate_module
        from accelerate.commands.launch import _validate_launch_command, launch_command_parser
        from accelerate.utils import launch as launching
    except ImportError as exc:
        raise RuntimeError(
            f"{where}: accelerate's launcher cannot be imported ({type(exc).__name__}: {exc}); "
            "install accelerate 1.x on the nodes (sky.plugins.accelerate() does, unless "
            "version=None)"
        ) from exc
    found = accelerate_module.__version__
    settings = dict(config)
    several = info.total_workers > 1
    device = several and _accelerate_device()
    if "distributed_type" not in settings:
        settings["distributed_type"] = ("MULTI_GPU" if device else "MULTI_CPU") if several else "NO"
    kind = settings["distributed_type"]
    if several and kind not in ("NO", "MULTI_CPU") and not device:
        raise RuntimeError(
            f"{where}: distributed_type {kind!r} joins the nodes through a GPU (or another "
            f"accelerator), and node {info.node} has none that accelerate can use: "
            "Accelerator() would run alone there (and Accelerator(cpu=True) would join the "
            f"others but ignore {kind}). On CPU nodes leave distributed_type out, or pass "
            '"MULTI_CPU"; or ask Compute for an accelerator'
        )
    if kind == "MULTI_CPU":
        settings.setdefault("use_cpu", True)  # as `accelerate config` writes it
    # The launcher checks that the port is free on machine 0, once, before it starts the
    # machine's ranks. Every rank comes here, so the head's other local ranks pass as
    # machine 1 (which skips the check: they could find the port held by their own
    # group's store); the machine rank changes nothing else in the environment.
    machine_rank = info.node
    if machine_rank == 0 and info.worker > 0 and info.total_nodes > 1:
        machine_rank = 1
    try:
        with tempfile.TemporaryDirectory(prefix="skyward-accelerate-") as folder:
            path = os.path.join(folder, "accelerate_config.json")
            with open(path, "w", encoding="utf-8") as file:
                json.dump(settings, file)
            flags = launch_command_parser().parse_args(
                [
                    *("--config_file", path),
                    *("--num_machines", str(info.total_nodes)),
                    *("--machine_rank", str(machine_rank)),
                    *("--main_process_ip", info.head_addr),
                    *("--main_process_port", str(info.head_port)),
                    *("--num_processes", str(info.total_workers)),
                    "skyward-function",  # the script argument: never run
                ]
            )
            flags, defaults, precision_from_config = _validate_launch_command(flags)
    except Exception as exc:
        raise _accelerate_refused(where, found, exc) from exc
    # The launcher accelerate.commands.launch.launch_command would pick.
    deepspeed = flags.use_deepspeed and not flags.cpu
    if deepspeed:
        from accelerate.utils import is_deepspeed_available

        if not is_deepspeed_available():
            raise RuntimeError(
                f"{where}: distributed_type DEEPSPEED needs DeepSpeed on the node, and it is "
                "not installed: let sky.plugins.accelerate() install it (version= not None), "
                'or add Image(pip=["deepspeed"])'
            )
        fields = list(defaults.deepspeed_config) if defaults is not None else []
        if precision_from_config:
            fields.append("mixed_precision")
        flags.deepspeed_fields_from_accelerate_config = ",".join(fields)
    try:
        if deepspeed:
            env = _accelerate_p2p(launching.prepare_deepspeed_cmd_env(flags)[1])
        elif (flags.use_fsdp or flags.use_megatron_lm or flags.multi_gpu) and not flags.cpu:
            env = _accelerate_p2p(launching.prepare_multi_gpu_env(flags))
        elif flags.tpu and not flags.cpu:
            raise ValueError("accelerate's TPU launcher is not one this plugin sets up")
        else:
            env = launching.prepare_simple_launcher_cmd_env(flags)[1]
    except ConnectionError as exc:
        raise RuntimeError(
            f"{where}: port {info.head_port} on the head node is in use, so the ranks cannot "
            f"meet there (accelerate: {exc}); on sky.Local() run one torch or accelerate "
            "pool at a time"
        ) from exc
    except Exception as exc:
        raise _accelerate_refused(where, found, exc) from exc
    return {key: value for key, value in env.items() if os.environ.get(key) != value}


def _accelerate_refused(where: str, found: str, exc: Exception) -> RuntimeError:
    return RuntimeError(
        f"{where}: accelerate {found} refused the config (written to a file for "
        f"`accelerate launch --config_file`): {type(exc).__name__}: {exc}"
    )


def _accelerate_p2p(env: dict[str, str]) -> dict[str, str]:
    """``env`` with NCCL's P2P and IB off on GPUs without them, as accelerate's GPU
    launchers do (RTX 4000 series)."""
    from accelerate.utils import check_cuda_p2p_ib_support

    if not check_cuda_p2p_ib_support():
        env.setdefault("NCCL_P2P_DISABLE", "1")
        env.setdefault("NCCL_IB_DISABLE", "1")
    return env


def _accelerate_device() -> bool:
    """Whether this node has a device accelerate would put a rank on (not the CPU)."""
    import accelerate.utils as utilities
    import torch as torch_module

    if torch_module.cuda.is_available():
        return True
    kinds = ("xpu", "npu", "mlu", "musa", "sdaa", "hpu", "neuron")
    return any(getattr(utilities, f"is_{kind}_available", lambda: False)() for kind in kinds)


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


# --- NVIDIA: MPS, MIG and cuML -------------------------------------------------------------

#: Accelerators that are not NVIDIA GPUs.
_NOT_NVIDIA = _NOT_CUDA
#: NVIDIA GPUs that cannot be partitioned with MIG (those that can: A100, A800, A30,
#: H100, H200, GH200, B100, B200, GB200, RTX PRO 6000; a Custom name is not checked).
_NO_MIG = (
    "A40", "A10", "A10G", "A16", "L4", "L40", "L40S", "T4", "V100", "P100",
    "RTX_4090", "RTX_5090", "RTX_A6000", "RTX_6000_Ada",
)  # fmt: skip


def _nvidia_only(plugin: str, cluster: Cluster) -> None:
    accelerator = cluster.accelerator
    if accelerator is not None and accelerator.name in _NOT_NVIDIA:
        raise ValueError(
            f"sky.plugins.{plugin}() drives NVIDIA GPUs, and this pool asks for "
            f"{accelerator.name}: remove the plugin, or ask for an NVIDIA accelerator"
        )


#: Where the MPS control daemon and its clients meet, unless the image's env says.
MPS_PIPE_DIRECTORY = "/tmp/nvidia-mps"
MPS_LOG_DIRECTORY = "/tmp/nvidia-mps-log"
_MPS_CONTROL = "nvidia-cuda-mps-control"
_MEMORY_LIMIT = re.compile(r"\d+=\d+(\.\d+)?[KMGT]B?(,\d+=\d+(\.\d+)?[KMGT]B?)*", re.IGNORECASE)


def mps(
    *, active_thread_percentage: int | None = None, pinned_memory_limit: str | None = None
) -> Plugin:
    """NVIDIA's Multi-Process Service on every node, so concurrent tasks share its GPUs.

    Each worker starts the MPS control daemon as it starts (or uses the one already
    running with the same pipe directory) and stops the one it started when it stops;
    its tasks, and the subprocesses of ``Worker(executor="process")``, are MPS clients.
    Pair it with ``Worker(concurrency=N)``: without MPS, CUDA time-slices the processes.

    The pipe and log directories are ``CUDA_MPS_PIPE_DIRECTORY`` and
    ``CUDA_MPS_LOG_DIRECTORY`` from the image's env, else ``/tmp/nvidia-mps`` and
    ``/tmp/nvidia-mps-log`` (MPS's own defaults).

    Args:
        active_thread_percentage: The share of each GPU's threads one client may use,
            1-100 (``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE``); None leaves MPS's default.
        pinned_memory_limit: The device memory each client may allocate, per GPU:
            ``"0=2G"`` (2 GB on GPU 0), ``"0=8G,1=8G"`` (``CUDA_MPS_PINNED_DEVICE_MEM_LIMIT``).
    """
    if active_thread_percentage is not None and (
        isinstance(active_thread_percentage, bool)
        or not isinstance(active_thread_percentage, int)
        or not 1 <= active_thread_percentage <= 100
    ):
        raise ValueError(
            f"sky.plugins.mps(active_thread_percentage={active_thread_percentage!r}): a whole "
            "percentage from 1 to 100, or None. Pass e.g. active_thread_percentage=25 for "
            "four tasks to a GPU."
        )
    if pinned_memory_limit is not None and (
        not isinstance(pinned_memory_limit, str) or not _MEMORY_LIMIT.fullmatch(pinned_memory_limit)
    ):
        raise ValueError(
            f"sky.plugins.mps(pinned_memory_limit={pinned_memory_limit!r}): GPU=amount pairs "
            'separated by commas, the amount with its unit (K, M, G or T). Pass e.g. "0=2G" '
            'for 2 GB on GPU 0, or "0=8G,1=8G".'
        )
    clients: dict[str, str] = {}
    if active_thread_percentage is not None:
        clients["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] = str(active_thread_percentage)
    if pinned_memory_limit is not None:
        clients["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] = pinned_memory_limit

    def transform(image: Image, cluster: Cluster) -> Image:
        _nvidia_only("mps", cluster)
        return image

    def bootstrap(cluster: Cluster) -> tuple[str, ...]:
        return (
            f"command -v {_MPS_CONTROL} >/dev/null || {{ "
            f"echo \"sky.plugins.mps(): {_MPS_CONTROL} is not on this node's PATH ($PATH); "
            "MPS comes with NVIDIA's driver: run on a node with an NVIDIA GPU and its "
            'driver" >&2; exit 1; }',
        )

    @contextmanager
    def app(info: InstanceInfo) -> Iterator[None]:
        with _mps_daemon(clients):
            yield

    @contextmanager
    def process(info: InstanceInfo) -> Iterator[None]:
        os.environ.update(_mps_environment(clients))
        yield

    return (
        Plugin.create("mps")
        .with_image_transform(transform)
        .with_bootstrap(bootstrap)
        .with_around_app(app)
        .with_around_process(process)
    )


def _mps_environment(clients: dict[str, str]) -> dict[str, str]:
    return {
        "CUDA_MPS_PIPE_DIRECTORY": os.environ.get("CUDA_MPS_PIPE_DIRECTORY", MPS_PIPE_DIRECTORY),
        "CUDA_MPS_LOG_DIRECTORY": os.environ.get("CUDA_MPS_LOG_DIRECTORY", MPS_LOG_DIRECTORY),
        **clients,
    }


def _mps_control(command: str | None, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``nvidia-cuda-mps-control -d`` (None), or ``command`` sent to the running daemon."""
    argv = [_MPS_CONTROL, "-d"] if command is None else [_MPS_CONTROL]
    return subprocess.run(
        argv,
        input=None if command is None else f"{command}\n",
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@contextmanager
def _mps_daemon(clients: dict[str, str]) -> Iterator[None]:
    """The MPS control daemon, running while the block is: started unless one already
    answers on the pipe directory, and then stopped at the end."""
    env = _mps_environment(clients)
    for variable in ("CUDA_MPS_PIPE_DIRECTORY", "CUDA_MPS_LOG_DIRECTORY"):
        os.makedirs(env[variable], exist_ok=True)
    # The daemon is started without the client limits: they are each client's own.
    daemon_env = {k: v for k, v in env.items() if k not in clients}
    started = False
    if _mps_control("get_server_list", daemon_env).returncode != 0:
        done = _mps_control(None, daemon_env)
        if done.returncode != 0:
            raise RuntimeError(
                f"{_MPS_CONTROL} -d failed (exit {done.returncode}): "
                f"{(done.stderr or done.stdout).strip() or 'no output'}"
            )
        started = True
        deadline = time.monotonic() + 10
        while _mps_control("get_server_list", daemon_env).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the MPS control daemon did not answer within 10 s of starting; see "
                    f"its log in {env['CUDA_MPS_LOG_DIRECTORY']}"
                )
            time.sleep(0.1)
    os.environ.update(env)
    try:
        yield
    finally:
        if started:
            _mps_control("quit", daemon_env)


_MIG_PROFILE = re.compile(r"\d+g\.\d+gb(\+(me|gfx|me\.all))?")


def mig(profile: str) -> Plugin:
    """NVIDIA MIG: each node's GPU cut into slices of ``profile``, one to each subprocess.

    For ``Worker(executor="process", concurrency=N)``: the node's bootstrap puts GPU 0 in
    MIG mode and makes N GPU instances of ``profile`` (each with its compute instance),
    unless exactly those are there; each subprocess then sees only its slice
    (``CUDA_VISIBLE_DEVICES`` is the slice's ``MIG-`` UUID) and is a worker of its own:
    ``sky.instance_info()`` says ``workers_per_node=N`` and ``worker`` = its slice, and a
    broadcast (``@``) runs on every slice at once (the node's result is slice 0's).

    Turning MIG mode on needs root on the machine itself: providers that run nodes in
    containers (RunPod, Vast.ai) cannot, and some GPUs need a reset first; the node fails
    in its ``plugins`` phase saying so.

    Args:
        profile: The MIG profile every slice is cut to, as ``nvidia-smi mig -lgip`` names
            it: ``"3g.40gb"`` (an A100 80GB in two), ``"1g.10gb"``, ``"1g.18gb"`` (an
            H200 in seven).
    """
    if not isinstance(profile, str) or not _MIG_PROFILE.fullmatch(profile):
        raise ValueError(
            f"sky.plugins.mig({profile!r}): profile must name a MIG profile as nvidia-smi "
            'does, such as "3g.40gb" or "1g.10gb" (nvidia-smi mig -lgip lists a GPU\'s). '
            'Pass e.g. sky.plugins.mig("3g.40gb").'
        )

    def transform(image: Image, cluster: Cluster) -> Image:
        _nvidia_only("mig", cluster)
        accelerator = cluster.accelerator
        if accelerator is not None and accelerator.name in _NO_MIG:
            raise ValueError(
                f"sky.plugins.mig({profile!r}): {accelerator.name} GPUs have no MIG; ask for "
                "one that has (A100, A30, H100, H200, B200), or use sky.plugins.mps() to "
                "share a GPU between tasks"
            )
        if accelerator is not None and accelerator.count != 1:
            raise ValueError(
                f"sky.plugins.mig({profile!r}) partitions one GPU per node; this pool asks "
                f"for {accelerator.count:g} per node. Ask for count=1."
            )
        if cluster.worker.resolved_executor != "process":
            raise ValueError(
                f"sky.plugins.mig({profile!r}) gives each subprocess of the process executor "
                "a slice of its own; this pool runs tasks in threads. Pass "
                'options=sky.Options(worker=sky.Worker(executor="process", concurrency=N)), '
                "N the number of slices."
            )
        return image

    def bootstrap(cluster: Cluster) -> tuple[str, ...]:
        return (_mig_steps(profile, cluster.worker.concurrency),)

    @contextmanager
    def process(info: InstanceInfo) -> Iterator[None]:
        _mig_pin()
        yield

    return (
        Plugin.create("mig", per_process=True)
        .with_image_transform(transform)
        .with_bootstrap(bootstrap)
        .with_around_process(process)
    )


def _mig_steps(profile: str, slices: int) -> str:
    """The shell steps that leave GPU 0 in MIG mode with ``slices`` slices of ``profile``."""
    wanted = ",".join([profile] * slices)
    return f"""set -e
mode() {{ nvidia-smi -i 0 --query-gpu=mig.mode.current --format=csv,noheader | tr -d ' '; }}
if [ "$(mode)" != Enabled ]; then
  nvidia-smi -i 0 -mig 1 >&2 || true  # its own words, then ours below
  if [ "$(mode)" != Enabled ]; then
    echo "sky.plugins.mig(): GPU 0's MIG mode is '$(mode)' after nvidia-smi -i 0 -mig 1." >&2
    echo "Turning it on takes root on the machine itself (not a container), no process on" >&2
    echo "the GPU, and on some GPUs a reset (nvidia-smi -i 0 -r) or a reboot." >&2
    exit 1
  fi
fi
listing=$(nvidia-smi -L)
slices=$(echo "$listing" | grep -c '(UUID: MIG-' || true)
same=$(echo "$listing" | grep -c 'MIG {profile} ' || true)
if [ "$slices" != {slices} ] || [ "$same" != {slices} ]; then
  nvidia-smi mig -i 0 -dci >/dev/null 2>&1 || true
  nvidia-smi mig -i 0 -dgi >/dev/null 2>&1 || true
  nvidia-smi mig -i 0 -cgi {wanted} -C >&2
else
  echo "GPU 0 already has {slices} MIG slice(s) of {profile}: kept"
fi"""


def _mig_pin() -> None:
    """Give this subprocess its slice: the MIG device at its slot."""
    from . import _runtime

    slot = _runtime.process_slot()
    if slot is None:
        raise RuntimeError(
            "sky.plugins.mig() pins a slice in each subprocess of the process executor; "
            "this is not one"
        )
    index, slices = slot
    listing = subprocess.run(
        ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=False
    )
    if listing.returncode != 0:
        raise RuntimeError(
            f"nvidia-smi -L failed (exit {listing.returncode}): "
            f"{(listing.stderr or listing.stdout).strip() or 'no output'}"
        )
    uuids = re.findall(r"\(UUID: (MIG-[^)\s]+)\)", listing.stdout)
    if len(uuids) < slices:
        raise RuntimeError(
            f"this node's GPU has {len(uuids)} MIG slice(s) and the worker runs {slices} "
            f"subprocesses, one to a slice; nvidia-smi -L says:\n{listing.stdout.strip()}"
        )
    os.environ["CUDA_VISIBLE_DEVICES"] = uuids[index]


def cuml(*, cuda: str = "cu12") -> Plugin:
    """RAPIDS cuML on every node, with scikit-learn's estimators running on the GPU.

    Installs ``cuml-cu12`` (per ``cuda``) from NVIDIA's package index and turns on
    ``cuml.accel`` in each worker and subprocess before its first task, so unchanged
    scikit-learn code (``from sklearn.cluster import KMeans``) runs on the node's GPU
    where cuML supports the estimator and its arguments, and on the CPU otherwise.

    Args:
        cuda: The CUDA major version of the wheel: ``"cu12"`` or ``"cu13"``.
    """
    if cuda not in ("cu12", "cu13"):
        raise ValueError(
            f"sky.plugins.cuml(cuda={cuda!r}): cuML publishes wheels for CUDA 12 and 13: "
            'pass cuda="cu12" or cuda="cu13".'
        )
    package = f"cuml-{cuda}"

    def transform(image: Image, cluster: Cluster) -> Image:
        _nvidia_only("cuml", cluster)
        if cluster.accelerator is None:
            raise ValueError(
                "sky.plugins.cuml() runs scikit-learn on NVIDIA GPUs, and this pool asks for "
                "no accelerator: pass accelerator=sky.accelerators.L4() (or another NVIDIA "
                "GPU), or use sky.plugins.sklearn() for CPUs"
            )
        return _with_packages(image, [package], index="https://pypi.nvidia.com")

    return (
        Plugin.create("cuml")
        .with_image_transform(transform)
        .with_around_app(_cuml_accel)
        .with_around_process(_cuml_accel)
    )


@contextmanager
def _cuml_accel(info: InstanceInfo) -> Iterator[None]:
    import cuml.accel  # type: ignore[import-not-found]

    cuml.accel.install()
    yield


#: The built-in plugins by name, as ``plugins = [...]`` in ``skyward.toml`` names them.
BUILT_IN: dict[str, Callable[..., Plugin]] = {
    "torch": torch,
    "jax": jax,
    "keras": keras,
    "joblib": joblib,
    "sklearn": sklearn,
    "mps": mps,
    "mig": mig,
    "cuml": cuml,
    "accelerate": accelerate,
}

"""Plugins on ``sky.Local()`` nodes: each hook where it runs, in order, with its failures
named; the built-in torch and joblib plugins end to end."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from needs import unavailable

import skyward as sky
import skyward_trio
from skyward.plugins import Cluster, LaunchCommand, LaunchContext, Plugin

QUIET = sky.Options(console="silent")


# --- a plugin with every hook ---------------------------------------------------------------


def _tag(label: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return [label, fn(*args, **kwargs)]

        return wrapper

    return decorate


@contextmanager
def _app(info: Any) -> Iterator[None]:
    os.environ["PLUGIN_APP"] = f"entered on node {info.node} of {info.total_nodes}"
    # Where the hook ran: a thread of the worker's own, not the task's.
    os.environ["PLUGIN_APP_THREAD"] = threading.current_thread().name
    yield


@contextmanager
def _process(info: Any) -> Iterator[None]:
    os.environ["PLUGIN_PROCESS"] = f"{os.getpid()} on node {info.node}"
    yield


def _everything(record: list[str]) -> Plugin:
    def transform(image: sky.Image, cluster: Cluster) -> sky.Image:
        record.append(f"transform: {cluster.nodes.desired} nodes")
        return attrs.evolve(image, env={**image.env, "FROM_TRANSFORM": "yes"})

    def bootstrap(cluster: Cluster) -> tuple[str, ...]:
        record.append("bootstrap")
        return ("echo first > plugin-ops.txt", 'echo "$SKYWARD_PYTHON" >> plugin-ops.txt')

    @contextmanager
    def client(pool: Any, cluster: Cluster) -> Iterator[None]:
        record.append(f"client entered with {type(pool).__module__}.{type(pool).__name__}")
        yield
        record.append("client exited")

    return (
        Plugin.create("everything")
        .with_image_transform(transform)
        .with_bootstrap(bootstrap)
        .with_decorator(_tag("outer"))
        .with_around_app(_app)
        .with_around_process(_process)
        .with_around_client(client)
    )


@sky.function
def _what_the_node_sees() -> dict[str, Any]:
    return {
        "app": os.environ.get("PLUGIN_APP"),
        "app_thread": os.environ.get("PLUGIN_APP_THREAD"),
        "process": os.environ.get("PLUGIN_PROCESS"),
        "transform": os.environ.get("FROM_TRANSFORM"),
        "ops": Path("plugin-ops.txt").read_text().split("\n")[:2],
        "pid": os.getpid(),
    }


def test_every_hook_runs_where_and_when_it_says() -> None:
    record: list[str] = []
    plugins = [_everything(record), Plugin.create("inner").with_decorator(_tag("inner"))]
    compute = sky.Compute(provider=sky.Local(), nodes=2, plugins=plugins, options=QUIET)
    assert record == ["transform: 2 nodes"]  # at Compute(...), before anything starts
    with compute as pool:
        assert record[1:] == ["bootstrap", "client entered with skyward._sync.Pool"]
        results = _what_the_node_sees() @ pool
    assert record[-1] == "client exited"
    for node, (outer, (inner, seen)) in enumerate(results):
        assert (outer, inner) == ("outer", "inner")  # the first plugin's wrapper is outermost
        assert seen["app"] == f"entered on node {node} of 2"
        assert seen["app_thread"] == "skyward-plugins"
        assert seen["process"] is None  # the thread executor has no subprocesses
        assert seen["transform"] == "yes"
        first, python = seen["ops"]
        assert first == "first"
        assert os.path.basename(python).startswith("python")


def test_around_process_runs_in_each_subprocess_of_the_process_executor() -> None:
    record: list[str] = []
    options = sky.Options(console="silent", worker=sky.Worker(executor="process", concurrency=2))
    with sky.Compute(provider=sky.Local(), plugins=[_everything(record)], options=options) as pool:
        results = sky.gather(*(_what_the_node_sees() for _ in range(4))) >> pool
    for outer, seen in results:
        assert outer == "outer"
        assert seen["process"] == f"{seen['pid']} on node 0"  # entered in that subprocess
        assert seen["app"] == "entered on node 0 of 1"  # the worker's, inherited


@sky.function
def _double(x: int) -> int:
    return 2 * x


def test_a_failed_around_app_fails_each_task_with_its_plugin_named() -> None:
    @contextmanager
    def broken(info: Any) -> Iterator[None]:
        raise OSError("no rendezvous for you")
        yield

    plugin = Plugin.create("broken").with_around_app(broken)
    with sky.Compute(provider=sky.Local(), plugins=[plugin], options=QUIET) as pool:
        for _ in range(2):
            with pytest.raises(RuntimeError, match="plugin 'broken' failed to set up") as caught:
                _double(2) >> pool
            assert "OSError: no rendezvous for you" in str(caught.value)


def test_a_failed_bootstrap_command_fails_the_node_in_the_plugins_phase() -> None:
    plugin = Plugin.create("ops").with_bootstrap(lambda cluster: ["echo nope >&2; exit 3"])
    compute = sky.Compute(provider=sky.Local(), plugins=[plugin], options=QUIET)
    with pytest.raises(sky.ProvisionError) as caught, compute:
        pass
    message = str(caught.value)
    assert "its 'plugins' phase" in message
    assert "nope" in message


def test_bad_plugins_are_refused_before_anything_starts() -> None:
    lock = threading.Lock()

    @contextmanager
    def holds_a_lock(info: Any) -> Iterator[None]:
        with lock:
            yield

    with pytest.raises(TypeError, match=r"plugin 'locked': its node hooks .* cannot be pickled"):
        sky.Compute(plugins=[Plugin.create("locked").with_around_app(holds_a_lock)])
    with pytest.raises(TypeError, match=r"image transform returned dict, not a sky\.Image"):
        sky.Compute(plugins=[Plugin.create("t").with_image_transform(lambda i, c: {})])
    with pytest.raises(TypeError, match="every item of plugins must be a Plugin"):
        sky.Compute(plugins=["torch"])
    # What a transform adds is checked like the user's own image: Local runs no apt.
    apt = Plugin.create("apt").with_image_transform(lambda i, c: attrs.evolve(i, apt=("git",)))
    with pytest.raises(ValueError, match=r"Image\(apt=\['git'\]\): sky.Local\(\) .* never"):
        sky.Compute(plugins=[apt])


def test_a_failed_around_client_tears_the_pool_down() -> None:
    @contextmanager
    def refuses(pool: Any, cluster: Cluster) -> Iterator[None]:
        raise LookupError("no backend")
        yield

    plugin = Plugin.create("client").with_around_client(refuses)
    compute = sky.Compute(provider=sky.Local(), plugins=[plugin], options=QUIET)
    with pytest.raises(LookupError, match="no backend"), compute:
        pytest.fail("the block must not run")
    assert compute.pool is not None
    with pytest.raises(sky.PoolClosedError):
        _double(1) >> compute.pool


async def test_the_trio_face_hands_around_client_its_own_pool() -> None:
    seen: list[object] = []

    @contextmanager
    def client(pool: Any, cluster: Cluster) -> Iterator[None]:
        seen.append(pool)
        yield

    plugin = Plugin.create("client").with_around_client(client)
    compute = skyward_trio.Compute(provider=sky.Local(), plugins=[plugin], options=QUIET)
    async with compute as pool:
        assert seen == [pool]
        assert await pool.run(_double(4)) == 8
    await trio.lowlevel.checkpoint()


# --- built-ins ------------------------------------------------------------------------------


@sky.function
def _rendezvous() -> dict[str, str | None]:
    keys = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
    return {key: os.environ.get(key) for key in keys}


def test_torch_gives_each_node_its_rendezvous_environment() -> None:
    # version=None: this test's machine cannot reach PyTorch's index; the env is the point.
    torch = sky.plugins.torch(version=None)
    with sky.Compute(provider=sky.Local(), nodes=2, plugins=[torch], options=QUIET) as pool:
        results = _rendezvous() @ pool
        with pytest.raises(ValueError, match="plugin 'torch', whose nodes joined one group"):
            pool.resize(3)  # the rendezvous fixed the world's size
    head = results[0]["MASTER_ADDR"]
    assert head is not None
    assert head.startswith("127.")
    for node, env in enumerate(results):
        assert env == {
            "MASTER_ADDR": head,
            "MASTER_PORT": "29500",
            "WORLD_SIZE": "2",
            "RANK": str(node),
            "LOCAL_RANK": "0",
            "LOCAL_WORLD_SIZE": "1",
        }


def _need(module: str, pin: str) -> None:
    """PyTorch and JAX (their CPU builds) are installed for the Python 3.11 tests only
    (noxfile.py): missing there, fail under CI; elsewhere, skip."""
    try:
        importlib.import_module(module)
    except ImportError:
        if sys.version_info[:2] == (3, 11):
            unavailable(f"{module} is not installed (pip install {pin})", suite=module)
        pytest.skip(f"{module} is installed for the Python 3.11 tests only (noxfile.py)")


@sky.function
def _all_reduce() -> list[float]:
    import torch
    import torch.distributed as dist

    info = sky.instance_info()
    dist.init_process_group(backend="gloo")
    try:
        tensor = torch.tensor([float(info.node + 1)])
        dist.all_reduce(tensor)
        return tensor.tolist()
    finally:
        dist.destroy_process_group()


def test_torch_ddp_all_reduce_across_two_nodes() -> None:
    _need("torch", "torch==2.13.0")
    torch = sky.plugins.torch(version=None, backend="gloo")
    with sky.Compute(provider=sky.Local(), nodes=2, plugins=[torch], options=QUIET) as pool:
        assert _all_reduce() @ pool == [[3.0], [3.0]]


def test_torch_refuses_a_backend_the_node_cannot_run() -> None:
    _need("torch", "torch==2.13.0")
    torch = sky.plugins.torch(version=None, backend="nccl")  # this machine has no CUDA
    # A CPU build has no nccl at all; a CUDA build on a machine without GPUs, no device.
    refused = pytest.raises(RuntimeError, match=r"torch\(backend='nccl'\): .* node 0 .*(nccl|CUDA)")
    with sky.Compute(provider=sky.Local(), plugins=[torch], options=QUIET) as pool, refused:
        _double(1) >> pool


@sky.function
def _gathered() -> tuple[int, int, list[list[float]]]:
    import jax
    import jax.numpy as jnp
    from jax.experimental import multihost_utils

    mine = jnp.array([sky.instance_info().node + 1.0])
    return (
        jax.process_index(),
        jax.process_count(),
        multihost_utils.process_allgather(mine).tolist(),
    )


def test_jax_distributed_spans_the_nodes() -> None:
    _need("jax", "jax==0.10.2")
    jax = sky.plugins.jax(version=None)
    with sky.Compute(provider=sky.Local(), nodes=2, plugins=[jax], options=QUIET) as pool:
        results = _gathered() @ pool
    assert results == [(0, 2, [[1.0], [2.0]]), (1, 2, [[1.0], [2.0]])]


@sky.function
def _accelerated() -> dict[str, Any]:
    import torch
    from accelerate import Accelerator

    accelerator = Accelerator()  # no cpu=True: the plugin's environment says so
    node = sky.instance_info().node
    return {
        "num_processes": accelerator.num_processes,
        "process_index": accelerator.process_index,
        "distributed_type": accelerator.distributed_type.value,
        "backend": accelerator.state.backend,
        "mixed_precision": accelerator.mixed_precision,
        "gathered": accelerator.gather(torch.tensor([node + 1.0])).tolist(),
    }


def test_accelerate_joins_the_nodes_in_one_process_group() -> None:
    _need("torch", "torch==2.13.0")
    _need("accelerate", "accelerate==1.15.0")
    plugins = [
        sky.plugins.torch(version=None, backend="gloo"),
        sky.plugins.accelerate(version=None),
    ]
    with sky.Compute(provider=sky.Local(), nodes=2, plugins=plugins, options=QUIET) as pool:
        first = _accelerated() @ pool
        again = _accelerated() @ pool  # the worker's process group and state live on
    assert (
        first
        == again
        == [
            {
                "num_processes": 2,
                "process_index": node,
                "distributed_type": "MULTI_CPU",
                "backend": "gloo",
                "mixed_precision": "no",
                "gathered": [1.0, 2.0],
            }
            for node in range(2)
        ]
    )


def test_accelerate_runs_under_the_process_executor() -> None:
    _need("torch", "torch==2.13.0")
    _need("accelerate", "accelerate==1.15.0")
    accelerate = sky.plugins.accelerate({"mixed_precision": "bf16"}, version=None)
    options = sky.Options(console="silent", worker=sky.Worker(executor="process"))
    with sky.Compute(provider=sky.Local(), nodes=2, plugins=[accelerate], options=options) as pool:
        results = _accelerated() @ pool
    assert [(r["process_index"], r["mixed_precision"], r["gathered"]) for r in results] == [
        (0, "bf16", [1.0, 2.0]),
        (1, "bf16", [1.0, 2.0]),
    ]


@sky.function
def _accelerated_alone() -> dict[str, Any]:
    from accelerate import Accelerator

    accelerator = Accelerator()
    rendezvous = ("LOCAL_RANK", "RANK", "WORLD_SIZE", "MASTER_ADDR")
    return {
        "distributed_type": accelerator.distributed_type.value,
        "num_processes": accelerator.num_processes,
        "rendezvous": [name for name in rendezvous if name in os.environ],
    }


def test_accelerate_on_one_node_is_not_distributed() -> None:
    # As `accelerate launch` with one process: no rendezvous variables, which would make
    # accelerate take a GPU node for MULTI_GPU with one rank (seen on an H200).
    _need("torch", "torch==2.13.0")
    _need("accelerate", "accelerate==1.15.0")
    accelerate = sky.plugins.accelerate(version=None)
    with sky.Compute(provider=sky.Local(), nodes=1, plugins=[accelerate], options=QUIET) as pool:
        assert _accelerated_alone() >> pool == {
            "distributed_type": "NO",
            "num_processes": 1,
            "rendezvous": [],
        }


# --- several workers (ranks) per node ---------------------------------------------------

RANKS = sky.Options(console="silent", worker=sky.Worker(executor="process", concurrency=2))


@sky.function
def _rank_here(folder: str) -> dict[str, int]:
    info = sky.instance_info()
    Path(folder).mkdir(exist_ok=True)
    Path(folder, f"{info.node}-{info.worker}").write_text(str(os.getpid()))
    return {
        "node": info.node,
        "worker": info.worker,
        "global": info.global_worker_index,
        "total": info.total_workers,
    }


@sky.function
def _sum_items(items: Iterator[int]) -> int:
    return sum(items)


def test_a_per_process_plugin_makes_each_subprocess_a_worker_that_broadcasts_reach(
    tmp_path: Path,
) -> None:
    ranks = Plugin.create("ranks", per_process=True)
    with sky.Compute(provider=sky.Local(), nodes=2, plugins=[ranks], options=RANKS) as pool:
        results = _rank_here(str(tmp_path / "ranks")) @ pool
        with pytest.raises(TypeError, match=r"_sum_items\(\) has an Iterator\[\.\.\.\] param"):
            _sum_items(iter([1, 2])) @ pool
        assert _sum_items(iter([1, 2])) >> pool == 3  # a single call streams as ever
    # One result per node (its worker 0's), and every worker of every node ran it.
    assert results == [
        {"node": 0, "worker": 0, "global": 0, "total": 4},
        {"node": 1, "worker": 0, "global": 2, "total": 4},
    ]
    ran = sorted(path.name for path in (tmp_path / "ranks").iterdir())
    assert ran == ["0-0", "0-1", "1-0", "1-1"]
    # Without such a plugin the subprocesses are slots that tasks share: one node, one run.
    with sky.Compute(provider=sky.Local(), nodes=2, options=RANKS) as pool:
        results = _rank_here(str(tmp_path / "slots")) @ pool
    assert [r["total"] for r in results] == [2, 2]
    assert sorted(path.name for path in (tmp_path / "slots").iterdir()) == ["0-0", "1-0"]


@sky.function
def _all_reduce_ranks(fail_rank: int | None = None) -> dict[str, Any]:
    import torch
    import torch.distributed as dist

    env = {key: int(os.environ[key]) for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    if env["RANK"] == fail_rank:
        raise ValueError(f"rank {fail_rank} has no data")
    dist.init_process_group(backend="gloo")  # the others wait here for the one that failed
    tensor = torch.tensor([float(env["RANK"] + 1)])
    dist.all_reduce(tensor)
    return {**env, "sum": tensor.item(), "pid": os.getpid()}


def test_torch_runs_a_rank_in_each_subprocess_and_a_failed_rank_stops_them_all() -> None:
    _need("torch", "torch==2.13.0")
    torch = sky.plugins.torch(version=None, backend="gloo")
    with sky.Compute(provider=sky.Local(), nodes=2, plugins=[torch], options=RANKS) as pool:
        with pytest.raises(ValueError, match="rank 3 has no data") as caught:
            _all_reduce_ranks(3) @ pool  # without the stop, the others wait for 30 min
        results = _all_reduce_ranks() @ pool
    notes = "\n".join(getattr(caught.value, "__notes__", []))
    assert "on worker 1 of node 1 (rank 3 of 4)" in notes
    # A group that lost a rank cannot meet again; the next broadcast's ranks are new ones.
    assert [{k: r[k] for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "sum")} for r in results] == [
        {"RANK": 0, "LOCAL_RANK": 0, "WORLD_SIZE": 4, "sum": 10.0},
        {"RANK": 2, "LOCAL_RANK": 0, "WORLD_SIZE": 4, "sum": 10.0},
    ]


@sky.function
def _accelerated_rank() -> dict[str, Any]:
    import torch
    from accelerate import Accelerator

    accelerator = Accelerator()
    rank = sky.instance_info().global_worker_index
    return {
        "num_processes": accelerator.num_processes,
        "process_index": accelerator.process_index,
        "local_process_index": accelerator.local_process_index,
        "distributed_type": accelerator.distributed_type.value,
        "gathered": accelerator.gather(torch.tensor([rank + 1.0])).tolist(),
    }


def test_accelerate_runs_a_rank_in_each_subprocess() -> None:
    _need("torch", "torch==2.13.0")
    _need("accelerate", "accelerate==1.15.0")
    accelerate = sky.plugins.accelerate({"num_processes": 4}, version=None)
    with sky.Compute(provider=sky.Local(), nodes=2, plugins=[accelerate], options=RANKS) as pool:
        results = _accelerated_rank() @ pool
    assert results == [
        {
            "num_processes": 4,
            "process_index": process,
            "local_process_index": 0,
            "distributed_type": "MULTI_CPU",
            "gathered": [1.0, 2.0, 3.0, 4.0],
        }
        for process in (0, 2)
    ]


@sky.function
def _train_one_step() -> dict[str, Any]:
    import torch
    from accelerate import Accelerator

    accelerator = Accelerator()
    torch.manual_seed(0)
    model = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.constant_(model.weight, 1.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model, optimizer = accelerator.prepare(model, optimizer)
    with accelerator.autocast():  # (a prepared model's outputs are cast back to float32)
        dtype = str(torch.nn.Linear(1, 1)(torch.ones(1, 1)).dtype)
    x = torch.tensor([[float(sky.instance_info().node + 1)]])  # 1.0 on node 0, 2.0 on 1
    accelerator.backward(model(x).sum())  # this rank's gradient: x
    optimizer.step()
    return {
        "mixed_precision": accelerator.mixed_precision,
        "autocast_dtype": dtype,
        "wrapped_in": type(model).__name__,
        "weight": accelerator.unwrap_model(model).weight.item(),
        "env": os.environ.get("ACCELERATE_MIXED_PRECISION"),
    }


def test_accelerate_config_reaches_the_accelerator_on_each_node() -> None:
    _need("torch", "torch==2.13.0")
    _need("accelerate", "accelerate==1.15.0")
    accelerate = sky.plugins.accelerate(
        {"distributed_type": "MULTI_CPU", "mixed_precision": "bf16", "num_processes": 2},
        version=None,
    )
    with sky.Compute(provider=sky.Local(), nodes=2, plugins=[accelerate], options=QUIET) as pool:
        results = _train_one_step() @ pool
    for result in results:
        assert result == {
            "mixed_precision": "bf16",
            "autocast_dtype": "torch.bfloat16",
            "wrapped_in": "DistributedDataParallel",
            # DDP averaged the two ranks' gradients (1 and 2): 1 - 0.5 * 1.5 on both.
            "weight": 0.25,
            "env": "bf16",
        }


def test_a_config_accelerate_refuses_on_the_node_fails_each_task() -> None:
    _need("accelerate", "accelerate==1.15.0")
    accelerate = sky.plugins.accelerate({"fsdp_confg": {}}, version=None)  # a typo
    refused = (
        r"plugin 'accelerate' failed to set up this worker \(around_app\): RuntimeError: "
        r"sky\.plugins\.accelerate\(config=\.\.\.\) on node 0: accelerate 1\.\S+ refused the "
        r"config .*unknown keys \(\['fsdp_confg'\]\)"
    )
    with sky.Compute(provider=sky.Local(), plugins=[accelerate], options=QUIET) as pool:
        for _ in range(2):  # every task, not only the first
            with pytest.raises(RuntimeError, match=refused):
                _double(1) >> pool


def _where_raw(x: int) -> tuple[int, int, int]:
    return x, sky.instance_info().node, os.getpid()


_where = sky.function(_where_raw)


def test_joblib_parallel_runs_on_the_pool_inside_the_block() -> None:
    joblib = pytest.importorskip("joblib")
    with sky.Compute(
        provider=sky.Local(), nodes=2, plugins=[sky.plugins.joblib()], options=QUIET
    ) as pool:
        results = joblib.Parallel(n_jobs=-1)(joblib.delayed(_where_raw)(x) for x in range(8))
        pids = {pid for _, _, pid in _where(0) @ pool}
    assert [x for x, _, _ in results] == list(range(8))
    assert {node for _, node, _ in results} == {0, 1}
    assert {pid for _, _, pid in results} <= pids  # run by the nodes' workers
    # The block is over: joblib is back to its own backend.
    assert joblib.Parallel(n_jobs=1)(joblib.delayed(abs)(-1) for _ in range(1)) == [1]


def test_the_torch_ddp_example_trains_two_ranks_to_the_same_weights() -> None:
    _need("torch", "torch==2.13.0")
    example = Path(__file__).resolve().parents[2] / "examples" / "torch_ddp.py"
    done = subprocess.run(
        [sys.executable, str(example)], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [line for line in done.stdout.splitlines() if line.startswith("rank ")]
    assert len(ranks) == 2, done.stdout
    weights = {line.split("weights ")[1] for line in ranks}
    assert weights == {"[2.000, -3.000]"}  # DDP kept them equal, and they learned the truth


def test_the_ranks_example_trains_four_ranks_on_two_nodes_to_the_same_weights() -> None:
    _need("torch", "torch==2.13.0")
    example = Path(__file__).resolve().parents[2] / "examples" / "torch_ranks.py"
    done = subprocess.run(
        [sys.executable, str(example)], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    nodes = [line for line in done.stdout.splitlines() if line.startswith("node ")]
    assert [line.split(":")[0] for line in nodes] == [
        "node 0 (rank 0 of 4)",
        "node 1 (rank 2 of 4)",
    ], done.stdout
    weights = {line.split("weights ")[1] for line in nodes}
    assert weights == {"[2.000, -3.000]"}


async def test_a_failed_around_client_tears_the_trio_pool_down() -> None:
    seen: list[Any] = []

    @contextmanager
    def refuses(pool: Any, cluster: Cluster) -> Iterator[None]:
        seen.append(pool)
        raise LookupError("no backend")
        yield

    plugin = Plugin.create("client").with_around_client(refuses)
    compute = skyward_trio.Compute(provider=sky.Local(), plugins=[plugin], options=QUIET)
    with pytest.raises(LookupError, match="no backend"):
        async with compute:
            pytest.fail("the block must not run")
    with pytest.raises(sky.PoolClosedError):
        await seen[0].run(_double(2))


# --- with_launcher --------------------------------------------------------------------------


def _nice(command: LaunchCommand, context: LaunchContext) -> LaunchCommand:
    node = str(context.info.node)
    return attrs.evolve(
        command,
        argv=("nice", "-n", "3", *command.argv),
        env={**command.env, "LAUNCHED_NODE": node},
    )


def _shell(command: LaunchCommand, context: LaunchContext) -> LaunchCommand:
    # A wrapper of its own: writes a file in the worker's directory, then runs the worker.
    script = 'echo "wrapped in $PWD" > launcher-ran; exec "$@"'
    concurrency = str(context.cluster.worker.concurrency)
    return attrs.evolve(
        command,
        argv=("sh", "-c", script, "sh", *command.argv),
        env={**command.env, "LAUNCH_CONCURRENCY": concurrency},
    )


@sky.function
def _how_the_worker_was_launched() -> dict[str, Any]:
    return {
        "nice": os.nice(0),
        "node": os.environ.get("LAUNCHED_NODE"),
        "concurrency": os.environ.get("LAUNCH_CONCURRENCY"),
        "wrapped": Path("launcher-ran").read_text().strip(),
        "cwd": os.getcwd(),
    }


def test_launchers_wrap_the_command_that_starts_each_worker() -> None:
    plugins = [
        Plugin.create("nice").with_launcher(_nice),
        Plugin.create("shell").with_launcher(_shell),
    ]
    options = sky.Options(console="silent", worker=sky.Worker(concurrency=3))
    with sky.Compute(provider=sky.Local(), nodes=2, plugins=plugins, options=options) as pool:
        results = _how_the_worker_was_launched() @ pool
    for node, seen in enumerate(results):
        assert seen["nice"] == os.nice(0) + 3
        assert seen["node"] == str(node)
        assert seen["concurrency"] == "3"  # the pool's Worker, as the launcher saw it
        assert seen["wrapped"] == f"wrapped in {seen['cwd']}"


def test_a_launcher_that_replaces_the_worker_fails_the_node_naming_it() -> None:
    def replaces(command: LaunchCommand, context: LaunchContext) -> LaunchCommand:
        return LaunchCommand(("sleep", "60"))

    plugin = Plugin.create("rogue").with_launcher(replaces)
    compute = sky.Compute(provider=sky.Local(), plugins=[plugin], options=QUIET)
    with pytest.raises(sky.ProvisionError) as caught, compute:
        pytest.fail("the block must not run")
    message = str(caught.value)
    assert "plugin 'rogue': its launcher returned ['sleep', '60']" in message
    assert "keep it whole" in message

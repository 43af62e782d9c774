"""``Plugin`` and the built-ins' arguments and image transforms, without a pool."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import pytest

import skyward as sky
from skyward.plugins import Cluster, Plugin
from skyward_trio._bootstrap import worker_bootstrap
from skyward_trio._info import InstanceInfo, PeerInfo
from skyward_trio._plugin import bootstrap_ops, transformed, workers_per_node
from skyward_trio._pluginrun import NodePlugins, pack
from skyward_trio.plugins import torch_environment


def _cluster(**spec: Any) -> Cluster:
    return Cluster(spec=sky.Spec(provider=spec.pop("provider", sky.Local()), **spec))


def test_builders_return_new_plugins_and_the_last_setting_wins() -> None:
    bare = Plugin.create("p")
    first = bare.with_decorator(lambda fn: fn)
    second = first.with_decorator(abs)
    assert bare.decorate is None
    assert first.decorate is not None
    assert second.decorate is abs
    assert second.name == "p"


@pytest.mark.parametrize("name", ["", "  ", None, 3])
def test_a_plugin_needs_a_name(name: Any) -> None:
    with pytest.raises(ValueError, match=r"Plugin.create\(.*\): a plugin needs a name"):
        Plugin.create(name)


def test_a_hook_must_be_callable() -> None:
    with pytest.raises(TypeError, match=r"Plugin 'p': with_around_app\(...\) takes a function"):
        Plugin.create("p").with_around_app("enter")  # type: ignore[arg-type]


def test_the_cluster_shows_the_spec() -> None:
    cluster = _cluster(
        provider=sky.RunPod(api_key="k"), accelerator=sky.accelerators.A100(), nodes=3
    )
    assert cluster.nodes.desired == 3
    assert cluster.accelerator == sky.accelerators.A100()
    assert isinstance(cluster.provider, sky.RunPod)


def test_transforms_run_in_order_and_bootstrap_ops_are_strings() -> None:
    def add(name: str) -> Callable[[sky.Image, Cluster], sky.Image]:
        return lambda image, cluster: sky.Image(pip=[*image.pip, name])

    plugins = [
        Plugin.create("a").with_image_transform(add("six")),
        Plugin.create("b").with_image_transform(add("attrs")).with_bootstrap(lambda c: ["x"]),
        Plugin.create("c").with_bootstrap(lambda c: ("y", "z")),
    ]
    spec = transformed(sky.Spec(provider=sky.Local(), plugins=plugins))
    assert spec.image.pip == ("six", "attrs")
    assert bootstrap_ops(spec) == ("x", "y", "z")
    untouched = sky.Spec(provider=sky.Local(), plugins=[Plugin.create("d")])
    assert transformed(untouched) is untouched
    bad = sky.Spec(
        provider=sky.Local(), plugins=[Plugin.create("e").with_bootstrap(lambda c: "ls")]
    )
    with pytest.raises(TypeError, match="plugin 'e': its bootstrap hook returned 'ls'"):
        bootstrap_ops(bad)


def test_bootstrap_ops_run_in_their_own_phase_after_the_environment() -> None:
    script = worker_bootstrap(
        workdir="/w", python="python3", secret="s", config={"env": {"A": "b c"}},
        start_timeout=5, plugin_ops=("echo 'hi there'",),
    )  # fmt: skip
    phase = script.index("phase plugins")
    op = "env 'A=b c' SKYWARD_PYTHON=python3 bash -c 'echo '\"'\"'hi there'\"'\"''"
    assert script.index(op) > phase  # with the image's env
    assert phase < script.index("setsid")
    assert "phase plugins" not in worker_bootstrap(
        workdir="/w", python="python3", secret="s", config={}, start_timeout=5
    )


def _recording(name: str, log: list[str]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any) -> Any:
            log.append(name)
            return fn(*args)

        return wrapper

    return decorate


def test_wrappers_nest_with_the_first_plugin_outermost_behind_the_gate() -> None:
    log: list[str] = []
    plugins = NodePlugins(
        [("a", _recording("a", log), None, None), ("b", _recording("b", log), None, None)]
    )
    wrapped = plugins.wrap(lambda x: log.append("fn") or x, gate=lambda: log.append("gate"))
    assert wrapped(7) == 7
    assert log == ["gate", "a", "b", "fn"]


def test_skywards_own_environment_check_is_not_wrapped() -> None:
    from skyward_trio._envcheck import module_versions

    plugins = NodePlugins([("a", _recording("a", []), None, None)])
    assert plugins.wrap(module_versions, gate=lambda: None) is module_versions


def _negated(fn: Callable[..., int]) -> Callable[..., int]:
    return lambda *args: -fn(*args)


def test_only_plugins_with_node_hooks_travel() -> None:
    assert pack([Plugin.create("client-only").with_around_client(contextlib.nullcontext)]) is None
    text = pack([Plugin.create("n").with_decorator(_negated)])
    unpacked = NodePlugins.unpack(text)
    assert unpacked is not None
    assert unpacked.wrap(int, gate=lambda: None)("3") == -3


def _info(node: int, total: int) -> InstanceInfo:
    peers = [PeerInfo(node=k, private_ip=f"10.0.0.{k + 1}") for k in range(total)]
    return InstanceInfo(
        node=node, total_nodes=total, head_addr="10.0.0.1", head_port=29500, job_id="j",
        peers=peers,
    )  # fmt: skip


def test_around_app_is_entered_once_in_its_thread_and_exited_on_stop() -> None:
    events: list[str] = []

    @contextlib.contextmanager
    def app(info: InstanceInfo) -> Iterator[None]:
        events.append(f"enter {info.node}")
        yield
        events.append("exit")

    plugins = NodePlugins([("a", None, app, None)])
    plugins.start_app(_info(1, 2))
    plugins.wait_app()
    assert events == ["enter 1"]
    plugins.stop_app()
    assert events == ["enter 1", "exit"]


def test_torch_environment_is_the_env_rendezvous() -> None:
    assert torch_environment(_info(1, 3)) == {
        "MASTER_ADDR": "10.0.0.1",
        "MASTER_PORT": "29500",
        "WORLD_SIZE": "3",
        "RANK": "1",
        "NODE_RANK": "1",
        "LOCAL_RANK": "0",
        "LOCAL_WORLD_SIZE": "1",
    }
    # Worker 2 of node 1, with 4 workers (ranks) per node: rank 6 of 12.
    ranked = attrs.evolve(_info(1, 3), workers_per_node=4, worker=2)
    assert torch_environment(ranked) == {
        "MASTER_ADDR": "10.0.0.1",
        "MASTER_PORT": "29500",
        "WORLD_SIZE": "12",
        "RANK": "6",
        "NODE_RANK": "1",
        "LOCAL_RANK": "2",
        "LOCAL_WORLD_SIZE": "4",
    }


def test_a_node_has_a_worker_per_subprocess_only_with_a_per_process_plugin() -> None:
    process = sky.Worker(executor="process", concurrency=4)
    ranks = Plugin.create("ranks", per_process=True)
    assert workers_per_node([ranks], process) == 4
    assert workers_per_node([sky.plugins.joblib()], process) == 1  # slots tasks share
    assert workers_per_node([ranks], sky.Worker(concurrency=4)) == 1  # threads: one process
    assert workers_per_node([ranks], None) == 1
    for plugin in (sky.plugins.torch(), sky.plugins.accelerate(), sky.plugins.mig("1g.10gb")):
        assert plugin.per_process, plugin.name
    for plugin in (sky.plugins.jax(), sky.plugins.mps(), sky.plugins.joblib()):
        assert not plugin.per_process, plugin.name
    with pytest.raises(TypeError, match="per_process=1"):
        Plugin.create("p", per_process=1)  # type: ignore[arg-type]


def _transform(plugin: Plugin, image: sky.Image | None = None, **spec: Any) -> sky.Image:
    assert plugin.transform is not None
    return plugin.transform(image or sky.Image(), _cluster(**spec))


def test_torch_installs_the_cuda_build_on_gpus_and_the_cpu_build_elsewhere() -> None:
    gpu = _transform(
        sky.plugins.torch(cuda="cu126", version="2.7.1", vision="latest"),
        provider=sky.RunPod(api_key="k"),
        accelerator=sky.accelerators.H100(),
    )
    assert gpu.pip == ("torch==2.7.1", "torchvision")
    assert gpu.pip_indexes == (
        sky.PipIndex(
            url="https://download.pytorch.org/whl/cu126", packages=["torch", "torchvision"]
        ),
    )
    cpu = _transform(sky.plugins.torch(version=">=2.7", audio="2.7.1"))
    assert cpu.pip == ("torch>=2.7", "torchaudio==2.7.1")
    assert cpu.pip_indexes[0].url == "https://download.pytorch.org/whl/cpu"


def test_torch_leaves_what_the_image_installs_and_version_none_installs_nothing() -> None:
    mine = sky.Image(pip=["torch==2.6.0", "numpy"])
    image = _transform(sky.plugins.torch(vision="latest"), mine)
    assert image.pip == ("torch==2.6.0", "numpy", "torchvision")
    assert [index.packages for index in image.pip_indexes] == [("torchvision",)]
    assert _transform(sky.plugins.torch(version=None), mine) is mine


def test_torch_refuses_accelerators_its_builds_do_not_drive() -> None:
    with pytest.raises(ValueError, match=r"do not drive MI300X: .*torch\(version=None\)"):
        _transform(
            sky.plugins.torch(),
            provider=sky.RunPod(api_key="k"),
            accelerator=sky.accelerators.MI300X(),
        )


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: sky.plugins.torch(backend="nvlink"), "backend must be one of 'nccl', 'gloo'"),
        (lambda: sky.plugins.torch(cuda="12.8"), 'cuda must name a CUDA build such as "cu128"'),
        (lambda: sky.plugins.torch(vision="1 2"), "vision must be"),
        (lambda: sky.plugins.keras(backend="theano"), "backend must be one of 'jax'"),
        (lambda: sky.plugins.joblib(version="1 2"), r"joblib\(version='1 2'\)"),
        (lambda: sky.plugins.sklearn(version="; rm -rf"), 'version must be "latest", a version'),
    ],
)
def test_built_in_arguments_are_checked(call: Callable[[], Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_jax_installs_the_build_for_the_nodes_accelerator() -> None:
    runpod = sky.RunPod(api_key="k")
    gpu = _transform(
        sky.plugins.jax(cuda="cu126"), provider=runpod, accelerator=sky.accelerators.L4()
    )
    assert gpu.pip == ("jax[cuda12]",)
    assert _transform(sky.plugins.jax(version="0.6.2")).pip == ("jax==0.6.2",)
    mine = sky.Image(pip=["jax[cuda12]==0.6.0"])
    assert _transform(sky.plugins.jax(), mine).pip == ("jax[cuda12]==0.6.0",)
    assert _transform(sky.plugins.jax(version=None), mine) is mine
    with pytest.raises(ValueError, match="do not drive MI250"):
        _transform(sky.plugins.jax(), provider=runpod, accelerator=sky.accelerators.MI250())
    with pytest.raises(ValueError, match='cuda must name a CUDA build such as "cu124"'):
        sky.plugins.jax(cuda="12")


def test_every_built_in_is_listed_by_name() -> None:
    needs = {"mig": ("3g.40gb",)}  # its profile is positional, and has no default
    made = {name: make(*needs.get(name, ())) for name, make in sky.plugins.BUILT_IN.items()}
    assert {name: plugin.name for name, plugin in made.items()} == {
        "torch": "torch",
        "jax": "jax",
        "keras": "keras",
        "joblib": "joblib",
        "sklearn": "sklearn",
        "mps": "mps",
        "mig": "mig",
        "cuml": "cuml",
        "accelerate": "accelerate",
    }


def test_keras_sets_its_backend_and_installs_it() -> None:
    image = _transform(sky.plugins.keras(backend="torch"), sky.Image(env={"A": "1"}))
    assert image.pip == ("keras", "torch")
    assert image.env == {"A": "1", "KERAS_BACKEND": "torch"}


def test_joblib_and_sklearn_install_what_their_backend_needs() -> None:
    assert _transform(sky.plugins.joblib(version="1.4.2")).pip == ("joblib==1.4.2",)
    assert _transform(sky.plugins.sklearn()).pip == ("scikit-learn", "joblib")
    assert sky.plugins.sklearn().around_client is sky.plugins.joblib().around_client


@pytest.mark.parametrize(
    "nodes", [sky.Nodes(desired=2, max=4), sky.Nodes(desired=4, min=2), (2, 8)], ids=str
)
def test_collective_plugins_refuse_pools_that_change_size(nodes: Any) -> None:
    for plugin in (sky.plugins.torch(version=None), sky.plugins.jax(version=None)):
        assert plugin.collective
        with pytest.raises(ValueError, match=f"with plugin '{plugin.name}': its nodes join"):
            sky.Compute(provider=sky.Local(), nodes=nodes, plugins=[plugin])
    # Others may grow and shrink; a fixed count is fine for every plugin.
    sky.Compute(provider=sky.Local(), nodes=nodes, plugins=[sky.plugins.joblib()])
    sky.Compute(
        provider=sky.Local(), nodes=sky.Nodes(desired=2, min=2), plugins=[sky.plugins.torch()]
    )
    with pytest.raises(TypeError, match="collective='yes'"):
        Plugin.create("p", collective="yes")  # type: ignore[arg-type]


def test_a_failed_around_process_fails_that_subprocess_tasks_with_its_plugin_named() -> None:
    @contextlib.contextmanager
    def broken(info: InstanceInfo) -> Iterator[None]:
        raise OSError("no device")
        yield

    plugins = NodePlugins([("gpu", None, None, broken)])
    with contextlib.ExitStack() as stack:
        plugins.enter_process(stack, _info(0, 1))
    with pytest.raises(
        RuntimeError, match=r"^plugin 'gpu' failed to set up this subprocess \(around_process\): "
    ) as caught:
        plugins.wait_process()
    assert str(caught.value).endswith("OSError: no device")
    assert isinstance(caught.value.__cause__, OSError)

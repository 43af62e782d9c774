"""``sky.plugins.accelerate``: its checks and image transform on the client, and the
environment accelerate's own launcher code works out for a node (without a pool)."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import attrs
import pytest
from test_plugin_hooks import _info

import skyward as sky
from skyward.plugins import Cluster
from skyward_trio import plugins as plugins_module
from skyward_trio._info import InstanceInfo
from skyward_trio._plugin import transformed
from skyward_trio._pluginrun import pack
from skyward_trio.plugins import accelerate_environment, torch_environment

accelerate = sky.plugins.accelerate


def _transform(plugin: Any, image: sky.Image | None = None, nodes: int = 2) -> sky.Image:
    assert plugin.transform is not None
    spec = sky.Spec(provider=sky.Local(), nodes=nodes)
    result: sky.Image = plugin.transform(image or sky.Image(), Cluster(spec=spec))
    return result


def test_accelerate_is_installed_unless_the_image_or_an_earlier_plugin_names_it() -> None:
    assert _transform(accelerate()).pip == ("accelerate",)
    assert _transform(accelerate(version="1.15.0")).pip == ("accelerate==1.15.0",)
    assert _transform(accelerate(version=">=1.10")).pip == ("accelerate>=1.10",)
    mine = sky.Image(pip=["accelerate==1.10.1", "numpy"])
    assert _transform(accelerate(), mine).pip == ("accelerate==1.10.1", "numpy")
    assert _transform(accelerate(version=None), mine) is mine
    # DeepSpeed's launcher needs deepspeed on the node; an image's pin wins there too.
    deepspeed = accelerate({"distributed_type": "DEEPSPEED"})
    assert _transform(deepspeed).pip == ("accelerate", "deepspeed")
    assert _transform(deepspeed, sky.Image(pip=["deepspeed==0.17.0"])).pip == (
        "deepspeed==0.17.0",
        "accelerate",
    )
    assert _transform(accelerate({"distributed_type": "DEEPSPEED"}, version=None)).pip == ()


def test_torch_listed_first_chooses_the_torch_build() -> None:
    spec = sky.Spec(
        provider=sky.Local(),
        nodes=2,
        plugins=[sky.plugins.torch(), accelerate({"mixed_precision": "bf16"})],
    )
    image = transformed(spec).image
    assert image.pip == ("torch", "accelerate")
    # Only torch is looked up on PyTorch's index; accelerate comes from the default one.
    assert [(i.url, tuple(i.packages)) for i in image.pip_indexes] == [
        ("https://download.pytorch.org/whl/cpu", ("torch",))
    ]


def test_it_is_collective_and_sets_each_worker_and_subprocess_up() -> None:
    plugin = accelerate()
    assert plugin.name == "accelerate"
    assert plugin.collective
    assert plugin.around_app is not None
    assert plugin.around_process is plugin.around_app
    assert pack([plugin]) is not None  # its node hooks pickle
    with pytest.raises(ValueError, match="with plugin 'accelerate': its nodes join"):
        sky.Compute(provider=sky.Local(), nodes=sky.Nodes(desired=2, max=4), plugins=[plugin])


def test_num_processes_must_be_the_rank_count() -> None:
    with pytest.raises(
        ValueError,
        match=r"accelerate\(config=\{'num_processes': 4, \.\.\.\}\): the pool has 2 nodes, "
        r"one rank each, so num_processes is 2\. Leave num_processes out, or pass nodes=4 to "
        r"Compute, or run 2 ranks per node with options=sky\.Options\(worker=sky\.Worker\("
        r"executor='process', concurrency=2\)\)",
    ):
        sky.Compute(provider=sky.Local(), nodes=2, plugins=[accelerate({"num_processes": 4})])
    with pytest.raises(ValueError, match=r"has 2 nodes, one rank each, .* or pass nodes=3 to"):
        sky.Compute(provider=sky.Local(), nodes=2, plugins=[accelerate({"num_processes": 3})])
    assert _transform(accelerate({"num_processes": 2}, version=None), nodes=2) == sky.Image()
    ranks = sky.Options(worker=sky.Worker(executor="process", concurrency=2))
    with pytest.raises(
        ValueError,
        match=r"the pool has 2 nodes of 2 ranks each \(Worker\(executor='process', "
        r"concurrency=2\)\), so num_processes is 4\.",
    ):
        sky.Compute(
            provider=sky.Local(),
            nodes=2,
            plugins=[accelerate({"num_processes": 2})],
            options=ranks,
        )
    four = accelerate({"num_processes": 4}, version=None)
    sky.Compute(provider=sky.Local(), nodes=2, plugins=[four], options=ranks)  # accepted


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"num_machines": 2}, r"num_machines is set by Skyward from the pool \(the node count\)"),
        ({"machine_rank": 0}, "machine_rank is set by Skyward from the pool"),
        ({"main_process_ip": "10.0.0.1"}, "main_process_ip is set by Skyward from the pool"),
        ({"main_process_port": 0}, r"main_process_port is set by .*InstanceInfo\.head_port"),
        ({"num_processes": "2"}, "num_processes must be int, got str"),
        ({"num_processes": True}, "num_processes must be int, got bool"),
        ({"use_cpu": "yes"}, "use_cpu must be bool, got str"),
        ({"fsdp_config": ["fsdp_version", 2]}, "fsdp_config must be a dict, got list"),
        ({"mixed_precision": "fp32"}, "mixed_precision must be one of 'no', 'fp16', 'bf16'"),
        ({"distributed_type": "fsdp"}, r"distributed_type must be one of 'NO', .*'FSDP'"),
        ({"distributed_type": "XLA"}, r"TPU .* Use sky\.plugins\.jax\(\) on TPUs"),
        ({"compute_environment": "AMAZON_SAGEMAKER"}, "leave compute_environment out"),
        ({"mpirun_config": {"mpirun_hostfile": "h"}}, "leave mpirun_config out"),
        (
            {"gradient_accumulation_steps": 4},
            r"no top-level gradient_accumulation_steps .* deepspeed_config .*"
            r"Accelerator\(gradient_accumulation_steps=4\)",
        ),
        ({1: "a"}, "config has the key 1; the keys of accelerate's config are strings"),
        ({"fsdp_config": {"x": {2}}}, r"config\['fsdp_config'\]\['x'\] is set; a config holds"),
    ],
)
def test_a_config_is_refused_before_anything_starts(config: Any, message: str) -> None:
    with pytest.raises(ValueError, match=r"^sky\.plugins\.accelerate\(config=") as caught:
        accelerate(config)
    assert caught.match(message)


def test_config_and_version_must_be_what_they_say() -> None:
    with pytest.raises(TypeError, match=r"config='bf16'\): config must be a dict"):
        accelerate("bf16")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"accelerate\(version='1 2'\): version must be"):
        accelerate(version="1 2")
    with pytest.raises(TypeError, match="positional argument"):
        accelerate({}, "1.15.0")  # type: ignore[misc]


def test_each_worker_gets_the_rendezvous_then_what_accelerate_works_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[Any] = []

    def derived(config: Any, info: InstanceInfo) -> dict[str, str]:
        seen.append((config, info.node, dict(environ)))
        return {"ACCELERATE_MIXED_PRECISION": "bf16", "MASTER_PORT": "29500"}

    environ: dict[str, str] = {"PATH": "/bin"}
    monkeypatch.setattr(os, "environ", environ)
    monkeypatch.setattr(plugins_module, "accelerate_environment", derived)
    given: dict[str, Any] = {"fsdp_config": {"fsdp_version": 2}, "distributed_type": "FSDP"}
    plugin = accelerate(given)
    given["fsdp_config"]["fsdp_version"] = 1  # a later change to the caller's dict
    assert plugin.around_app is not None
    with plugin.around_app(_info(1, 2)):
        pass
    (config, node, before) = seen[0]
    assert config == {"fsdp_config": {"fsdp_version": 2}, "distributed_type": "FSDP"}
    assert node == 1
    assert before == {"PATH": "/bin", **torch_environment(_info(1, 2))}  # derived after it
    assert environ == {**before, "ACCELERATE_MIXED_PRECISION": "bf16"}


# --- on the node: accelerate's own launcher code ------------------------------------------------


def _need_accelerate() -> None:
    """accelerate (with torch's CPU build) is installed for the Python 3.11 tests only
    (noxfile.py): missing there, fail under CI; elsewhere, skip."""
    try:
        importlib.import_module("accelerate")
    except ImportError:
        if sys.version_info[:2] == (3, 11) and os.environ.get("CI") == "true":
            pytest.fail("accelerate is not installed (pip install accelerate==1.15.0)")
        pytest.skip("accelerate is installed for the Python 3.11 tests only (noxfile.py)")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No accelerate or rendezvous variable of this machine leaks into the result; and
    the head's port (29500 in ``_info``) counts as free, as on a head node: on this
    machine another test's ranks may hold it meanwhile, and accelerate's launcher checks
    it on the machine it runs on (a warning these tests would raise, or a refusal)."""
    _need_accelerate()
    for key in list(os.environ):
        if key.startswith(("ACCELERATE_", "FSDP_", "MASTER_", "KMP_")) or key == "OMP_NUM_THREADS":
            monkeypatch.delenv(key)
    from accelerate.utils import launch

    monkeypatch.setattr(launch, "is_port_in_use", lambda port: False)


@pytest.mark.usefixtures("clean_env")
def test_cpu_nodes_get_multi_cpu_from_accelerates_simple_launcher() -> None:
    env = accelerate_environment({"mixed_precision": "bf16"}, _info(1, 2))
    assert env["ACCELERATE_USE_CPU"] == "True"  # Accelerator() runs on the CPU, with gloo
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    assert (env["MASTER_ADDR"], env["MASTER_PORT"]) == ("10.0.0.1", "29500")
    assert env["ACCELERATE_DYNAMO_BACKEND"] == "NO"
    assert int(env["OMP_NUM_THREADS"]) >= 1
    assert not any(key.startswith("FSDP_") for key in env)
    # One node: no distributed type at all.
    alone = accelerate_environment({}, _info(0, 1))
    assert alone["ACCELERATE_USE_CPU"] == "False"
    assert "MASTER_ADDR" not in alone


@pytest.mark.usefixtures("clean_env")
def test_two_ranks_on_one_node_are_a_distributed_run() -> None:
    two = attrs.evolve(_info(0, 1), workers_per_node=2, worker=1)
    env = accelerate_environment({}, two)
    assert env["ACCELERATE_USE_CPU"] == "True"  # MULTI_CPU, not "NO" as for one rank
    assert (env["MASTER_ADDR"], env["MASTER_PORT"]) == ("10.0.0.1", "29500")


@pytest.mark.usefixtures("clean_env")
def test_fsdp_settings_become_accelerates_fsdp_variables() -> None:
    config = {
        "distributed_type": "FSDP",
        "mixed_precision": "bf16",
        "fsdp_config": {
            "fsdp_version": 2,
            "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "fsdp_state_dict_type": "SHARDED_STATE_DICT",
            "fsdp_reshard_after_forward": True,
        },
    }
    env = accelerate_environment(config, _info(0, 1))
    assert env["ACCELERATE_USE_FSDP"] == "true"
    assert env["FSDP_VERSION"] == "2"
    assert env["FSDP_AUTO_WRAP_POLICY"] == "TRANSFORMER_BASED_WRAP"
    assert env["FSDP_STATE_DICT_TYPE"] == "SHARDED_STATE_DICT"
    assert env["FSDP_RESHARD_AFTER_FORWARD"] == "true"
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    assert "ACCELERATE_USE_CPU" not in env  # torchrun's launcher sets no such thing


@pytest.mark.usefixtures("clean_env")
def test_a_gpu_type_on_several_cpu_nodes_is_refused_on_the_node() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(
        RuntimeError,
        match=r"on node 1: distributed_type 'FSDP' joins the nodes through a GPU .* node 1 "
        r"has none .* Accelerator\(\) would run alone there",
    ):
        accelerate_environment({"distributed_type": "FSDP"}, _info(1, 2))


@pytest.mark.usefixtures("clean_env")
def test_what_accelerate_refuses_is_named_with_accelerates_reason() -> None:
    with pytest.raises(
        RuntimeError,
        match=r"^sky\.plugins\.accelerate\(config=\.\.\.\) on node 0: accelerate \S+ refused "
        r"the config .*ValueError: .*unknown keys \(\['fsdp_confg'\]\)",
    ) as caught:
        accelerate_environment({"fsdp_confg": {}}, _info(0, 2))
    assert isinstance(caught.value.__cause__, ValueError)
    with pytest.raises(RuntimeError, match="DEEPSPEED needs DeepSpeed on the node"):
        accelerate_environment({"distributed_type": "DEEPSPEED"}, _info(0, 1))

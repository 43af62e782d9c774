"""The NVIDIA built-ins' arguments, refusals and image changes (``mps``, ``mig``, ``cuml``):
everything decided on the client, before anything starts."""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from typing import Any

import pytest

import skyward as sky
from skyward.plugins import Cluster, Plugin

RUNPOD = sky.RunPod(api_key="k")
PROCESSES = sky.Worker(executor="process", concurrency=2)


def _cluster(worker: sky.Worker | None = None, **spec: Any) -> Cluster:
    made = sky.Spec(provider=spec.pop("provider", RUNPOD), **spec)
    return Cluster(spec=made) if worker is None else Cluster(spec=made, worker=worker)


def _transform(plugin: Plugin, worker: sky.Worker | None = None, **spec: Any) -> sky.Image:
    assert plugin.transform is not None
    return plugin.transform(sky.Image(), _cluster(worker, **spec))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: sky.plugins.mps(active_thread_percentage=0), "a whole percentage from 1 to 100"),
        (lambda: sky.plugins.mps(active_thread_percentage=True), "a whole percentage"),
        (lambda: sky.plugins.mps(active_thread_percentage=50.5), "a whole percentage"),
        (lambda: sky.plugins.mps(pinned_memory_limit="2G"), 'GPU=amount pairs .* "0=2G"'),
        (lambda: sky.plugins.mps(pinned_memory_limit="0=2"), "the amount with its unit"),
        (lambda: sky.plugins.mig("3g"), r"mig\('3g'\): profile must name a MIG profile"),
        (lambda: sky.plugins.mig("MIG 3g.40gb"), 'such as "3g.40gb"'),
        (lambda: sky.plugins.cuml(cuda="cu11"), 'cuda="cu12" or cuda="cu13"'),
    ],
)
def test_arguments_are_checked(call: Callable[[], Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_good_arguments_are_taken() -> None:
    sky.plugins.mps(active_thread_percentage=100, pinned_memory_limit="0=2G,1=512MB")
    for profile in ("3g.40gb", "1g.10gb", "1g.18gb", "7g.141gb", "1g.10gb+me"):
        sky.plugins.mig(profile)


def test_none_of_them_runs_on_a_gpu_that_is_not_nvidias() -> None:
    for plugin in (sky.plugins.mps(), sky.plugins.mig("3g.40gb"), sky.plugins.cuml()):
        with pytest.raises(ValueError, match="drives NVIDIA GPUs, and this pool asks for MI300X"):
            _transform(plugin, PROCESSES, accelerator=sky.accelerators.MI300X())


def test_mps_leaves_the_image_alone_and_checks_for_its_daemon_at_bootstrap() -> None:
    plugin = sky.plugins.mps()
    assert _transform(plugin, accelerator=sky.accelerators.T4()) == sky.Image()
    assert plugin.bootstrap is not None
    (op,) = plugin.bootstrap(_cluster())
    assert op.startswith("command -v nvidia-cuda-mps-control >/dev/null || {")


def test_mig_needs_the_process_executor_one_gpu_and_a_gpu_that_has_it() -> None:
    mig = sky.plugins.mig("3g.40gb")
    assert _transform(mig, PROCESSES, accelerator=sky.accelerators.A100()) == sky.Image()
    assert _transform(mig, PROCESSES) == sky.Image()  # sky.SSH hosts need not say
    with pytest.raises(ValueError, match=r"runs tasks in threads\. Pass options=sky\.Options"):
        _transform(mig, accelerator=sky.accelerators.A100())
    with pytest.raises(ValueError, match="T4 GPUs have no MIG"):
        _transform(mig, PROCESSES, accelerator=sky.accelerators.T4())
    with pytest.raises(ValueError, match=r"this pool asks for 2 per node\. Ask for count=1"):
        _transform(mig, PROCESSES, accelerator=sky.accelerators.H100(count=2))


def test_mig_is_refused_at_compute_when_tasks_run_in_threads() -> None:
    with pytest.raises(ValueError, match=r"mig\('3g.40gb'\) gives each subprocess"):
        sky.Compute(provider=sky.Local(), plugins=[sky.plugins.mig("3g.40gb")])


def test_mig_makes_one_slice_per_subprocess() -> None:
    mig = sky.plugins.mig("1g.18gb")
    assert mig.bootstrap is not None
    (op,) = mig.bootstrap(_cluster(sky.Worker(executor="process", concurrency=3)))
    assert "nvidia-smi mig -i 0 -cgi 1g.18gb,1g.18gb,1g.18gb -C" in op
    assert """if [ "$slices" != 3 ] || [ "$same" != 3 ]; then""" in op


def test_cuml_installs_from_nvidias_index_on_gpus_only() -> None:
    image = _transform(sky.plugins.cuml(cuda="cu13"), accelerator=sky.accelerators.L4())
    assert image.pip == ("cuml-cu13",)
    (index,) = image.pip_indexes
    assert (index.url, tuple(index.packages)) == ("https://pypi.nvidia.com", ("cuml-cu13",))
    with pytest.raises(ValueError, match="asks for no accelerator: pass accelerator="):
        _transform(sky.plugins.cuml())


def test_cuml_turns_its_accelerator_on_before_the_first_task(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # cuML needs an NVIDIA GPU, so the hook is shown a stand-in module.
    installed: list[str] = []
    accel = types.ModuleType("cuml.accel")
    accel.install = lambda: installed.append("installed")  # type: ignore[attr-defined]
    cuml = types.ModuleType("cuml")
    cuml.accel = accel  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "cuml", cuml)
    monkeypatch.setitem(sys.modules, "cuml.accel", accel)
    plugin = sky.plugins.cuml()
    assert plugin.around_app is not None
    assert plugin.around_process is plugin.around_app
    with plugin.around_app(None):  # type: ignore[arg-type]
        assert installed == ["installed"]

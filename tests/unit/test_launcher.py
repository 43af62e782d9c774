"""``Plugin.with_launcher``: the worker's launch command, wrapped by the plugins in order,
checked, and written into the bootstrap script."""

from __future__ import annotations

from typing import Any

import attrs
import pytest

import skyward as sky
from skyward.plugins import Cluster, LaunchCommand, LaunchContext, Plugin
from skyward_trio._bootstrap import worker_bootstrap, worker_command
from skyward_trio._info import InstanceInfo
from skyward_trio._plugin import launch_command


def _context(spec: sky.Spec) -> LaunchContext:
    info = InstanceInfo(
        node=1, total_nodes=2, head_addr="10.0.0.1", head_port=29500, job_id="j", peers=()
    )
    return LaunchContext(info=info, cluster=Cluster(spec=spec), workdir="/w")


def _wrap(*words: str, **env: str) -> Any:
    def launcher(command: LaunchCommand, context: LaunchContext) -> LaunchCommand:
        return attrs.evolve(command, argv=(*words, *command.argv), env={**command.env, **env})

    return launcher


def test_the_worker_command_starts_the_worker_in_its_directory() -> None:
    assert worker_command("/w").argv == ("python", "-m", "skyward_trio.worker", "--dir", "/w")
    assert worker_command("/w").env == {}


def test_launchers_wrap_in_turn_with_the_first_plugin_outermost() -> None:
    plugins = [
        Plugin.create("outer").with_launcher(_wrap("nice", "-n", "5", A="outer")),
        Plugin.create("none"),
        Plugin.create("inner").with_launcher(_wrap("numactl", "--interleave=all", A="inner")),
    ]
    spec = sky.Spec(provider=sky.Local(), plugins=plugins)
    command = launch_command(spec, worker_command("/w"), _context(spec))
    assert command.argv == (
        "nice", "-n", "5", "numactl", "--interleave=all",
        "python", "-m", "skyward_trio.worker", "--dir", "/w",
    )  # fmt: skip
    assert command.env == {"A": "outer"}  # the outer one set it last


def test_a_launcher_sees_the_node_and_the_pool() -> None:
    seen: list[tuple[int, int, str, int]] = []

    def look(command: LaunchCommand, context: LaunchContext) -> LaunchCommand:
        info = context.info
        seen.append((info.node, info.total_nodes, context.workdir, context.cluster.nodes.desired))
        return command

    spec = sky.Spec(provider=sky.Local(), nodes=2, plugins=[Plugin.create("l").with_launcher(look)])
    assert launch_command(spec, worker_command("/w"), _context(spec)) == worker_command("/w")
    assert seen == [(1, 2, "/w", 2)]


def test_a_launcher_must_wrap_the_command_not_replace_it() -> None:
    def replace(command: LaunchCommand, context: LaunchContext) -> LaunchCommand:
        return LaunchCommand(("python", "-m", "something.else"))

    def split(command: LaunchCommand, context: LaunchContext) -> LaunchCommand:
        return attrs.evolve(command, argv=(*command.argv[:2], "-X", "dev", *command.argv[2:]))

    def wrong_type(command: LaunchCommand, context: LaunchContext) -> Any:
        return ["nice", *command.argv]

    for launcher, error, message in [
        (replace, ValueError, r"plugin 'p': its launcher returned \['python', '-m', 'something"),
        (split, ValueError, "does not run the command it was given"),
        (wrong_type, TypeError, "plugin 'p': its launcher returned list, not a LaunchCommand"),
    ]:
        spec = sky.Spec(provider=sky.Local(), plugins=[Plugin.create("p").with_launcher(launcher)])
        with pytest.raises(error, match=message):
            launch_command(spec, worker_command("/w"), _context(spec))


@pytest.mark.parametrize(
    ("argv", "env", "error", "message"),
    [
        ("nice python", {}, TypeError, "argv must be a list or tuple of strings"),
        ((), {}, ValueError, "argv must be a non-empty list"),
        (("nice", ""), {}, ValueError, "not ''"),
        (("nice", 3), {}, ValueError, "not 3"),
        (("x",), ["A=1"], TypeError, "env must be a mapping"),
        (("x",), {"1A": "x"}, ValueError, "'1A' is not a variable name"),
        (("x",), {"A": 1}, TypeError, "A=1: values must be strings; pass A='1'"),
    ],
)
def test_a_launch_command_is_checked(argv: Any, env: Any, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        LaunchCommand(argv, env)


def test_the_bootstrap_starts_the_launched_command_with_the_workers_python() -> None:
    base = worker_command("/w d")
    launch = LaunchCommand(("nice", "-n", "5", *base.argv, "--extra"), {"NCCL_DEBUG": "INFO x"})
    script = worker_bootstrap(
        workdir="/w d", python="/opt/py 3/bin/python", secret="s", config={}, start_timeout=5,
        launch=launch,
    )  # fmt: skip
    assert (
        "setsid env 'NCCL_DEBUG=INFO x' nice -n 5 '/opt/py 3/bin/python' -m skyward_trio.worker "
        "--dir '/w d' --extra </dev/null >worker.log 2>&1 &"
    ) in script
    plain = worker_bootstrap(workdir="/w", python="python3", secret="s", config={}, start_timeout=5)
    assert "setsid python3 -m skyward_trio.worker --dir /w </dev/null" in plain

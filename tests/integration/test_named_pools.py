"""``Compute(name=...)`` end to end: a pool from ``skyward.toml`` (over the global file) runs
on real Local nodes, on both faces.

The global file's provider and node count meet the project file's image and options, so
what runs is the merge of both.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

import skyward as sky
import skyward_trio

DEFAULTS = """
[providers.here]
type = "local"

[pools.pair]
provider = "here"
nodes = 2
image.env = { GREETING = "from the global file", ORIGIN = "global" }
"""

PROJECT = """
[pools.pair]
console = "silent"
image.env.GREETING = "from skyward.toml"
"""


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder as the cwd, with its skyward.toml, and a home with the global file."""
    home = tmp_path / "home"
    (home / ".skyward").mkdir(parents=True)
    (home / ".skyward" / "defaults.toml").write_text(textwrap.dedent(DEFAULTS))
    monkeypatch.setenv("HOME", str(home))
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "skyward.toml").write_text(textwrap.dedent(PROJECT))
    monkeypatch.chdir(folder)
    return folder


@sky.function
def greeting() -> tuple[int, str | None, str | None]:
    return sky.instance_info().node, os.environ.get("GREETING"), os.environ.get("ORIGIN")


EXPECTED = [
    (0, "from skyward.toml", "global"),
    (1, "from skyward.toml", "global"),
]


def test_a_named_pool_runs_on_both_nodes_with_its_image_and_options(
    project: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    with sky.Compute(name="pair") as pool:
        assert pool.current_nodes() == 2
        assert greeting() @ pool == EXPECTED
    # console = "silent" came from the file: the log console would have written lines.
    assert "ready" not in capfd.readouterr().err


async def test_the_trio_face_loads_the_same_pool(project: Path) -> None:
    async with skyward_trio.Compute(name="pair") as pool:
        assert await (greeting() @ pool) == EXPECTED


def test_a_broken_file_fails_at_the_with_line(project: Path) -> None:
    (project / "skyward.toml").write_text('[pools.pair]\nnodes = "2"\n')
    with (
        pytest.raises(sky.ConfigError, match=r"^skyward.toml: pools.pair.nodes: expected a node"),
        sky.Compute(name="pair"),
    ):
        pytest.fail("the pool must not open")


def test_a_named_pools_specs_fall_back_in_order(
    project: Path, unanswered: tuple[sky.SSH, int]
) -> None:
    # The first spec's only host is a loopback port nothing listens on: the pool comes up
    # on the next spec, as it does with several Specs in Python.
    down, port = unanswered
    (project / "skyward.toml").write_text(
        textwrap.dedent(
            f"""
            [providers.down]
            type = "ssh"
            hosts = ["127.0.0.1:{port}"]
            key = "{down.key}"
            ssh_config = false

            [pools.pair]
            console = "silent"
            max_provision_attempts = 1
            selection = "first"

            [[pools.pair.specs]]
            provider = "down"
            nodes = 1

            [[pools.pair.specs]]
            provider = "here"
            """
        )
    )
    with sky.Compute(name="pair") as pool:
        assert pool.spec.provider == sky.Local()
        assert pool.spec.nodes == sky.Nodes(desired=2)  # the global file's, under the spec
        assert greeting() @ pool == [(i, "from the global file", "global") for i in (0, 1)]

"""The ``sky`` command, run as users run it (``python -m skyward``, the ``sky`` script's
code), against a fake RunPod on loopback and files in a throwaway home."""

from __future__ import annotations

import importlib.metadata
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import sshd
from fake_runpod import FakeRunPod
from waiting import wait_until

import skyward as sky


@pytest.fixture(scope="module")
def runpod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeRunPod]:
    sshd.need_sshd()
    with FakeRunPod(root=tmp_path_factory.mktemp("runpod")) as api:
        yield api


@pytest.fixture
def project(tmp_path: Path, runpod: FakeRunPod) -> Path:
    """A project directory whose skyward.toml names the fake RunPod as ``rp``."""
    (tmp_path / "home").mkdir()
    (tmp_path / "skyward.toml").write_text(
        f'[providers.rp]\ntype = "runpod"\napi_url = "{runpod.rest_url}"\n'
        f'graphql_url = "{runpod.graphql_url}"\n\n'
        '[pools.train]\nprovider = "rp"\naccelerator = "H100"\nnodes = 2\n'
    )
    return tmp_path


def _env(project: Path, runpod: FakeRunPod) -> dict[str, str]:
    return {**os.environ, "HOME": str(project / "home"), "RUNPOD_API_KEY": runpod.api_key}


def sky_command(project: Path, runpod: FakeRunPod, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "skyward", *args],
        cwd=project,
        env=_env(project, runpod),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_sky_script_is_installed() -> None:
    (script,) = [
        e for e in importlib.metadata.entry_points(group="console_scripts") if e.name == "sky"
    ]
    assert script.value == "skyward._cli:main_exit"


def test_version(project: Path, runpod: FakeRunPod) -> None:
    done = sky_command(project, runpod, "version")
    assert (done.returncode, done.stdout) == (0, f"skyward {sky.__version__}\n")


def test_offers_list_as_json_and_as_a_table(project: Path, runpod: FakeRunPod) -> None:
    done = sky_command(
        project, runpod, "offers", "list", "rp", "--accelerator", "h100", "--count", "2", "--json"
    )
    assert done.returncode == 0, done.stderr
    (row,) = json.loads(done.stdout)
    assert row["name"] == "NVIDIA H100 80GB HBM3"
    assert row["accelerator"]["count"] == 2
    assert row["pricing"] == "cheapest"
    assert row["price"] == min(row["spot_price"], row["on_demand_price"])
    table = sky_command(project, runpod, "offers", "list", "--on-demand", "--cheapest", "2")
    assert table.returncode == 0, table.stderr
    assert "2 offer(s)" in table.stdout
    assert "sky.RunPod()" in table.stdout
    assert runpod.api_key not in table.stdout + table.stderr


def test_offers_fetch_refreshes_the_cache(project: Path, runpod: FakeRunPod) -> None:
    sky_command(project, runpod, "offers", "list", "rp")
    asked = len(runpod.requests)
    cached = sky_command(project, runpod, "offers", "list", "rp")
    assert cached.returncode == 0
    assert len(runpod.requests) == asked
    fetched = sky_command(project, runpod, "offers", "fetch", "rp")
    assert fetched.returncode == 0, fetched.stderr
    assert fetched.stdout.startswith("fetched ")
    assert "from sky.RunPod()" in fetched.stdout
    assert len(runpod.requests) > asked


def test_a_failing_provider_is_named_and_fails_the_command(
    project: Path, runpod: FakeRunPod
) -> None:
    (project / "skyward.toml").write_text(
        '[providers.down]\ntype = "runpod"\napi_url = "http://127.0.0.1:9/v1"\n'
        'graphql_url = "http://127.0.0.1:9/graphql"\n'
    )
    done = sky_command(project, runpod, "offers", "list", "down", "local")
    assert done.returncode == 1
    assert "sky.Local()" in done.stdout
    assert "sky.RunPod(): RunPod's API at http://127.0.0.1:9/graphql did not answer" in (
        done.stderr
    )


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("offers", "list", "rp", "--accelerator", "H1OO"), "did you mean 'H100'?"),
        (("offers", "list", "nowhere"), "no provider 'nowhere': not a [providers.NAME] table"),
        (("offers", "list", "rp", "--count", "8"), "--count and --memory need --accelerator"),
        (
            ("offers", "list", "rp", "--accelerator", "L4", "--memory", "80GB"),
            "--accelerator L4: ",
        ),
        (("offers", "list", "--spot", "--on-demand"), "not allowed with argument"),
    ],
)
def test_a_bad_command_line_says_what_to_fix(
    project: Path, runpod: FakeRunPod, args: tuple[str, ...], said: str
) -> None:
    done = sky_command(project, runpod, *args)
    assert done.returncode == 2
    assert said in done.stderr
    assert len(done.stdout) == 0


def test_a_provider_without_its_key_is_refused(project: Path, runpod: FakeRunPod) -> None:
    env = _env(project, runpod)
    del env["RUNPOD_API_KEY"]
    done = subprocess.run(
        [sys.executable, "-m", "skyward", "offers", "list", "rp"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1
    assert "RUNPOD_API_KEY is not set" in done.stderr


def test_config_validate_and_show(project: Path, runpod: FakeRunPod) -> None:
    valid = sky_command(project, runpod, "config", "validate")
    assert valid.returncode == 0, valid.stderr
    assert valid.stdout.startswith("OK: ")
    assert "1 pool (train), 1 provider (rp)" in valid.stdout
    shown = sky_command(project, runpod, "config", "show")
    assert shown.returncode == 0, shown.stderr
    assert "providers.rp: RunPod(" in shown.stdout
    assert "pools.train: Spec(" in shown.stdout
    assert runpod.api_key not in shown.stdout
    (project / "skyward.toml").write_text('[pools.train]\nnodes = "two"\n')
    broken = sky_command(project, runpod, "config", "validate")
    assert broken.returncode == 1
    assert "pools.train.nodes" in broken.stderr


def test_log_shows_the_last_lines_and_follows(project: Path, runpod: FakeRunPod) -> None:
    missing = sky_command(project, runpod, "log")
    assert missing.returncode == 1
    assert "no log at" in missing.stderr
    log = project / "home" / ".skyward" / "logs" / "skyward.log"
    log.parent.mkdir(parents=True)
    log.write_text("".join(f"line {i}\n" for i in range(10)))
    done = sky_command(project, runpod, "log", "-n", "2")
    assert (done.returncode, done.stdout) == (0, "line 8\nline 9\n")
    out = project / "followed.txt"
    with out.open("w") as sink:
        follower = subprocess.Popen(
            [sys.executable, "-m", "skyward", "log", "-n", "1", "--follow"],
            cwd=project,
            env=_env(project, runpod),
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: out.read_text() == "line 9\n", "the last line", timeout=60, every=0.1)
        with log.open("a") as more:
            more.write("line 10\n")
        wait_until(
            lambda: out.read_text() == "line 9\nline 10\n", "a new line", timeout=60, every=0.1
        )
    finally:
        follower.send_signal(signal.SIGINT)
        assert follower.wait(timeout=30) == 130

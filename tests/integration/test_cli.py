"""The ``sky`` command, run as users run it (``python -m skyward``, the ``sky`` script's
code), against a fake RunPod on loopback and files in a throwaway home."""

from __future__ import annotations

import importlib.metadata
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from clients import run_sky
from fake_runpod import FakeRunPod
from waiting import wait_until

import skyward as sky


@pytest.fixture
def project(tmp_path: Path, fake_runpod: FakeRunPod) -> Path:
    """A project directory whose skyward.toml names the fake RunPod as ``rp``."""
    (tmp_path / "home").mkdir()
    (tmp_path / "skyward.toml").write_text(
        f'[providers.rp]\ntype = "runpod"\napi_url = "{fake_runpod.rest_url}"\n'
        f'graphql_url = "{fake_runpod.graphql_url}"\n'
        f'catalog_url = "{fake_runpod.catalog_url}"\n\n'
        '[pools.train]\nprovider = "rp"\naccelerator = "H100"\nnodes = 2\n'
    )
    return tmp_path


class Sky:
    """Runs ``sky`` (``python -m skyward``) in the project, with the fake's key."""

    def __init__(self, project: Path, api: FakeRunPod) -> None:
        self.project, self.api = project, api
        self.env = {**os.environ, "HOME": str(project / "home"), "RUNPOD_API_KEY": api.api_key}

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_sky(self.project, self.env, *args)


@pytest.fixture
def sky_command(project: Path, fake_runpod: FakeRunPod) -> Sky:
    return Sky(project, fake_runpod)


def test_the_sky_script_is_installed() -> None:
    (script,) = [
        e for e in importlib.metadata.entry_points(group="console_scripts") if e.name == "sky"
    ]
    assert script.value == "skyward._cli:main_exit"


def test_version(sky_command: Sky) -> None:
    done = sky_command("version")
    assert (done.returncode, done.stdout) == (0, f"skyward {sky.__version__}\n")


def test_offers_list_as_json_and_as_a_table(sky_command: Sky) -> None:
    done = sky_command("offers", "list", "rp", "--accelerator", "h100", "--count", "2", "--json")
    assert done.returncode == 0, done.stderr
    (row,) = json.loads(done.stdout)
    assert row["name"] == "NVIDIA H100 80GB HBM3"
    assert row["accelerator"]["count"] == 2
    assert row["pricing"] == "cheapest"
    assert row["price"] == min(row["spot_price"], row["on_demand_price"])
    # Without an accelerator, RunPod's CPU pods are listed too, each flavor at each size.
    every = sky_command("offers", "list", "rp", "--json")
    assert every.returncode == 0, every.stderr
    cpu = {row["name"]: row for row in json.loads(every.stdout) if row["accelerator"] is None}
    assert len(cpu) == 19
    assert (cpu["cpu3c-8-16"]["vcpus"], cpu["cpu3c-8-16"]["memory_gb"]) == (8, 16)
    assert (cpu["cpu3c-8-16"]["on_demand_price"], cpu["cpu3c-8-16"]["spot_price"]) == (0.24, None)
    table = sky_command("offers", "list", "--on-demand", "--cheapest", "2")
    assert table.returncode == 0, table.stderr
    assert "2 offer(s)" in table.stdout
    assert "sky.RunPod()" in table.stdout
    assert sky_command.api.api_key not in table.stdout + table.stderr


def test_offers_fetch_refreshes_the_cache(sky_command: Sky) -> None:
    sky_command("offers", "list", "rp")
    asked = len(sky_command.api.requests)
    cached = sky_command("offers", "list", "rp")
    assert cached.returncode == 0
    assert len(sky_command.api.requests) == asked
    fetched = sky_command("offers", "fetch", "rp")
    assert fetched.returncode == 0, fetched.stderr
    assert fetched.stdout.startswith("fetched ")
    assert "from sky.RunPod()" in fetched.stdout
    assert len(sky_command.api.requests) > asked


def test_a_failing_provider_is_named_and_fails_the_command(
    sky_command: Sky,
) -> None:
    (sky_command.project / "skyward.toml").write_text(
        '[providers.down]\ntype = "runpod"\napi_url = "http://127.0.0.1:9/v1"\n'
        'graphql_url = "http://127.0.0.1:9/graphql"\n'
        'catalog_url = "http://127.0.0.1:9/v2"\n'
    )
    done = sky_command("offers", "list", "down", "local")
    assert done.returncode == 1
    assert "sky.Local()" in done.stdout
    assert "sky.RunPod(): RunPod's API at http://127.0.0.1:9/graphql did not answer" in (
        done.stderr
    )


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("offers", "list", "rp", "--accelerator", "H1OO"), "did you mean 'H100' or"),
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
    sky_command: Sky, args: tuple[str, ...], said: str
) -> None:
    done = sky_command(*args)
    assert done.returncode == 2
    assert said in done.stderr
    assert len(done.stdout) == 0


def test_a_provider_without_its_key_is_refused(sky_command: Sky) -> None:
    del sky_command.env["RUNPOD_API_KEY"]
    done = sky_command("offers", "list", "rp")
    assert done.returncode == 1
    assert "RUNPOD_API_KEY is not set" in done.stderr


def test_providers_list_and_check(sky_command: Sky) -> None:
    listed = sky_command("providers", "list")
    assert listed.returncode == 0, listed.stderr
    assert "rp: RunPod(" in listed.stdout
    assert "# types: local, ssh, container, runpod, aws, vastai" in listed.stdout
    assert sky_command.api.api_key not in listed.stdout
    checked = sky_command("providers", "check", "rp", "local")
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.splitlines() == [
        "sky.RunPod(): OK, 24 offer(s)",  # 5 GPU types, 19 CPU flavor sizes
        "sky.Local(): OK, 1 offer(s)",
    ]
    (sky_command.project / "skyward.toml").write_text(
        '[providers.down]\ntype = "runpod"\napi_url = "http://127.0.0.1:9/v1"\n'
        'graphql_url = "http://127.0.0.1:9/graphql"\n'
        'catalog_url = "http://127.0.0.1:9/v2"\n'
    )
    del sky_command.env["RUNPOD_API_KEY"]
    keyless = sky_command("providers", "check")  # every provider of the file
    assert keyless.returncode == 1
    assert keyless.stdout.startswith("sky.RunPod(): not set up: ")
    assert "RUNPOD_API_KEY is not set" in keyless.stdout
    sky_command.env["RUNPOD_API_KEY"] = "rp-test"
    down = sky_command("providers", "check", "down")
    assert down.returncode == 1
    assert down.stdout.startswith("sky.RunPod(): failed: RunPod's API at ")


def test_config_validate_and_show(sky_command: Sky) -> None:
    valid = sky_command("config", "validate")
    assert valid.returncode == 0, valid.stderr
    assert valid.stdout.startswith("OK: ")
    assert "1 pool (train), 1 provider (rp)" in valid.stdout
    shown = sky_command("config", "show")
    assert shown.returncode == 0, shown.stderr
    assert "providers.rp: RunPod(" in shown.stdout
    assert "pools.train: Spec(" in shown.stdout
    assert sky_command.api.api_key not in shown.stdout
    (sky_command.project / "skyward.toml").write_text('[pools.train]\nnodes = "two"\n')
    broken = sky_command("config", "validate")
    assert broken.returncode == 1
    assert "pools.train.nodes" in broken.stderr


def test_log_shows_the_last_lines_and_follows(sky_command: Sky) -> None:
    missing = sky_command("log")
    assert missing.returncode == 1
    assert "no log at" in missing.stderr
    project = sky_command.project
    log = project / "home" / ".skyward" / "logs" / "skyward.log"
    log.parent.mkdir(parents=True)
    log.write_text("".join(f"line {i}\n" for i in range(10)))
    done = sky_command("log", "-n", "2")
    assert (done.returncode, done.stdout) == (0, "line 8\nline 9\n")
    out = project / "followed.txt"
    with out.open("w") as sink:
        follower = subprocess.Popen(
            [sys.executable, "-m", "skyward", "log", "-n", "1", "--follow"],
            cwd=project,
            env=sky_command.env,
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
        # Rotated as the pool log rotates: renamed, with a line the follower has not read
        # yet, and a new file in its place.
        with log.open("a") as more:
            more.write("line 11\n")
        log.rename(log.with_name("skyward.log.1"))
        log.write_text("line 12\n")
        wait_until(
            lambda: out.read_text().endswith("line 10\nline 11\nline 12\n"),
            "the rest of the old file, then the new one",
            timeout=60,
            every=0.1,
        )
    finally:
        follower.send_signal(signal.SIGINT)
        assert follower.wait(timeout=30) == 130


def test_compute_create_takes_the_api_key_from_its_own_shell(sky_command: Sky) -> None:
    """The server was started without RUNPOD_API_KEY; the shell that creates the pool has
    it, and the pool comes up on the fake RunPod with it."""
    with (sky_command.project / "skyward.toml").open("a") as toml:
        toml.write('\n[pools.one]\nprovider = "rp"\naccelerator = "H100"\nnodes = 1\n')
    keyless = {k: v for k, v in sky_command.env.items() if k != "RUNPOD_API_KEY"}
    started = run_sky(sky_command.project, keyless, "server", "start", timeout=60)
    assert started.returncode == 0, started.stderr
    try:
        made = sky_command("compute", "create", "one")
        assert made.returncode == 0, made.stdout + made.stderr
        assert made.stdout.endswith("pool one ready: 1 node(s) on RunPod\n")
        assert sky_command.api.api_key not in made.stdout + made.stderr
        assert len(sky_command.api.live()) == 1
        assert sky_command("compute", "delete", "one").returncode == 0
        assert not sky_command.api.live()
    finally:
        sky_command("server", "stop")
    log = (sky_command.project / "home" / ".skyward" / "logs" / "server.log").read_text()
    assert sky_command.api.api_key not in log

"""Pure decisions of the core: map batch sizing, the reconnect window and the bootstrap
script."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from skyward_trio._bootstrap import (
    READY_MARK,
    Environment,
    env_hash,
    pack_includes,
    worker_bootstrap,
)
from skyward_trio._model import Options
from skyward_trio._pool import _batch_size
from skyward_trio._supervisor import RECONNECT_WINDOW, reconnect_window


def test_first_batch_is_one_item() -> None:
    assert _batch_size(None, None) == 1


def test_tiny_tasks_travel_thousands_per_message() -> None:
    assert _batch_size(2e-6, 20.0) == 8192  # capped
    assert 1990 <= _batch_size(1e-5, 20.0) <= 2000  # about 20 ms of work


def test_long_tasks_go_one_at_a_time() -> None:
    assert _batch_size(0.5, 20.0) == 1


def test_big_items_cap_the_batch_by_bytes() -> None:
    assert _batch_size(1e-6, 100_000.0) == 20  # about 2 MB per message


def test_a_dropped_node_gets_the_reconnect_window_capped_by_ssh_timeout() -> None:
    assert reconnect_window(Options()) == RECONNECT_WINDOW == 10.0
    assert reconnect_window(Options(ssh_timeout=3)) == 3.0
    assert reconnect_window(Options(ssh_timeout=120)) == RECONNECT_WINDOW


def test_bootstrap_script_is_valid_bash_and_keeps_the_secret_off_the_command_line() -> None:
    script = worker_bootstrap(
        workdir="/tmp/node dir/work",
        python="/usr/bin/python3",
        secret="s3cret-value",
        config={"info": {"node": 0}, "env": {"A": "it's"}},
        start_timeout=5,
    )
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)
    assert "s3cret-value" in script  # written to a file from stdin, never an argument
    assert "'/tmp/node dir/work'" in script  # quoted
    assert "setsid" in script
    assert READY_MARK in script
    body = script.split("cat > worker.json <<'SKYWARD_EOF_7f3a'\n", 1)[1].split("\nSKYWARD", 1)[0]
    assert json.loads(body) == {"info": {"node": 0}, "env": {"A": "it's"}}


def test_bootstrap_refuses_a_payload_containing_its_terminator() -> None:
    with pytest.raises(ValueError, match="terminator"):
        worker_bootstrap(
            workdir="/w", python="p", secret="SKYWARD_EOF_7f3a", config={}, start_timeout=1
        )


def test_an_environment_adds_its_phases_and_runs_the_worker_from_the_venv(tmp_path: Path) -> None:
    env = Environment(
        pip=("numpy==2.1.0", "torch"),
        indexes=(("https://download.pytorch.org/whl/cpu", ("torch",)),),
        base_paths=("/client/site-packages",),
        includes=pack_includes([], []),
        shell_vars={"SHA": "git rev-parse HEAD"},
        key="abc123",
    )
    script = worker_bootstrap(
        workdir="/w",
        python="/usr/bin/python3",
        secret="s",
        config={},
        start_timeout=1,
        environment=env,
    )
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)
    phases = [line.split()[1] for line in script.splitlines() if line.startswith("phase ")]
    assert phases == ["uv", "venv", "includes", "shell_vars"]
    torch = next(line for line in script.splitlines() if "--index " in line)
    assert torch.endswith("https://download.pytorch.org/whl/cpu --index-strategy first-index torch")
    assert '"$HOME/.skyward/envs/abc123"/bin/python -m skyward_trio.worker' in script
    assert "/client/site-packages" in script  # the venv's .pth reaches this process's packages
    assert env_hash("/usr/bin/python3", ["a"], []) != env_hash("/usr/bin/python3", ["b"], [])


def test_includes_are_packed_under_their_names_without_excluded_files(tmp_path: Path) -> None:
    package = tmp_path / "lib"
    (package / "sub" / "__pycache__").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "model.ckpt").write_text("big")
    (package / "sub" / "code.py").write_text("")
    (package / "sub" / "__pycache__" / "code.cpython-311.pyc").write_text("")
    single = tmp_path / "helper.py"
    single.write_text("X = 1\n")
    packed = pack_includes([str(package), str(single)], ["*.ckpt"])
    with tarfile.open(fileobj=io.BytesIO(packed)) as tar:
        names = sorted(tar.getnames())
    assert names == ["helper.py", "lib", "lib/__init__.py", "lib/sub", "lib/sub/code.py"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        pack_includes([str(tmp_path / "missing")], [])

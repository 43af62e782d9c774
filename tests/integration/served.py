"""A pool server started as users start it (``sky server start``, ``sky compute create p``
of a two-node Local pool), in a home of its own, for tests that run ``sky.Client``
scripts against it (each script a process of its own, so its functions are
``__main__``'s, pickled by value)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from clients import run_sky
from procs import is_running

TOML = """\
[pools.p]
provider = "local"
nodes = 2
worker = { concurrency = 1 }
"""


class Server:
    """A server started with ``sky server start`` in a home of its own, holding ``p``."""

    def __init__(self, root: Path) -> None:
        self.project = root
        (root / "home").mkdir()
        (root / "skyward.toml").write_text(TOML)
        self.env = {**os.environ, "HOME": str(root / "home")}

    def ok(self, *args: str) -> str:
        done = run_sky(self.project, self.env, *args)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done.stdout

    def script(
        self, code: str, *, timeout: float = 180, args: Sequence[str] = ()
    ) -> dict[str, Any]:
        """Run ``code`` (given the scratch folder as argv[1], then ``args``); the JSON it
        prints."""
        path = self.project / "script.py"
        path.write_text(textwrap.dedent(code))
        scratch = self.project / "scratch"
        scratch.mkdir(exist_ok=True)
        done = subprocess.run(
            [sys.executable, str(path), str(scratch), *args],
            cwd=self.project,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)  # type: ignore[no-any-return]

    def state(self) -> dict[str, Any]:
        path = self.project / "home" / ".skyward" / "server.json"
        return json.loads(path.read_text())  # type: ignore[no-any-return]

    @classmethod
    @contextlib.contextmanager
    def running(cls, root: Path) -> Iterator[Server]:
        """A server started in ``root``, holding ``p``; stopped at the end."""
        made = cls(root)
        try:
            made.ok("server", "start")
            assert "pool p ready: 2 node(s) on Local" in made.ok("compute", "create", "p")
            yield made
        finally:
            made.stop()

    def stop(self) -> None:
        state = self.project / "home" / ".skyward" / "server.json"
        if not state.exists():
            return
        pid = json.loads(state.read_text())["pid"]
        if is_running(pid):
            run_sky(self.project, self.env, "server", "stop")
        if is_running(pid):
            os.kill(pid, signal.SIGKILL)

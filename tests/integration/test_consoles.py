"""The consoles on real Local nodes: ``log`` piped to a file, ``rich`` and ``minimal`` on a
recording rich console, ``silent``, and how ``console=True`` chooses."""

from __future__ import annotations

import functools
import io
import os
import pty
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console
from waiting import wait_until

import skyward as sky
from skyward import testing
from skyward_trio import _console

STAMP = r"\d\d:\d\d:\d\d"
# Every line of the log console: time, label, message, two spaces between the columns.
LOG_LINE = re.compile(rf"^{STAMP}  (pool|node \d+)  \S.*$")
# The heartbeat's metrics: the nodes' mean use (no GPU here).
USAGE = r"node mean cpu \d+%, mem \d+%"

SCRIPT = """
import os, sys, time
import skyward as sky

@sky.function
def greet(name):
    print(f"hello {name} from node {sky.instance_info().node}")
    print("a warning", file=sys.stderr)
    return name

@sky.function
def boom():
    raise ValueError("boom")

marker = sys.argv[1]
with sky.Compute(provider=sky.Local(), nodes=2) as pool:   # console=True: the default
    assert greet("there") >> pool == "there"
    while not os.path.exists(marker):   # the test reads the log file meanwhile
        time.sleep(0.05)
    try:
        boom() >> pool
    except ValueError:
        pass
    assert pool.map(abs, range(-50, 50)) == [abs(x) for x in range(-50, 50)]
print("script done")
"""


_wait = functools.partial(wait_until, timeout=60, every=0.05)


def test_log_console_lines_reach_a_file_while_the_script_runs(tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(SCRIPT))
    marker = tmp_path / "go"
    log = tmp_path / "stderr.log"
    env = {**os.environ, _console.INTERVAL_ENV: "0.2"}
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, str(script), str(marker)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=env,
            text=True,
        )
        try:
            # The script is blocked on the marker, inside the pool: what is in the file
            # now was written (and flushed) while it runs.
            def seen(pattern: str) -> bool:
                return re.search(pattern, log.read_text(), re.MULTILINE) is not None

            _wait(lambda: seen(rf"^{STAMP}  node \d  hello there from node \d$"), "output")
            # A heartbeat once both nodes are ready (earlier ones may say 0/2 or 1/2), with
            # the nodes' CPU and memory once their first CPU samples came (after 3 s).
            _wait(lambda: seen(rf"^{STAMP}  pool  2/2 nodes ready, .* tasks/s, "), "heartbeat")
            _wait(lambda: seen(rf"^{STAMP}  pool  2/2 .* so far; {USAGE}$"), "metrics")
            assert process.poll() is None, "the script ended before its lines were checked"
            marker.touch()
            out, _ = process.communicate(timeout=120)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert process.returncode == 0, log.read_text()
    assert out == "script done\n"  # remote output goes to the console, on stderr
    text = log.read_text()
    assert "\x1b" not in text  # no ANSI codes
    lines = text.splitlines()
    assert all(LOG_LINE.match(line) for line in lines), [
        line for line in lines if not LOG_LINE.match(line)
    ]
    messages = [line[len("00:00:00  ") :] for line in lines]

    def first(pattern: str) -> int:
        found = [i for i, m in enumerate(messages) if re.fullmatch(pattern, m)]
        assert found, f"no line matches {pattern!r} in:\n{text}"
        return found[0]

    order = [
        first(r"pool  requested 2 node\(s\) from local \(job [0-9a-f]+\)"),
        first(r"node 0  instance \S+ provisioned \(\$0\.00/h\)"),
        first(r"pool  2 instance\(s\) provisioned; starting them"),
        first(r"node 0  connecting"),
        first(r"node 0  bootstrapping"),
        first(r"node 0  starting worker"),
        first(r"node 0  ready \(\d+\.\d s\)"),
        first(r"pool  ready: 2 node\(s\)"),
        first(r"node \d  hello there from node \d"),
        first(r"node \d  boom\(\) failed after \d+\.\d\d s"),
        first(r"node 0  instance \S+ terminated"),
        first(r"pool  closed: 2 instance\(s\) up \d+\.\d s in all, cost about \$0\.00"),
    ]
    assert order == sorted(order), text
    assert first(r"node \d  a warning") > 0  # stderr lines too
    heartbeat = (
        r"pool  2/2 nodes ready, \d+ running, \d+ done, \d+ failed, \d+\.\d tasks/s, "
        rf"\$0\.00 so far(; {USAGE})?"
    )
    assert first(heartbeat) > order[7]


def _chosen_with_stderr_on(stderr: int) -> str:
    code = "from skyward_trio import _console; print(_console.resolve(True))"
    return subprocess.run(
        [sys.executable, "-c", code], stderr=stderr, stdout=subprocess.PIPE, text=True, check=True
    ).stdout.strip()


def test_true_picks_log_for_a_pipe_or_file_and_rich_for_a_terminal(tmp_path: Path) -> None:
    assert _chosen_with_stderr_on(subprocess.PIPE) == "log"
    with (tmp_path / "err").open("w") as file:
        assert _chosen_with_stderr_on(file.fileno()) == "log"
    leader, follower = pty.openpty()
    try:
        assert _chosen_with_stderr_on(follower) == "rich"
    finally:
        os.close(leader)
        os.close(follower)
    assert _console.resolve(False) == "silent"
    assert _console.resolve("minimal") == "minimal"


@pytest.fixture
def recording(monkeypatch: pytest.MonkeyPatch) -> Iterator[Console]:
    """The live consoles draw on a recording terminal instead of stderr."""
    console = Console(record=True, file=io.StringIO(), force_terminal=True, width=110)
    monkeypatch.setattr(_console, "_rich_console", lambda: console)
    stdout, stderr = sys.stdout, sys.stderr
    yield console
    # The live display redirected the process's output while it ran, and gave it back.
    assert (sys.stdout, sys.stderr) == (stdout, stderr)


@sky.function
def _say(text: str) -> str:
    print(text)
    return text


def _pool_life(console: Console, mode: str) -> str:
    """Start, print, map, lose node 1, get it replaced, close; return what was drawn."""
    with sky.Compute(provider=sky.Local(), nodes=2, options=sky.Options(console=mode)) as pool:
        assert _say("first words") >> pool == "first words"
        assert pool.map(abs, range(-1000, 1000)) == [abs(x) for x in range(-1000, 1000)]
        testing.preempt(pool, 1)
        _wait(lambda: "replaced: " in console.export_text(clear=False), "the replacement")
        assert _say("after the replacement") @ pool == ["after the replacement"] * 2
        time.sleep(0.6)  # a redraw or two with the new state
    return console.export_text()


def test_rich_console_draws_a_whole_pool_life(recording: Console) -> None:
    text = _pool_life(recording, "rich")
    assert "skyward · pool " in text
    for header in ("node", "instance", "state"):
        assert header in text
    # A state that lasts long enough to be drawn (a redraw is at most every 0.25 s); "lost"
    # lasts until the replacement is provisioned, on Local a few milliseconds later (the
    # unit tests draw it).
    assert re.search(r"│ +\d  local-\S+ +ready ", text)
    final = text[text.rindex("╭") :]  # drawn once more after the pool closed
    assert "· closed" in final
    assert re.search(r"│ +1  local-\S+ +terminated \(replaced ×1\)", final), final
    assert re.search(r"tasks  0 running · [\d,]+ done · 0 failed", text)
    assert "2,000/2,000" in text  # the map's progress, with its total known
    assert "node 0  first words" in text or "node 1  first words" in text
    assert "after the replacement" in text
    # Notices stay above the display: the lost node and the closing summary.
    assert re.search(rf"{STAMP}  node 1  lost \(", text)
    assert re.search(rf"{STAMP}  pool  closed: 3 instance\(s\) up ", text)
    assert "2/2 nodes ready" in text
    # Each node's memory, from its first samples (CPU needs two, 3 s apart).
    assert re.search(r"│ +\d  local-\S+ +ready +[\d:]+ +(\d+%|-) +\d+% [\d.]+/[\d.]+ GiB", text)


def test_minimal_console_draws_a_few_lines_and_prints_output_above(recording: Console) -> None:
    text = _pool_life(recording, "minimal")
    assert re.search(
        r"skyward [0-9a-f]+  2/2 nodes ready · 0 running · [\d,]+ done · 0 failed", text
    )
    assert re.search(rf"{STAMP}  node \d  first words", text)
    assert re.search(rf"{STAMP}  node 1  lost \(", text)
    assert re.search(rf"{STAMP}  pool  closed: 3 instance\(s\) up ", text)
    assert "output" not in text  # no layout, no panel


@pytest.mark.parametrize("console", ["silent", False])
def test_silent_prints_nothing(console: str | bool, capfd: pytest.CaptureFixture[str]) -> None:
    with sky.Compute(nodes=1, options=sky.Options(console=console)) as pool:  # type: ignore[arg-type]
        assert _say("not shown") >> pool == "not shown"
        assert pool.map(abs, range(10)) == list(range(10))
    assert capfd.readouterr() == ("", "")


def test_a_bad_heartbeat_interval_is_refused_before_anything_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(_console.INTERVAL_ENV, "soon")
    with (
        pytest.raises(ValueError, match=r"SKYWARD_LOG_METRICS_INTERVAL='soon': .* > 0"),
        sky.Compute(nodes=1, options=sky.Options(console="log")),
    ):
        pass


CELL = """
import skyward as sky

@sky.function
def hi(x):
    print("hello from node", sky.instance_info().node)
    return x

with sky.Compute(provider=sky.Local(), nodes=2) as pool:   # console=True: rich, in the cell
    print("result", hi(1) >> pool)
    print("mapped", len(pool.map(abs, range(3000))))
"""


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # jupyter_core's path notices
def test_in_jupyter_the_rich_console_draws_in_the_cell_that_runs_the_pool() -> None:
    manager = pytest.importorskip("jupyter_client.manager")
    kernel, client = manager.start_new_kernel(kernel_name="python3")
    try:
        cell = client.execute(CELL)
        messages = []
        while True:
            message = client.get_iopub_msg(timeout=120)
            if message["parent_header"].get("msg_id") != cell:
                continue
            messages.append(message)
            content = message["content"]
            if message["msg_type"] == "status" and content["execution_state"] == "idle":
                break
    finally:
        client.stop_channels()
        kernel.shutdown_kernel(now=True)
    kinds = [m["msg_type"] for m in messages]
    assert "error" not in kinds, [m["content"] for m in messages if m["msg_type"] == "error"]
    stdout = "".join(m["content"]["text"] for m in messages if m["msg_type"] == "stream")
    assert stdout == "result 1\nmapped 3000\n"  # the user's own prints are untouched
    shown = [m for m in messages if m["msg_type"] == "display_data"]
    display_id = shown[0]["content"]["transient"]["display_id"]
    updates = [
        m["content"]["data"]["text/html"]
        for m in messages
        if m["msg_type"] == "update_display_data"
        and m["content"]["transient"]["display_id"] == display_id
    ]
    assert updates, kinds  # one display in the cell, redrawn in place
    last = updates[-1]
    assert "closed" in last
    assert "3,000/3,000" in last
    assert "hello from node" in last
    assert "closed: 2 instance(s)" in shown[-1]["content"]["data"]["text/plain"]

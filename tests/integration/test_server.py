"""The pool server, run as users run it: ``sky server start`` (a detached process),
``sky compute create`` of a Local pool from skyward.toml, and ``sky.Client`` in scripts
of their own (so their functions are ``__main__``'s, pickled by value). Each test that
changes its server or pool has its own home, so its own state file, log and server; those
that only use pool ``p`` share one (``held``). Each server is stopped at the end."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from clients import run_sky
from procs import is_running
from waiting import wait_until

from conftest import Processes

TOML = """\
[pools.p]
provider = "local"
nodes = 2
worker = { concurrency = 1 }

[pools.leased]  # its nodes end themselves at once when their client is gone
provider = "local"
nodes = 2
ttl = 0
ssh_timeout = 0.5
"""


class Home:
    """A project with a two-node Local pool ``p``, and a home of its own."""

    def __init__(self, root: Path) -> None:
        self.project = root
        self.home = root / "home"
        self.home.mkdir()
        (root / "skyward.toml").write_text(TOML)
        self.env = {**os.environ, "HOME": str(self.home)}

    def sky(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_sky(self.project, self.env, *args)

    def ok(self, *args: str) -> str:
        done = self.sky(*args)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done.stdout

    def script(self, code: str, *, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        path = self.project / "script.py"
        path.write_text(textwrap.dedent(code))
        return subprocess.run(
            [sys.executable, str(path)],
            cwd=self.project,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def client_refusal(self, name: str) -> str:
        """What ``sky.Client(name)`` raises, in a script of its own."""
        done = self.script(
            f"""
            import skyward as sky
            try:
                sky.Client({name!r})
            except sky.ServerError as exc:
                print(exc)
            """
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    @property
    def state_file(self) -> Path:
        return self.home / ".skyward" / "server.json"

    def state(self) -> dict[str, Any]:
        return json.loads(self.state_file.read_text())  # type: ignore[no-any-return]

    @property
    def log(self) -> str:
        return (self.home / ".skyward" / "logs" / "server.log").read_text()


def _stopped(home: Home) -> None:
    """Stop the home's server, if it runs: by ``sky server stop``, else by SIGKILL."""
    if home.state_file.exists():
        pid = home.state()["pid"]
        if is_running(pid):
            home.sky("server", "stop")
        if is_running(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Home]:
    made = Home(tmp_path)
    yield made
    _stopped(made)


def _holding_p(home: Home) -> Home:
    home.ok("server", "start")
    assert "pool p ready: 2 node(s) on Local" in home.ok("compute", "create", "p")
    return home


@pytest.fixture
def pool(home: Home) -> Home:
    """A running server holding pool ``p``, for a test that changes it or the server."""
    return _holding_p(home)


@pytest.fixture(scope="module")
def held(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Home]:
    """A running server holding pool ``p``, shared by the tests that only use it (a server
    and its pool take a few seconds to come up, some ten on a loaded machine)."""
    made = Home(tmp_path_factory.mktemp("held"))
    try:
        yield _holding_p(made)
    finally:
        _stopped(made)


def test_the_server_starts_holds_a_pool_and_stops(home: Home) -> None:
    started = home.ok("server", "start")
    state = home.state()
    assert f"started: {state['url']} (pid {state['pid']})" in started
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", state["url"])
    assert stat.S_IMODE(home.state_file.stat().st_mode) == 0o600
    again = home.sky("server", "start")
    assert again.returncode == 1
    assert f"already runs (pid {state['pid']}" in again.stderr

    home.ok("compute", "create", "p")
    listed = json.loads(home.ok("compute", "list", "--json"))
    assert [(p["name"], p["state"], p["provider"], p["nodes"]) for p in listed] == [
        ("p", "ready", "Local", {"ready": 2, "desired": 2})
    ]
    assert json.loads(home.ok("compute", "get", "p"))["job_id"] == listed[0]["job_id"]
    table = home.ok("compute", "list")
    assert table.splitlines()[0].split() == ["NAME", "STATE", "PROVIDER", "NODES", "COST", "AGE"]
    assert table.splitlines()[1].split()[:4] == ["p", "ready", "Local", "2/2"]
    status = home.ok("server", "status")
    assert f"running at {state['url']}" in status
    assert "1 pool(s)" in status

    twice = home.sky("compute", "create", "p")
    assert twice.returncode == 1
    assert "already holds a pool 'p'" in twice.stderr

    # Stopping closes the pool it holds: its Local nodes' processes end.
    nodes = [int(pid) for pid in re.findall(r"instance local-\w+-\d-(\d+) provisioned", home.log)]
    assert len(nodes) == 2
    assert all(is_running(pid) for pid in nodes)
    assert home.ok("server", "stop") == "skyward server stopped; closed p\n"
    assert not is_running(state["pid"])
    assert not home.state_file.exists()
    wait_until(
        lambda: not any(is_running(pid) for pid in nodes),
        "the pool's nodes to end",
        timeout=30,
        every=0.1,
    )
    assert "pool  closed: 2 instance(s)" in home.log
    stopped = home.sky("server", "status")
    assert (stopped.returncode, stopped.stdout) == (
        1,
        "skyward server: not running (start it with `sky server start`)\n",
    )


def test_commands_need_a_running_server(home: Home) -> None:
    for args in (("compute", "list"), ("compute", "create", "p"), ("server", "stop")):
        done = home.sky(*args)
        assert done.returncode == 1, args
        assert "start it with `sky server start`" in done.stderr, args
    said = home.client_refusal("p")
    assert "not running" in said
    assert "sky server start" in said


def test_a_pool_not_in_the_file_is_refused_before_the_server_is_asked(home: Home) -> None:
    home.ok("server", "start")
    done = home.sky("compute", "create", "nope")
    assert done.returncode == 1
    assert "no pool 'nope'" in done.stderr
    assert "[pools.nope]" in done.stderr
    assert json.loads(home.ok("compute", "list", "--json")) == []


# The functions both faces' client scripts call, on the face named {m}.
_FUNCTIONS = """
@{m}.function
def square(x):
    return x * x

@{m}.function
def where():
    return {m}.instance_info().node

def plus_one(x):
    return x + 1

def slow_where(x):
    import time
    time.sleep(0.05)
    return {m}.instance_info().node

def fail_at_7(x):
    if x == 7:
        raise KeyError(x)
    return x

def items():
    yield 1

@{m}.function
def squares(n):
    for i in range(n):
        yield i * i

@{m}.function
def breaks(n):
    yield from range(n)
    raise ValueError("no more")

@{m}.function
def fail():
    raise KeyError("missing")
"""

_CLIENT_SCRIPT = (
    "import json\nimport skyward as sky\n"
    + _FUNCTIONS.format(m="sky")
    + """
with sky.Client("p") as pool:
    out = {
        "run": square(7) >> pool,
        "head": where() >> sky,
        "pinned": pool.run(where(), target=1),
        "broadcast": where() @ pool,
        "future": (square(3) > pool).result(),
        "group": list((square(1) & square(2) & square(3)) >> pool),
        "streamed": sorted(sky.gather(square(4), square(5), stream=True) >> pool),
        "info": pool.info()["state"],
        "map": pool.map(plus_one, range(100)) == list(range(1, 101)),
        "map decorated": pool.map(square, [1, 2, 3]),
        "map empty": pool.map(square, []),
        "map nodes": sorted(set(pool.map(slow_where, range(40)))),
    }
    try:
        pool.map(fail_at_7, range(50))
    except KeyError as exc:
        out["map error"] = repr(exc)
    try:
        pool.map(items, [1])
    except TypeError as exc:
        out["map generator"] = str(exc)
    out["items"] = list(squares(100) >> pool)
    endless = squares(10**9) >> pool
    out["first items"] = [next(endless) for _ in range(3)]
    endless.close()  # the generator stops on its node, and frees its slot
    out["after close"] = where() @ pool  # needs a slot on every node
    got = []
    try:
        for item in breaks(3) >> pool:
            got.append(item)
    except ValueError as exc:
        out["broken"] = [got, repr(exc)]
    try:
        squares(3) @ pool
    except TypeError as exc:
        out["broadcast items"] = str(exc)
    try:
        fail() >> pool
    except KeyError as exc:
        out["error"] = [repr(exc), exc.__notes__[0].splitlines()[0]]
    try:
        pool.run(where(), target=5)
    except ValueError as exc:
        out["bad target"] = str(exc)
print(json.dumps(out))
"""
)


def test_a_client_runs_calls_on_the_pool_the_server_holds(held: Home) -> None:
    done = held.script(_CLIENT_SCRIPT)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["run"] == 49
    assert out["head"] in (0, 1)
    assert out["pinned"] == 1
    assert out["broadcast"] == [0, 1]
    assert out["future"] == 9
    assert out["group"] == [1, 4, 9]
    assert out["streamed"] == [16, 25]
    assert out["info"] == "ready"
    assert out["error"][0] == "KeyError('missing')"
    note = r"\[skyward\] raised by fail\(\) on node \d; remote traceback:"
    assert re.fullmatch(note, out["error"][1])
    assert "target=5 is not a node of this pool" in out["bad target"]
    assert out["map"] is True
    assert out["map decorated"] == [1, 4, 9]
    assert out["map empty"] == []
    assert out["map nodes"] == [0, 1]  # the calls spread over the nodes
    assert out["map error"] == "KeyError(7)"
    assert "items() is a generator function" in out["map generator"]
    assert out["items"] == [i * i for i in range(100)]
    assert out["first items"] == [0, 1, 4]
    assert out["after close"] == [0, 1]
    assert out["broken"] == [[0, 1, 2], "ValueError('no more')"]
    assert "its items stream back with `>>`" in out["broadcast items"]


def test_arrays_travel_both_ways(held: Home) -> None:
    done = held.script(
        """
        import numpy as np
        import skyward as sky

        @sky.function
        def double(a):
            return a * 2

        data = np.arange(2_000_000, dtype=np.float64)
        with sky.Client("p") as pool:
            back = double(data) >> pool
        print(bool((back == data * 2).all()), back.dtype, back.shape)
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "True float64 (2000000,)\n"


def test_a_client_for_a_pool_the_server_lacks_is_told_which_it_has(held: Home) -> None:
    said = held.client_refusal("other")
    assert "no pool 'other' (it holds: p)" in said
    assert "sky compute create other" in said


def test_requests_without_the_token_are_refused(held: Home) -> None:
    url = held.state()["url"]
    for headers in ({}, {"authorization": "Bearer not-the-token"}):
        answer = httpx.get(f"{url}/pools", headers=headers)
        assert answer.status_code == 401
        assert "~/.skyward/server.json" in answer.json()["error"]
    garbage = httpx.post(
        f"{url}/pools/p/run",
        content=b"\x00\x00\x00\x05nope!",
        headers={"authorization": f"Bearer {held.state()['token']}"},
    )
    assert garbage.status_code == 400
    assert "not a call" in garbage.json()["error"]
    # The server carries on.
    assert json.loads(held.ok("compute", "get", "p"))["state"] == "ready"


def _slow_caller(started: Path, call: str) -> str:
    """A script whose ``slow()`` makes ``started`` and sleeps 300 s; it runs ``call``."""
    return f"""
import time
import skyward as sky

@sky.function
def slow():
    open({str(started)!r}, "w").close()
    time.sleep(300)

with sky.Client("p") as pool:
{textwrap.indent(textwrap.dedent(call), "    ")}"""


def test_a_client_that_hangs_up_cancels_its_call(pool: Home) -> None:
    started = pool.project / "started"
    hanging = subprocess.Popen(
        [sys.executable, "-c", _slow_caller(started, "slow() >> pool")],
        env=pool.env,
        cwd=pool.project,
    )
    try:
        wait_until(started.exists, "the slow call to start", timeout=60, every=0.1)
    finally:
        hanging.kill()
        hanging.wait()
    # Each node runs one call at a time: a call on every node goes through only once the
    # hung-up call's slot is freed, long before its 300 s are up.
    done = pool.script(
        """
        import skyward as sky

        @sky.function
        def node():
            return sky.instance_info().node

        with sky.Client("p") as pool:
            print(node() @ pool)
        """,
        timeout=60,
    )
    assert (done.returncode, done.stdout) == (0, "[0, 1]\n"), done.stderr


def test_deleting_a_pool_ends_its_nodes_and_its_clients(pool: Home) -> None:
    nodes = [int(pid) for pid in re.findall(r"instance local-\w+-\d-(\d+) provisioned", pool.log)]
    assert pool.ok("compute", "delete", "p") == "pool p closed; its machines are terminated\n"
    wait_until(
        lambda: not any(is_running(pid) for pid in nodes),
        "the pool's nodes to end",
        timeout=30,
        every=0.1,
    )
    assert json.loads(pool.ok("compute", "list", "--json")) == []
    gone = pool.sky("compute", "delete", "p")
    assert gone.returncode == 1
    assert "holds no pool 'p'" in gone.stderr


def test_view_follows_a_pool_until_it_closes(pool: Home) -> None:
    out = pool.project / "view.out"
    with out.open("w") as sink:
        view = subprocess.Popen(
            [sys.executable, "-m", "skyward", "compute", "view", "p"],
            cwd=pool.project,
            env=pool.env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        # Its history first, then what happens while it watches.
        wait_until(
            lambda: "pool  ready: 2 node(s)" in out.read_text(),
            "the history",
            timeout=30,
            every=0.1,
        )
        done = pool.script(
            """
            import skyward as sky

            @sky.function
            def hello():
                print("hello from", sky.instance_info().node)

            with sky.Client("p") as pool:
                events = pool.events()
                seen = [type(next(events)).__name__]  # subscribed: the history comes first
                hello() @ pool
                for event in events:
                    seen.append(type(event).__name__)
                    if event.__class__ is sky.TaskCompleted:
                        break
                events.close()
                print(seen[0], seen[-1])
            """
        )
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()  # the calls' own output, printed by the client too
        assert sorted(lines[:2]) == ["hello from 0", "hello from 1"]
        assert lines[2:] == ["ClusterRequested TaskCompleted"]
        wait_until(
            lambda: re.search(r"\d\d:\d\d:\d\d  node 1  hello from 1\n", out.read_text()),
            "the task's output in the view",
            timeout=30,
            every=0.1,
        )
        pool.ok("compute", "delete", "p")
        assert view.wait(timeout=30) == 0
    finally:
        if view.poll() is None:
            view.kill()
            view.wait()
    lines = out.read_text().splitlines()
    assert lines[-1] == "pool p closed"
    assert re.fullmatch(r"\d\d:\d\d:\d\d  pool  closed: 2 instance\(s\) .*", lines[-2])


def test_a_pool_with_an_idle_timeout_closes_once_unused_and_never_mid_call(home: Home) -> None:
    home.ok("server", "start")
    bad = home.sky("compute", "create", "p", "--idle-timeout", "soon")
    assert bad.returncode == 2
    assert "'soon' is not a duration" in bad.stderr
    made = home.ok("compute", "create", "p", "--idle-timeout", "2h")
    assert made.endswith("pool p ready: 2 node(s) on Local; closed after 2.00 h without a call\n")
    assert json.loads(home.ok("compute", "get", "p"))["idle_timeout"] == 7200
    home.ok("compute", "delete", "p")
    # Created and called from one script, so the call starts well within the timeout; a
    # call longer than the timeout keeps the pool open while it runs.
    done = home.script(
        """
        import time
        import skyward as sky
        from skyward._client import request_create

        @sky.function
        def slow():
            time.sleep(5)
            return "done"

        request_create(
            "q",
            (sky.Spec(provider=sky.Local(), nodes=1),),
            sky.Options(console="silent"),
            idle_timeout=2,
        )
        with sky.Client("q") as pool:
            print(slow() >> pool)
        """
    )
    assert (done.returncode, done.stdout) == (0, "done\n"), done.stderr
    wait_until(
        lambda: json.loads(home.ok("compute", "list", "--json")) == [],
        "the idle pool to close",
        timeout=60,
        every=0.2,
    )
    assert "pool q: no call for 2 s (its idle timeout): closing it" in home.log


def test_a_killed_server_leaves_no_node_running(home: Home, processes: Processes) -> None:
    home.ok("server", "start")
    home.ok("compute", "create", "leased")
    job = json.loads(home.ok("compute", "get", "leased"))["job_id"]
    nodes = processes.of_job(job)
    assert nodes
    server = home.state()["pid"]
    os.kill(server, signal.SIGKILL)  # no teardown: the nodes' lease is all that is left
    assert not processes.wait_until_gone(nodes, limit=60)
    assert home.sky("server", "status").returncode == 1
    # The dead server's state file is no obstacle to a new one.
    home.ok("server", "start")
    assert home.state()["pid"] != server


_TRIO_CLIENT_SCRIPT = (
    "import json\nimport trio\nimport skyward_trio as st\n"
    + _FUNCTIONS.format(m="st")
    + """
async def main():
    async with st.Client("p") as pool:
        out = {"run": await (square(7) >> pool), "head": await (where() >> st)}
        out["pinned"] = await pool.run(where(), target=1)
        out["broadcast"] = await (where() @ pool)
        future = await (square(3) > pool)
        out["future"] = await future.result()
        out["group"] = list(await ((square(1) & square(2) & square(3)) >> pool))
        stream = await (st.gather(square(4), square(5), stream=True) >> pool)
        out["streamed"] = [value async for value in stream]
        out["info"] = (await pool.info())["state"]
        out["map"] = await pool.map(plus_one, range(100)) == list(range(1, 101))
        out["map decorated"] = await pool.map(square, [1, 2, 3])
        out["map nodes"] = sorted(set(await pool.map(slow_where, range(40))))
        try:
            await pool.map(fail_at_7, range(50))
        except KeyError as exc:
            out["map error"] = repr(exc)
        out["items"] = [item async for item in await (squares(50) >> pool)]
        endless = await (squares(10**9) >> pool)
        out["first items"] = [await endless.__anext__() for _ in range(3)]
        await endless.aclose()
        out["after close"] = await (where() @ pool)
        got = []
        try:
            async for item in await (breaks(2) >> pool):
                got.append(item)
        except ValueError as exc:
            out["broken"] = [got, repr(exc)]
        try:
            await (fail() >> pool)
        except KeyError as exc:
            out["error"] = repr(exc)
        events = pool.events()
        out["first event"] = type(await events.__anext__()).__name__
        await events.aclose()
    try:
        async with st.Client("other"):
            pass
    except st.ServerError as exc:
        out["other"] = str(exc)
    print(json.dumps(out))

trio.run(main)
"""
)


def test_a_trio_client_runs_calls_on_the_pool_the_server_holds(held: Home) -> None:
    done = held.script(_TRIO_CLIENT_SCRIPT)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out.pop("head") in (0, 1)
    assert out.pop("other").endswith(
        "no pool 'other' (it holds: p); create it with `sky compute create other`"
    )
    assert out == {
        "run": 49,
        "pinned": 1,
        "broadcast": [0, 1],
        "future": 9,
        "group": [1, 4, 9],
        "streamed": [16, 25],
        "info": "ready",
        "map": True,
        "map decorated": [1, 4, 9],
        "map nodes": [0, 1],
        "map error": "KeyError(7)",
        "items": [i * i for i in range(50)],
        "first items": [0, 1, 4],
        "after close": [0, 1],
        "broken": [[0, 1], "ValueError('no more')"],
        "error": "KeyError('missing')",
        "first event": "ClusterRequested",
    }


def test_create_streams_the_pools_progress_then_says_it_is_ready(home: Home) -> None:
    home.ok("server", "start")
    lines = home.ok("compute", "create", "p").splitlines()
    assert lines[0] == "creating pool p"
    assert lines[-1] == "pool p ready: 2 node(s) on Local"
    stamped = [line.split("  ", 2)[1:] for line in lines[1:-1]]
    assert ["pool", "requested 2 node(s) from local"] in [[a, b.split(" (")[0]] for a, b in stamped]
    assert stamped[-1] == ["pool", "ready: 2 node(s)"]
    assert any(label == "node 1" and said.startswith("ready (") for label, said in stamped)


def test_a_pool_that_fails_to_come_up_is_reported_with_its_events(tmp_path: Path) -> None:
    """The server in this process (so ``sky.testing`` reaches its Local pools), asked over
    HTTP to create a pool whose only node cannot be provisioned."""
    import cloudpickle
    import trio

    import skyward as sky
    from skyward_trio._server import Server
    from skyward_trio._serverwire import frame
    from skyward_trio._transport import asyncio_loop

    async def main() -> tuple[list[dict[str, Any]], list[str]]:
        server = Server("secret")
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        spec = sky.Spec(provider=sky.Local(), nodes=1)
        options = sky.Options(console="silent", logging=False)
        body = frame({"name": "bad"}, [cloudpickle.dumps(((spec,), options))])
        headers = {"authorization": "Bearer secret"}
        async with asyncio_loop(), trio.open_nursery() as nursery:
            nursery.start_soon(server.serve, listeners)
            async with httpx.AsyncClient(timeout=60) as http:
                with sky.testing.fail_provisioning(node=0):
                    async with http.stream(
                        "POST",
                        f"{url}/pools?follow=1",
                        content=body,
                        headers=headers,
                    ) as answer:
                        lines = [json.loads(line) async for line in answer.aiter_lines() if line]
                held = (await http.get(f"{url}/pools", headers=headers)).json()
            server.stopping.set()
        return lines, held

    lines, held = trio.run(main)
    *events, last = lines
    assert last["type"] == "Failed"
    assert last["kind"] == "ProvisionError"
    assert "fail_provisioning" in last["error"]
    kinds = [event["type"] for event in events]
    assert kinds[0] == "ClusterRequested"
    assert "Error" in kinds
    assert held == []  # nothing is left registered


def test_the_servers_log_is_rotated_past_its_size(home: Home) -> None:
    log = home.home / "server.log"
    with log.open("ab") as out:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "skyward_trio._server",
                "--log",
                str(log),
                "--log-max-bytes",
                "200",
                "--log-keep",
                "2",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=home.env,
        )
    try:
        wait_until(home.state_file.exists, "the server to start", timeout=30, every=0.05)
        rotated = [log.with_name("server.log.1"), log.with_name("server.log.2")]
        home.ok("compute", "create", "p")  # its console lines go to the log: about 1 kB
        wait_until(rotated[0].exists, "a rotation", timeout=30, every=0.1)
        home.ok("compute", "delete", "p")  # its lines and the rotation's: over 200 bytes
        wait_until(rotated[1].exists, "a second rotation", timeout=30, every=0.1)
        assert not log.with_name("server.log.3").exists()  # --log-keep 2
        assert stat.S_IMODE(log.stat().st_mode) == 0o600
        home.ok("server", "stop")
        assert server.wait(timeout=30) == 0
        said = "".join(p.read_text() for p in (*reversed(rotated), log) if p.exists())
        assert "rotated (at 200 bytes)" in said
        assert said.rstrip().endswith("skyward server: stopped; every pool closed")
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def test_deleting_a_pool_under_a_call_fails_the_call_saying_so(pool: Home) -> None:
    started = pool.project / "started"
    script = pool.project / "slow.py"
    script.write_text(
        _slow_caller(
            started,
            """
            try:
                slow() >> pool
            except sky.PoolClosedError as exc:
                print(type(exc).__name__, exc)
            """,
        )
    )
    with subprocess.Popen(
        [sys.executable, str(script)], env=pool.env, stdout=subprocess.PIPE, text=True
    ) as caller:
        try:
            wait_until(started.exists, "the slow call to start", timeout=60, every=0.1)
            pool.ok("compute", "delete", "p")
            out, _ = caller.communicate(timeout=60)
        finally:
            if caller.poll() is None:
                caller.kill()
    assert caller.returncode == 0
    assert out.startswith("PoolClosedError "), out


_RUN_SCRIPT = """
import sys
import skyward as sky

@sky.function
def where(x):
    return sky.instance_info().node, 2 * x

print("argv", sys.argv[1:])
print("one", where(21) >> sky)
print("all", where(1) @ sky)
if sys.argv[1:] == ["fail"]:
    raise LookupError("from the script")
sys.exit(int(sys.argv[1]) if sys.argv[1:] else 0)
"""


def test_compute_run_runs_a_script_whose_calls_reach_the_pool(held: Home) -> None:
    folder = held.project / "job"
    folder.mkdir()
    (folder / "fit.py").write_text(_RUN_SCRIPT)
    done = held.sky("compute", "run", "p", "job/fit.py", "3")
    assert done.returncode == 3, done.stderr  # the script's own exit status
    lines = done.stdout.splitlines()
    assert lines[0] == "argv ['3']"
    assert lines[1] in ("one (0, 42)", "one (1, 42)")
    assert lines[2] == "all [(0, 2), (1, 2)]"
    failed = held.sky("compute", "run", "p", "job/fit.py", "fail")
    assert failed.returncode == 1
    assert "LookupError: from the script" in failed.stderr
    assert 'fit.py", line' in failed.stderr  # the script's traceback
    (held.project / "fitmod.py").write_text(_RUN_SCRIPT)
    as_module = held.sky("compute", "run", "p", "-m", "fitmod")  # from the project's folder
    assert as_module.returncode == 0, as_module.stderr
    assert as_module.stdout.splitlines()[2] == "all [(0, 2), (1, 2)]"


def test_compute_run_says_what_it_needs(held: Home) -> None:
    missing = held.sky("compute", "run", "other", "x.py")
    assert missing.returncode == 2
    assert "no script 'x.py' here" in missing.stderr
    (held.project / "x.py").write_text("")
    missing = held.sky("compute", "run", "other", "x.py")
    assert missing.returncode == 1
    assert "no pool 'other' (it holds: p)" in missing.stderr
    bare = held.sky("compute", "run", "p")
    assert bare.returncode == 2
    assert "name a script to run: `sky compute run p train.py [ARGS...]`" in bare.stderr


def test_a_clients_calls_print_their_output_where_it_runs(held: Home) -> None:
    done = held.script(
        """
        import sys
        import skyward as sky

        @sky.function
        def talk(word):
            node = sky.instance_info().node
            print(f"{word} on stdout from node {node}")
            print(f"{word} on stderr", file=sys.stderr)
            return word

        @sky.function
        def count(n):
            for i in range(n):
                print(f"yielding {i}")
                yield i

        with sky.Client("p") as pool:
            print("value", talk("one") >> pool)
            print("values", talk("all") @ pool)
            print("items", list(count(2) >> pool))
        """
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    assert out[0] in ("one on stdout from node 0", "one on stdout from node 1")
    assert out[1] == "value one"  # the output came before the value
    assert sorted(out[2:4]) == ["all on stdout from node 0", "all on stdout from node 1"]
    assert out[4:] == ["values ['all', 'all']", "yielding 0", "yielding 1", "items [0, 1]"]
    assert done.stderr.count("one on stderr") == 1
    assert done.stderr.count("all on stderr") == 2


def test_a_trio_clients_calls_print_their_output_too(held: Home) -> None:
    done = held.script(
        """
        import trio
        import skyward_trio as st

        @st.function
        def talk():
            print("said on the node")
            return 7

        async def main():
            async with st.Client("p") as pool:
                print("value", await (talk() >> pool))

        trio.run(main)
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["said on the node", "value 7"]

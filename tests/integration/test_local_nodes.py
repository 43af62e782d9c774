"""What makes a ``sky.Local`` node a real machine: its own address, loopback-only listening,
verified host keys, and no processes left behind when the client dies."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import procs
import pytest
import trio
import trio_asyncio
from waiting import wait_until

import skyward as sky
import skyward_trio
from skyward_trio import _transport

QUIET = skyward_trio.Options(console="silent")


def _listening_addresses(pids: list[int]) -> set[str]:
    """Local addresses of the TCP sockets these processes listen on (IPv4 and IPv6)."""
    inodes: set[str] = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    addresses = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # 0A = LISTEN
                addresses.add(local.split(":")[0])
    return addresses


async def test_nodes_listen_on_their_own_loopback_address_only(processes) -> None:
    async with skyward_trio.Compute(provider=skyward_trio.Local(), nodes=2, options=QUIET) as pool:
        pids = list(processes.of_job(pool.job_id))
        listening = _listening_addresses(pids)
    # 127.0.0.2 and 127.0.0.3, as /proc/net/tcp writes them (little-endian hex).
    assert listening == {"0200007F", "0300007F"}


async def test_a_wrong_host_key_is_refused() -> None:
    async with skyward_trio.Compute(provider=skyward_trio.Local(), nodes=1, options=QUIET) as pool:
        node = pool._ready[0]
        impostor = _transport.public_openssh(_transport.generate_key())
        with pytest.raises(_transport.SSHError, match="Host key"):
            await _transport.connect(
                node.instance.host,
                node.instance.port,
                username=node.instance.username,
                login=_transport.Login(keys=(_transport.generate_key(),)),
                host_key=impostor,
            )


async def test_an_unknown_client_key_is_refused() -> None:
    async with skyward_trio.Compute(provider=skyward_trio.Local(), nodes=1, options=QUIET) as pool:
        node = pool._ready[0]
        with pytest.raises(_transport.SSHError, match=r"[Pp]ermission denied"):
            await _transport.connect(
                node.instance.host,
                node.instance.port,
                username=node.instance.username,
                login=_transport.Login(keys=(_transport.generate_key(),)),
                host_key=node.instance.host_key,
            )


KILLED_CLIENT = textwrap.dedent(
    """
    import time
    import skyward as sky

    with sky.Compute(provider=sky.Local(), nodes=2, options=sky.Options(console="silent")) as pool:
        print(pool.job_id, flush=True)
        time.sleep(600)
    """
)


def test_nodes_go_away_when_the_client_is_killed(tmp_path: Path, processes) -> None:
    script = tmp_path / "client.py"
    script.write_text(KILLED_CLIENT)
    with subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        job_id = proc.stdout.readline().strip()
        assert len(processes.of_job(job_id)) == 4  # two SSH servers, two workers
        forkers = [
            pid
            for pid in processes.mentioning("skyward_trio._localnode --forker")
            if _parent(pid) == proc.pid
        ]
        assert len(forkers) == 1  # the client's fork server, the nodes' parent
        proc.send_signal(signal.SIGKILL)  # no teardown runs in the client
        proc.wait()
    assert not processes.wait_until_gone(processes.of_job(job_id), limit=15)
    assert not processes.wait_until_gone(forkers, limit=5)
    assert processes.of_job(job_id) == {}
    # The client died before its teardown could remove the pool's directory.
    for leftover in Path(tempfile.gettempdir()).glob(f"skyward-{job_id}-*"):
        shutil.rmtree(leftover)


CANCELLED_STARTS = """
import trio
import skyward_trio

async def start_then_cancel(seconds):
    with trio.move_on_after(seconds):
        options = skyward_trio.Options(console="silent")
        async with skyward_trio.Compute(nodes=4, options=options):
            await trio.sleep(30)

for seconds in (0.02, 0.05, 0.1, 0.2):
    trio.run(start_then_cancel, seconds)
print("done")
"""


def test_a_start_cancelled_while_nodes_fork_prints_nothing(tmp_path: Path) -> None:
    # Nodes whose directory the cancelled pool removed before they started end quietly
    # (they used to print a FileNotFoundError traceback each on the client's stderr).
    script = tmp_path / "cancelled.py"
    script.write_text(CANCELLED_STARTS)
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=240, check=False
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "done\n", "")


def _fork_server() -> int:
    """This process's fork server for Local nodes (_nodeforks), started by a pool."""
    from skyward_trio._nodeforks import FORKER

    assert FORKER._proc is not None
    return FORKER._proc.pid


@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")  # 3.12+: threads here
def test_a_forked_copy_of_the_client_does_not_keep_its_fork_server(processes) -> None:
    # A copy made by os.fork (multiprocessing's fork start method, say) closes its copy of
    # the fork server's socket: the server ends when this process closes it, copy or not.
    from skyward_trio._nodeforks import FORKER

    with sky.Compute(provider=sky.Local(), nodes=1, options=QUIET) as pool:
        server = _fork_server()
        assert _node_index_sync() >> pool == 0
    child = os.fork()
    if child == 0:  # the copy: it lives on while its parent closes the server
        time.sleep(60)
        os._exit(0)
    try:
        FORKER.close()
        assert not processes.wait_until_gone([server], limit=5)
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)


def _parent(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def _servers(processes, job_id: str) -> list[int]:
    return [pid for pid, cmd in processes.of_job(job_id).items() if "_localnode node" in cmd]


@sky.function
def _mark() -> str | None:
    return os.environ.get("SKYWARD_TEST_MARK")


def test_nodes_are_forked_by_one_server_and_take_the_clients_environment_of_the_moment(
    processes, monkeypatch: pytest.MonkeyPatch
) -> None:
    with sky.Compute(provider=sky.Local(), nodes=1, options=QUIET) as first:
        server = _fork_server()
        assert _parent(server) == os.getpid()
        assert [_parent(pid) for pid in _servers(processes, first.job_id)] == [server]
        # Set after the fork server started: the next nodes have it all the same.
        monkeypatch.setenv("SKYWARD_TEST_MARK", "set after the fork server started")
        with sky.Compute(provider=sky.Local(), nodes=2, options=QUIET) as second:
            assert _fork_server() == server  # one per client process
            nodes = {
                pid: cmd for pid, cmd in processes.of_job(second.job_id).items() if pid != server
            }
            servers = _servers(processes, second.job_id)
            assert len(servers) == 2
            assert {_parent(pid) for pid in servers} == {server}
            for pid in servers:  # ps names each node's address and directory
                assert nodes[pid].startswith("skyward_trio._localnode node --addr 127.0.0.")
                assert nodes[pid].rstrip().endswith(tuple(f"/node-{i}" for i in (0, 1)))
            assert _mark() @ second == ["set after the fork server started"] * 2
        assert _mark() >> first is None


def test_a_killed_fork_server_takes_its_nodes_and_the_pool_replaces_them(processes) -> None:
    with sky.Compute(provider=sky.Local(), nodes=2, options=QUIET) as pool:
        server = _fork_server()
        nodes = _servers(processes, pool.job_id)
        assert len(nodes) == 2
        os.kill(server, signal.SIGKILL)
        # Each node sees its parent go and stops, with its worker, as on a dead client.
        assert not processes.wait_until_gone(nodes, limit=10)

        # The pool replaces both, from a new fork server.
        def replaced() -> bool:
            servers = set(_servers(processes, pool.job_id))
            return len(servers) == 2 and servers.isdisjoint(nodes) and pool.current_nodes() == 2

        wait_until(
            replaced,
            "two new nodes",
            timeout=30,
            every=0.05,
        )
        assert sorted(_node_index_sync() @ pool) == [0, 1]
        assert _fork_server() != server
    assert not processes.wait_until_gone(processes.of_job(pool.job_id), limit=10)


@sky.function
def _node_index_sync() -> int:
    return sky.instance_info().node


def test_sync_face_inside_a_running_asyncio_loop() -> None:
    """Like a Jupyter cell: blocking calls from a thread whose asyncio loop is running."""

    @sky.function
    def double(x: int) -> int:
        return 2 * x

    async def cell() -> tuple[int, list[int], asyncio.AbstractEventLoop]:
        loop = asyncio.get_running_loop()
        with sky.Compute(provider=sky.Local(), nodes=2, options=QUIET) as pool:
            one = double(21) >> pool
            every = double(1) @ pool
        assert asyncio.get_running_loop() is loop  # the caller's loop was not touched
        return one, every, loop

    one, every, loop = asyncio.run(cell())
    assert one == 42
    assert every == [2, 2]
    assert loop.is_closed()  # asyncio.run closed its own loop normally


def test_trio_face_runs_inside_an_existing_trio_asyncio_loop() -> None:
    import trio_asyncio

    @skyward_trio.function
    def add(a: int, b: int) -> int:
        return a + b

    async def main() -> int:
        async with (
            trio_asyncio.open_loop(),
            skyward_trio.Compute(provider=skyward_trio.Local(), options=QUIET) as pool,
        ):
            return int(await (add(2, 3) >> pool))

    assert trio.run(main) == 5


def test_workers_import_your_modules_from_the_client_import_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Local node shares this machine's files: a module of yours, importable here, is
    importable on the node, so functions from it travel by reference."""
    (tmp_path / "my_project_helpers.py").write_text(
        "import os\n\ndef where(x):\n    return (x * 2, os.environ.get('SKYWARD_NODE_DIR', ''))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import my_project_helpers  # type: ignore[import-not-found]

    with sky.Compute(provider=sky.Local(), nodes=1, options=QUIET) as pool:
        value, _ = sky.function(my_project_helpers.where)(21) >> pool
        loaded = sky.function(lambda: "my_project_helpers" in sys.modules)() >> pool
    assert value == 42
    assert loaded


async def test_ssh_prefers_aes128_gcm_and_default_provider_is_announced(
    capfd: pytest.CaptureFixture[str],
) -> None:
    async with skyward_trio.Compute(nodes=1) as pool:  # no provider: Local, and it says so
        assert pool._ready[0].ssh.cipher == "aes128-gcm@openssh.com"
    assert "no provider given: using sky.Local()" in capfd.readouterr().err


async def test_partial_readiness_starts_at_min_and_the_rest_join() -> None:
    nodes = skyward_trio.Nodes(desired=3, min=1)
    async with skyward_trio.Compute(
        provider=skyward_trio.Local(), nodes=nodes, options=QUIET
    ) as pool:
        assert pool.current_nodes() >= 1
        while pool.current_nodes() < 3:
            await pool._changed.wait()
        assert sorted(await (skyward_trio.function(_node_index)() @ pool)) == [0, 1, 2]


def _node_index() -> int:
    return skyward_trio.instance_info().node


async def test_closing_the_cluster_stops_a_node_mid_command_and_removes_its_directory(
    processes,
) -> None:
    # A node still being set up when its pool is cancelled is only known to the cluster:
    # closing it must stop the commands it runs (each in its own session), or a bootstrap
    # would go on writing in the directory after it was removed.
    from skyward_trio._providers import LocalCluster

    key = _transport.generate_key()
    public = _transport.public_openssh(key)
    cluster = LocalCluster(skyward_trio.Local(), job_id="closing", client_public_key=public)
    root = cluster.root
    async with trio_asyncio.open_loop():
        try:
            instance = await cluster.provision(0)
            ssh = await _transport.connect(
                instance.host,
                instance.port,
                username=instance.username,
                login=_transport.Login(keys=(key,)),
                host_key=instance.host_key,
            )
            marker = root / "node-0" / "work" / "busy"

            async def run_busy() -> None:
                with contextlib.suppress(_transport.SSHError):  # its node goes under it
                    await ssh.run(f"while true; do mkdir -p {marker}; sleep 0.01; done")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(run_busy)
                with trio.fail_after(30):
                    while not marker.exists():  # noqa: ASYNC110 (a file, no event)
                        await trio.sleep(0.01)
                await cluster.aclose()  # the command still running
            await ssh.aclose()
        finally:
            await cluster.aclose()
    assert not processes.wait_until_gone(processes.mentioning(str(root)))
    await trio.sleep(0.2)  # anything left would have written again by now
    assert not root.exists()


async def test_a_node_that_cannot_start_says_why_with_its_log(tmp_path: Path) -> None:
    from skyward_trio._nodeforks import FORKER
    from skyward_trio._providers import _NodeSays

    # A node directory without its host key: the node starts, then cannot listen.
    stdout = FORKER.request({"addr": "127.0.0.2", "dir": str(tmp_path), "hang_commands": False})
    said = _NodeSays(stdout, tmp_path)
    try:
        assert int(await said.line("PID")) > 0
        with pytest.raises(RuntimeError, match=r"(?s)did not start \(said ''\).*host_key"):
            await said.line("READY")
    finally:
        await stdout.aclose()


_STAND_IN_WORKER = """
import os, signal, subprocess, sys, time
from pathlib import Path
work = Path(sys.argv[2])
if sys.argv[3] == "overstays":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
    def bye(signum, frame):
        time.sleep(0.5)  # a teardown that takes a while
        (work / "bye").write_text("done")
        sys.exit(0)
    signal.signal(signal.SIGTERM, bye)
subprocess.Popen([sys.executable, "-c", "import signal, time; "
                  "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"])
(work / "worker.ready").write_text(str(os.getpid()))
time.sleep(60)
"""


@pytest.mark.parametrize("worker", ["ends", "overstays"])
def test_a_stopping_node_lets_its_worker_end_then_kills_what_is_left(
    tmp_path: Path, worker: str, processes
) -> None:
    """The node's end (SIGTERM, its parent gone) asks the worker to stop and waits for its
    teardown (a plugin's around_app exit); one that overstays is killed, and so is what
    is left of its process group, a child that ignores SIGTERM included."""
    from skyward_trio._localnode import _Node

    work = tmp_path / "node" / "work"
    work.mkdir(parents=True)
    proc = subprocess.Popen(
        [sys.executable, "-c", _STAND_IN_WORKER, "--dir", str(work), worker],
        start_new_session=True,
    )
    try:
        wait_until(lambda: (work / "worker.ready").exists(), "the pid file", timeout=30, every=0.05)
        in_group = lambda: len(processes.in_group(proc.pid)) == 2  # noqa: E731
        wait_until(in_group, "the worker's child", timeout=30, every=0.05)
        node = _Node(tmp_path / "node")
        assert node.workers() == [proc.pid]
        asyncio.run(node.end_workers(grace=30.0 if worker == "ends" else 1.0))
        assert proc.wait(timeout=5) == (0 if worker == "ends" else -signal.SIGKILL)
        assert (work / "bye").exists() == (worker == "ends")
        assert processes.in_group(proc.pid) == []
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def test_a_pool_ends_what_a_task_left_running_on_this_machine(processes) -> None:
    with sky.Compute(provider=sky.Local(), options=sky.Options(console="silent")) as pool:
        pids = sky.function(procs.leave_stubborn_processes)() >> pool
        assert all(processes.is_running(pid) for pid in pids)
    assert not processes.wait_until_gone(pids)


def test_a_preempted_nodes_leftovers_are_ended_when_the_pool_lets_it_go(processes) -> None:
    """sky.testing.preempt SIGKILLs the node and its worker, as a reclaimed machine goes;
    on this machine what the node's tasks started would run on, so the pool's terminate
    of the lost node ends it."""
    leave = sky.function(procs.leave_stubborn_processes)
    with sky.Compute(provider=sky.Local(), nodes=2, options=sky.Options(console="silent")) as pool:
        first, second = leave() @ pool
        sky.testing.preempt(pool, 0)
        assert not processes.wait_until_gone(first, limit=60)
        assert all(processes.is_running(pid) for pid in second)  # node 1's: it runs on
    assert not processes.wait_until_gone(second)

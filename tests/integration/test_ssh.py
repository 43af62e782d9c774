"""``sky.SSH`` against real OpenSSH: two ``sshd`` processes started here, on 127.0.0.2 and
127.0.0.3, each with its own host key, an authorized key made for the test and its own home
directory (``SetEnv HOME``), so each is a separate "machine" that shares nothing with this
client but the package index. Their ``PATH`` holds this interpreter's Python version, so the
bootstrap finds one there; the environment (six, Skyward's wheel) is built once per session.

Their apt reads an empty source list (``APT_CONFIG``, lists and cache under the test's
directory): ``Image(apt=...)`` runs the real apt-get and dpkg of this machine, which has no
package source to reach and installs nothing new — the tests ask only for packages that are
installed, or for one that does not exist.
"""

from __future__ import annotations

import fcntl
import getpass
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy
import procs
import pytest
import sshd
from sshd import keygen, need_sshd, start_sshd, stop
from waiting import wait_until

import skyward as sky
from skyward_trio.testing import _core, _ready_node

if TYPE_CHECKING:
    from conftest import Machines, Processes

QUIET = sky.Options(console="silent")


@pytest.fixture(scope="module")
def mylib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    package = tmp_path_factory.mktemp("includes") / "sshlib_7f3a"
    package.mkdir()
    (package / "__init__.py").write_text("VALUE = 42\n")
    return package


@pytest.fixture(scope="module")
def ssh_pool(machines: Machines, mylib: Path) -> Iterator[sky.Pool]:
    image = sky.Image(pip=["six==1.16.0"], env={"GREETING": "hi"}, includes=[str(mylib)])
    with sky.Compute(provider=machines.provider(), nodes=2, image=image, options=QUIET) as pool:
        yield pool


@sky.function
def _where() -> dict[str, Any]:
    import six  # type: ignore[import-untyped]
    import sshlib_7f3a  # type: ignore[import-not-found]

    return {
        "node": sky.instance_info().node,
        "home": os.environ["HOME"],
        "python": sys.executable,
        "version": f"{sys.version_info.major}.{sys.version_info.minor}",
        "six": six.__version__,
        "greeting": os.environ.get("GREETING"),
        "included": sshlib_7f3a.VALUE,
        "cwd": os.getcwd(),
    }


@sky.function
def _square(x: int) -> int:
    return x * x


@sky.function
def _node_of(x: int) -> tuple[int, int]:
    return sky.instance_info().node, x


@sky.function
def _uses_numpy() -> int:
    return int(numpy.int64(3))  # numpy is here, not on the machines


def test_each_host_is_a_node_with_the_image_built_there(
    ssh_pool: sky.Pool, machines: Machines
) -> None:
    per_node = _where() @ ssh_pool
    assert [r["node"] for r in per_node] == [0, 1]
    for result, machine in zip(per_node, (machines.a, machines.b), strict=True):
        assert result["home"] == str(machine.home)  # it ran on that machine
        envs = machine.home / ".skyward" / "envs"
        assert Path(result["python"]).is_relative_to(envs)  # the venv built there
        # The host had no uv: the bootstrap installed it, with pip, for the user.
        assert (machine.home / ".skyward" / "tools" / "uv" / "bin" / "uv").is_file()
        assert result["version"] == f"{sys.version_info.major}.{sys.version_info.minor}"
        assert result["six"] == "1.16.0"
        assert result["greeting"] == "hi"
        assert result["included"] == 42
        assert Path(result["cwd"]).parent == machine.jobs
        # Skyward itself came from a wheel of this checkout (skyward_source="auto").
        (wheel,) = envs.glob("*/wheels/skyward-*.whl")
        assert wheel.name.startswith(f"skyward-{sky.__version__}-")


def test_every_operator_dispatches_over_openssh(ssh_pool: sky.Pool) -> None:
    assert _square(7) >> ssh_pool == 49
    assert _square(3) @ ssh_pool == [9, 9]
    assert (_square(2) & _square(5)) >> ssh_pool == (4, 25)
    assert (_square(6) > ssh_pool).result(timeout=60) == 36
    assert sky.gather(_square(1), _square(2), _square(3)) >> ssh_pool == (1, 4, 9)
    streamed = sky.gather(_square(4), _square(5), stream=True) >> ssh_pool
    assert list(streamed) == [16, 25]
    assert ssh_pool.map(_square.fn, range(200)) == [x * x for x in range(200)]
    nodes = {node for node, _ in ssh_pool.map(_node_of.fn, range(64))}
    assert nodes == {0, 1}  # both machines took part
    assert ssh_pool.run(_node_of(1), target=1) == (1, 1)


def test_metrics_come_back_from_your_own_machines(ssh_pool: sky.Pool) -> None:
    # The default collectors sample on every host; the first memory sample of each comes
    # within one 3 s interval. The reader stops once it has both (the pool runs on).
    memory: dict[int, sky.Metric] = {}
    stream = ssh_pool.events()

    def read() -> None:
        for event in stream:
            if isinstance(event, sky.Metric) and event.name == "memory_used":
                memory[event.node] = event
                if len(memory) == 2:
                    return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=60)  # a hang guard, not a timing check
    assert not reader.is_alive(), f"metrics came from nodes {sorted(memory)} only"
    stream.close()
    for event in memory.values():
        assert event.unit == "MiB"
        assert (
            0 < event.value * 1024 * 1024 < os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        )


def test_the_handshake_refuses_a_module_missing_on_the_machines(ssh_pool: sky.Pool) -> None:
    expected = (
        rf"numpy {re.escape(numpy.__version__)} here, not installed on node \d: "
        rf'add Image\(pip=\["numpy=={re.escape(numpy.__version__)}"\]\)'
    )
    with pytest.raises(sky.VersionMismatchError, match=expected):
        _uses_numpy() >> ssh_pool


@sky.function
def _count(name: str, times: int) -> int:
    counter = sky.counter(name)
    for _ in range(times):
        counter.increment()
    return sky.instance_info().node


def test_collections_work_on_your_own_machines(ssh_pool: sky.Pool) -> None:
    # Nothing says your machines reach each other: the store runs in the client, and each
    # node reaches it through its own SSH connection (OpenSSH streamlocal forwarding).
    assert ssh_pool._core._supervisor is not None
    assert ssh_pool._core._supervisor.store is not None
    nodes = sky.gather(*[_count("ssh-hits", 25) for _ in range(4)]) >> ssh_pool
    assert set(nodes) == {0, 1}
    assert ssh_pool.counter("ssh-hits").value == 100


def test_host_keys_are_pinned_on_first_use(ssh_pool: sky.Pool, machines: Machines) -> None:
    pinned = (Path.home() / ".skyward" / "known_hosts").read_text().splitlines()
    for machine in (machines.a, machines.b):
        public = " ".join(machine.host_key.with_suffix(".pub").read_text().split()[:2])
        assert f"[{machine.addr}]:{machine.port} {public}" in pinned


def _refused_with(provider: sky.SSH, pattern: str) -> None:
    with (
        pytest.raises(sky.ProvisionError, match=pattern),
        sky.Compute(provider=provider, nodes=1, options=QUIET),
    ):
        pytest.fail("the pool came up with a host key nobody trusts")


def test_a_changed_host_key_is_refused_with_the_line_to_fix(
    machines: Machines, tmp_path: Path, processes: Processes
) -> None:
    authorized = machines.root / "authorized_keys"
    machine = start_sshd(tmp_path, "c", "127.0.0.3", authorized)
    try:
        provider = machines.provider(machine)
        name = f"[{machine.addr}]:{machine.port}"
        other = tmp_path / "other"
        keygen(other)
        wrong = " ".join(other.with_suffix(".pub").read_text().split()[:2])
        # Pinned by Skyward earlier, and the machine's key changed since: refused.
        pins = Path.home() / ".skyward" / "known_hosts"
        pins.parent.mkdir(parents=True, exist_ok=True)  # no pool pinned anything yet
        with pins.open("a") as file:
            file.write(f"{name} {wrong}\n")
        line = len(pins.read_text().splitlines())
        _refused_with(
            provider,
            rf"the host key of {machine.addr}:{machine.port} does not match "
            rf"{re.escape(str(pins))} line {line}: .*ssh-keygen -R",
        )
        # What ssh itself trusts comes first, and is held to the same rule.
        known = Path.home() / ".ssh" / "known_hosts"
        known.parent.mkdir(exist_ok=True)
        known.write_text(f"# a comment\n{name} {wrong}\n")
        _refused_with(provider, rf"does not match {re.escape(str(known))} line 2:")
        known.unlink()
    finally:
        stop(machine)
    assert not processes.mentioning(str(tmp_path))


@sky.function
def _home_and_greeting() -> tuple[str, str | None]:
    return os.environ["HOME"], os.environ.get("GREETING")


def test_a_named_pool_from_skyward_toml_runs_on_the_hosts_it_names(
    machines: Machines, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = machines.a, machines.b
    toml = textwrap.dedent(
        f"""
        [providers.lab]
        type = "ssh"
        hosts = ["{a.addr}:{a.port}", {{ host = "{b.addr}", port = {b.port} }}]
        key = "{machines.key}"

        [pools.lab]
        provider = "lab"
        nodes = 2
        console = "silent"
        image.env.GREETING = "from skyward.toml"
        """
    )
    (tmp_path / "skyward.toml").write_text(toml)
    monkeypatch.chdir(tmp_path)
    with sky.Compute(name="lab") as pool:
        assert _home_and_greeting() @ pool == [
            (str(a.home), "from skyward.toml"),
            (str(b.home), "from skyward.toml"),
        ]


def test_hardware_minimums_are_measured_on_each_host_before_anything_starts(
    machines: Machines, capfd: pytest.CaptureFixture[str]
) -> None:
    # The two "machines" are this one: nproc, /proc/meminfo and uname say what it has.
    cpus = len(os.sched_getaffinity(0))
    arch = {"amd64": "x86_64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)
    too_many = sky.Spec(provider=machines.provider(), nodes=2, vcpus=cpus + 1)
    fits = sky.Spec(
        provider=machines.provider(),
        nodes=2,
        vcpus=cpus,
        memory_gb=0.5,
        disk_gb=1,
        architecture=arch,  # type: ignore[arg-type]
    )
    options = sky.Options(console="log", selection="first")
    with sky.Compute(too_many, fits, options=options) as pool:
        assert pool.spec == fits
        assert len(_home_and_greeting() @ pool) == 2
    assert (
        f"skipped spec 1 of 2 (sky.SSH()): vcpus={cpus + 1}: host {machines.a.addr} has "
        f"{cpus} vCPUs; vcpus={cpus + 1}: host {machines.b.addr} has {cpus} vCPUs"
    ) in capfd.readouterr().err
    with (
        pytest.raises(sky.NoOfferError, match=rf"memory_gb=100000: host {machines.a.addr} has"),
        sky.Compute(provider=machines.provider(machines.a), memory_gb=100_000, options=QUIET),
    ):
        pytest.fail("a host was taken that has less memory than asked for")


def test_teardown_leaves_no_process_and_no_work_directory(
    machines: Machines, processes: Processes
) -> None:
    with sky.Compute(provider=machines.provider(), nodes=2, options=QUIET) as pool:
        workdirs = [Path(r["cwd"]) for r in _cwd() @ pool]
        pids = [r["pid"] for r in _cwd() @ pool]
        assert all(d.is_dir() for d in workdirs)
        assert processes.mentioning(str(workdirs[0]))  # the worker, while the pool is open
    assert not any(d.exists() for d in workdirs)
    assert not processes.wait_until_gone(pids)
    for workdir in workdirs:  # this pool's: the module's shared pool is still open
        assert not processes.mentioning(str(workdir))
    for machine in (machines.a, machines.b):
        assert processes.is_running(machine.pid)  # the machine (its sshd) is left running


def test_teardown_ends_what_a_task_left_running_on_the_host(
    machines: Machines, processes: Processes
) -> None:
    image = sky.Image(includes=[procs.__file__])  # the task's module, on the node
    with sky.Compute(provider=machines.provider(machines.a), image=image, options=QUIET) as pool:
        pids = sky.function(procs.leave_stubborn_processes)() >> pool
        assert all(processes.is_running(pid) for pid in pids)
    assert not processes.wait_until_gone(pids)


def test_a_killed_worker_is_restarted_on_its_host_and_no_call_is_lost(
    machines: Machines, processes: Processes
) -> None:
    with sky.Compute(provider=machines.provider(), nodes=2, options=QUIET) as pool:
        before = _cwd() @ pool
        sky.testing.kill_worker(pool, 1)
        # Calls on the dead worker are sent again; every result arrives once, in order.
        assert pool.map(_square.fn, range(100)) == [x * x for x in range(100)]
        supervisor = pool._core._supervisor
        assert supervisor is not None
        deadline = time.monotonic() + 120  # a hang guard only
        while True:
            node = pool._core._ready.get(1)
            if node is not None and node.conn.usable and node.conn.worker_pid != before[1]["pid"]:
                break
            assert time.monotonic() < deadline, "node 1's worker was not restarted"
            time.sleep(0.05)
        after = _cwd() @ pool
        assert supervisor.ledger.instances == 2  # restarted in place: no new machine
    assert after[1]["pid"] != before[1]["pid"]
    assert Path(after[1]["cwd"]).parent == machines.b.jobs  # the same host, a fresh worker
    assert not processes.wait_until_gone([r["pid"] for r in (*before, *after)])
    assert not any(Path(r["cwd"]).exists() for r in (*before, *after))


def test_a_bootstrap_cut_short_leaves_nothing_running_on_the_host(
    machines: Machines, processes: Processes, tmp_path: Path
) -> None:
    # OpenSSH ends neither a command whose channel closes nor one whose connection
    # closes: teardown must find what a bootstrap that timed out left running.
    marker = "7f3a-stuck"
    started = tmp_path / "started"
    stuck = f"touch {started}; exec -a {marker} sleep 300"
    image = sky.Image(shell_vars={"STUCK": stuck}, bootstrap_timeout=15)  # the venv is built by now
    options = sky.Options(console="silent", max_provision_attempts=1)
    before = set(machines.a.jobs.iterdir()) if machines.a.jobs.exists() else set()
    with (
        pytest.raises(sky.ProvisionError, match=r"node 0 failed during bootstrap"),
        sky.Compute(provider=machines.provider(machines.a), nodes=1, image=image, options=options),
    ):
        pytest.fail("the pool came up with a bootstrap that never ends")
    assert started.exists()  # the bootstrap did reach the stuck step
    assert not processes.wait_until_gone(processes.mentioning(marker))
    assert set(machines.a.jobs.iterdir()) == before  # its work directory is gone too


@sky.function
def _cwd() -> dict[str, Any]:
    return {"cwd": os.getcwd(), "pid": os.getpid()}


def test_a_missing_sshd_skips_here_and_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sshd, "SSHD", "/nonexistent/sshd")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"CI must run the sky\.SSH tests"):
        need_sshd()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        need_sshd()


# -- Image(apt=...) ------------------------------------------------------------------------------

DPKG_LOCK = "/var/lib/dpkg/lock-frontend"


def _need_apt() -> None:
    if shutil.which("apt-get") is None or shutil.which("dpkg-query") is None:
        pytest.skip("Image(apt=...) needs a Debian or Ubuntu machine (apt-get, dpkg-query)")


def _debug_log(path: Path) -> sky.Options:
    return sky.Options(
        console="silent",
        max_provision_attempts=1,
        logging=sky.LogConfig(file=str(path), level="DEBUG", console=False),
    )


def test_apt_packages_already_installed_leave_the_apt_phase_nothing_to_do(
    machines: Machines, tmp_path: Path
) -> None:
    _need_apt()
    image = sky.Image(apt=["openssh-server"])
    provider = machines.provider(machines.a)
    first, second = tmp_path / "first.log", tmp_path / "second.log"
    with sky.Compute(provider=provider, nodes=1, image=image, options=_debug_log(first)) as pool:
        assert _square(3) >> pool == 9
    log = first.read_text()
    assert "node 0 bootstrap: SKYWARD_PHASE apt" in log
    assert "apt: openssh-server already installed: nothing to do" in log
    assert "apt: installing" not in log  # neither apt-get update nor install ran
    # The same image on the same machine: its environment is there, apt is not even asked.
    with sky.Compute(provider=provider, nodes=1, image=image, options=_debug_log(second)) as pool:
        assert _square(4) >> pool == 16
    assert "apt: this image is installed here already, openssh-server with it: skipped" in (
        second.read_text()
    )


def test_a_package_apt_does_not_know_fails_the_apt_phase_with_apts_message(
    machines: Machines, tmp_path: Path
) -> None:
    _need_apt()
    image = sky.Image(apt=["skyward-no-such-package-7f3a"])
    pattern = (
        r"node 0 failed during bootstrap: the bootstrap script failed in its 'apt' phase "
        r"\(exit status \d+\); its last lines:\n.*"
        r"E: Unable to locate package skyward-no-such-package-7f3a"
    )
    with (
        pytest.raises(sky.ProvisionError, match=re.compile(pattern, re.DOTALL)),
        sky.Compute(
            provider=machines.provider(machines.a),
            nodes=1,
            image=image,
            options=_debug_log(tmp_path / "log"),
        ),
    ):
        pytest.fail("the pool came up without its apt package")


def _waiting_for_the_lock(processes: Processes) -> bool:
    """Whether an apt-get of the bootstrap is in its wait for the dpkg lock (asleep between
    tries: nothing else puts apt-get to sleep)."""
    for pid in processes.mentioning("DPkg::Lock::Timeout="):
        try:
            if "nanosleep" in Path(f"/proc/{pid}/wchan").read_text():
                return True
        except OSError:
            continue
    return False


def test_the_apt_phase_waits_for_the_dpkg_lock_and_then_succeeds(
    machines: Machines, tmp_path: Path, processes: Processes
) -> None:
    _need_apt()
    version = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", "openssh-server"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    # Pinned to the version installed: dpkg-query does not find it by that name, so
    # apt-get runs, takes the lock, and has nothing to change.
    image = sky.Image(apt=[f"openssh-server={version}"])
    log = tmp_path / "log"
    results: dict[str, object] = {}

    def run_pool() -> None:
        try:
            provider = machines.provider(machines.a)
            with sky.Compute(provider=provider, nodes=1, image=image, options=_debug_log(log)) as p:
                results["value"] = _square(6) >> p
        except BaseException as exc:
            results["error"] = exc

    # Held the way dpkg holds it: an fcntl write lock on lock-frontend, released on close.
    lock = os.open(DPKG_LOCK, os.O_RDWR | os.O_CREAT, 0o640)
    pool = threading.Thread(target=run_pool)
    try:
        fcntl.lockf(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        pool.start()
        wait_until(
            lambda: _waiting_for_the_lock(processes) or not pool.is_alive(),
            "apt-get to wait for the dpkg lock",
            timeout=180,
            every=0.05,
        )
        time.sleep(2)  # held a couple of seconds more: apt-get keeps waiting
        assert pool.is_alive(), results
    finally:
        os.close(lock)
    pool.join(timeout=180)
    assert not pool.is_alive()
    assert results == {"value": 36}
    text = log.read_text()
    assert f"Could not get lock {DPKG_LOCK}. It is held by process {os.getpid()}" in text
    assert f"openssh-server is already the newest version ({version})" in text
    # Nothing of this test holds the lock any more.
    probe = os.open(DPKG_LOCK, os.O_RDWR)
    try:
        fcntl.lockf(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(probe)


# -- logging in like ssh: the agent, ~/.ssh/config, passphrases ----------------------------------


@pytest.fixture
def agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A real ssh-agent of this test's own, named by SSH_AUTH_SOCK; stopped by its pid."""
    path = str(tmp_path / "agent.sock")
    proc = subprocess.Popen(["ssh-agent", "-D", "-a", path], stdout=subprocess.DEVNULL)
    try:
        # The socket's file exists from its bind, a moment before the agent listens on it.
        wait_until(lambda: _answers(path), "ssh-agent to listen", timeout=30, every=0.02)
        monkeypatch.setenv("SSH_AUTH_SOCK", path)
        yield path
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _answers(path: str) -> bool:
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


def _homes(pool: sky.Pool) -> list[str]:
    return [r["home"] for r in _home() @ pool]


@sky.function
def _home() -> dict[str, Any]:
    return {"home": os.environ["HOME"]}


def test_with_no_key_given_the_ssh_agent_logs_in(
    machines: Machines, bare_home: Path, agent: str
) -> None:
    subprocess.run(
        ["ssh-add", "-q", str(machines.key)],
        env={**os.environ, "SSH_AUTH_SOCK": agent},
        check=True,
        capture_output=True,
    )
    assert not list((bare_home / ".ssh").iterdir())  # no key file here: only the agent has it
    provider = sky.SSH(hosts=[f"{machines.a.addr}:{machines.a.port}"])
    with sky.Compute(provider=provider, nodes=1, options=QUIET) as pool:
        assert _homes(pool) == [str(machines.a.home)]


def test_an_empty_agent_is_refused_naming_what_was_offered(
    machines: Machines, bare_home: Path, agent: str
) -> None:
    provider = sky.SSH(hosts=[f"{machines.a.addr}:{machines.a.port}"])
    options = sky.Options(console="silent", max_provision_attempts=1)
    with (
        pytest.raises(
            sky.ProvisionError,
            match=rf"the SSH agent at {re.escape(agent)} holds no key and no key file could "
            r"be used \(offered: the SSH agent's keys .*\)\. ssh-add your key, or pass "
            r"SSH\(key=\.\.\.\)",
        ),
        sky.Compute(provider=provider, nodes=1, options=options),
    ):
        pytest.fail("the pool came up with nothing to log in with")


def test_a_refused_login_names_every_key_offered(
    machines: Machines, bare_home: Path, agent: str
) -> None:
    stranger = bare_home / ".ssh" / "id_ed25519"
    keygen(stranger)  # authorized nowhere
    provider = sky.SSH(hosts=[f"{machines.a.addr}:{machines.a.port}"])
    options = sky.Options(console="silent", max_provision_attempts=1)
    with (
        pytest.raises(
            sky.ProvisionError,
            match=rf"{getpass.getuser()} was refused \(offered: the SSH agent's keys "
            rf"\({re.escape(agent)}\), {re.escape(str(stranger))}\)",
        ),
        sky.Compute(provider=provider, nodes=1, options=options),
    ):
        pytest.fail("the pool came up with a key the machine does not accept")


def test_ssh_config_aliases_resolve_and_explicit_arguments_win(
    machines: Machines, bare_home: Path
) -> None:
    me = getpass.getuser()
    (bare_home / ".ssh" / "config").write_text(
        f"Host skyward-a\n"
        f"  HostName {machines.a.addr}\n"
        f"  Port {machines.a.port}\n"
        f"  User {me}\n"
        f"  IdentityFile {machines.key}\n"
        f"Host skyward-b\n"
        f"  HostName {machines.b.addr}\n"
        f"  IdentityFile {machines.key}\n"
        # Everything below is overridden by what sky.SSH is given.
        f"Host *\n"
        f"  Port 1\n"
        f"  User nobody-7f3a\n"
    )
    provider = sky.SSH(hosts=["skyward-a", f"{me}@skyward-b:{machines.b.port}"])
    with sky.Compute(provider=provider, nodes=2, options=QUIET) as pool:
        assert _homes(pool) == [str(machines.a.home), str(machines.b.home)]
    # Host keys are pinned under the address the alias stands for, as ssh records them.
    pinned = (bare_home / ".skyward" / "known_hosts").read_text()
    assert f"[{machines.a.addr}]:{machines.a.port} " in pinned
    assert "skyward-a" not in pinned
    # A pool's connections to its own nodes read no config: Local nodes ignore "Port 1".
    with sky.Compute(provider=sky.Local(), nodes=1, options=QUIET) as pool:
        assert _square(2) >> pool == 4


def test_a_host_behind_a_proxy_jump_is_reached_through_it(
    machines: Machines, bare_home: Path
) -> None:
    me = getpass.getuser()
    authorized = machines.root / "authorized_keys"
    # A bastion on 127.0.0.4 that logs each forwarding it opens (debug1).
    gate = start_sshd(
        machines.root, "gate", "127.0.0.4", authorized, extra_config="LogLevel DEBUG1\n"
    )
    # One that forwards nothing, as a locked-down bastion would.
    shut = start_sshd(
        machines.root, "shut", "127.0.0.5", authorized, extra_config="AllowTcpForwarding no\n"
    )
    try:
        (bare_home / ".ssh" / "config").write_text(
            f"Host behind\n"
            f"  HostName {machines.b.addr}\n"
            f"  Port {machines.b.port}\n"
            f"  ProxyJump bastion\n"
            f"Host walled\n"
            f"  HostName {machines.b.addr}\n"
            f"  Port {machines.b.port}\n"
            f"  ProxyJump {me}@127.0.0.5:{shut.port}\n"
            f"Host bastion\n"
            f"  HostName 127.0.0.4\n"
            f"  Port {gate.port}\n"
            f"Host *\n"
            f"  User {me}\n"
            f"  IdentityFile {machines.key}\n"
        )
        with sky.Compute(provider=sky.SSH(hosts=["behind"]), nodes=1, options=QUIET) as pool:
            assert _homes(pool) == [str(machines.b.home)]
            gate_log = machines.root / "gate" / "sshd.log"
            onward = f"target {machines.b.addr} port {machines.b.port}"
            before = gate_log.read_text().count(onward)
            assert before  # it went through the bastion
            # Cut the connection at the bastion (the fault kit's drop_connection, which is
            # for Local pools): the pool reconnects through it, and the call still returns.
            _ready_node(_core(pool), 0).ssh.break_connection()
            assert _square(9) >> pool == 81
            assert gate_log.read_text().count(onward) > before
            # The collections store (in the client) is reached through the bastion too.
            assert _count("behind-hits", 5) >> pool == 0
            assert pool.counter("behind-hits").value == 5
        # The same bastion given to SSH(proxy_jump=...), as ssh -J, with no alias at all.
        behind = sky.SSH(
            hosts=[f"{machines.b.addr}:{machines.b.port}"],
            key=str(machines.key),
            proxy_jump=f"{me}@127.0.0.4:{gate.port}",
        )
        seen = gate_log.read_text().count(onward)
        with sky.Compute(provider=behind, nodes=1, options=QUIET) as pool:
            assert _square(4) >> pool == 16
        assert gate_log.read_text().count(onward) > seen
        # Both machines' keys are pinned, each under its own address.
        pinned = (bare_home / ".skyward" / "known_hosts").read_text()
        assert f"[127.0.0.4]:{gate.port} " in pinned
        assert f"[{machines.b.addr}]:{machines.b.port} " in pinned
        options = sky.Options(console="silent", max_provision_attempts=1)
        walled = sky.SSH(hosts=["walled"])
        refusal = (
            rf"the jump host 127\.0\.0\.5:{shut.port} would not open a connection to "
            rf"{machines.b.addr}:{machines.b.port} .*Its sshd must allow forwarding"
        )
        with (
            pytest.raises(sky.ProvisionError, match=refusal),
            sky.Compute(provider=walled, nodes=1, options=options),
        ):
            pytest.fail("the pool came up through a bastion that forwards nothing")
    finally:
        stop(gate)
        stop(shut)


def test_a_host_behind_a_proxy_command_is_reached_through_it(
    machines: Machines, bare_home: Path
) -> None:
    me = getpass.getuser()
    authorized = machines.root / "authorized_keys"
    gate = start_sshd(
        machines.root, "cmdgate", "127.0.0.7", authorized, extra_config="LogLevel DEBUG1\n"
    )
    try:
        # OpenSSH's own client as the command, as ProxyCommand ssh -W is written.
        command = (
            f"ssh -F /dev/null -q -i {machines.key} -o BatchMode=yes "
            "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
            f"-p {gate.port} -W %h:%p {me}@127.0.0.7"
        )
        (bare_home / ".ssh" / "config").write_text(
            f"Host viacommand\n  HostName {machines.b.addr}\n  Port {machines.b.port}\n"
            f"  ProxyCommand {command}\n"
            f"Host refused\n  HostName {machines.b.addr}\n  Port {machines.b.port}\n"
            "  ProxyCommand sh -c 'echo the bastion says no >&2; exit 3'\n"
            f"Host *\n  User {me}\n  IdentityFile {machines.key}\n"
        )
        with sky.Compute(provider=sky.SSH(hosts=["viacommand"]), nodes=1, options=QUIET) as pool:
            assert _homes(pool) == [str(machines.b.home)]
            assert _count("via-command", 3) >> pool == 0
            assert pool.counter("via-command").value == 3
        log = (machines.root / "cmdgate" / "sshd.log").read_text()
        assert f"target {machines.b.addr} port {machines.b.port}" in log  # it went through
        running = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        assert f"-p {gate.port} -W" not in running  # every command ended with its connection
        options = sky.Options(console="silent", max_provision_attempts=1)
        with (
            pytest.raises(sky.ProvisionError, match=r"ProxyCommand .*: the bastion says no"),
            sky.Compute(provider=sky.SSH(hosts=["refused"]), nodes=1, options=options),
        ):
            pytest.fail("a ProxyCommand that exits at once gave a connection")
    finally:
        stop(gate)


def test_a_key_certified_by_the_machines_ca_logs_in_with_its_certificate(
    machines: Machines, bare_home: Path
) -> None:
    me = getpass.getuser()
    ca = machines.root / "user_ca"
    if not ca.exists():
        keygen(ca)
    nobody = machines.root / "no_authorized_keys"
    nobody.write_text("")
    # A machine that trusts certificates its CA signed, and no key by itself.
    certs = start_sshd(
        machines.root, "certs", "127.0.0.6", nobody, extra_config=f"TrustedUserCAKeys {ca}.pub\n"
    )
    try:
        key = bare_home / ".ssh" / "id_ed25519"
        keygen(key)
        host = f"127.0.0.6:{certs.port}"
        options = sky.Options(console="silent", max_provision_attempts=1)
        with (
            pytest.raises(sky.ProvisionError, match=rf"was refused \(offered: the key {key}\)"),
            sky.Compute(provider=sky.SSH(hosts=[host], key=str(key)), nodes=1, options=options),
        ):
            pytest.fail("a key no machine authorizes logged in without a certificate")
        signed = ["ssh-keygen", "-q", "-s", str(ca), "-I", "skyward-test", "-n", me, "-V", "+1h"]
        subprocess.run([*signed, f"{key}.pub"], check=True)  # writes id_ed25519-cert.pub
        # Found beside the key, where ssh looks for it.
        with sky.Compute(
            provider=sky.SSH(hosts=[host], key=str(key)), nodes=1, options=QUIET
        ) as pool:
            assert _homes(pool) == [str(certs.home)]
        # Named by the config's CertificateFile, anywhere.
        elsewhere = bare_home / "issued-cert.pub"
        os.rename(f"{key}-cert.pub", elsewhere)
        (bare_home / ".ssh" / "config").write_text(
            f"Host certified\n  HostName 127.0.0.6\n  Port {certs.port}\n  User {me}\n"
            f"  IdentityFile {key}\n  CertificateFile {elsewhere}\n"
        )
        with sky.Compute(provider=sky.SSH(hosts=["certified"]), nodes=1, options=QUIET) as pool:
            assert _square(5) >> pool == 25
    finally:
        stop(certs)


def test_identity_agent_and_identities_only_choose_what_is_offered(
    machines: Machines, bare_home: Path, agent: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    me = getpass.getuser()
    host = f"{machines.a.addr}:{machines.a.port}"
    options = sky.Options(console="silent", max_provision_attempts=1)

    def ssh_add(*keys: Path) -> None:
        env = {**os.environ, "SSH_AUTH_SOCK": agent}
        subprocess.run(["ssh-add", "-q", *map(str, keys)], env=env, check=True, capture_output=True)

    # IdentityAgent names the agent: SSH_AUTH_SOCK is not needed.
    ssh_add(machines.key)
    monkeypatch.delenv("SSH_AUTH_SOCK")
    config = bare_home / ".ssh" / "config"
    config.write_text(f"Host *\n  User {me}\n  IdentityAgent {agent}\n")
    with sky.Compute(provider=sky.SSH(hosts=[host]), nodes=1, options=QUIET) as pool:
        assert _homes(pool) == [str(machines.a.home)]
    # An agent full of other keys: sshd gives up (MaxAuthTries 6) before the file's key,
    # unless IdentitiesOnly keeps the agent's other keys out.
    subprocess.run(["ssh-add", "-q", "-D"], env={**os.environ, "SSH_AUTH_SOCK": agent}, check=True)
    strangers = [bare_home / f"stranger{n}" for n in range(7)]
    for stranger in strangers:
        keygen(stranger)
    ssh_add(*strangers)
    config.write_text(
        f"Host *\n  User {me}\n  IdentityAgent {agent}\n  IdentityFile {machines.key}\n"
    )
    with (
        pytest.raises(
            sky.ProvisionError,
            match=r"Too many authentication failures \(the SSH agent offered its 7 key\(s\) "
            r"first, .*add IdentitiesOnly yes",
        ),
        sky.Compute(provider=sky.SSH(hosts=[host]), nodes=1, options=options),
    ):
        pytest.fail("sshd let seven wrong keys go by")
    config.write_text(
        f"Host *\n  User {me}\n  IdentityAgent {agent}\n  IdentityFile {machines.key}\n"
        "  IdentitiesOnly yes\n"
    )
    with sky.Compute(provider=sky.SSH(hosts=[host]), nodes=1, options=QUIET) as pool:
        assert _homes(pool) == [str(machines.a.home)]
    # IdentityAgent none: no agent, even with SSH_AUTH_SOCK set.
    monkeypatch.setenv("SSH_AUTH_SOCK", agent)
    config.write_text(f"Host *\n  User {me}\n  IdentityAgent none\n")
    with pytest.raises(FileNotFoundError, match="no SSH agent running"):
        sky.Compute(provider=sky.SSH(hosts=[host]), nodes=1, options=options)


def test_a_passphrase_protected_key_logs_in_with_its_passphrase(
    machines: Machines, bare_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secret = "7f3a correct horse battery"
    locked = bare_home / "locked_ed25519"
    shutil.copy(machines.key, locked)  # the authorized key, with a passphrase now
    subprocess.run(
        ["ssh-keygen", "-q", "-p", "-P", "", "-N", secret, "-f", str(locked)],
        check=True,
        capture_output=True,
    )
    host = f"{machines.a.addr}:{machines.a.port}"
    with pytest.raises(ValueError, match=r"is passphrase-protected and no passphrase was given"):
        sky.Compute(provider=sky.SSH(hosts=[host], key=str(locked)), nodes=1)
    monkeypatch.setenv("SKYWARD_TEST_KEY_PASSPHRASE", secret)
    provider = sky.SSH(hosts=[host], key=str(locked), passphrase_env="SKYWARD_TEST_KEY_PASSPHRASE")
    log = tmp_path / "log"
    options = sky.Options(
        console="silent", logging=sky.LogConfig(file=str(log), level="DEBUG", console=False)
    )
    with sky.Compute(provider=provider, nodes=1, options=options) as pool:
        assert _homes(pool) == [str(machines.a.home)]
    assert secret not in log.read_text()

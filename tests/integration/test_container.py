"""``sky.Container`` for real, with podman: containers running sshd on a private network.

No registry is reachable here, so the node image is built offline, once, by
``scripts/container/build_node_image.sh`` (debootstrap + ``podman import``, this machine's
Pythons 3.11-3.13 and uv baked in) and kept across test runs in a podman storage of the
tests' own (``/var/tmp/skyward-test-podman``, or ``$SKYWARD_TEST_PODMAN``), tagged with
the hash of what built it: a changed script builds a new one. podman reads only the
configuration written there (``CONTAINERS_CONF``, ``CONTAINERS_STORAGE_CONF``), never the
machine's ``/etc/containers``. The containers reach the package index through the bridge
network (the host's CA certificates are baked in), where uv fetches Skyward's dependencies.

Skipped where podman, runc or debootstrap is missing; under ``CI=true`` they fail instead.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
import trio
from clients import killed_client
from needs import unavailable
from waiting import wait_until

import skyward as sky
import skyward_trio
from skyward_trio import _transport
from skyward_trio._container import ContainerCluster

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts" / "container"
QUIET = sky.Options(console="silent")
NEEDED = ("podman", "runc", "debootstrap", "iptables")
REPOSITORY = "localhost/skyward-test-node"


@attrs.frozen
class Podman:
    """The tests' podman: its image, and its configuration in the environment."""

    image: str
    workdir: Path

    def provider(self, **kwargs: str) -> sky.Container:
        return sky.Container(image=self.image, binary="podman", **kwargs)


def _need_tools() -> None:
    missing = [tool for tool in NEEDED if shutil.which(tool) is None]
    if not missing and os.getuid() == 0:
        return
    message = f"{', '.join(missing)} missing (apt-get install -y {' '.join(NEEDED)})"
    if not missing:  # debootstrap and chroot build the image; podman runs rootful
        message = "the sky.Container tests build their image and run podman as root"
    unavailable(message, suite="sky.Container")


def _pythons() -> list[Path]:
    """pyenv's 3.11-3.13 (one image serves each nox session), the client's among them."""
    home = Path(pwd.getpwuid(os.getuid()).pw_dir)  # HOME is a test directory here
    found = {Path(sys.base_prefix).resolve()}
    for minor in ("11", "12", "13"):
        found.update(p.resolve() for p in (home / ".pyenv" / "versions").glob(f"3.{minor}.*"))
    return sorted(found)


def _configure(workdir: Path) -> dict[str, str]:
    """podman's configuration files under ``workdir``; the variables that select them."""
    conf = (SCRIPTS / "containers.conf").read_text()
    conf = conf.replace("[engine]\n", f'[engine]\ntmp_dir = "{workdir}/tmp"\n')
    conf += f'[network]\nnetwork_config_dir = "{workdir}/networks"\n'
    (workdir / "containers.conf").write_text(conf)
    (workdir / "storage.conf").write_text(
        f'[storage]\ndriver = "overlay"\ngraphroot = "{workdir}/storage"\n'
        f'runroot = "{workdir}/run"\n'
    )
    return {
        "CONTAINERS_CONF": str(workdir / "containers.conf"),
        "CONTAINERS_STORAGE_CONF": str(workdir / "storage.conf"),
        # No registry is reachable: short names resolve nowhere rather than prompt.
        "CONTAINERS_REGISTRIES_CONF": str(workdir / "registries.conf"),
    }


def _podman(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, check=check)


@pytest.fixture(scope="session")
def podman() -> Iterator[Podman]:
    _need_tools()
    workdir = Path(os.environ.get("SKYWARD_TEST_PODMAN", "/var/tmp/skyward-test-podman"))
    workdir.mkdir(parents=True, exist_ok=True)
    uv = Path(sys.executable).parent / "uv"
    if not uv.exists():
        pytest.fail(f"{uv} is missing: install the test extras (pip install -e '.[test]')")
    pythons = _pythons()
    script = SCRIPTS / "build_node_image.sh"
    identity = hashlib.sha256()
    for part in (script.read_bytes(), (SCRIPTS / "containers.conf").read_bytes()):
        identity.update(part)
    identity.update(" ".join(map(str, pythons)).encode())
    image = f"{REPOSITORY}:{identity.hexdigest()[:12]}"
    with pytest.MonkeyPatch.context() as mp:
        for name, value in _configure(workdir).items():
            mp.setenv(name, value)
        (workdir / "registries.conf").write_text("unqualified-search-registries = []\n")
        with open(workdir / "build.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another session may be building it
            if _podman("image", "exists", image, check=False).returncode != 0:
                began = time.monotonic()
                subprocess.run(
                    [str(script), str(workdir / "build"), image, str(uv), *map(str, pythons)],
                    check=True,
                    stdout=subprocess.DEVNULL,
                )
                print(f"built {image} in {time.monotonic() - began:.0f} s")
            listed = _podman("images", "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
            stale = [i for i in listed if i.startswith(f"{REPOSITORY}:") and i != image]
            if stale:  # built by an older script: only this one is used any more
                _podman("rmi", "--force", *stale)
        yield Podman(image=image, workdir=workdir)


def _labelled(kind: str) -> set[str]:
    """Names of the containers or networks any pool labelled (``skyward.job``)."""
    if kind == "container":
        args = ["ps", "--all", "--format", "{{.Names}}"]
    else:
        args = ["network", "ls", "--format", "{{.Name}}"]
    out = _podman(*args, "--filter", "label=skyward.job").stdout
    return {line for line in out.split() if line}


def _forwarded() -> set[str]:
    """The ports podman forwards from 127.0.0.1 to a pool's containers, each as
    ``"<network> <port>"``: netavark's DNAT rules, which name the network. One left after
    its container is gone makes 127.0.0.1:<port> reach nothing, for every program here."""
    rules = subprocess.run(
        ["iptables", "-t", "nat", "-S", "NETAVARK-HOSTPORT-DNAT"],
        capture_output=True,
        text=True,
        check=False,  # no such chain before netavark's first forward on this machine
    ).stdout
    found = re.findall(r"--dport (\d+) .*dnat name: (skyward-\S+)", rules)
    return {f"{network} {port}" for port, network in found}


def _everything() -> set[str]:
    return _labelled("container") | _labelled("network") | _forwarded()


@sky.function
def _whoami() -> tuple[int, str, str, str, str | None]:
    import os
    import socket

    info = sky.instance_info()
    if info is None:  # no assert here: pytest rewrites it into a call of its own module
        raise RuntimeError("not on a node")
    node_pid = os.environ.get("SKYWARD_NODE_PID")  # set by sshd (SetEnv): the lease's target
    return (
        info.node,
        socket.gethostname(),
        info.peers[info.node].private_ip,
        sys.version[:4],
        node_pid,
    )


@sky.function
def _share(key: str) -> list[str]:
    """Node i writes its name, waits at a barrier for all, then reads what each wrote."""
    import socket

    info = sky.instance_info()
    if info is None:
        raise RuntimeError("not on a node")
    shared = sky.dict(key)
    shared[str(info.node)] = socket.gethostname()
    sky.barrier(key + "-all", info.total_nodes).wait()
    return [shared[str(i)] for i in range(info.total_nodes)]


def test_a_two_node_pool_runs_on_two_containers_and_leaves_nothing(podman: Podman) -> None:
    before = _everything()
    with sky.Compute(provider=podman.provider(), nodes=2, options=QUIET) as pool:
        job = pool.job_id
        mine = _labelled("container") - before
        assert len(mine) == 2, mine
        assert _labelled("network") - before == {f"skyward-{job}"}
        results = _whoami() @ pool
        assert [r[0] for r in results] == [0, 1]
        hosts = {r[1] for r in results}
        assert hosts == mine  # each node is its own container, named so
        addresses = [r[2] for r in results]
        assert len(set(addresses)) == 2
        assert not any(a.startswith("127.") for a in addresses)
        assert {r[3] for r in results} == {sys.version[:4]}  # the client's Python X.Y
        assert {r[4] for r in results} == {"1"}  # the worker's lease ends sshd, PID 1
        # The store runs on node 0; node 1 reaches it over the pool's private network.
        names = _share("hosts") @ pool
        assert names[0] == names[1] == [r[1] for r in results]
    assert _everything() == before


async def test_the_host_key_is_each_containers_own_and_is_checked(podman: Podman) -> None:
    # A user the image does not have is created in each container, and logged in as.
    provider = podman.provider(ssh_user="alice")
    async with skyward_trio.Compute(provider=provider, nodes=2, options=QUIET) as pool:
        assert pool._supervisor is not None
        a, b = pool._supervisor.instances[0], pool._supervisor.instances[1]
        assert a.username == "alice"
        assert a.workdir.startswith("/home/alice/.skyward/jobs/")
        assert a.host == b.host == "127.0.0.1"
        assert a.host_key != b.host_key  # made in each container as it started
        offered = await _transport.fetch_host_key(a.host, a.port, like=[])
        assert offered == a.host_key
        login = _transport.Login(keys=(_transport.generate_key(),))
        with pytest.raises(_transport.SSHError, match=r"(?i)host key"):
            await _transport.connect(
                a.host, a.port, username=a.username, login=login, host_key=b.host_key
            )


def test_a_missing_image_is_reported_with_the_engines_error_and_cleaned_up(
    podman: Podman,
) -> None:
    before = _everything()
    provider = sky.Container(image="localhost/skyward-no-such-image:1", binary="podman")
    with (
        pytest.raises(sky.ProvisionError, match="could not start a container from image") as caught,
        sky.Compute(provider=provider, nodes=1, options=QUIET),
    ):
        pass
    message = str(caught.value)
    assert "localhost/skyward-no-such-image:1" in message
    assert "podman pull localhost/skyward-no-such-image:1" in message
    assert _everything() == before


def test_a_container_spec_that_cannot_start_gives_way_to_the_next(podman: Podman) -> None:
    before = _everything()
    missing = sky.Spec(provider=sky.Container(image="localhost/skyward-absent:1", binary="podman"))
    present = sky.Spec(provider=podman.provider())
    options = sky.Options(console="silent", max_provision_attempts=1, selection="first")
    with sky.Compute(missing, present, options=options) as pool:
        assert pool.spec == present
        assert (_whoami() >> pool)[0] == 0
    assert _everything() == before


def test_a_pool_that_fails_half_way_removes_its_running_containers(podman: Podman) -> None:
    before = _everything()
    image = sky.Image(pip=["skyward-no-such-package-4f1c"])
    with (
        pytest.raises(sky.ProvisionError, match="failed during bootstrap") as caught,
        sky.Compute(provider=podman.provider(), nodes=2, image=image, options=QUIET),
    ):
        pass
    # It failed in its running containers, installing what the image asked for.
    assert "skyward-no-such-package-4f1c" in str(caught.value)
    assert _everything() == before


async def test_cancelling_a_pool_while_it_starts_leaves_nothing(podman: Podman) -> None:
    before = await trio.to_thread.run_sync(_everything)
    hang = sky.Image(shell_vars={"WAIT": "sleep 600"})  # bootstrap never finishes

    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:

            async def cancel_once_started() -> None:
                while True:
                    started = await trio.to_thread.run_sync(lambda: _labelled("container") - before)
                    if started:
                        break
                    await trio.sleep(0.2)
                scope.cancel()

            nursery.start_soon(cancel_once_started)
            async with skyward_trio.Compute(
                provider=podman.provider(), nodes=2, image=hang, options=QUIET
            ):
                pytest.fail("the pool came up with a bootstrap that never ends")
    assert scope.cancelled_caught
    assert await trio.to_thread.run_sync(_everything) == before


#: podman whose ``run`` starts two seconds late, marking when it started and when it ended:
#: a cancel or a Ctrl-C comes while a container is on its way up.
_SLOW_RUN = """#!/bin/sh
if [ "$1" = run ]; then
  touch {marks}/started
  sleep 2
  {podman} "$@"
  rc=$?
  touch {marks}/finished
  exit $rc
fi
exec {podman} "$@"
"""


def _slow_run(tmp_path: Path) -> tuple[Path, Path]:
    """A podman of ``_SLOW_RUN`` (named podman, in a directory of its own) and where it
    marks its run."""
    marks = tmp_path / "marks"
    marks.mkdir()
    wrapper = tmp_path / "bin" / "podman"
    wrapper.parent.mkdir()
    podman = shutil.which("podman")
    assert podman is not None
    wrapper.write_text(_SLOW_RUN.format(marks=marks, podman=podman))
    wrapper.chmod(0o755)
    return wrapper, marks


async def test_a_cancel_lets_a_starting_container_finish_starting_then_removes_it(
    podman: Podman, tmp_path: Path
) -> None:
    # Killed half-way, podman run can leave a port forward that no rm removes.
    before = await trio.to_thread.run_sync(_everything)
    wrapper, marks = _slow_run(tmp_path)
    provider = sky.Container(image=podman.image, binary=str(wrapper))
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:

            async def cancel_once_running() -> None:
                while True:
                    if (marks / "started").exists():
                        break
                    await trio.sleep(0.05)
                scope.cancel()

            nursery.start_soon(cancel_once_running)
            async with skyward_trio.Compute(provider=provider, options=QUIET):
                pytest.fail("the pool came up although it was cancelled while starting")
    assert scope.cancelled_caught
    assert (marks / "finished").exists()  # the run was let finish, not killed
    assert await trio.to_thread.run_sync(_everything) == before


_INTERRUPTED = """
import sys
import skyward as sky
provider = sky.Container(image=sys.argv[1], binary=sys.argv[2])
try:
    with sky.Compute(provider=provider, options=sky.Options(console="silent")):
        print("the pool came up", flush=True)
except KeyboardInterrupt:
    sys.exit(130)
"""


def test_ctrl_c_at_the_terminal_does_not_reach_a_starting_container(
    podman: Podman, tmp_path: Path
) -> None:
    before = _everything()
    wrapper, marks = _slow_run(tmp_path)
    with subprocess.Popen(
        [sys.executable, "-c", _INTERRUPTED, podman.image, str(wrapper)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a process group of its own, as a terminal's job is
    ) as client:
        try:
            wait_until(
                lambda: (marks / "started").exists(), "podman run to start", timeout=120, every=0.05
            )
            os.killpg(client.pid, signal.SIGINT)  # what Ctrl-C sends: the whole group
            out, _ = client.communicate(timeout=120)
        finally:
            if client.poll() is None:
                client.kill()
    assert client.returncode == 130, out
    assert (marks / "finished").exists()  # the engine did not get the Ctrl-C
    assert _everything() == before


_CLIENT = """
import sys, time
import skyward as sky
provider = sky.Container(image=sys.argv[1], binary="podman")
options = sky.Options(console="silent", ssh_timeout=2)  # a short reconnect window
with sky.Compute(provider=provider, ttl=0, options=options) as pool:
    print(pool.job_id, flush=True)
    time.sleep(600)
"""


def test_the_lease_stops_the_containers_of_a_client_that_died(podman: Podman) -> None:
    before = _everything()
    with killed_client(_CLIENT, podman.image) as job:  # no teardown: only the lease is left
        assert len(_labelled("container") - before) == 1
    # The worker gives its client the reconnect window, then ends sshd (the container's
    # PID 1): the container stops and the engine removes it (--rm).
    wait_until(
        lambda: not _labelled("container") - before, "the container gone", timeout=120, every=1
    )
    # What stays is the pool's network, until the next pool here prunes it.
    assert _labelled("network") - before == {f"skyward-{job}"}
    trio.run(
        functools.partial(
            ContainerCluster.open, podman.provider(), job_id="prune", client_public_key=""
        )
    )
    # Nothing of this pool is left (a dead client's network from before is pruned too).
    assert not _everything() - before


def test_an_engine_that_does_not_answer_is_refused_before_anything_starts(
    tmp_path: Path,
) -> None:
    engine = tmp_path / "docker"
    engine.write_text(
        "#!/bin/sh\necho 'Cannot connect to the Docker daemon. Is it running?' >&2\nexit 1\n"
    )
    engine.chmod(0o755)
    pool = sky.Compute(provider=sky.Container(binary=str(engine)), options=QUIET)
    with pytest.raises(RuntimeError, match=r"does not answer.*Cannot connect to the Docker daemon"):
        pool.__enter__()


def test_an_engine_missing_from_path_is_refused_at_compute(tmp_path: Path) -> None:
    with pytest.raises(
        FileNotFoundError, match=r"binary='no-such-engine'.*Install Docker or Podman"
    ):
        sky.Compute(provider=sky.Container(binary="no-such-engine"))
    not_executable = tmp_path / "podman"
    not_executable.write_text("")
    with pytest.raises(FileNotFoundError, match="is not an executable file"):
        sky.Compute(provider=sky.Container(binary=str(not_executable)))
    with pytest.raises(ValueError, match="does not pass GPUs through"):
        sky.Compute(provider=sky.Container(binary="sh"), accelerator=sky.accelerators.A100())

"""``sky.Container``: nodes are containers on this machine, each running sshd.

The engine is driven through its command line (``docker`` or ``podman``: the same verbs
and flags), never its API socket, so whichever the user has works the same. A pool gets
a private network of its own (the nodes reach each other there: the collections store
runs on node 0); each container publishes its SSH port on 127.0.0.1 only and is reached
over SSH like any machine, its host key read through the engine (``exec``), so it is
verified, never trusted on first use. Everything a pool creates carries the label
``skyward.job=<job id>``: teardown removes by label, so a container or network made by a
command that was cut short goes too.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import socket
import sys

import trio

from ._model import Container, Spec
from ._providers import Instance

__all__ = ["ContainerCluster", "check_container", "engine_path"]

#: The label every container and network of a pool carries (its value: the job id).
JOB_LABEL = "skyward.job"
_PYTHON_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"
_READY = "SKYWARD_NODE_READY"
_FAILED = "SKYWARD_NODE_ERROR"
_HOST_KEY = "/etc/skyward/ssh_host_ed25519_key"
# Seconds a failed entry command stays up so the client can read why (then it exits and
# the engine removes it: it runs with --rm).
_FAILED_LINGER = 60

# The container's command (POSIX sh, as root). It makes sshd if the image lacks it, a
# fresh host key, the login user and its authorized key, then becomes sshd: PID 1, so
# the worker's lease (SKYWARD_NODE_PID=1) ends the container when it ends sshd.
# The image's environment (PATH, CUDA's variables) reaches SSH sessions through SetEnv,
# as `docker exec` would give it.
_ENTRY = f"""set -u
fail() {{ echo "{_FAILED} $*"; sleep {_FAILED_LINGER}; exit 1; }}
user=$SKYWARD_SSH_USER
SSHD=$(command -v sshd || true)
[ -n "$SSHD" ] || [ ! -x /usr/sbin/sshd ] || SSHD=/usr/sbin/sshd
if [ -z "$SSHD" ]; then
  command -v apt-get >/dev/null 2>&1 || fail "the image has no sshd, and no apt-get to \\
install openssh-server with: use an image that has OpenSSH's sshd"
  echo "no sshd in the image: installing openssh-server with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  {{ apt-get update -q && apt-get install -y -q --no-install-recommends openssh-server; }} \\
    || fail "apt-get could not install openssh-server (its output is above): use an \\
image that has sshd, or let the containers reach the package mirror"
  SSHD=/usr/sbin/sshd
fi
mkdir -p /run/sshd /etc/skyward && chmod 755 /run/sshd
rm -f {_HOST_KEY} {_HOST_KEY}.pub
ssh-keygen -q -t ed25519 -N '' -f {_HOST_KEY} || fail "ssh-keygen could not make a host key"
if ! id "$user" >/dev/null 2>&1; then
  command -v useradd >/dev/null 2>&1 || fail "no user $user in the image, and no useradd \\
to create one: pass Container(ssh_user=...) a user the image has"
  useradd -m -s /bin/sh "$user" && usermod -p '*' "$user" || fail "could not create user $user"
fi
home=$(eval echo "~$user")
printf '%s\\n' "$SKYWARD_AUTHORIZED_KEY" > /etc/skyward/authorized_keys
chmod 644 /etc/skyward/authorized_keys
setenv='"SKYWARD_NODE_PID=1"'
for name in $(env | sed -n 's/^\\([A-Za-z_][A-Za-z0-9_]*\\)=.*/\\1/p'); do
  case $name in
    HOME|HOSTNAME|PWD|OLDPWD|SHLVL|TERM|USER|LOGNAME|SHELL|_|SKYWARD_*|container) continue ;;
  esac
  value=$(printenv "$name")
  case $value in *'"'*|*'\\'*|*'
'*) continue ;; esac
  setenv="$setenv \\"$name=$value\\""
done
write_config() {{
  cat > /etc/skyward/sshd_config <<EOF
Port 22
HostKey {_HOST_KEY}
AuthorizedKeysFile /etc/skyward/authorized_keys
AllowUsers $user
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
AllowTcpForwarding yes
AllowStreamLocalForwarding yes
$1
EOF
}}
write_config "SetEnv $setenv"
if ! "$SSHD" -t -f /etc/skyward/sshd_config 2>/dev/null; then
  # OpenSSH before 8.7 has no SetEnv: sessions then get sshd's own PATH, and the lease
  # stops the worker but not the container.
  write_config ""
  "$SSHD" -t -f /etc/skyward/sshd_config || fail "sshd refuses its configuration (above)"
fi
echo "{_READY} $home"
exec "$SSHD" -D -e -f /etc/skyward/sshd_config
"""


def engine_path(config: Container) -> str:
    """The engine's command line, found the way a shell would.

    Raises:
        FileNotFoundError: Not on ``PATH`` (or not an executable file), with the fix.
    """
    found = shutil.which(config.binary)
    if found is None:
        where = "is not an executable file" if os.sep in config.binary else "is not on PATH"
        other = "podman" if os.path.basename(config.binary) != "podman" else "docker"
        raise FileNotFoundError(
            f"Container(binary={config.binary!r}): {config.binary} {where}. Install Docker "
            f"or Podman, or pass binary={other!r} (or the full path of the one you have)."
        )
    return found


def check_container(spec: Spec) -> None:
    """Refuse, before anything starts, what ``sky.Container`` cannot do.

    Raises:
        ValueError: An accelerator (no GPU passthrough yet).
        FileNotFoundError: The engine's command line is not there.
    """
    assert isinstance(spec.provider, Container)
    if spec.accelerator is not None:
        raise ValueError(
            f"accelerator={spec.accelerator!r}: sky.Container() does not pass GPUs through "
            "to its containers yet (see the README's 'not yet' list); drop accelerator= "
            "to run on CPUs"
        )
    engine_path(spec.provider)


async def _engine(
    binary: str, *args: str, limit: float | None = 120, settle: bool = False
) -> tuple[int, str, str]:
    """Run ``binary args``: its exit status, stdout and stderr. ``limit`` None: no bound of
    its own (a ``pull``).

    It runs in a session of its own, so a Ctrl-C at the terminal does not reach it. A
    cancelled read is killed; a command that changes the engine's state (``settle``:
    ``run``, ``rm``, ``network create`` / ``rm``) runs to its end first, within ``limit``.
    Cut short, podman's network helper (netavark) can leave a port-forwarding rule that no
    ``rm`` removes: 127.0.0.1:<port> then reaches nothing, for every program here.
    """
    with (
        trio.CancelScope(shield=settle),
        trio.fail_after(limit) if limit is not None else contextlib.nullcontext(),
    ):
        done = await trio.run_process(
            [binary, *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            start_new_session=True,
        )
    return (
        done.returncode,
        done.stdout.decode(errors="replace").strip(),
        done.stderr.decode(errors="replace").strip(),
    )


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists here (a reused pid reads as running: kept, safely)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "(it said nothing)"


class ContainerCluster:
    """``sky.Container()``: node i is a container ``skyward-<job>-<i>-<n>``."""

    name = "container"
    peers_reachable = True  # the pool's own network

    def __init__(
        self, config: Container, *, job_id: str, client_public_key: str, binary: str
    ) -> None:
        self.config = config
        self.job_id = job_id
        self._client_public_key = client_public_key
        self._binary = binary
        self.image = config.image_reference(_PYTHON_VERSION)
        self.network = f"skyward-{job_id}"
        self._labels = [
            "--label",
            f"{JOB_LABEL}={job_id}",
            # Who made it, for finding what a crashed client left behind.
            "--label",
            f"skyward.client={socket.gethostname()}:{os.getpid()}",
        ]
        self._network_lock = trio.Lock()
        self._network_made = False
        self._image_lock = trio.Lock()
        self._image_here = False
        self._touched = False  # whether anything may have been created (aclose looks)
        self._serial = 0

    @classmethod
    async def open(
        cls, config: Container, *, job_id: str, client_public_key: str
    ) -> ContainerCluster:
        """Check that the engine answers, before anything is created.

        Raises:
            FileNotFoundError: The engine's command line is not there.
            RuntimeError: ``<binary> info`` fails: the engine is not running (its error shown).
        """
        binary = engine_path(config)
        try:
            rc, _, err = await _engine(binary, "info", limit=60)
        except trio.TooSlowError:
            rc, err = -1, "no answer within 60 s"
        if rc != 0:
            raise RuntimeError(
                f"Container(binary={config.binary!r}): the container engine does not answer "
                f"({config.binary} info: {_last_line(err)}). Start its daemon (systemctl "
                "start docker), or check that you may use it (the docker group, or root)."
            )
        cluster = cls(config, job_id=job_id, client_public_key=client_public_key, binary=binary)
        await cluster.prune_stale_networks()
        return cluster

    async def prune_stale_networks(self) -> list[str]:
        """Remove the networks that pools of clients on this machine left behind when
        they died (their containers are gone with their lease); the names removed.

        Only networks whose creator (``skyward.client=<host>:<pid>``) ran on this host
        and whose process is gone, and only once no container uses them (the engine
        refuses to remove one in use: it is left for a later pool).
        """
        names = await self._remaining("network", "skyward.client")
        if not names:
            return []
        rc, out, _ = await _engine(
            self._binary,
            "network",
            "inspect",
            "--format",
            '{{.Name}} {{index .Labels "skyward.client"}}',
            *names,
        )
        removed = []
        for line in out.splitlines() if rc == 0 else []:
            name, _, client = line.strip().partition(" ")
            host, _, pid = client.rpartition(":")
            if host != socket.gethostname() or not pid.isdigit() or _running(int(pid)):
                continue
            rc, _, _ = await _engine(self._binary, "network", "rm", name, settle=True)
            if rc == 0:
                removed.append(name)
        return removed

    async def _ensure_network(self) -> None:
        async with self._network_lock:
            if self._network_made:
                return
            self._touched = True
            rc, _, err = await _engine(
                self._binary, "network", "create", *self._labels, self.network, settle=True
            )
            if rc != 0:
                raise RuntimeError(
                    f"{self.config.binary} could not create the pool's network "
                    f"{self.network}: {_last_line(err)}"
                )
            self._network_made = True

    async def provision(self, node: int) -> Instance:
        """Start node ``node``'s container and wait for its sshd.

        Raises:
            RuntimeError: The engine could not start the container (a missing image: its
                error, with a hint), or its entry command failed (why, from its output).
        """
        await self._ensure_image()
        await self._ensure_network()
        self._serial += 1
        name = f"skyward-{self.job_id}-{node}-{self._serial}"
        user = self.config.ssh_user
        self._touched = True
        rc, _, err = await _engine(
            self._binary,
            "run",
            "--detach",
            "--rm",
            "--name",
            name,
            "--hostname",
            name,
            *self._labels,
            "--label",
            f"skyward.instance={name}",
            "--network",
            self.network,
            "--publish",
            "127.0.0.1::22",
            "--env",
            f"SKYWARD_SSH_USER={user}",
            "--env",
            f"SKYWARD_AUTHORIZED_KEY={self._client_public_key}",
            "--entrypoint",
            "/bin/sh",
            self.image,
            "-c",
            _ENTRY,
            settle=True,  # the image is here: it starts in seconds
        )
        if rc != 0:
            raise self._cannot_start(f"{_last_line(err)}. If the image is missing, pull it")
        home = await self._wait_ready(name)
        port = await self._published_port(name)
        rc, host_key, err = await _engine(self._binary, "exec", name, "cat", f"{_HOST_KEY}.pub")
        if rc != 0 or not host_key.startswith("ssh-ed25519 "):
            raise RuntimeError(f"could not read the host key of container {name}: {err}")
        rc, address, err = await _engine(
            self._binary,
            "inspect",
            "--format",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
            name,
        )
        if rc != 0 or not address.split():
            raise RuntimeError(f"could not read the address of container {name}: {err}")
        workdir = f"{home}/.skyward/jobs/{self.job_id}-{node}"
        return Instance(
            id=name,
            node=node,
            host="127.0.0.1",
            port=port,
            username=user,
            host_key=" ".join(host_key.split()[:2]),
            private_ip=address.split()[0],
            public_ip=None,
            python=None,
            workdir=workdir,
        )

    async def _ensure_image(self) -> None:
        """Pull the image once, if the engine does not have it yet. A pull may take
        minutes, so it is apart from the ``run``: a cancel cuts it short, where the run
        that follows is let finish (see ``_engine``)."""
        async with self._image_lock:
            if self._image_here:
                return
            rc, _, _ = await _engine(self._binary, "image", "inspect", self.image)
            if rc != 0:
                rc, _, err = await _engine(self._binary, "pull", self.image, limit=None)
                if rc != 0:
                    raise self._cannot_start(
                        f"it is not here, and {self.config.binary} pull failed: "
                        f"{_last_line(err)}. Pull it"
                    )
            self._image_here = True

    def _cannot_start(self, why: str) -> RuntimeError:
        binary = shlex.quote(self.config.binary)
        return RuntimeError(
            f"{self.config.binary} could not start a container from image {self.image!r}: "
            f"{why} ({binary} pull {shlex.quote(self.image)}) or build it, or pass "
            "Container(image=...) one you have"
        )

    async def _wait_ready(self, name: str) -> str:
        """Wait for the entry command's word (read from the container's output); the
        login user's home directory."""
        delay = 0.1
        while True:
            rc, out, err = await _engine(self._binary, "logs", name)
            said = f"{out}\n{err}"
            for line in said.splitlines():
                if line.startswith(f"{_READY} "):
                    return line[len(_READY) + 1 :].strip()
                if line.startswith(f"{_FAILED} "):
                    raise RuntimeError(
                        f"container {name} (image {self.image!r}) could not start sshd: "
                        f"{line[len(_FAILED) + 1 :]}\n{said[-2000:]}"
                    )
            if rc != 0:
                raise RuntimeError(
                    f"container {name} (image {self.image!r}) is gone before its sshd "
                    f"started: {_last_line(err)}"
                )
            await trio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def _published_port(self, name: str) -> int:
        _, out, err = await _engine(self._binary, "port", name, "22/tcp")
        for line in out.splitlines():
            host, _, port = line.strip().rpartition(":")
            if host == "127.0.0.1" and port.isdigit():
                return int(port)
        raise RuntimeError(
            f"container {name}'s SSH port is not published on 127.0.0.1 "
            f"({self.config.binary} port said {out or err!r})"
        )

    async def alive(self, instance: Instance) -> bool:
        rc, out, _ = await _engine(
            self._binary, "inspect", "--format", "{{.State.Running}}", instance.id
        )
        return rc == 0 and out == "true"

    async def _remaining(self, kind: str, label: str) -> list[str]:
        """The names of the containers (``ps``) or networks (``network ls``) labelled so.

        Raises:
            RuntimeError: The engine could not list them.
        """
        if kind == "container":
            verb = ["ps", "--all", "--format", "{{.Names}}"]
        else:
            verb = ["network", "ls", "--format", "{{.Name}}"]
        rc, out, err = await _engine(self._binary, *verb, "--filter", f"label={label}")
        if rc != 0:
            raise RuntimeError(f"{self.config.binary} could not list {kind}s: {_last_line(err)}")
        return sorted({line.strip() for line in out.splitlines() if line.strip()})

    async def terminate(self, instance: Instance) -> None:
        """Remove the container; confirm it is gone or raise."""
        _, _, err = await _engine(self._binary, "rm", "--force", instance.id, settle=True)
        left = await self._remaining("container", f"skyward.instance={instance.id}")
        if left:
            raise RuntimeError(f"could not remove container {instance.id}: {_last_line(err)}")

    async def aclose(self) -> None:
        """Remove every container and the network this pool made (by label), half-made
        ones included; raise naming anything left."""
        if not self._touched:
            return
        label = f"{JOB_LABEL}={self.job_id}"
        containers = await self._remaining("container", label)
        errors: list[str] = []
        if containers:
            rc, _, err = await _engine(self._binary, "rm", "--force", *containers, settle=True)
            if rc != 0:
                errors.append(_last_line(err))
        for network in await self._remaining("network", label):
            rc, _, err = await _engine(self._binary, "network", "rm", network, settle=True)
            if rc != 0:
                errors.append(_last_line(err))
        left = await self._remaining("container", label) + await self._remaining("network", label)
        if left:
            raise RuntimeError(
                f"{self.config.binary} could not remove {', '.join(left)} "
                f"({'; '.join(errors) or 'no error said'}); remove them with "
                f"{self.config.binary} rm -f / {self.config.binary} network rm"
            )

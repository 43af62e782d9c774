"""The bootstrap script a node runs over SSH before it can take tasks.

Pure text building, so it is unit-tested without I/O. The script is sent on the command's
stdin (``bash -s``), never on its command line, so the pool secret does not show in ``ps``.
It is idempotent: running it twice leaves one worker (the old one is stopped first).

With an :class:`Environment` the script first builds the image's environment, in named
phases it announces on stdout (``SKYWARD_PHASE <name>``): ``apt`` (a remote machine's
system packages, first: the rest may need them), ``uv`` (found on the node, or
installed from the package index with pip), ``venv`` (a virtual environment per image
hash, built once under ``~/.skyward/envs`` and reused: a second node or pool skips it),
``includes`` (the ``Image.includes`` files unpacked under the work directory) and
``shell_vars``. On a remote machine a ``python`` phase comes before ``uv``: it finds an
interpreter of the client's ``X.Y`` there (or, only when none matches, has uv install
one), and the venv also gets Skyward itself (a shipped wheel, or a pinned version).
After them, once an old worker has stopped, a ``volumes`` phase mounts the spec's
``sky.Volume`` buckets (``_volumes``).
A phase that fails exits with ``SKYWARD_FAILED <name>`` on stderr.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import io
import json
import os
import shlex
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from ._plugin import LaunchCommand

__all__ = [
    "FAILED_MARK",
    "PHASE_MARK",
    "READY_MARK",
    "Environment",
    "env_hash",
    "environment_bootstrap",
    "pack_includes",
    "requirement_name",
    "worker_bootstrap",
]

READY_MARK = "SKYWARD_WORKER_READY"
PHASE_MARK = "SKYWARD_PHASE "
FAILED_MARK = "SKYWARD_FAILED "
_EOF = "SKYWARD_EOF_7f3a"


@attrs.frozen(kw_only=True)
class Environment:
    """What the image asks of a node beyond a worker: packages, files, variables.

    Attributes:
        pip: Requirements installed with uv into the image's virtual environment.
        indexes: ``(url, packages)``: those packages are looked up on that index first.
        base_paths: Import paths the environment also sees, after its own packages (a
            ``sky.Local()`` node's environment reaches this process's packages, Skyward
            included, this way).
        includes: A gzipped tar of ``Image.includes``, or empty.
        shell_vars: Variables set from shell snippets evaluated on the node.
        key: The environment's hash: the same key means the same environment.
        python_version: ``X.Y`` to find on the node (a remote machine); None: the
            interpreter the script is given is used as it is (a Local node).
        wheels: ``(file name, content)`` of wheels shipped in the script and installed
            into the environment (Skyward's own, for ``skyward_source="local"``).
        apt: System packages installed with apt-get (a remote machine only).
        apt_wait: Seconds apt-get waits for the dpkg lock that another apt or dpkg (an
            unattended upgrade on a fresh machine) holds.
    """

    pip: tuple[str, ...] = ()
    indexes: tuple[tuple[str, tuple[str, ...]], ...] = ()
    base_paths: tuple[str, ...] = ()
    includes: bytes = b""
    shell_vars: Mapping[str, str] = attrs.field(factory=dict)
    key: str = ""
    python_version: str | None = None
    wheels: tuple[tuple[str, bytes], ...] = ()
    apt: tuple[str, ...] = ()
    apt_wait: int = 300


def env_hash(
    python: str,
    pip: Sequence[str],
    indexes: Iterable[tuple[str, Sequence[str]]],
    apt: Sequence[str] = (),
) -> str:
    """The key of an image's environment: the interpreter, what is installed in it, and
    the system packages it is built on (a package built from source links against them)."""
    parts: list[object] = [python, list(pip), [[u, list(p)] for u, p in indexes]]
    if apt:  # keys of images without apt stay what they were: their environments still match
        parts.append(list(apt))
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def pack_includes(includes: Iterable[str], excludes: Iterable[str]) -> bytes:
    """``includes`` (directories and files) as a gzipped tar, each under its own name.

    A path whose name, or whose path inside its include, matches an ``excludes`` glob is
    left out, and so is Python's ``__pycache__``.

    Raises:
        FileNotFoundError: An include that does not exist, named.
    """
    patterns = [*excludes, "__pycache__", "*.pyc"]

    def skipped(relative: str) -> bool:
        name = relative.rsplit("/", 1)[-1]
        return any(fnmatch.fnmatch(name, p) or fnmatch.fnmatch(relative, p) for p in patterns)

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for include in includes:
            root = Path(include).expanduser()
            if not root.exists():
                raise FileNotFoundError(
                    f"Image(includes=[{include!r}]): {root} does not exist; includes are "
                    "paths on this machine (directories or files), relative to the current "
                    f"directory ({os.getcwd()})"
                )
            root = root.resolve()
            tar.add(root, arcname=root.name, recursive=False)
            if root.is_dir():
                for path in sorted(root.rglob("*")):
                    relative = path.relative_to(root).as_posix()
                    if any(skipped(part) for part in _prefixes(relative)):
                        continue
                    tar.add(path, arcname=f"{root.name}/{relative}", recursive=False)
    return buffer.getvalue()


def _prefixes(relative: str) -> list[str]:
    parts = relative.split("/")
    return ["/".join(parts[: k + 1]) for k in range(len(parts))]


_INDENT = "\n    "


def _environment_steps(env: Environment, python: str) -> tuple[str, str]:
    """Shell steps that build ``env``, and the interpreter the worker then runs."""
    steps: list[str] = []
    py = shlex.quote(python)
    venv = f'"$HOME/.skyward/envs/{env.key}"'
    if env.apt:
        built = f"{venv}/.skyward-complete" if env.pip or env.wheels else None
        steps.append(_apt_steps(env.apt, env.apt_wait, built=built))
    if env.python_version is not None:
        steps.append(_find_python(env.python_version))
        py = '"$PY"'
    if env.pip or env.wheels:
        envs = '"$HOME/.skyward/envs"'
        install: list[str] = []
        scoped = {pkg for _, pkgs in env.indexes for pkg in pkgs}
        for url, packages in env.indexes:
            chosen = [r for r in env.pip if requirement_name(r) in packages]
            if chosen:
                install.append(
                    f'"$UV" pip install --quiet --python {venv}/bin/python '
                    f"--index {shlex.quote(url)} --index-strategy first-index "
                    + " ".join(shlex.quote(r) for r in chosen)
                )
        rest = [shlex.quote(r) for r in env.pip if requirement_name(r) not in scoped]
        wheels = f"{venv}/wheels"  # in the environment, under its lock
        for name, _ in env.wheels:
            rest.append(f"{wheels}/{shlex.quote(name)}")
        if rest:
            pip = f'"$UV" pip install --quiet --python {venv}/bin/python '
            install.append(pip + " ".join(rest))
        pth = "\n".join(env.base_paths)
        for name, data in env.wheels:
            blob = base64.b64encode(data).decode()
            install.insert(
                0,
                f"""mkdir -p {wheels}
base64 -d > {wheels}/{shlex.quote(name)} <<'{_EOF}'
{blob}
{_EOF}""",
            )
        steps.append(f"""phase uv
UV=$(command -v uv || true)
if [ -z "$UV" ]; then
  UV="$HOME/.skyward/tools/uv/bin/uv"
  mkdir -p "$HOME/.skyward/tools"
  (
    flock 8
    if [ ! -x "$UV" ]; then
      {py} -m pip install --quiet --disable-pip-version-check --target "$HOME/.skyward/tools/uv" uv
    fi
  ) 8>"$HOME/.skyward/tools/uv.lock"
fi
phase venv
mkdir -p {envs}
(
  flock 9
  if [ ! -f {venv}/.skyward-complete ]; then
    rm -rf {venv}
    "$UV" venv --quiet --python {py} {venv}
    {_INDENT.join(install)}
    site=$({venv}/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    printf '{pth}\n' > "$site/skyward-base.pth"
    touch {venv}/.skyward-complete
  else
    echo "environment {env.key} is already built: skipped"
  fi
) 9>{venv}.lock""")
        py = f"{venv}/bin/python"
    if env.includes:
        blob = base64.b64encode(env.includes).decode()
        steps.append(f"""phase includes
rm -rf includes
mkdir includes
base64 -d > includes.tar.gz <<'{_EOF}'
{blob}
{_EOF}
tar -xzf includes.tar.gz -C includes
rm includes.tar.gz""")
    if env.shell_vars:
        lines = ["phase shell_vars"]
        for name, snippet in env.shell_vars.items():
            lines.append(f"{name}=$( {snippet} )")
            lines.append(f"export {name}")
        steps.append("\n".join(lines))
    return "\n".join(steps), py


def _apt_steps(packages: Sequence[str], wait: int, *, built: str | None) -> str:
    """Shell steps that install ``packages`` with apt-get, unless there is nothing to do.

    A machine where this image's environment is complete (the marker file ``built``)
    installed them before; one where ``dpkg-query`` finds each installed needs neither
    root nor the network. Otherwise apt-get runs as root or through ``sudo -n`` (a
    password prompt would hang a script nobody watches), non-interactively, and waits up
    to ``wait`` seconds for the dpkg lock (``DPkg::Lock::Timeout``, apt >= 1.9.11).
    """
    names = " ".join(shlex.quote(p) for p in packages)
    shown = " ".join(packages)
    apt = f'$SUDO env DEBIAN_FRONTEND=noninteractive apt-get -q -o "DPkg::Lock::Timeout={wait}"'
    keep = "-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold"
    yourself = "install them yourself and drop them from Image(apt=...)"
    no_apt = (
        "Image(apt=...) needs apt-get, and this machine has none (not Debian or Ubuntu): "
        f"{yourself}"
    )
    no_root = (
        "Image(apt=...) installs$missing with apt-get, which needs root: $(id -un) is not "
        "root and may not sudo without a password here. Log in as root, give $(id -un) "
        f"passwordless sudo (sudo -n), or {yourself}"
    )
    body = f"""missing=
for package in {names}; do
  if ! dpkg-query -W -f='${{Status}}' "$package" 2>/dev/null | grep -qx 'install ok installed'
  then
    missing="$missing $package"
  fi
done
if [ -z "$missing" ]; then
  echo "apt: {shown} already installed: nothing to do"
else
  if ! command -v apt-get >/dev/null; then
    echo "{no_apt}" >&2
    false
  fi
  if [ "$(id -u)" = 0 ]; then
    SUDO=
  elif sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
  else
    echo "{no_root}" >&2
    false
  fi
  echo "apt: installing$missing"
  {apt} update
  {apt} -y {keep} install $missing
fi"""
    if built is not None:
        indented = body.replace("\n", "\n  ")
        body = f"""if [ -f {built} ]; then
  echo "apt: this image is installed here already, {shown} with it: skipped"
else
  {indented}
fi"""
    return f"phase apt\n{body}"


def _find_python(version: str) -> str:
    """Shell steps that set ``PY`` to an interpreter of ``version`` on the node.

    One already there is preferred (any on ``PATH`` named ``pythonX.Y``, ``python3`` or
    ``python``); uv downloads one only when none matches, since a function pickled by one
    Python version cannot run on another.
    """
    v = shlex.quote(version)
    return f"""phase python
PY=
for candidate in python{version} python3 python; do
  found=$(command -v "$candidate" || true)
  [ -n "$found" ] || continue
  said=$("$found" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true)
  if [ "$said" = {v} ]; then
    PY=$found
    break
  fi
done
if [ -z "$PY" ]; then
  echo "no Python {version} on PATH here: installing one with uv"
  BOOT=$(command -v python3 || command -v python || true)
  UV=$(command -v uv || true)
  if [ -z "$UV" ]; then
    if [ -z "$BOOT" ]; then
      echo "this machine has neither Python nor uv: install python{version} (or uv) on it" >&2
      false
    fi
    "$BOOT" -m pip install --quiet --disable-pip-version-check --target "$HOME/.skyward/tools/uv" uv
    UV="$HOME/.skyward/tools/uv/bin/uv"
  fi
  "$UV" python install --quiet {v}
  PY=$("$UV" python find {v})
fi
echo "Python {version}: $PY"
"""


def requirement_name(requirement: str) -> str:
    """The project name of a requirement such as ``numpy>=2`` (normalised)."""
    name = requirement.strip()
    for stop in "<>=!~;[ @":
        name = name.split(stop, 1)[0]
    return name.lower().replace("_", "-")


def worker_command(workdir: str) -> LaunchCommand:
    """The command that starts the worker in ``workdir``, as launchers are given it."""
    return LaunchCommand(("python", "-m", "skyward_trio.worker", "--dir", workdir))


def _launch_line(launch: LaunchCommand, base: LaunchCommand, python: str) -> str:
    """``launch`` as a shell command line: ``base``'s ``python`` (the first time ``base``
    appears in it whole) is ``python``, a shell word already quoted."""
    argv, n = launch.argv, len(base.argv)
    at = next(i for i in range(len(argv) - n + 1) if argv[i : i + n] == base.argv)
    words = [python if i == at else shlex.quote(word) for i, word in enumerate(argv)]
    if launch.env:
        words = ["env", *(shlex.quote(f"{k}={v}") for k, v in launch.env.items()), *words]
    return " ".join(words)


def _script_head(d: str) -> str:
    """A bootstrap script's start: strict bash, phases, and ``d`` (quoted) made and
    entered."""
    return f"""set -eEu
umask 077
current=setup
phase() {{ current=$1; echo "{PHASE_MARK}$1"; }}
trap 'echo "{FAILED_MARK}$current" >&2' ERR
mkdir -p {d}
cd {d}"""


def environment_bootstrap(*, workdir: str, python: str, environment: Environment) -> str:
    """A bash script that builds ``environment`` in ``workdir`` and nothing else: for a
    machine launched ahead of the node it will take over, so that its worker's bootstrap
    (:func:`worker_bootstrap`, later) finds the environment built. It prints
    ``READY_MARK`` once done, or exits non-zero naming the phase that failed."""
    setup, _ = _environment_steps(environment, python)
    return f"{_script_head(shlex.quote(workdir))}\n{setup}\necho {READY_MARK}\n"


def worker_bootstrap(
    *,
    workdir: str,
    python: str,
    secret: str,
    config: dict[str, Any],
    start_timeout: float,
    environment: Environment | None = None,
    plugin_ops: Sequence[str] = (),
    volumes: str = "",
    launch: LaunchCommand | None = None,
) -> str:
    """A bash script that installs the worker's files in ``workdir`` and starts it detached.

    ``volumes`` (``_volumes.mount_steps``) runs after a worker already there has stopped
    (it unmounts its volumes as it exits), just before the new one starts.

    ``plugin_ops`` (the plugins' bootstrap commands) run after the environment is built,
    in phase ``plugins``, each in its own ``bash -c`` in ``workdir``, with the image's
    ``env`` (``config["env"]``) and ``SKYWARD_PYTHON`` set to the worker's interpreter.

    ``launch`` is the worker's command as the plugins' launchers made it from
    :func:`worker_command` (None: that command as it is); its ``python`` is the worker's
    interpreter.

    It prints ``READY_MARK`` once the worker listens, or exits non-zero with the worker's
    log on stderr (and ``FAILED_MARK`` with the phase that failed).
    """
    d = shlex.quote(workdir)
    payload = json.dumps(config, indent=1)
    if _EOF in payload or _EOF in secret:
        raise ValueError("bootstrap payload contains the heredoc terminator")
    steps = max(1, int(start_timeout / 0.02))
    setup, py = "", shlex.quote(python)
    if environment is not None:
        setup, py = _environment_steps(environment, python)
    if plugin_ops:
        image_env = "".join(f"{shlex.quote(f'{k}={v}')} " for k, v in config.get("env", {}).items())
        ops = "\n".join(
            f"env {image_env}SKYWARD_PYTHON={py} bash -c {shlex.quote(op)}" for op in plugin_ops
        )
        setup = f"{setup}\nphase plugins\n{ops}"
    mounts = f"d={d}\n{volumes}" if volumes else ""
    base = worker_command(workdir)
    start = _launch_line(launch or base, base, py)
    return f"""{_script_head(d)}
{setup}
current=start
if [ -f worker.ready ]; then
  old=$(cat worker.ready)
  if tr '\\0' ' ' < /proc/$old/cmdline 2>/dev/null | grep -q -- "--dir {workdir}"; then
    kill "$old" 2>/dev/null || true
    i=0
    while kill -0 "$old" 2>/dev/null && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done
  fi
  rm -f worker.ready
fi
{mounts}
current=start
cat > secret <<'{_EOF}'
{secret}
{_EOF}
cat > worker.json <<'{_EOF}'
{payload}
{_EOF}
setsid {start} </dev/null >worker.log 2>&1 &
pid=$!
i=0
while [ $i -lt {steps} ]; do
  if [ -f worker.ready ]; then echo {READY_MARK}; exit 0; fi
  if ! kill -0 $pid 2>/dev/null; then
    echo "the worker exited during start-up; its log:" >&2; tail -n 40 worker.log >&2; exit 3
  fi
  sleep 0.02
  i=$((i+1))
done
echo "the worker did not start within {start_timeout:g} s; its log:" >&2
tail -n 40 worker.log >&2
exit 4
"""

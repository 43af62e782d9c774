"""``sky.Volume``: a bucket mounted with s3fs (FUSE) on every node, before its worker starts.

The client resolves each volume into a :class:`Mount` (the store's URL, signing region and
keys, or the node's instance profile), then the bootstrap runs :func:`mount_steps` in its
``volumes`` phase. Each mount's records live in the node's work directory under
``volumes/``: ``N.passwd`` (the keys, mode 0600: s3fs reads them there, never from its
command line), ``N.pid`` (the foreground s3fs), ``N.mount`` and ``N.source`` (what is
mounted where, so a second bootstrap keeps its own mount instead of mounting twice).

:data:`UNMOUNT_SH` undoes them: the worker runs it when it exits (its pool closed, or its
lease ran out), and ``sky.SSH``'s cleanup runs it again, for a worker that was killed.

Pure text building, so it is unit-tested without I/O. Layer 1.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

import attrs

__all__ = ["UNMOUNT_SH", "Mount", "mount_steps", "unmount_command"]


@attrs.frozen(kw_only=True)
class Mount:
    """One volume as a node mounts it.

    Attributes:
        bucket: The bucket.
        prefix: The folder within it that is mounted ("" for its root).
        mount: The absolute path on the node.
        read_only: Mounted ``-o ro``.
        url: The store's endpoint URL.
        path_style: Buckets addressed as ``url/bucket`` (most stores but AWS).
        region: The region requests are signed for.
        keys: ``(access key, secret key)``, or None to sign with the node's instance
            profile (``iam_role=auto``). Never in a repr.
    """

    bucket: str
    prefix: str = ""
    mount: str
    read_only: bool = True
    url: str
    path_style: bool = False
    region: str = "us-east-1"
    keys: tuple[str, str] | None = attrs.field(default=None, repr=False)

    @property
    def source(self) -> str:
        """What s3fs is given: ``bucket`` or ``bucket:/prefix``."""
        prefix = self.prefix.strip("/")
        return f"{self.bucket}:/{prefix}" if prefix else self.bucket

    @property
    def name(self) -> str:
        """The volume as its user wrote it, for messages."""
        prefix = f", prefix={self.prefix!r}" if self.prefix else ""
        return f"Volume(bucket={self.bucket!r}{prefix}, mount={self.mount!r})"


# Whether $mp is a FUSE mount now (/proc/mounts escapes spaces, which mounts never hold:
# _checks refuses them).
_MOUNTED = """mounted() {
  awk -v m="$1" '$2 == m && $3 ~ /^fuse/ { found = 1 } END { exit !found }' /proc/mounts
}"""

#: Shell that unmounts every volume recorded under ``$d/volumes`` (``d`` is the node's
#: work directory) and removes its keys: ``fusermount -u`` (``umount`` as root), lazily
#: when the mount is busy, then its s3fs is waited for and killed if it lingers.
UNMOUNT_SH = f"""{_MOUNTED}
for record in "$d"/volumes/*.mount; do
  [ -f "$record" ] || continue
  v=${{record%.mount}}
  mp=$(cat "$record")
  if mounted "$mp"; then
    if [ "$(id -u)" = 0 ]; then
      umount "$mp" 2>/dev/null || umount -l "$mp" || true
    else
      fusermount -u "$mp" 2>/dev/null || fusermount -uz "$mp" || true
    fi
  fi
  pid=$(cat "$v.pid" 2>/dev/null || true)
  if [ -n "$pid" ]; then
    s3fs_of() {{ tr '\\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q -- "s3fs .*$mp"; }}
    i=0
    while s3fs_of && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
    if s3fs_of; then kill -KILL "$pid" 2>/dev/null || true; fi
  fi
  rm -f "$v.passwd" "$v.pid" "$v.source" "$record"
done
"""


def unmount_command(workdir: str) -> list[str]:
    """The command that runs :data:`UNMOUNT_SH` for the node whose work directory is
    ``workdir`` (the worker runs it as it exits)."""
    return ["bash", "-c", f"d={shlex.quote(workdir)}\n{UNMOUNT_SH}"]


_WAIT_STEPS = 600  # x 0.05 s: how long s3fs gets to answer a first listing


def _one(index: int, m: Mount) -> str:
    """Shell steps that mount ``m`` (record ``volumes/<index>``), or fail naming it."""
    mp = shlex.quote(m.mount)
    src = shlex.quote(m.source)
    name = m.name.replace('"', '\\"').replace("$", "\\$").replace("`", "\\`")
    options = [f"url={m.url}", f"endpoint={m.region}"]
    if m.path_style:
        options.append("use_path_request_style")
    if m.read_only:
        options.append("ro")
    if m.keys is None:
        options.append("iam_role=auto")
        keys = ""
    else:
        access, secret = m.keys
        options.append('passwd_file="$v.passwd"')
        # printf is bash's own: the keys are on no process's command line.
        keys = f"""rm -f "$v.passwd"
(umask 077; printf '%s:%s\\n' {shlex.quote(access)} {shlex.quote(secret)} > "$v.passwd")"""
    # The password file's path is the shell's ($v), so it alone is left unquoted.
    opts = " ".join(f"-o {o if o.startswith('passwd') else shlex.quote(o)}" for o in options)
    here = "on $(hostname)"
    return f"""v="$d/volumes/{index}"
mp={mp}
if mounted "$mp"; then
  if [ "$(cat "$v.source" 2>/dev/null)" = {src} ] && [ "$(cat "$v.mount" 2>/dev/null)" = "$mp" ] \\
      && ls "$mp" >/dev/null 2>&1; then
    echo "volumes: {name} is mounted already: kept"
    continue_{index}=1
  elif [ "$(cat "$v.mount" 2>/dev/null)" = "$mp" ]; then
    echo "volumes: {name}: its old mount no longer answers: mounting it again"
    umount -l "$mp" 2>/dev/null || fusermount -uz "$mp" 2>/dev/null || true
  else
    echo "{name} {here}: $mp is already a mount point (not this pool's mount of this \\
bucket); pick another mount path" >&2
    false
  fi
fi
if [ -z "${{continue_{index}:-}}" ]; then
  if [ -e "$mp" ] && [ ! -d "$mp" ]; then
    echo "{name} {here}: $mp exists and is not a directory; pick another mount path" >&2
    false
  fi
  mkdir -p "$mp" || {{ echo "{name} {here}: cannot create $mp (above)" >&2; false; }}
  if [ -n "$(ls -A "$mp" 2>/dev/null)" ]; then
    echo "{name} {here}: $mp is a directory that is not empty, and the mount would hide \\
what is in it; pick an empty or new directory, or empty this one" >&2
    false
  fi
  {keys.replace(chr(10), chr(10) + "  ")}
  printf '%s\\n' {src} > "$v.source"
  printf '%s\\n' "$mp" > "$v.mount"
  (cd / && exec setsid s3fs {src} "$mp" -f {opts} </dev/null >"$v.log" 2>&1) &
  pid=$!
  echo "$pid" > "$v.pid"
  i=0
  # s3fs checks the bucket as the mount starts, and a failed check ends it once the
  # request it is serving is answered: a second listing is served only by an s3fs that
  # stays (else it finds the mount gone, and the loop finds s3fs gone).
  until mounted "$mp" && ls "$mp" >/dev/null 2>&1 && ls "$mp" >/dev/null 2>&1 \
      && mounted "$mp" && kill -0 "$pid" 2>/dev/null; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "{name} {here}: s3fs could not mount it; its last lines:" >&2
      tail -n 8 "$v.log" >&2
      rm -f "$v.passwd" "$v.pid" "$v.source" "$v.mount"
      false
    fi
    i=$((i+1))
    if [ $i -ge {_WAIT_STEPS} ]; then
      kill -KILL "$pid" 2>/dev/null || true
      fusermount -uz "$mp" 2>/dev/null || umount -l "$mp" 2>/dev/null || true
      echo "{name} {here}: s3fs did not mount it within {_WAIT_STEPS * 0.05:g} s; its last \\
lines:" >&2
      tail -n 8 "$v.log" >&2
      rm -f "$v.passwd" "$v.pid" "$v.source" "$v.mount"
      false
    fi
    sleep 0.05
  done
  echo "volumes: {name} mounted ({"read-only" if m.read_only else "read-write"})"
fi"""


def mount_steps(mounts: Sequence[Mount]) -> str:
    """The bootstrap's ``volumes`` phase: every mount in ``mounts``, in order (``d`` is the
    node's work directory). Empty when there are none.

    Keys reach the node inside the script (on stdin, never on a command line) and are
    written straight to each mount's password file.
    """
    if not mounts:
        return ""
    for m in mounts:
        if m.keys is not None and any("\n" in k or ":" in k for k in m.keys):
            raise ValueError(f"{m.name}: its keys hold a newline or ':', which s3fs cannot read")
    lines = [
        "phase volumes",
        _MOUNTED,
        'command -v s3fs >/dev/null || { echo "sky.Volume needs s3fs, which is not installed '
        "on $(hostname): install it (apt-get install s3fs), or let the apt phase do it "
        '(root or passwordless sudo)" >&2; false; }',
        '[ -e /dev/fuse ] || { echo "sky.Volume needs FUSE, and $(hostname) has no /dev/fuse '
        "(a container started without --device /dev/fuse?): use a machine that has it, or "
        'sky.storage inside the function" >&2; false; }',
        'mkdir -p "$d/volumes"',
    ]
    lines += [_one(i, m) for i, m in enumerate(mounts)]
    return "\n".join(lines)

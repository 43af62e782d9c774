"""The bootstrap script a node runs over SSH before it can take tasks.

Pure text building, so it is unit-tested without I/O. The script is sent on the command's
stdin (``bash -s``), never on its command line, so the pool secret does not show in ``ps``.
It is idempotent: running it twice leaves one worker (the old one is stopped first).
"""

from __future__ import annotations

import json
import shlex
from typing import Any

__all__ = ["READY_MARK", "worker_bootstrap"]

READY_MARK = "SKYWARD_WORKER_READY"
_EOF = "SKYWARD_EOF_7f3a"


def worker_bootstrap(
    *, workdir: str, python: str, secret: str, config: dict[str, Any], start_timeout: float
) -> str:
    """A bash script that installs the worker's files in ``workdir`` and starts it detached.

    It prints ``READY_MARK`` once the worker listens, or exits non-zero with the worker's
    log on stderr.
    """
    d = shlex.quote(workdir)
    py = shlex.quote(python)
    payload = json.dumps(config, indent=1)
    if _EOF in payload or _EOF in secret:
        raise ValueError("bootstrap payload contains the heredoc terminator")
    steps = max(1, int(start_timeout / 0.02))
    return f"""set -eu
umask 077
mkdir -p {d}
cd {d}
if [ -f worker.ready ]; then
  old=$(cat worker.ready)
  if tr '\\0' ' ' < /proc/$old/cmdline 2>/dev/null | grep -q -- "--dir {workdir}"; then
    kill "$old" 2>/dev/null || true
  fi
  rm -f worker.ready
fi
cat > secret <<'{_EOF}'
{secret}
{_EOF}
cat > worker.json <<'{_EOF}'
{payload}
{_EOF}
setsid {py} -m skyward_trio.worker --dir {d} </dev/null >worker.log 2>&1 &
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

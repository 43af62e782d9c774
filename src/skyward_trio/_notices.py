"""A worker's watch for its machine's interruption notice (an AWS spot instance's, or a
Compute Engine spot VM's preemption).

EC2 warns two minutes before it reclaims a spot instance: the instance metadata service
(IMDS) answers ``GET /latest/meta-data/spot/instance-action`` with 404 until then, and
with ``{"action": "terminate" | "stop" | "hibernate", "time": "2026-11-30T08:22:00Z"}``
once the interruption is scheduled. Before that, EC2 may recommend rebalancing a spot
instance at elevated risk of interruption: ``GET
/latest/meta-data/events/recommendations/rebalance`` answers 404 until then, and
``{"noticeTime": "2026-11-30T08:22:00Z"}`` from then on (a ``Notice`` with action
``"rebalance"``; the watch then goes on for the interruption notice itself). The worker
asks every ``POLL_INTERVAL`` seconds (as AWS advises for both), the IMDSv2 way (a session
token from ``PUT /latest/api/token``, sent with each read). That works whether the
instance requires tokens or not (``sky.AWS`` leaves EC2's ``MetadataOptions`` at the
image's defaults), and takes one network hop (the worker runs on the instance, not in a
container), within EC2's default hop limit.

The service is at ``AWS_EC2_METADATA_SERVICE_ENDPOINT`` when that is set (botocore's name
for it), else at ``http://169.254.169.254``. Where it cannot be reached at all (not EC2,
or IMDS turned off) the worker's log says so once and the watch ends: no notice will come.
Once it answered, a failed read is noted once and the watch goes on.

Compute Engine warns a spot VM it preempts about 30 seconds ahead (the ACPI soft-off it
sends; the VM is stopped, here deleted, 30 s later): its metadata server answers ``GET
/computeMetadata/v1/instance/preempted`` (header ``Metadata-Flavor: Google``, which the
answers carry too) ``FALSE`` until then and ``TRUE`` from then on. The worker reads it once,
then holds a read open with ``wait_for_change=true&last_etag=<the ETag it got>`` (Google's
own client libraries watch values that way): the server answers as soon as the value
differs from that version, so a change between two reads is not missed, and after
``timeout_sec`` (``WAIT``) at the latest, so a cancelled watch's request ends soon. A
server that sends no ETag is polled instead. The server is at ``GCE_METADATA_HOST``
(host[:port], the name Google's client libraries read) when that is set, else at
``metadata.google.internal``. As with IMDS: not reachable at first, the log says so once
and the watch ends; a read failing after it answered is noted once and the watch goes on.

Only the stdlib speaks HTTP here (urllib, in a thread, through no proxy), imported when
a watch starts: the worker must import fast.

Layer 3 (trio, attrs, the stdlib and ``_wire``): imported on the workers.
"""

from __future__ import annotations

import datetime
import http.client
import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol

import attrs
import trio

from . import _wire

__all__ = [
    "ACTIONS",
    "DEFAULT_ENDPOINT",
    "ENDPOINT_ENV",
    "GCE_DEFAULT_HOST",
    "GCE_HOST_ENV",
    "POLL_INTERVAL",
    "REBALANCE",
    "ComputeMetadata",
    "MetadataError",
    "MetadataService",
    "Notice",
    "NoticeSource",
    "endpoint",
    "gce_host",
    "parse",
    "source",
    "watch",
]

POLL_INTERVAL: Final = 5.0  # seconds between reads; EC2 warns 120 s ahead
TIMEOUT: Final = 2.0  # seconds per request: IMDS answers in milliseconds
TOKEN_TTL: Final = 21600  # seconds a session token lasts (IMDS's most: 6 hours)
ENDPOINT_ENV: Final = "AWS_EC2_METADATA_SERVICE_ENDPOINT"
DEFAULT_ENDPOINT: Final = "http://169.254.169.254"
ACTIONS: Final = ("terminate", "stop", "hibernate")
TOKEN_PATH: Final = "/latest/api/token"
ACTION_PATH: Final = "/latest/meta-data/spot/instance-action"
REBALANCE_PATH: Final = "/latest/meta-data/events/recommendations/rebalance"
#: ``Notice.action`` of an EC2 rebalance recommendation: not a reclaim, a risk of one.
REBALANCE: Final = _wire.REBALANCE
_BODY_LIMIT = 65536

GCE_HOST_ENV: Final = "GCE_METADATA_HOST"
GCE_DEFAULT_HOST: Final = "metadata.google.internal"
PREEMPTED_PATH: Final = "/computeMetadata/v1/instance/preempted"
WAIT: Final = 30  # timeout_sec of a wait_for_change read: how long one is held at most
GCE_NOTICE: Final = 30.0  # seconds from the preemption notice to the VM's hard stop
# Between two reads of instance/preempted: a wait_for_change read waited already (and
# last_etag catches a change made meanwhile); this only keeps a server that answers at
# once, or a polled one that sends no ETag, from being asked in a tight loop.
GCE_PAUSE: Final = 2.0


@attrs.frozen(kw_only=True)
class Notice:
    """The provider reclaims the machine: ``action`` at ``at`` (seconds since the epoch);
    or, with ``action`` ``"rebalance"`` (``REBALANCE``), EC2 recommended at ``at`` that
    the spot instance be replaced: it is at elevated risk of interruption."""

    action: str
    at: float

    @property
    def final(self) -> bool:
        """Whether no other notice can follow (a rebalance recommendation may be followed
        by the interruption notice)."""
        return self.action != REBALANCE


class NoticeSource(Protocol):
    """Where a machine's interruption notice is read (a cloud's metadata service).

    ``cloud`` names who reclaims the machine, ``service`` the service and ``notices``
    what it tells, for the worker's log; ``interval`` is the watch's pause between reads.
    """

    cloud: str
    service: str
    notices: str
    interval: float

    def instance_action(self) -> Notice | None:
        """The notice, or None while there is none. Blocking: call it in a thread.

        Raises:
            MetadataError: No answer, or one that is not about a notice.
        """
        ...


class MetadataError(Exception):
    """IMDS did not answer (``reached`` False), or answered something unexpected."""

    def __init__(self, message: str, *, reached: bool) -> None:
        super().__init__(message)
        self.reached = reached


def endpoint(environ: Mapping[str, str] = os.environ) -> str:
    """Where IMDS is: ``AWS_EC2_METADATA_SERVICE_ENDPOINT``, else EC2's own address."""
    return (environ.get(ENDPOINT_ENV) or DEFAULT_ENDPOINT).rstrip("/")


def parse(body: bytes) -> Notice:
    """The notice in a ``spot/instance-action`` answer; ValueError saying what is wrong."""
    where = "spot/instance-action"
    data = _json(body, where)
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a JSON object, got {data!r}")
    action, when = data.get("action"), data.get("time")
    if action not in ACTIONS:
        raise ValueError(f"{where}: expected an action in {ACTIONS}, got {action!r}")
    at = _utc(when)
    if at is None:
        raise ValueError(f"{where}: expected a time like 2026-11-30T08:22:00Z, got {when!r}")
    return Notice(action=action, at=at)


def parse_rebalance(body: bytes) -> Notice:
    """The recommendation in an ``events/recommendations/rebalance`` answer (``REBALANCE``
    at its ``noticeTime``); ValueError saying what is wrong."""
    where = "events/recommendations/rebalance"
    data = _json(body, where)
    at = _utc(data.get("noticeTime") if isinstance(data, dict) else None)
    if at is None:
        raise ValueError(
            f'{where}: expected {{"noticeTime": "2026-11-30T08:22:00Z"}}, got {data!r}'
        )
    return Notice(action=REBALANCE, at=at)


def _json(body: bytes, where: str) -> Any:
    try:
        return json.loads(body)
    except ValueError as exc:
        raise ValueError(f"{where} is not JSON ({exc}): {body[:200]!r}") from None


def _utc(when: object) -> float | None:
    """IMDS's ``2026-11-30T08:22:00Z`` as seconds since the epoch; None if it is not one."""
    try:
        moment = datetime.datetime.strptime(str(when), "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        return None
    return moment.replace(tzinfo=datetime.UTC).timestamp()


class MetadataService:
    """IMDS at ``base``, IMDSv2-style. Blocking: call it in a thread, one call at a time."""

    cloud = "AWS"
    service = "the instance metadata service"
    notices = "spot interruption notice"
    interval = POLL_INTERVAL

    def __init__(self, base: str, *, timeout: float = TIMEOUT) -> None:
        import urllib.request  # here, not at import: the worker imports this module

        self.base = base.rstrip("/")
        self._timeout = timeout
        # IMDS is link-local (or, in tests, loopback): never through a proxy.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self._token: str | None = None
        self._token_until = 0.0
        self._recommended = False  # a rebalance recommendation was returned already

    def instance_action(self) -> Notice | None:
        """The interruption notice; else, once, the rebalance recommendation; else None
        while there is neither (404).

        Raises:
            MetadataError: No answer, or one that is neither a notice nor a 404.
        """
        notice = self._notice(ACTION_PATH, parse)
        if notice is not None or self._recommended:
            return notice
        recommendation = self._notice(REBALANCE_PATH, parse_rebalance)
        self._recommended = recommendation is not None
        return recommendation

    def _notice(self, path: str, parser: Callable[[bytes], Notice]) -> Notice | None:
        status, body = self._read(path)
        if status == 401:  # the token expired or was revoked: one fresh try
            self._token = None
            status, body = self._read(path)
        if status == 404:
            return None
        if status != 200:
            raise MetadataError(f"GET {path} answered {status}: {body[:200]!r}", reached=True)
        try:
            return parser(body)
        except ValueError as exc:
            raise MetadataError(str(exc), reached=True) from None

    def _read(self, path: str) -> tuple[int, bytes]:
        headers = {"X-aws-ec2-metadata-token": self._session_token()}
        return self._request("GET", path, headers)

    def _session_token(self) -> str:
        if self._token is None or time.monotonic() >= self._token_until:
            headers = {"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL)}
            status, body = self._request("PUT", TOKEN_PATH, headers)
            if status != 200 or not body.strip():
                raise MetadataError(
                    f"PUT {TOKEN_PATH} answered {status}: {body[:200]!r}", reached=True
                )
            self._token = body.decode(errors="replace").strip()
            self._token_until = time.monotonic() + TOKEN_TTL - 60
        return self._token

    def _request(self, method: str, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
        import urllib.error
        import urllib.request

        request = urllib.request.Request(self.base + path, method=method, headers=headers)
        try:
            with self._opener.open(request, timeout=self._timeout) as answer:
                return int(answer.status), bytes(answer.read(_BODY_LIMIT))
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, bytes(exc.read(_BODY_LIMIT))
        except (OSError, http.client.HTTPException) as exc:  # refused, timed out, reset
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            raise MetadataError(f"{method} {self.base}{path}: {reason}", reached=False) from None


def gce_host(environ: Mapping[str, str] = os.environ) -> str:
    """Where Compute Engine's metadata server is: ``GCE_METADATA_HOST`` (host[:port]),
    else ``metadata.google.internal``."""
    return environ.get(GCE_HOST_ENV) or GCE_DEFAULT_HOST


class ComputeMetadata:
    """Compute Engine's metadata server at ``host`` (host[:port]), for a spot VM's
    ``instance/preempted``. Blocking: call it in a thread, one call at a time.

    The first read answers at once; each later one, once the server gave an ETag, is a
    ``wait_for_change`` read held up to ``wait`` seconds (``timeout_sec``).
    """

    cloud = "Compute Engine"
    service = "the metadata server"
    notices = "preemption notice"
    interval = GCE_PAUSE

    def __init__(self, host: str, *, wait: int = WAIT, timeout: float = TIMEOUT) -> None:
        import urllib.request  # here, not at import: the worker imports this module

        self.base = f"http://{host}"
        self._wait = wait
        self._timeout = timeout
        # The metadata server is link-local (or, in tests, loopback): never through a proxy.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self._etag: str | None = None

    def instance_action(self) -> Notice | None:
        """A notice once the VM is being preempted (``TRUE``), else None (``FALSE``).

        Raises:
            MetadataError: No answer, or one that is neither ``TRUE`` nor ``FALSE`` from
                Compute Engine's metadata server.
        """
        import urllib.error
        import urllib.parse
        import urllib.request

        path, timeout = PREEMPTED_PATH, self._timeout
        if self._etag is not None:
            query = {"wait_for_change": "true", "last_etag": self._etag}
            path += "?" + urllib.parse.urlencode({**query, "timeout_sec": str(self._wait)})
            timeout += self._wait  # the server holds it that long
        request = urllib.request.Request(self.base + path, headers={"Metadata-Flavor": "Google"})
        try:
            with self._opener.open(request, timeout=timeout) as answer:
                status, headers = int(answer.status), answer.headers
                body = bytes(answer.read(_BODY_LIMIT))
        except urllib.error.HTTPError as exc:
            with exc:
                body = bytes(exc.read(_BODY_LIMIT))
            raise MetadataError(
                f"GET {path} answered {exc.code}: {body[:200]!r}", reached=True
            ) from None
        except (OSError, http.client.HTTPException) as exc:  # refused, timed out, reset
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            raise MetadataError(f"GET {self.base}{path}: {reason}", reached=False) from None
        if headers.get("Metadata-Flavor") != "Google":
            raise MetadataError(
                f"GET {path} answered {status} without Metadata-Flavor: Google (not "
                "Compute Engine's metadata server)",
                reached=True,
            )
        value = body.strip()
        if value not in (b"TRUE", b"FALSE"):
            raise MetadataError(
                f"GET {path}: expected TRUE or FALSE, got {body[:200]!r}", reached=True
            )
        self._etag = headers.get("ETag") or None
        if value == b"FALSE":
            return None
        # A spot VM's termination action here is DELETE: the machine is gone, as EC2's
        # "terminate" leaves it.
        return Notice(action="terminate", at=time.time() + GCE_NOTICE)


def source(kind: str, environ: Mapping[str, str] = os.environ) -> NoticeSource:
    """The notice source for a worker config's ``interruption_notices`` (``"aws"`` or
    ``"gcp"``); ValueError for another."""
    if kind == "aws":
        return MetadataService(endpoint(environ))
    if kind == "gcp":
        return ComputeMetadata(gce_host(environ))
    raise ValueError(f"interruption_notices: expected 'aws' or 'gcp', got {kind!r}")


def _say(text: str) -> None:
    print(f"skyward worker: {text}", file=sys.stderr, flush=True)


async def watch(
    service: NoticeSource, *, interval: float | None = None, answered: bool = False
) -> Notice | None:
    """Read the notice every ``interval`` seconds (the service's own by default) until
    there is one, and return it. (After a rebalance recommendation, call it again, with
    ``answered``, for the interruption notice.)

    Returns None, having said why in the worker's log, when the service cannot be reached
    at all (before it ever answered: ``answered`` says it did, in an earlier watch). A
    read that fails after it did answer is noted once (until one works again) and the
    watch goes on. Cancellable: a request in flight is
    left to its thread, which its own timeout ends.
    """
    pause = service.interval if interval is None else interval
    failing = False
    while True:
        try:
            notice = await trio.to_thread.run_sync(service.instance_action, abandon_on_cancel=True)
        except MetadataError as exc:
            if not answered and not exc.reached:
                _say(
                    f"{service.service} does not answer ({exc}); this machine's "
                    f"{service.notices}s are not watched"
                )
                return None
            answered = answered or exc.reached
            if not failing:
                failing = True
                _say(f"could not read the {service.notices} ({exc}); trying on")
        else:
            answered = True
            failing = False
            if notice is not None:
                return notice
        await trio.sleep(pause)

"""A worker's watch for its machine's interruption notice (an AWS spot instance's).

EC2 warns two minutes before it reclaims a spot instance: the instance metadata service
(IMDS) answers ``GET /latest/meta-data/spot/instance-action`` with 404 until then, and
with ``{"action": "terminate" | "stop" | "hibernate", "time": "2026-11-30T08:22:00Z"}``
once the interruption is scheduled. The worker asks every ``POLL_INTERVAL`` seconds, the
IMDSv2 way (a session token from ``PUT /latest/api/token``, sent with each read). That
works whether the instance requires tokens or not (``sky.AWS`` leaves EC2's
``MetadataOptions`` at the image's defaults), and takes one network hop (the worker runs
on the instance, not in a container), within EC2's default hop limit.

The service is at ``AWS_EC2_METADATA_SERVICE_ENDPOINT`` when that is set (botocore's name
for it), else at ``http://169.254.169.254``. Where it cannot be reached at all (not EC2,
or IMDS turned off) the worker's log says so once and the watch ends: no notice will come.
Once it answered, a failed read is noted once and the watch goes on.

Only the stdlib speaks HTTP here (urllib, in a thread, through no proxy), imported when
a watch starts: the worker must import fast.

Layer 3 (trio, attrs and the stdlib): imported on the workers.
"""

from __future__ import annotations

import datetime
import http.client
import json
import os
import sys
import time
from collections.abc import Mapping
from typing import Any, Final

import attrs
import trio

__all__ = [
    "ACTIONS",
    "DEFAULT_ENDPOINT",
    "ENDPOINT_ENV",
    "POLL_INTERVAL",
    "MetadataError",
    "MetadataService",
    "Notice",
    "endpoint",
    "parse",
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
_BODY_LIMIT = 65536


@attrs.frozen(kw_only=True)
class Notice:
    """The provider reclaims the machine: ``action`` at ``at`` (seconds since the epoch)."""

    action: str
    at: float


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
    try:
        data: Any = json.loads(body)
    except ValueError as exc:
        raise ValueError(f"spot/instance-action is not JSON ({exc}): {body[:200]!r}") from None
    if not isinstance(data, dict):
        raise ValueError(f"spot/instance-action: expected a JSON object, got {data!r}")
    action, when = data.get("action"), data.get("time")
    if action not in ACTIONS:
        raise ValueError(f"spot/instance-action: expected an action in {ACTIONS}, got {action!r}")
    try:
        moment = datetime.datetime.strptime(str(when), "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        raise ValueError(
            f"spot/instance-action: expected a time like 2026-11-30T08:22:00Z, got {when!r}"
        ) from None
    return Notice(action=action, at=moment.replace(tzinfo=datetime.UTC).timestamp())


class MetadataService:
    """IMDS at ``base``, IMDSv2-style. Blocking: call it in a thread, one call at a time."""

    def __init__(self, base: str, *, timeout: float = TIMEOUT) -> None:
        import urllib.request  # here, not at import: the worker imports this module

        self.base = base.rstrip("/")
        self._timeout = timeout
        # IMDS is link-local (or, in tests, loopback): never through a proxy.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self._token: str | None = None
        self._token_until = 0.0

    def instance_action(self) -> Notice | None:
        """The interruption notice, or None while there is none (404).

        Raises:
            MetadataError: No answer, or one that is neither a notice nor a 404.
        """
        status, body = self._read_action()
        if status == 401:  # the token expired or was revoked: one fresh try
            self._token = None
            status, body = self._read_action()
        if status == 404:
            return None
        if status != 200:
            raise MetadataError(
                f"GET {ACTION_PATH} answered {status}: {body[:200]!r}", reached=True
            )
        try:
            return parse(body)
        except ValueError as exc:
            raise MetadataError(str(exc), reached=True) from None

    def _read_action(self) -> tuple[int, bytes]:
        headers = {"X-aws-ec2-metadata-token": self._session_token()}
        return self._request("GET", ACTION_PATH, headers)

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


def _say(text: str) -> None:
    print(f"skyward worker: {text}", file=sys.stderr, flush=True)


async def watch(service: MetadataService, *, interval: float = POLL_INTERVAL) -> Notice | None:
    """Read the notice every ``interval`` seconds until there is one, and return it.

    Returns None, having said why in the worker's log, when IMDS cannot be reached at all
    (before it ever answered). A read that fails after it did answer is noted once (until
    one works again) and the watch goes on. Cancellable: a request in flight is left to
    its thread, which its own timeout ends.
    """
    answered = False
    failing = False
    while True:
        try:
            notice = await trio.to_thread.run_sync(service.instance_action, abandon_on_cancel=True)
        except MetadataError as exc:
            if not answered and not exc.reached:
                _say(
                    f"the instance metadata service does not answer ({exc}); this machine's "
                    "spot interruption notices are not watched"
                )
                return None
            answered = answered or exc.reached
            if not failing:
                failing = True
                _say(f"could not read the spot interruption notice ({exc}); trying on")
        else:
            answered = True
            failing = False
            if notice is not None:
                return notice
        await trio.sleep(interval)

"""The worker's watch for a spot interruption notice, against a tiny IMDS on loopback.

The server is IMDSv2 with tokens required, as EC2's is when an instance requires them:
a token from ``PUT /latest/api/token``, and 401 for a read without a valid one. Reads run
in threads while the watch sleeps on trio's mock clock, so the intervals are exact.
"""

from __future__ import annotations

import contextlib
import datetime
import secrets
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import trio
import trio.testing

from skyward_trio import _notices
from skyward_trio._notices import (
    ComputeMetadata,
    MetadataService,
    Notice,
    endpoint,
    parse,
    parse_rebalance,
    watch,
)

ACTION = "/latest/meta-data/spot/instance-action"
REBALANCE = "/latest/meta-data/events/recommendations/rebalance"


class _IMDS(ThreadingHTTPServer):
    """Answers ``spot/instance-action`` from ``answers`` in turn (the last one repeats):
    ``(status, body)``, and ``events/recommendations/rebalance`` with ``rebalance`` (404
    until a test sets it). ``revoke()`` makes the tokens given so far invalid."""

    daemon_threads = True

    def __init__(self, answers: list[tuple[int, bytes]]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.answers = answers
        self.rebalance: tuple[int, bytes] = (404, b"")
        self.tokens: set[str] = set()
        self.seen: list[tuple[str, str, int]] = []  # method, path, status
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def revoke(self) -> None:
        with self.lock:
            self.tokens.clear()

    def answer(self, method: str, path: str, headers: Any) -> tuple[int, bytes]:
        with self.lock:
            if method == "PUT" and path == "/latest/api/token":
                ttl = headers.get("X-aws-ec2-metadata-token-ttl-seconds", "")
                if not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
                    return 400, b""
                token = secrets.token_hex(8)
                self.tokens.add(token)
                return 200, token.encode()
            if headers.get("X-aws-ec2-metadata-token") not in self.tokens:
                return 401, b""
            if method == "GET" and path == REBALANCE:
                return self.rebalance
            if method != "GET" or path != ACTION:
                return 404, b""
            return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


class _Handler(BaseHTTPRequestHandler):
    server: _IMDS

    def _handle(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        status, body = self.server.answer(self.command, self.path, self.headers)
        with self.server.lock:
            self.server.seen.append((self.command, self.path, status))
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = _handle

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


@contextlib.contextmanager
def _serving(answers: list[tuple[int, bytes]]) -> Iterator[_IMDS]:
    server = _IMDS(answers)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


NOTICE_BODY = b'{"action": "terminate", "time": "2026-11-30T08:22:00Z"}'
AT = datetime.datetime(2026, 11, 30, 8, 22, tzinfo=datetime.UTC).timestamp()


async def test_no_notice_until_one_appears_then_it_is_returned_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with _serving([(404, b""), (404, b""), (200, NOTICE_BODY)]) as imds:
        start = trio.current_time()
        notice = await watch(MetadataService(imds.url))
        assert notice == Notice(action="terminate", at=AT)
        # Read at 0, 5 and 10 s (no notice: no rebalance recommendation either); one
        # token serves every read.
        assert trio.current_time() - start == 2 * _notices.POLL_INTERVAL
        assert imds.seen == [
            ("PUT", "/latest/api/token", 200),
            ("GET", ACTION, 404),
            ("GET", REBALANCE, 404),
            ("GET", ACTION, 404),
            ("GET", REBALANCE, 404),
            ("GET", ACTION, 200),
        ]


async def test_an_expired_token_is_replaced_once(autojump_clock: trio.testing.MockClock) -> None:
    with _serving([(404, b"")]) as imds:
        service = MetadataService(imds.url)
        assert await trio.to_thread.run_sync(service.instance_action) is None
        imds.revoke()
        imds.answers[:] = [(200, b'{"action": "stop", "time": "2026-11-30T08:22:00Z"}')]
        assert await trio.to_thread.run_sync(service.instance_action) == Notice(
            action="stop", at=AT
        )
        assert [status for _, _, status in imds.seen] == [200, 404, 404, 401, 200, 200]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_an_unreachable_service_is_said_once_and_the_watch_ends(
    autojump_clock: trio.testing.MockClock, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    start = trio.current_time()
    assert await watch(MetadataService(url, timeout=1.0)) is None
    assert trio.current_time() == start  # no polling: it ended at the first try
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("skyward worker: the instance metadata service does not answer (")
    assert f"PUT {url}/latest/api/token" in lines[0]
    assert lines[0].endswith("this machine's spot interruption notices are not watched")


async def test_failed_reads_after_it_answered_are_noted_once_and_the_watch_goes_on(
    autojump_clock: trio.testing.MockClock, capsys: pytest.CaptureFixture[str]
) -> None:
    answers = [(404, b""), (500, b"oops"), (500, b"oops"), (200, b"not json"), (200, NOTICE_BODY)]
    with _serving(answers) as imds:
        start = trio.current_time()
        assert await watch(MetadataService(imds.url)) == Notice(action="terminate", at=AT)
        assert trio.current_time() - start == 4 * _notices.POLL_INTERVAL
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "skyward worker: could not read the spot interruption notice "
        "(GET /latest/meta-data/spot/instance-action answered 500: b'oops'); trying on"
    ]


async def test_a_rebalance_recommendation_comes_once_then_the_watch_goes_on_for_the_notice(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with _serving([(404, b"")]) as imds:
        service = MetadataService(imds.url)
        start = trio.current_time()
        imds.rebalance = (200, b'{"noticeTime": "2026-11-30T08:22:00Z"}')
        recommended = await watch(service)
        assert recommended == Notice(action="rebalance", at=AT)
        assert not recommended.final
        assert trio.current_time() == start
        # Read again for the interruption notice itself: the recommendation, still there,
        # is not returned again (nor read).
        imds.answers[:] = [(404, b""), (200, NOTICE_BODY)]
        notice = await watch(service, answered=True)
        assert notice == Notice(action="terminate", at=AT)
        assert notice.final
        assert trio.current_time() - start == _notices.POLL_INTERVAL
        assert [(path, status) for _, path, status in imds.seen] == [
            ("/latest/api/token", 200),
            (ACTION, 404),
            (REBALANCE, 200),
            (ACTION, 404),
            (ACTION, 200),
        ]


async def test_an_interruption_notice_with_its_recommendation_is_the_notice(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """EC2 may send the recommendation along with the notice: the notice is what counts."""
    with _serving([(200, NOTICE_BODY)]) as imds:
        imds.rebalance = (200, b'{"noticeTime": "2026-11-30T08:20:00Z"}')
        assert await watch(MetadataService(imds.url)) == Notice(action="terminate", at=AT)


def test_parse_rebalance_reads_the_notice_time_and_says_what_is_wrong() -> None:
    assert parse_rebalance(b'{"noticeTime": "2026-11-30T08:22:00Z"}') == Notice(
        action="rebalance", at=AT
    )
    with pytest.raises(ValueError, match=r"rebalance: expected \{\"noticeTime\": .*got \{\}"):
        parse_rebalance(b"{}")
    with pytest.raises(ValueError, match="is not JSON"):
        parse_rebalance(b"<html>")


def test_parse_reads_the_action_and_time_and_says_what_is_wrong() -> None:
    assert parse(NOTICE_BODY) == Notice(action="terminate", at=AT)
    hibernate = b'{"action": "hibernate", "time": "2026-11-30T08:22:00Z"}'
    assert parse(hibernate).action == "hibernate"
    with pytest.raises(ValueError, match=r"expected an action in .*got 'reboot'"):
        parse(b'{"action": "reboot", "time": "2026-11-30T08:22:00Z"}')
    with pytest.raises(ValueError, match=r"expected a time like 2026-11-30T08:22:00Z, got '08:22'"):
        parse(b'{"action": "stop", "time": "08:22"}')
    with pytest.raises(ValueError, match="is not JSON"):
        parse(b"<html>")
    with pytest.raises(ValueError, match="expected a JSON object"):
        parse(b"[1]")


def test_the_endpoint_comes_from_botocores_variable_else_ec2s_address() -> None:
    assert endpoint({}) == "http://169.254.169.254"
    assert endpoint({"AWS_EC2_METADATA_SERVICE_ENDPOINT": ""}) == "http://169.254.169.254"
    variable = {"AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.9:8123/"}
    assert endpoint(variable) == "http://127.0.0.9:8123"


# -- Compute Engine: instance/preempted -------------------------------------------------------

PREEMPTED = "/computeMetadata/v1/instance/preempted"


class _GCE(ThreadingHTTPServer):
    """Compute Engine's metadata server for ``instance/preempted``: ``Metadata-Flavor:
    Google`` required (403 without, in Google's words) and sent back; ``FALSE`` until
    ``preempt()``, then ``TRUE``, with an ETag per value (none when ``etags`` is False).
    ``wait_for_change=true`` holds a read whose ``last_etag`` is the current one until the
    value changes or ``timeout_sec`` passes. ``refusing`` answers 403 as to a read without
    the header; ``flavorless`` leaves the header out of the answers."""

    daemon_threads = True

    def __init__(self, *, etags: bool = True) -> None:
        super().__init__(("127.0.0.1", 0), _GCEHandler)
        self.etags = etags
        self.value = "FALSE"
        self.refusing = False
        self.flavorless = False
        self.answers = 0  # reads answered with the value
        self.preempt_after: int | None = None  # preempted once this many were answered
        self.changed = threading.Condition()
        self.waiting = 0
        # Each read: its query, its status, and whether a held read ran out its timeout_sec.
        self.seen: list[tuple[dict[str, str], int, bool]] = []

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"

    def etag(self) -> str:
        return f"etag-{self.value.lower()}"

    def preempt(self) -> None:
        with self.changed:
            self.value = "TRUE"
            self.changed.notify_all()

    def until_waiting(self) -> None:
        """Block until a ``wait_for_change`` read is held."""
        with self.changed:
            assert self.changed.wait_for(lambda: self.waiting > 0, timeout=30)

    def answer(self, path: str, query: dict[str, str], headers: Any) -> tuple[int, bytes, bool]:
        if headers.get("Metadata-Flavor") != "Google" or self.refusing:
            return 403, b"Missing Metadata-Flavor:Google header.", False
        if path != PREEMPTED:
            return 404, b"not found", False
        timed_out = False
        with self.changed:
            if query.get("wait_for_change") == "true" and query.get("last_etag") == self.etag():
                self.waiting += 1
                self.changed.notify_all()
                before = self.value
                timed_out = not self.changed.wait_for(
                    lambda: self.value != before, timeout=float(query["timeout_sec"])
                )
                self.waiting -= 1
            self.answers += 1
            if self.preempt_after is not None and self.answers > self.preempt_after:
                self.value = "TRUE"
            return 200, self.value.encode(), timed_out


class _GCEHandler(BaseHTTPRequestHandler):
    server: _GCE

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        status, body, timed_out = self.server.answer(url.path, query, self.headers)
        with self.server.changed:
            self.server.seen.append((query, status, timed_out))
            etag = self.server.etag() if self.server.etags and status == 200 else None
        self.send_response(status)
        if not self.server.flavorless:
            self.send_header("Metadata-Flavor", "Google")
        if etag is not None:
            self.send_header("ETag", etag)
        self.send_header("Content-Type", "application/text")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


@contextlib.contextmanager
def _gce(**options: Any) -> Iterator[_GCE]:
    server = _GCE(**options)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.preempt()  # a held read ends
        server.shutdown()
        server.server_close()
        thread.join()


async def test_gce_false_then_a_held_read_that_returns_at_once_on_true(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with _gce() as gce:
        start = trio.current_time()
        found: list[Notice | None] = []

        async def watching() -> None:
            found.append(await watch(ComputeMetadata(gce.host, wait=45)))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watching)
            await trio.to_thread.run_sync(gce.until_waiting)
            before = time.time()
            gce.preempt()
        (notice,) = found
        assert notice is not None
        assert notice.action == "terminate"
        assert before + _notices.GCE_NOTICE <= notice.at <= time.time() + _notices.GCE_NOTICE
        # One plain read (FALSE), one pause, then one read held until the value changed.
        assert trio.current_time() - start == _notices.GCE_PAUSE
        assert gce.seen == [
            ({}, 200, False),
            (
                {"wait_for_change": "true", "last_etag": "etag-false", "timeout_sec": "45"},
                200,
                False,
            ),
        ]


async def test_gce_a_held_read_ends_at_its_timeout_sec_and_the_watch_holds_another(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with _gce() as gce:
        gce.preempt_after = 2  # the plain read and a held one; the next one ends on TRUE
        start = trio.current_time()
        notice = await watch(ComputeMetadata(gce.host, wait=1))
        assert notice is not None
        assert trio.current_time() - start == 2 * _notices.GCE_PAUSE
        held = {"wait_for_change": "true", "last_etag": "etag-false", "timeout_sec": "1"}
        assert gce.seen == [
            ({}, 200, False),
            (held, 200, True),
            (held, 200, True),
        ]


async def test_gce_with_no_etag_the_value_is_polled(autojump_clock: trio.testing.MockClock) -> None:
    with _gce(etags=False) as gce:
        gce.preempt_after = 2
        start = trio.current_time()
        notice = await watch(ComputeMetadata(gce.host))
        assert notice is not None
        assert notice.action == "terminate"
        assert trio.current_time() - start == 2 * _notices.GCE_PAUSE
        assert gce.seen == [({}, 200, False)] * 3  # never held: nothing to wait from


async def test_gce_a_refused_read_is_noted_once_and_the_watch_goes_on(
    autojump_clock: trio.testing.MockClock, capsys: pytest.CaptureFixture[str]
) -> None:
    with _gce(etags=False) as gce:
        gce.refusing = True
        found: list[Notice | None] = []

        async def watching() -> None:
            found.append(await watch(ComputeMetadata(gce.host)))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watching)
            await _read_on_until(lambda: len(gce.seen) >= 3)
            gce.refusing = False
            gce.flavorless = True
            await _read_on_until(lambda: len(gce.seen) >= 5)
            gce.flavorless = False
            gce.preempt()
        assert found[0] is not None
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "skyward worker: could not read the preemption notice (GET "
        f"{PREEMPTED} answered 403: b'Missing Metadata-Flavor:Google header.'); trying on"
    ]
    assert [status for _, status, _ in gce.seen][:3] == [403, 403, 403]


async def _read_on_until(done: Any) -> None:
    """Let the watch read on (each of its pauses a jump of the mock clock) until ``done()``."""
    while not done():
        await trio.sleep(_notices.GCE_PAUSE / 4)
        await trio.to_thread.run_sync(time.sleep, 0.01)


async def test_gce_unreachable_is_said_once_and_the_watch_ends(
    autojump_clock: trio.testing.MockClock, capsys: pytest.CaptureFixture[str]
) -> None:
    host = f"127.0.0.1:{_closed_port()}"
    start = trio.current_time()
    assert await watch(ComputeMetadata(host, timeout=1.0)) is None
    assert trio.current_time() == start
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(
        f"skyward worker: the metadata server does not answer (GET http://{host}{PREEMPTED}: "
    )
    assert lines[0].endswith("this machine's preemption notices are not watched")


def test_gce_host_comes_from_gce_metadata_host_else_googles_name() -> None:
    assert _notices.gce_host({}) == "metadata.google.internal"
    assert _notices.gce_host({"GCE_METADATA_HOST": ""}) == "metadata.google.internal"
    assert _notices.gce_host({"GCE_METADATA_HOST": "127.0.0.9:8123"}) == "127.0.0.9:8123"
    service = _notices.source("gcp", {"GCE_METADATA_HOST": "127.0.0.9:8123"})
    assert isinstance(service, ComputeMetadata)
    assert service.base == "http://127.0.0.9:8123"
    aws = _notices.source("aws", {})
    assert isinstance(aws, MetadataService)
    assert aws.base == "http://169.254.169.254"
    with pytest.raises(ValueError, match="expected 'aws' or 'gcp', got 'azure'"):
        _notices.source("azure", {})

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
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import trio
import trio.testing

from skyward_trio import _notices
from skyward_trio._notices import MetadataService, Notice, endpoint, parse, watch

ACTION = "/latest/meta-data/spot/instance-action"


class _IMDS(ThreadingHTTPServer):
    """Answers ``spot/instance-action`` from ``answers`` in turn (the last one repeats):
    ``(status, body)``. ``revoke()`` makes the tokens given so far invalid."""

    daemon_threads = True

    def __init__(self, answers: list[tuple[int, bytes]]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.answers = answers
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
        # Read at 0, 5 and 10 s; one token serves every read.
        assert trio.current_time() - start == 2 * _notices.POLL_INTERVAL
        assert imds.seen == [
            ("PUT", "/latest/api/token", 200),
            ("GET", ACTION, 404),
            ("GET", ACTION, 404),
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
        assert [status for _, _, status in imds.seen] == [200, 404, 401, 200, 200]


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

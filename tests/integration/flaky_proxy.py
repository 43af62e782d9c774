"""A flaky HTTP proxy on loopback, between a storage client and moto's S3 server.

It forwards each request to the server and its answer back, except the ones a test
scripts to fail (:meth:`FlakyProxy.fail`): answered 503 SlowDown or 500 InternalError
(S3's own XML bodies) without reaching the server, dropped before any answer, or cut in
the middle of the server's answer. It records every request it gets, failed or not, so a
test can count the attempts.

    with FlakyProxy(endpoint) as proxy:
        proxy.fail("PUT", "partNumber=2", "slow_down")       # the first such request
        proxy.fail("GET", "", "cut", skip=1, times=None)    # all but the first GET
        ... sky.storage.S3(endpoint=proxy.endpoint, ...) ...
        proxy.count("PUT", "partNumber=")
"""

from __future__ import annotations

import http.client
import http.server
import socket
import threading
import urllib.parse
from typing import Literal

import attrs

#: How a scripted request fails.
#:
#: - ``slow_down``: answered 503 with S3's SlowDown error (``retry_after`` as its header).
#: - ``internal_error``: answered 500 with S3's InternalError.
#: - ``internal_error_200``: answered 200 with an InternalError body, as S3 may answer a
#:   CompleteMultipartUpload that failed once its answer had begun.
#: - ``access_denied``: answered 403 with S3's AccessDenied.
#: - ``drop``: the request (its body read) is forwarded to no one; the connection is
#:   closed before any answer.
#: - ``drop_after``: forwarded (the server acts on it), then the connection is closed
#:   before its answer: the failure that leaves a client not knowing.
#: - ``cut``: forwarded, and its answer closed after its headers and half its body.
How = Literal[
    "slow_down",
    "internal_error",
    "internal_error_200",
    "access_denied",
    "drop",
    "drop_after",
    "cut",
]

_ERRORS = {
    "slow_down": (503, "SlowDown", "Please reduce your request rate."),
    "internal_error": (500, "InternalError", "We encountered an internal error."),
    "internal_error_200": (200, "InternalError", "We encountered an internal error."),
    "access_denied": (403, "AccessDenied", "Access Denied"),
}
# Not passed on: they are about the one connection they came on.
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}


@attrs.define
class _Fault:
    method: str
    contains: str
    how: How
    skip: int
    times: int | None
    retry_after: int | None
    matched: int = 0

    def takes(self, method: str, target: str) -> bool:
        """Whether this request (the ``matched``-th that matches) is to fail."""
        if method != self.method or self.contains not in target:
            return False
        self.matched += 1
        if self.matched <= self.skip:
            return False
        return self.times is None or self.matched - self.skip <= self.times


class FlakyProxy:
    """A threading HTTP/1.1 proxy on 127.0.0.1 (a port of its own) in front of
    ``upstream``; ``with`` starts and stops it.

    Attributes:
        endpoint: Its URL, for ``sky.storage.S3(endpoint=...)``.
        seen: ``(method, path?query)`` of every request it got, in order.
    """

    def __init__(self, upstream: str) -> None:
        parsed = urllib.parse.urlsplit(upstream)
        if parsed.hostname is None or parsed.port is None:
            raise ValueError(f"FlakyProxy({upstream!r}): pass the server's http://host:port")
        self._upstream = (parsed.hostname, parsed.port)
        self._faults: list[_Fault] = []
        self._lock = threading.Lock()
        self.seen: list[tuple[str, str]] = []
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        host, port = self._server.server_address[:2]
        self.endpoint = f"http://{host!s}:{port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="flaky-proxy", daemon=True
        )

    def __enter__(self) -> FlakyProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def fail(
        self,
        method: str,
        contains: str,
        how: How,
        *,
        skip: int = 0,
        times: int | None = 1,
        retry_after: int | None = None,
    ) -> None:
        """Fail requests ``method`` whose path and query hold ``contains``: after ``skip``
        such requests go through, the next ``times`` of them (None: every one).

        A request is offered to the faults in the order they were given; the first that
        takes it fails it, and the faults after that one do not count it."""
        with self._lock:
            self._faults.append(_Fault(method, contains, how, skip, times, retry_after))

    def count(self, method: str, contains: str = "") -> int:
        """How many requests ``method`` whose path and query hold ``contains`` it got."""
        with self._lock:
            return sum(1 for m, target in self.seen if m == method and contains in target)

    def _fault(self, method: str, target: str) -> _Fault | None:
        with self._lock:
            self.seen.append((method, target))
            for fault in self._faults:
                if fault.takes(method, target):
                    return fault
            return None

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a store's

            def log_message(self, format: str, *args: object) -> None:
                pass

            def handle_one_request(self) -> None:
                try:
                    super().handle_one_request()
                except ConnectionError:  # the client gave up on a connection: its right
                    self.close_connection = True

            def _relay(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                fault = proxy._fault(self.command, self.path)
                how = fault.how if fault is not None else None
                if fault is not None and fault.how in _ERRORS:
                    self._error(fault)
                    return
                if how == "drop":
                    self._drop()
                    return
                status, headers, answer = proxy._forward(self.command, self.path, self, body)
                if how == "drop_after":
                    self._drop()
                    return
                self.send_response(status)
                for name, value in headers:
                    if name.lower() not in _HOP_BY_HOP:
                        self.send_header(name, value)
                if self.command == "HEAD":  # the object's length, and no body
                    self.send_header("Content-Length", dict(headers).get("Content-Length", "0"))
                else:
                    self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                if how == "cut":
                    self.wfile.write(answer[: len(answer) // 2])
                    self._drop()
                    return
                self.wfile.write(answer)

            def _error(self, fault: _Fault) -> None:
                status, code, message = _ERRORS[fault.how]
                body = (
                    '<?xml version="1.0" encoding="UTF-8"?>\n'
                    f"<Error><Code>{code}</Code><Message>{message}</Message>"
                    "<RequestId>flaky-proxy</RequestId></Error>"
                ).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                if fault.retry_after is not None:
                    self.send_header("Retry-After", str(fault.retry_after))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _drop(self) -> None:
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _relay

        return Handler

    def _forward(
        self,
        method: str,
        target: str,
        request: http.server.BaseHTTPRequestHandler,
        body: bytes,
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        upstream = http.client.HTTPConnection(*self._upstream, timeout=30)
        try:
            headers = {
                name: value
                for name, value in request.headers.items()
                if name.lower() not in _HOP_BY_HOP
            }
            upstream.request(method, target, body=body, headers=headers)
            answer = upstream.getresponse()
            return answer.status, answer.getheaders(), answer.read()
        finally:
            upstream.close()

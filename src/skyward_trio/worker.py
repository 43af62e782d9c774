"""The worker daemon that runs on every node: ``python -m skyward_trio.worker --dir DIR``.

It listens on a unix socket in its directory (reached by the client through the SSH
connection, so no port is opened), authenticates each connection with the pool's secret,
checks that both ends run the same Python minor version and Skyward version before it
unpickles anything, then runs tasks in threads and sends results back.

This module is imported on remote machines: it may import only trio, cloudpickle, lz4,
attrs, the stdlib and Skyward's layers 1-2. A test checks ``sys.modules``.
"""

from __future__ import annotations

import argparse
import hmac
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import trio

from . import _runtime, _serial, _wire
from ._info import from_dict
from ._version import PYTHON_VERSION, __version__

__all__ = ["main"]

_COALESCE = 256 * 1024


class _FunctionCache:
    """Unpickled functions by key; each is unpickled once, in a worker thread."""

    def __init__(self) -> None:
        self._payloads: dict[str, _serial.Payload] = {}
        self._functions: dict[str, Any] = {}
        self._lock = threading.Lock()

    def add(self, key: str, payload: _serial.Payload | None) -> None:
        if payload is not None and key not in self._functions:
            self._payloads[key] = payload

    def get(self, key: str) -> Any:
        """Return the function for ``key`` (call from a worker thread)."""
        with self._lock:
            fn = self._functions.get(key)
            if fn is None:
                fn = _serial.loads(self._payloads.pop(key))
                self._functions[key] = fn
            return fn


def _run_one(cache: _FunctionCache, fn_key: str, args_payload: _serial.Payload) -> tuple[bool, Any]:
    try:
        fn = cache.get(fn_key)
        args, kwargs = _serial.loads(args_payload)
        value = fn(*args, **kwargs)
    except BaseException as exc:  # user code: report everything, including SystemExit
        return False, _serial.dump_exception(exc)
    try:
        return True, _serial.dumps(value)
    except Exception as exc:
        return False, _result_pickle_error(value, exc)


def _result_pickle_error(value: Any, exc: Exception) -> Any:
    err = TypeError(
        f"the function returned a {type(value).__qualname__} that cannot be pickled "
        f"({exc}); return plain data (numbers, strings, arrays, dicts) instead"
    )
    return _serial.dump_exception(err)


def _run_batch(cache: _FunctionCache, fn_key: str, items_payload: _serial.Payload) -> Any:
    try:
        fn = cache.get(fn_key)
        items = _serial.loads(items_payload)
    except BaseException as exc:
        failure = (False, _serial.dump_exception(exc))
        return _serial.dumps([failure])
    results: list[tuple[bool, Any]] = []
    for item in items:
        try:
            results.append((True, fn(item)))
        except BaseException as exc:  # user code
            results.append((False, _serial.dump_exception(exc)))
    try:
        return _serial.dumps(results)
    except Exception:
        # One bad result must not sink the batch: find it, report it, keep the rest.
        fixed: list[tuple[bool, Any]] = []
        for ok, value in results:
            if ok:
                try:
                    _serial.dumps(value)
                except Exception as exc:
                    fixed.append((False, _result_pickle_error(value, exc)))
                    continue
            fixed.append((ok, value))
        return _serial.dumps(fixed)


class Worker:
    """One node's worker: accepts client connections and runs their tasks."""

    def __init__(self, directory: Path, config: dict[str, Any], secret: bytes) -> None:
        self.directory = directory
        self.config = config
        self._secret = secret
        self.node: int = config["info"]["node"]
        self._limiter = trio.CapacityLimiter(int(config.get("concurrency", 1)))
        self._cache = _FunctionCache()
        self._shutdown = trio.Event()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        sock_path = self.directory / "worker.sock"
        sock_path.unlink(missing_ok=True)
        sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        await sock.bind(str(sock_path))
        os.chmod(sock_path, 0o600)
        sock.listen(64)
        listener = trio.SocketListener(sock)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_signals, nursery.cancel_scope)
            nursery.start_soon(self._accept_loop, listener, nursery)
            (self.directory / "worker.ready").write_text(str(os.getpid()))
            task_status.started()
            await self._shutdown.wait()
            nursery.cancel_scope.cancel(reason="worker shutdown")
        sock_path.unlink(missing_ok=True)

    async def _watch_signals(self, scope: trio.CancelScope) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                self._shutdown.set()
                return

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        while True:
            stream = await listener.accept()
            nursery.start_soon(self._handle, stream)

    async def _handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            decoder = _wire.FrameDecoder(expect_hello=True)
            messages: list[Any] = []
            while not messages:
                data = await stream.receive_some(65536)
                if not data:
                    return
                messages = decoder.feed(data)
            if not await self._handshake(stream, messages.pop(0)):
                return
            send, receive = trio.open_memory_channel[list[Any]](1024)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer, stream, receive)
                session = _Session(self, send, nursery)
                for msg in messages:
                    session.dispatch(msg)
                while True:
                    data = await stream.receive_some(1 << 20)
                    if not data:
                        break
                    for msg in decoder.feed(data):
                        session.dispatch(msg)
                # The client is gone: results it was waiting for cannot reach it.
                nursery.cancel_scope.cancel(reason="client disconnected")

    async def _handshake(self, stream: trio.SocketStream, hello: Any) -> bool:
        problem = None
        if not isinstance(hello, dict) or not hmac.compare_digest(
            str(hello.get("secret", "")).encode(), self._secret
        ):
            problem = "authentication failed: wrong pool secret"
        elif hello.get("python") != PYTHON_VERSION or hello.get("skyward") != __version__:
            problem = (
                f"version mismatch: the client runs Python {hello.get('python')} with "
                f"Skyward {hello.get('skyward')}, this worker runs Python {PYTHON_VERSION} "
                f"with Skyward {__version__}; both must match (cloudpickled code does not "
                "survive a change of Python minor version)"
            )
        reply = {
            "ok": problem is None,
            "error": problem,
            "python": PYTHON_VERSION,
            "skyward": __version__,
            "node": self.node,
            "pid": os.getpid(),
        }
        await stream.send_all(_wire.encode_hello(reply))
        return problem is None

    async def _writer(
        self, stream: trio.SocketStream, receive: trio.MemoryReceiveChannel[list[Any]]
    ) -> None:
        async for chunks in receive:
            pending = list(chunks)
            size = sum(len(c) for c in pending)
            while size < _COALESCE:
                try:
                    more = receive.receive_nowait()
                except trio.WouldBlock:
                    break
                pending.extend(more)
                size += sum(len(c) for c in more)
            small: list[Any] = []
            for chunk in pending:
                if len(chunk) < 65536:
                    small.append(chunk)
                    continue
                if small:
                    await stream.send_all(b"".join(small))
                    small = []
                await stream.send_all(chunk)
            if small:
                await stream.send_all(b"".join(small))


class _Session:
    """Dispatches one connection's messages."""

    def __init__(
        self, worker: Worker, send: trio.MemorySendChannel[list[Any]], nursery: trio.Nursery
    ) -> None:
        self._worker = worker
        self._send = send
        self._nursery = nursery
        self._scopes: dict[int, trio.CancelScope] = {}

    def dispatch(self, msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        if kind == _wire.RUN:
            _, task_id, fn_key, fn_payload, args_payload = msg
            self._worker._cache.add(fn_key, fn_payload)
            self._nursery.start_soon(self._run, task_id, fn_key, args_payload)
        elif kind == _wire.BATCH:
            _, batch_id, fn_key, fn_payload, items_payload = msg
            self._worker._cache.add(fn_key, fn_payload)
            self._nursery.start_soon(self._batch, batch_id, fn_key, items_payload)
        elif kind == _wire.CANCEL:
            scope = self._scopes.get(msg[1])
            if scope is not None:
                scope.cancel(reason="cancelled by the client")
        elif kind == _wire.SHUTDOWN:
            self._worker._shutdown.set()
        else:
            raise _wire.ProtocolError(f"unknown message kind {kind!r}")

    async def _run(self, task_id: int, fn_key: str, args_payload: _serial.Payload) -> None:
        with trio.CancelScope() as scope:
            self._scopes[task_id] = scope
            try:
                t0 = time.perf_counter()
                ok, payload = await trio.to_thread.run_sync(
                    _run_one,
                    self._worker._cache,
                    fn_key,
                    args_payload,
                    limiter=self._worker._limiter,
                    abandon_on_cancel=True,
                )
                elapsed = time.perf_counter() - t0
            finally:
                del self._scopes[task_id]
            await self._send.send(_wire.encode((_wire.RESULT, task_id, ok, payload, elapsed)))

    async def _batch(self, batch_id: int, fn_key: str, items_payload: _serial.Payload) -> None:
        with trio.CancelScope() as scope:
            self._scopes[batch_id] = scope
            try:
                t0 = time.perf_counter()
                payload = await trio.to_thread.run_sync(
                    _run_batch,
                    self._worker._cache,
                    fn_key,
                    items_payload,
                    limiter=self._worker._limiter,
                    abandon_on_cancel=True,
                )
                elapsed = time.perf_counter() - t0
            finally:
                del self._scopes[batch_id]
            await self._send.send(_wire.encode((_wire.BATCH_RESULT, batch_id, payload, elapsed)))


def main(argv: list[str] | None = None) -> None:
    """Entry point of the worker daemon."""
    parser = argparse.ArgumentParser(prog="python -m skyward_trio.worker")
    parser.add_argument("--dir", required=True, type=Path, help="the node's working directory")
    args = parser.parse_args(argv)
    directory: Path = args.dir
    config = json.loads((directory / "worker.json").read_text())
    secret = (directory / "secret").read_bytes().strip()
    _runtime.set_instance_info(from_dict(config["info"]))
    os.chdir(directory)
    worker = Worker(directory, config, secret)
    trio.run(worker.serve)


if __name__ == "__main__":
    sys.exit(main())

"""The pool server's wire, which the server (``_server``) and its clients (``_client``,
``skyward._client``) share: frames of a JSON header and binary blobs, a collection
operation and its answer in them, events as JSON lines, and where the state file is.

Apart from the server so that a client, and the ``sky`` commands that only ask the server
(``sky server status``, ``sky compute list``), import neither the server nor what it
imports to hold pools (asyncssh among them).
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cattrs

from . import _collections as ops
from . import _events, _serial
from ._errors import ConnectionLostError, PoolClosedError
from ._events import Event

__all__ = [
    "CLIENT_CLOSED",
    "CLIENT_HEADER",
    "FRAME",
    "LOG_FILE",
    "STATE_FILE",
    "event_from_fields",
    "event_from_json",
    "event_json",
    "frame",
    "join_payload",
    "left_path",
    "pack",
    "split_payload",
    "state_path",
    "store_request",
    "store_value",
    "to_tree",
    "tree_value",
    "unpack",
]

STATE_FILE = "~/.skyward/server.json"
LOG_FILE = "~/.skyward/logs/server.log"

#: The media type of a frame: a 4-byte length, a JSON header, then the blobs it lists.
FRAME = "application/x-skyward-frame"

#: The header naming the client a request comes from (its session's id).
CLIENT_HEADER = "x-skyward-client"

#: Why a call is cancelled when its client closes (or dies) while it runs.
CLIENT_CLOSED = "its client closed while it ran"


# -- frames: a JSON header and binary blobs, no pickle on the HTTP layer -------------------------


def pack(header: dict[str, Any], blobs: Sequence[Any] = ()) -> list[Any]:
    """A frame's parts, to send one after another (blobs are not copied)."""
    views = [memoryview(b).cast("B") for b in blobs]  # released once sent
    head = json.dumps({**header, "blobs": [v.nbytes for v in views]}).encode()
    return [len(head).to_bytes(4, "big"), head, *views]


def frame(header: dict[str, Any], blobs: Sequence[Any] = ()) -> bytes:
    """A frame as one buffer (``pack``'s parts joined: the blobs copied once)."""
    return b"".join(pack(header, blobs))


def unpack(body: bytes | bytearray | memoryview) -> tuple[dict[str, Any], list[bytes]]:
    """A frame's header and its blobs.

    Raises:
        ValueError: ``body`` is not a whole frame.
    """
    view = memoryview(body).cast("B")
    if view.nbytes < 4:
        raise ValueError("the frame is shorter than its length field")
    size = int.from_bytes(view[:4], "big")
    try:
        header = json.loads(bytes(view[4 : 4 + size]))
    except ValueError as exc:
        raise ValueError(f"the frame's header is not JSON: {exc}") from None
    if not isinstance(header, dict) or not isinstance(header.get("blobs"), list):
        raise ValueError("the frame's header lists no blobs")
    blobs, at = [], 4 + size
    for length in header["blobs"]:
        if not isinstance(length, int) or length < 0 or at + length > view.nbytes:
            raise ValueError("the frame is shorter than the blobs its header lists")
        blobs.append(bytes(view[at : at + length]))
        at += length
    if at != view.nbytes:
        raise ValueError("the frame is longer than the blobs its header lists")
    return header, blobs


def _raw(part: Any) -> memoryview:
    return part.raw() if isinstance(part, pickle.PickleBuffer) else memoryview(part)


def split_payload(payload: _serial.Payload) -> tuple[dict[str, Any], list[memoryview]]:
    """A payload as a header entry and blobs (the head first, then its buffers)."""
    head, head_z, bufs, flags = payload
    return {"z": head_z, "flags": list(flags)}, [_raw(head), *(_raw(b) for b in bufs)]


def join_payload(meta: Any, blobs: Sequence[bytes]) -> _serial.Payload:
    """The payload ``split_payload`` made, its buffers out of band again."""
    if not isinstance(meta, dict) or len(blobs) != 1 + len(meta.get("flags", ())):
        raise ValueError("a payload's header does not match its blobs")
    head, *bufs = blobs
    return (
        pickle.PickleBuffer(head),
        bool(meta["z"]),
        [pickle.PickleBuffer(b) for b in bufs],
        [bool(f) for f in meta["flags"]],
    )


# -- a collection operation: its arguments and its answer, JSON and blobs ------------------------


def _is_payload(value: Any) -> bool:
    return (
        isinstance(value, tuple)
        and len(value) == 4
        and isinstance(value[1], bool)
        and isinstance(value[2], list)
        and isinstance(value[3], list)
    )


def to_tree(value: Any, blobs: list[Any]) -> Any:
    """``value`` (scalars, tuples, lists and payloads: what the store's operations take
    and give) as JSON, its payloads' bytes appended to ``blobs``."""
    if _is_payload(value):
        meta, parts = split_payload(value)
        blobs += parts
        return {"p": meta}
    if isinstance(value, tuple | list):
        items = [to_tree(v, blobs) for v in value]
        return {"t": items} if isinstance(value, tuple) else items
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"a collection operation carries no {type(value).__qualname__}")


def _from_tree(tree: Any, blobs: list[bytes], at: list[int]) -> Any:
    if isinstance(tree, dict) and "p" in tree:
        count = 1 + len(tree["p"]["flags"])
        start = at[0]
        at[0] += count
        return join_payload(tree["p"], blobs[start : start + count])
    if isinstance(tree, dict) and "t" in tree:
        return tuple(_from_tree(v, blobs, at) for v in tree["t"])
    if isinstance(tree, list):
        return [_from_tree(v, blobs, at) for v in tree]
    if tree is None or isinstance(tree, bool | int | float | str):
        return tree
    raise ValueError(f"not a value of a collection operation: {tree!r}")


def tree_value(header: dict[str, Any], key: str, blobs: list[bytes]) -> Any:
    """The value ``to_tree`` wrote at ``header[key]``, its payloads from ``blobs`` (which
    it must use up)."""
    at = [0]
    value = _from_tree(header[key], blobs, at)
    if at[0] != len(blobs):
        raise ValueError("the blobs do not match the values")
    return value


def store_request(op: int, name: str, args: tuple[Any, ...], ticket: str | None = None) -> bytes:
    """The body of a collection operation sent to the server (keys and values pickled
    by the client: the server passes them on as they are). ``ticket``: a wait's name of
    the client's choosing, by which it gives the wait up (``abandon_path``)."""
    blobs: list[Any] = []
    header = {"op": op, "name": name, "args": to_tree(args, blobs)}
    return frame(header if ticket is None else {**header, "ticket": ticket}, blobs)


def store_value(body: bytes) -> Any:
    """The value a collection operation's answer carries; raises its error (a builtin
    as itself, the pool closed or its store lost as Skyward's errors)."""
    header, blobs = unpack(body)
    if not header["ok"]:
        kind, message = header["error"]
        if kind == "PoolClosedError":
            raise PoolClosedError(message)
        if kind == "ConnectionLostError":
            raise ConnectionLostError(message, node=0)
        ops.raise_failure((kind, message))
    return tree_value(header, "value", blobs)


# -- events as JSON lines ------------------------------------------------------------------------

_events_converter = cattrs.Converter()


def event_json(event: Event) -> bytes:
    """One event as a JSON line: its fields and its type's name."""
    fields = _events_converter.unstructure(event)
    return json.dumps({"type": type(event).__name__, **fields}).encode() + b"\n"


def event_from_json(line: bytes | str) -> Event:
    """The event ``event_json`` wrote.

    Raises:
        ValueError: Not an event line (a type Skyward has no event of, or bad fields).
    """
    return event_from_fields(json.loads(line))


def event_from_fields(data: dict[str, Any]) -> Event:
    """The event of an ``event_json`` line, parsed (``data`` loses its ``type``)."""
    kind = getattr(_events, str(data.pop("type", "")), None)
    if not (isinstance(kind, type) and issubclass(kind, Event)):
        raise ValueError(f"not an event: {data!r}")
    try:
        return _events_converter.structure(data, kind)
    except Exception as exc:
        raise ValueError(f"not a {kind.__name__} event: {exc}") from None


# -- the state file ------------------------------------------------------------------------------


def state_path() -> Path:
    return Path(os.path.expanduser(STATE_FILE))


def left_path(state: Path) -> Path:
    """Where a server that stopped writes what its pools' closes could not confirm ended
    (``server-left.json`` beside the state file), for ``sky server stop`` to say."""
    return state.with_name("server-left.json")

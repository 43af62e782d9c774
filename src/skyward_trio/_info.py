"""Records describing a worker's place in the cluster, and their JSON form.

The client computes one :class:`InstanceInfo` per worker, writes it as JSON at
bootstrap, and the worker reads it back with :func:`from_dict`. The round trip
must be exact, so the dict form is spelled out field by field here instead of
going through a general-purpose converter: this module is imported on remote
workers, where only the stdlib and ``attrs`` may be loaded.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

import attrs

__all__ = [
    "AcceleratorInfo",
    "InstanceInfo",
    "NetworkInfo",
    "PeerInfo",
    "from_dict",
    "to_dict",
]


@attrs.frozen(kw_only=True)
class PeerInfo:
    """One node of the pool, as seen by every worker.

    Attributes:
        node: The node's index, ``0 .. total_nodes - 1``.
        private_ip: Address reachable from the other nodes.
        public_ip: Address reachable from outside the provider's network, if any.
    """

    node: int
    private_ip: str
    public_ip: str | None = None


@attrs.frozen(kw_only=True)
class AcceleratorInfo:
    """The accelerators attached to a node.

    Attributes:
        type: Accelerator model name, e.g. ``"A100"``.
        count: How many the node has; fractional for shared (MIG) slices.
        memory_gb: Memory per accelerator, when known.
        is_trainium: Whether these are AWS Trainium chips rather than GPUs.
    """

    type: str
    count: float = 1
    memory_gb: float | None = None
    is_trainium: bool = False


@attrs.frozen(kw_only=True)
class NetworkInfo:
    """The network interface workers should use to talk to each other.

    Attributes:
        interface: Interface name, e.g. ``"eth0"``.
        bandwidth_gbps: Advertised bandwidth, when known.
    """

    interface: str = "lo"
    bandwidth_gbps: float | None = None


def _to_peer_tuple(peers: Iterable[PeerInfo]) -> tuple[PeerInfo, ...]:
    # A tuple keeps the record hashable and immutable even when a caller
    # builds it from a list.
    return tuple(peers)


@attrs.frozen(kw_only=True)
class InstanceInfo:
    """This worker's place in the cluster, as returned by ``sky.instance_info()``.

    Attributes:
        node: This node's index, ``0 .. total_nodes - 1``.
        worker: This worker's index within its node, ``0 .. workers_per_node - 1``.
        total_nodes: How many nodes the pool has.
        workers_per_node: Worker processes per node (e.g. 2 with a MIG 3g.40gb profile).
        accelerators: Accelerators on this node.
        total_accelerators: Accelerators across the whole pool.
        head_addr: Address of the head node.
        head_port: Port the head node coordinates on.
        job_id: Unique id of this pool execution.
        peers: Every node of the pool, ordered by node index.
        accelerator: Description of this node's accelerators, if it has any.
        network: The interface workers use to reach each other.

    Raises:
        ValueError: If ``total_nodes`` or ``workers_per_node`` is below 1, ``node``
            is not in ``range(total_nodes)``, or ``worker`` is not in
            ``range(workers_per_node)``.
    """

    node: int
    worker: int = 0
    total_nodes: int
    workers_per_node: int = 1
    accelerators: float = 0.0
    total_accelerators: float = 0.0
    head_addr: str
    head_port: int
    job_id: str
    peers: tuple[PeerInfo, ...] = attrs.field(converter=_to_peer_tuple)
    accelerator: AcceleratorInfo | None = None
    network: NetworkInfo = NetworkInfo()

    def __attrs_post_init__(self) -> None:
        if self.total_nodes < 1:
            raise ValueError(f"InstanceInfo.total_nodes must be at least 1; got {self.total_nodes}")
        if self.node not in range(self.total_nodes):
            raise ValueError(
                f"InstanceInfo.node must be in range(total_nodes={self.total_nodes}); "
                f"got {self.node}"
            )
        if self.workers_per_node < 1:
            raise ValueError(
                f"InstanceInfo.workers_per_node must be at least 1; got {self.workers_per_node}"
            )
        if self.worker not in range(self.workers_per_node):
            raise ValueError(
                f"InstanceInfo.worker must be in range(workers_per_node="
                f"{self.workers_per_node}); got {self.worker}"
            )

    @property
    def global_worker_index(self) -> int:
        """This worker's index across the pool: ``node * workers_per_node + worker``."""
        return self.node * self.workers_per_node + self.worker

    @property
    def total_workers(self) -> int:
        """How many workers the pool has: ``total_nodes * workers_per_node``."""
        return self.total_nodes * self.workers_per_node

    @property
    def is_head(self) -> bool:
        """Whether this is the single head worker (global worker index 0)."""
        return self.global_worker_index == 0

    @property
    def hostname(self) -> str:
        """The host name of the machine this record is read on."""
        return socket.gethostname()


# --- dict form ---------------------------------------------------------------


def to_dict(info: InstanceInfo) -> dict[str, object]:
    """Turn an :class:`InstanceInfo` into a plain, JSON-serializable dict.

    Nested records become nested dicts and ``peers`` becomes a list; computed
    properties (``is_head``, ``hostname``, ...) are not included.

    Args:
        info: The record to convert.

    Returns:
        A dict that :func:`from_dict` turns back into an equal record.
    """
    accelerator = info.accelerator
    return {
        "node": info.node,
        "worker": info.worker,
        "total_nodes": info.total_nodes,
        "workers_per_node": info.workers_per_node,
        "accelerators": info.accelerators,
        "total_accelerators": info.total_accelerators,
        "head_addr": info.head_addr,
        "head_port": info.head_port,
        "job_id": info.job_id,
        "peers": [
            {"node": p.node, "private_ip": p.private_ip, "public_ip": p.public_ip}
            for p in info.peers
        ],
        "accelerator": None
        if accelerator is None
        else {
            "type": accelerator.type,
            "count": accelerator.count,
            "memory_gb": accelerator.memory_gb,
            "is_trainium": accelerator.is_trainium,
        },
        "network": {
            "interface": info.network.interface,
            "bandwidth_gbps": info.network.bandwidth_gbps,
        },
    }


def from_dict(d: Mapping[str, object]) -> InstanceInfo:
    """Rebuild an :class:`InstanceInfo` from the dict made by :func:`to_dict`.

    Keys with a default in the record may be left out; unknown keys are
    rejected so that a client/worker version mismatch is loud, not silent.

    Args:
        d: A mapping as produced by :func:`to_dict` (typically parsed JSON).

    Returns:
        The equivalent record.

    Raises:
        ValueError: If a required key is missing, an unknown key is present, a
            value has the wrong type, or the record's own validation fails. The
            message names the offending key path, e.g. ``peers[1].private_ip``.
    """
    r = _Reader(d, "")
    node = r.get_int("node")
    worker = r.get_int("worker", 0)
    total_nodes = r.get_int("total_nodes")
    workers_per_node = r.get_int("workers_per_node", 1)
    accelerators = r.get_float("accelerators", 0.0)
    total_accelerators = r.get_float("total_accelerators", 0.0)
    head_addr = r.get_str("head_addr")
    head_port = r.get_int("head_port")
    job_id = r.get_str("job_id")
    peers = r.get_records("peers", _peer_from_dict)
    accelerator = r.get_optional_record("accelerator", _accelerator_from_dict)
    network = r.get_optional_record("network", _network_from_dict) or NetworkInfo()
    r.reject_unknown()
    return InstanceInfo(
        node=node,
        worker=worker,
        total_nodes=total_nodes,
        workers_per_node=workers_per_node,
        accelerators=accelerators,
        total_accelerators=total_accelerators,
        head_addr=head_addr,
        head_port=head_port,
        job_id=job_id,
        peers=peers,
        accelerator=accelerator,
        network=network,
    )


def _peer_from_dict(r: _Reader) -> PeerInfo:
    peer = PeerInfo(
        node=r.get_int("node"),
        private_ip=r.get_str("private_ip"),
        public_ip=r.get_optional_str("public_ip"),
    )
    r.reject_unknown()
    return peer


def _accelerator_from_dict(r: _Reader) -> AcceleratorInfo:
    accelerator = AcceleratorInfo(
        type=r.get_str("type"),
        count=r.get_float("count", 1),
        memory_gb=r.get_optional_float("memory_gb"),
        is_trainium=r.get_bool("is_trainium", False),
    )
    r.reject_unknown()
    return accelerator


def _network_from_dict(r: _Reader) -> NetworkInfo:
    network = NetworkInfo(
        interface=r.get_str("interface", "lo"),
        bandwidth_gbps=r.get_optional_float("bandwidth_gbps"),
    )
    r.reject_unknown()
    return network


_MISSING = object()
_R = TypeVar("_R")


class _Reader:
    """Typed, path-aware access to one level of a parsed JSON object."""

    def __init__(self, data: object, path: str) -> None:
        if not isinstance(data, Mapping):
            where = f"instance info field {path!r}" if path else "instance info"
            raise ValueError(f"{where} must be an object; got {data!r} ({type(data).__name__})")
        self._data: Mapping[object, object] = data
        self._path = path
        self._seen: set[object] = set()

    def _full(self, key: str) -> str:
        return f"{self._path}.{key}" if self._path else key

    def _get(self, key: str, default: object) -> object:
        self._seen.add(key)
        value = self._data.get(key, _MISSING)
        if value is _MISSING:
            if default is _MISSING:
                raise ValueError(f"instance info field {self._full(key)!r} is required but missing")
            return default
        return value

    def _wrong(self, key: str, expected: str, value: object) -> ValueError:
        return ValueError(
            f"instance info field {self._full(key)!r} must be {expected}; "
            f"got {value!r} ({type(value).__name__})"
        )

    def get_int(self, key: str, default: object = _MISSING) -> int:
        value = self._get(key, default)
        # bool is an int subclass; a JSON true where a count belongs is a bug.
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._wrong(key, "an integer", value)
        return value

    def get_float(self, key: str, default: object = _MISSING) -> float:
        value = self._get(key, default)
        # Keep whichever number was sent (JSON may carry 1 for 1.0), so that
        # the round trip compares equal to the record that was written.
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._wrong(key, "a number", value)
        return value

    def get_optional_float(self, key: str) -> float | None:
        if self._get(key, None) is None:
            return None
        return self.get_float(key)

    def get_bool(self, key: str, default: object = _MISSING) -> bool:
        value = self._get(key, default)
        if not isinstance(value, bool):
            raise self._wrong(key, "a boolean", value)
        return value

    def get_str(self, key: str, default: object = _MISSING) -> str:
        value = self._get(key, default)
        if not isinstance(value, str):
            raise self._wrong(key, "a string", value)
        return value

    def get_optional_str(self, key: str) -> str | None:
        if self._get(key, None) is None:
            return None
        return self.get_str(key)

    def get_records(self, key: str, build: Callable[[_Reader], _R]) -> tuple[_R, ...]:
        value = self._get(key, _MISSING)
        if not isinstance(value, list | tuple):
            raise self._wrong(key, "a list", value)
        full = self._full(key)
        return tuple(build(_Reader(item, f"{full}[{i}]")) for i, item in enumerate(value))

    def get_optional_record(self, key: str, build: Callable[[_Reader], _R]) -> _R | None:
        value = self._get(key, None)
        if value is None:
            return None
        return build(_Reader(value, self._full(key)))

    def reject_unknown(self) -> None:
        unknown = sorted(repr(k) for k in self._data if k not in self._seen)
        if unknown:
            where = f"instance info field {self._path!r}" if self._path else "instance info"
            raise ValueError(
                f"{where} has unknown field(s) {', '.join(unknown)}; "
                "the client and the worker may be running different Skyward versions"
            )

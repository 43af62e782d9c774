"""InstanceInfo records: validation, computed properties and the JSON round trip."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap

import attrs
import pytest

from skyward_trio._info import (
    AcceleratorInfo,
    InstanceInfo,
    NetworkInfo,
    PeerInfo,
    from_dict,
    to_dict,
)


def make_info(**overrides: object) -> InstanceInfo:
    fields: dict[str, object] = {
        "node": 1,
        "worker": 1,
        "total_nodes": 3,
        "workers_per_node": 2,
        "accelerators": 8.0,
        "total_accelerators": 24.0,
        "head_addr": "10.0.0.1",
        "head_port": 29500,
        "job_id": "job-42",
        "peers": (
            PeerInfo(node=0, private_ip="10.0.0.1", public_ip="3.3.3.3"),
            PeerInfo(node=1, private_ip="10.0.0.2"),
            PeerInfo(node=2, private_ip="10.0.0.3", public_ip=None),
        ),
        "accelerator": AcceleratorInfo(type="A100", count=8, memory_gb=80.0),
        "network": NetworkInfo(interface="eth0", bandwidth_gbps=100.0),
    }
    fields.update(overrides)
    return InstanceInfo(**fields)  # type: ignore[arg-type]


def test_defaults() -> None:
    info = InstanceInfo(
        node=0, total_nodes=1, head_addr="127.0.0.1", head_port=1, job_id="j", peers=()
    )
    assert info.worker == 0
    assert info.workers_per_node == 1
    assert info.accelerators == 0.0
    assert info.total_accelerators == 0.0
    assert info.accelerator is None
    assert info.network == NetworkInfo(interface="lo", bandwidth_gbps=None)
    assert AcceleratorInfo(type="T4") == AcceleratorInfo(
        type="T4", count=1, memory_gb=None, is_trainium=False
    )
    assert PeerInfo(node=0, private_ip="x").public_ip is None


def test_records_are_frozen_keyword_only_and_hashable() -> None:
    info = make_info()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        info.node = 0  # type: ignore[misc]
    with pytest.raises(TypeError):
        PeerInfo(0, "10.0.0.1")  # type: ignore[call-arg]
    assert hash(info) == hash(make_info())
    assert attrs.evolve(info, job_id="other").job_id == "other"


def test_peers_given_as_list_are_stored_as_tuple() -> None:
    info = make_info(peers=[PeerInfo(node=0, private_ip="a")])
    assert info.peers == (PeerInfo(node=0, private_ip="a"),)


@pytest.mark.parametrize(
    ("node", "worker", "expected_index", "expected_head"),
    [(0, 0, 0, True), (0, 1, 1, False), (1, 0, 2, False), (2, 1, 5, False)],
)
def test_computed_properties(
    node: int, worker: int, expected_index: int, expected_head: bool
) -> None:
    info = make_info(node=node, worker=worker)
    assert info.global_worker_index == expected_index
    assert info.total_workers == 6
    assert info.is_head is expected_head
    assert info.hostname == socket.gethostname()


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"node": 3}, r"node must be in range\(total_nodes=3\); got 3"),
        ({"node": -1}, r"node must be in range\(total_nodes=3\); got -1"),
        ({"worker": 2}, r"worker must be in range\(workers_per_node=2\); got 2"),
        ({"worker": -1}, r"worker must be in range"),
        ({"total_nodes": 0, "node": 0}, r"total_nodes must be at least 1; got 0"),
        ({"workers_per_node": 0, "worker": 0}, r"workers_per_node must be at least 1; got 0"),
    ],
)
def test_validation(overrides: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_info(**overrides)


def test_round_trip_through_json_is_exact() -> None:
    info = make_info()
    d = to_dict(info)
    back = from_dict(json.loads(json.dumps(d)))
    assert back == info
    assert to_dict(back) == d


def test_round_trip_without_optional_parts() -> None:
    info = InstanceInfo(
        node=0, total_nodes=1, head_addr="127.0.0.1", head_port=1, job_id="j", peers=()
    )
    assert from_dict(json.loads(json.dumps(to_dict(info)))) == info


def test_to_dict_shape() -> None:
    d = to_dict(make_info())
    assert d == {
        "node": 1,
        "worker": 1,
        "total_nodes": 3,
        "workers_per_node": 2,
        "accelerators": 8.0,
        "total_accelerators": 24.0,
        "head_addr": "10.0.0.1",
        "head_port": 29500,
        "job_id": "job-42",
        "peers": [
            {"node": 0, "private_ip": "10.0.0.1", "public_ip": "3.3.3.3"},
            {"node": 1, "private_ip": "10.0.0.2", "public_ip": None},
            {"node": 2, "private_ip": "10.0.0.3", "public_ip": None},
        ],
        "accelerator": {"type": "A100", "count": 8, "memory_gb": 80.0, "is_trainium": False},
        "network": {"interface": "eth0", "bandwidth_gbps": 100.0},
    }


def test_from_dict_fills_defaults() -> None:
    info = from_dict(
        {"node": 0, "total_nodes": 2, "head_addr": "h", "head_port": 5, "job_id": "j", "peers": []}
    )
    assert info.worker == 0
    assert info.workers_per_node == 1
    assert info.accelerator is None
    assert info.network == NetworkInfo()


def _broken(path: str, value: object) -> dict[str, object]:
    d = json.loads(json.dumps(to_dict(make_info())))
    *parents, last = path.split(".")
    target = d
    for part in parents:
        target = target[int(part)] if part.isdigit() else target[part]
    if value is KeyError:
        del target[last]
    else:
        target[last] = value
    return d  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("path", "value", "match"),
    [
        ("job_id", KeyError, r"field 'job_id' is required but missing"),
        ("node", "1", r"field 'node' must be an integer; got '1' \(str\)"),
        ("node", True, r"field 'node' must be an integer; got True \(bool\)"),
        ("accelerators", "8", r"field 'accelerators' must be a number"),
        ("peers", {}, r"field 'peers' must be a list"),
        ("peers.1.private_ip", 7, r"field 'peers\[1\]\.private_ip' must be a string"),
        ("peers.2.node", KeyError, r"field 'peers\[2\]\.node' is required"),
        ("accelerator.is_trainium", 0, r"field 'accelerator\.is_trainium' must be a boolean"),
        ("network", [], r"field 'network' must be an object"),
        ("surprise", 1, r"instance info has unknown field\(s\) 'surprise'"),
        ("network.mtu", 9000, r"field 'network' has unknown field\(s\) 'mtu'"),
    ],
)
def test_from_dict_errors_name_the_field(path: str, value: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        from_dict(_broken(path, value))


def test_from_dict_rejects_non_mapping() -> None:
    with pytest.raises(ValueError, match="instance info must be an object"):
        from_dict([])  # type: ignore[arg-type]


def test_from_dict_runs_record_validation() -> None:
    with pytest.raises(ValueError, match=r"node must be in range"):
        from_dict(_broken("node", 9))


def test_worker_side_modules_import_only_stdlib_and_attrs() -> None:
    # Run in a fresh interpreter: whatever the package __init__ loads is the
    # baseline, and the runtime modules may add only stdlib and attrs on top.
    code = textwrap.dedent(
        """
        import sys
        import skyward_trio
        before = set(sys.modules)
        import skyward_trio._info, skyward_trio._runtime, skyward_trio._shard
        added = {m.split(".")[0] for m in set(sys.modules) - before}
        bad = sorted(
            m for m in added
            if m not in sys.stdlib_module_names and m not in ("attrs", "attr", "skyward_trio")
        )
        print(",".join(bad))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""

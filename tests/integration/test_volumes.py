"""``sky.Volume`` for real: s3fs mounts moto's S3 (on 127.0.0.1) on two OpenSSH machines.

Each machine's sshd runs in a mount namespace of its own (``unshare``), so what a node
mounts only that machine sees, as two hosts would; both share this machine's s3fs and
/dev/fuse. The mount points are under the test's directory.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import cloudpickle
import pytest
from clients import killed_client, reaper_running
from fake_hyperstack import FakeHyperstack
from needs import unavailable
from waiting import wait_until

import skyward as sky
from conftest import Machines, boto_s3, two_machines

SECRET = "fake-secret-9c41e7d2b5"  # moto takes any key: this one must never be seen
QUIET = sky.Options(console="silent")


def _need_fuse() -> None:
    if shutil.which("s3fs") is None:
        unavailable("s3fs is not installed (apt-get install s3fs)", suite="sky.Volume")
    if not os.path.exists("/dev/fuse"):
        unavailable("this machine has no /dev/fuse", suite="sky.Volume")
    if shutil.which("unshare") is None:
        unavailable("unshare (util-linux) is missing", suite="sky.Volume")


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Machines]:
    _need_fuse()
    with two_machines(tmp_path_factory.mktemp("vol"), own_mounts=True) as pair:
        yield pair


def _store(endpoint: str) -> sky.storage.Storage:
    return sky.storage.S3(endpoint=endpoint, access_key="testing", secret_key=lambda: SECRET)


def _mounts(machine_pid: int) -> list[str]:
    """The FUSE mounts a machine sees (its own mount namespace)."""
    lines = Path(f"/proc/{machine_pid}/mounts").read_text().splitlines()
    return [line for line in lines if " fuse" in line]


def _s3fs_processes(under: Path) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if cmdline.startswith("s3fs ") and str(under) in cmdline:
            found.append(cmdline)
    return found


def read(path: str) -> str:
    return Path(path).read_text()


def write(path: str, text: str) -> None:
    Path(path).write_text(text)


def secrets_seen() -> tuple[str, list[str]]:
    """On a node: the password file's mode, and every s3fs command line."""
    mode = oct(Path("volumes/0.passwd").stat().st_mode & 0o777)
    lines = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if cmdline.startswith("s3fs "):
                lines.append(cmdline)
    return mode, lines


def test_two_nodes_read_and_write_through_their_mounts_and_leave_nothing_behind(
    hosts: Machines, endpoint: str, tmp_path: Path
) -> None:
    boto = boto_s3(endpoint)
    for name in ("vol-data", "vol-out"):
        boto.create_bucket(Bucket=name)
    (tmp_path / "a.txt").write_text("hello from the bucket")
    with _store(endpoint) as s3:  # written beforehand with sky.storage
        s3.upload("vol-data", tmp_path / "a.txt", key="sub/a.txt")
        s3.upload("vol-data", tmp_path / "a.txt", key="outside.txt")
    data, out = tmp_path / "mnt" / "data", tmp_path / "mnt" / "out"
    log = tmp_path / "pool.log"
    options = sky.Options(
        console="silent", logging=sky.LogConfig(file=str(log), level="DEBUG", console=False)
    )
    volumes = [
        sky.Volume(bucket="vol-data", prefix="sub", mount=str(data), storage=_store(endpoint)),
        sky.Volume(bucket="vol-out", mount=str(out), read_only=False, storage=_store(endpoint)),
    ]
    with sky.Compute(provider=hosts.provider(), nodes=2, volumes=volumes, options=options) as pool:
        # Both nodes read the object through the mount; the prefix is the mount's root.
        assert sky.function(read)(f"{data}/a.txt") @ pool == ["hello from the bucket"] * 2
        assert sky.function(os.listdir)(str(data)) >> pool == ["a.txt"]
        with pytest.raises(OSError, match="Read-only file system"):
            sky.function(write)(f"{data}/new.txt", "no") >> pool
        sky.function(write)(f"{out}/result.txt", "written on node 1") >> pool
        mode, s3fs_lines = sky.function(secrets_seen)() >> pool
        assert mode == "0o600"
        assert s3fs_lines
        assert not any(SECRET in line for line in s3fs_lines)
        assert all(len(_mounts(m.pid)) == 2 for m in (hosts.a, hosts.b))
    with _store(endpoint) as s3:
        got = s3.download("vol-out", "result.txt", tmp_path / "result.txt")
    assert got.read_text() == "written on node 1"
    # Teardown: unmounted on both machines, no s3fs left, keys gone with the work directory.
    assert _mounts(hosts.a.pid) == []
    assert _mounts(hosts.b.pid) == []
    assert _s3fs_processes(tmp_path) == []
    text = log.read_text()
    assert "volumes" in text  # the bootstrap phase is in the log
    assert SECRET not in text


@pytest.fixture(scope="module")
def hyperstack_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeHyperstack]:
    """A fake of Hyperstack's API, for its object storage keys only (no VM is made)."""
    with FakeHyperstack(root=tmp_path_factory.mktemp("hyperstack")) as api:
        yield api


def _hyperstack(api: FakeHyperstack, endpoint: str) -> sky.storage.Storage:
    return sky.storage.Hyperstack(
        region="CANADA-1", api_key=api.api_key, endpoint=endpoint, api_url=api.api_url
    )


def test_a_hyperstack_store_makes_one_key_for_the_pool_and_deletes_it_when_the_pool_closes(
    hosts: Machines, endpoint: str, tmp_path: Path, hyperstack_api: FakeHyperstack
) -> None:
    boto = boto_s3(endpoint)
    for name in ("hs-data", "hs-out"):
        boto.create_bucket(Bucket=name)
    boto.put_object(Bucket="hs-data", Key="a.txt", Body=b"from Hyperstack's store")
    made = hyperstack_api.access_keys_made
    data, out = tmp_path / "mnt" / "data", tmp_path / "mnt" / "out"
    log = tmp_path / "pool.log"
    options = sky.Options(
        console="silent", logging=sky.LogConfig(file=str(log), level="DEBUG", console=False)
    )
    store = _hyperstack(hyperstack_api, endpoint)
    volumes = [
        sky.Volume(bucket="hs-data", mount=str(data), storage=store),
        sky.Volume(bucket="hs-out", mount=str(out), read_only=False, storage=store),
    ]
    with sky.Compute(provider=hosts.provider(), nodes=2, volumes=volumes, options=options) as pool:
        [key] = hyperstack_api.access_keys.values()  # one for both volumes, both nodes
        assert sky.function(read)(f"{data}/a.txt") @ pool == ["from Hyperstack's store"] * 2
        sky.function(write)(f"{out}/r.txt", "written") >> pool
    assert boto.get_object(Bucket="hs-out", Key="r.txt")["Body"].read() == b"written"
    assert hyperstack_api.access_keys == {}
    assert hyperstack_api.access_keys_made == made + 1
    assert _mounts(hosts.a.pid) == _mounts(hosts.b.pid) == []
    text = log.read_text()
    assert key["secret_key"] not in text
    assert hyperstack_api.api_key not in text


def test_a_pool_that_fails_deletes_the_key_it_made(
    hosts: Machines, endpoint: str, tmp_path: Path, hyperstack_api: FakeHyperstack
) -> None:
    made = hyperstack_api.access_keys_made
    store = _hyperstack(hyperstack_api, endpoint)
    volume = sky.Volume(bucket="no-such-bucket", mount=str(tmp_path / "m"), storage=store)
    with pytest.raises(sky.ProvisionError, match="s3fs could not mount it"):
        sky.Compute(provider=hosts.provider(hosts.a), volumes=[volume], options=QUIET).__enter__()
    assert hyperstack_api.access_keys_made == made + 1
    assert hyperstack_api.access_keys == {}


_KEYED_CLIENT = """
import sys, time
import cloudpickle
import skyward as sky
provider = cloudpickle.loads(bytes.fromhex(sys.argv[1]))
api_key, api_url, endpoint, bucket, mount = sys.argv[2:]
store = sky.storage.Hyperstack(
    region="CANADA-1", api_key=api_key, api_url=api_url, endpoint=endpoint
)
volume = sky.Volume(bucket=bucket, mount=mount, storage=store)
options = sky.Options(console="silent", ssh_timeout=2)  # a short reconnect window
with sky.Compute(provider=provider, volumes=[volume], ttl=0, options=options) as pool:
    print(pool.job_id, flush=True)
    time.sleep(600)
"""


def test_the_key_of_a_client_that_died_is_deleted_by_its_reaper(
    hosts: Machines, endpoint: str, bucket: str, tmp_path: Path, hyperstack_api: FakeHyperstack
) -> None:
    """On any provider: the pool's reaper, a process beside the client, deletes the key
    made for its volumes once the client is gone (and the ttl, as the workers' lease)."""
    api = hyperstack_api
    provider = cloudpickle.dumps(hosts.provider(hosts.a)).hex()
    args = (provider, api.api_key, api.api_url, endpoint, bucket, str(tmp_path / "m"))
    with killed_client(_KEYED_CLIENT, *args) as job:
        [key] = api.access_keys.values()
        assert reaper_running(job)
        assert len(_mounts(hosts.a.pid)) == 1
    wait_until(lambda: not api.access_keys, "the reaper to delete the key", timeout=60, every=0.2)
    wait_until(lambda: not reaper_running(job), "the reaper to exit", timeout=60, every=0.2)
    log = (Path.home() / ".skyward" / "logs" / f"reaper-{job}.log").read_text()
    assert f"access key {key['id']} ({key['access_key']}) deleted" in log
    assert key["secret_key"] not in log
    # The worker, its lease over, unmounted the volume.
    wait_until(lambda: not _mounts(hosts.a.pid), "the volume unmounted", timeout=60, every=0.2)


def test_a_wrong_bucket_fails_the_bootstrap_naming_the_volume(
    hosts: Machines, endpoint: str, tmp_path: Path
) -> None:
    volume = sky.Volume(
        bucket="no-such-bucket", mount=str(tmp_path / "m"), storage=_store(endpoint)
    )
    with pytest.raises(sky.ProvisionError) as failed:
        sky.Compute(provider=hosts.provider(hosts.a), volumes=[volume], options=QUIET).__enter__()
    message = str(failed.value)
    assert "node 0" in message
    assert "'volumes' phase" in message
    assert "Volume(bucket='no-such-bucket'" in message
    assert re.search(
        r"s3fs could not mount it; its last lines:\n.*bucket or key not found", message, re.S
    )
    assert _mounts(hosts.a.pid) == []
    assert _s3fs_processes(tmp_path) == []


def test_a_non_empty_mount_directory_is_refused(
    hosts: Machines, endpoint: str, bucket: str, tmp_path: Path
) -> None:
    mount = tmp_path / "full"
    mount.mkdir()
    (mount / "precious.txt").write_text("mine")
    volume = sky.Volume(bucket=bucket, mount=str(mount), storage=_store(endpoint))
    with pytest.raises(sky.ProvisionError, match="not empty, and the mount would hide"):
        sky.Compute(provider=hosts.provider(hosts.a), volumes=[volume], options=QUIET).__enter__()
    assert (mount / "precious.txt").read_text() == "mine"
    assert _mounts(hosts.a.pid) == []


def test_what_cannot_mount_is_refused_before_anything_starts(
    hosts: Machines, endpoint: str, tmp_path: Path
) -> None:
    volume = sky.Volume(bucket="b", mount=str(tmp_path / "m"), storage=_store(endpoint))
    with pytest.raises(ValueError, match=r"sky.Local\(\) nodes are processes on this machine"):
        sky.Compute(provider=sky.Local(), volumes=[volume], options=QUIET)
    with pytest.raises(ValueError, match=r"sky\.Container starts its containers without /dev/fuse"):
        sky.Compute(provider=sky.Container(), volumes=[volume], options=QUIET)
    own = sky.Volume(bucket="b", mount=str(tmp_path / "m"))
    with pytest.raises(ValueError, match=r"SSH has none; pass storage=sky.storage.R2\(...\)"):
        sky.Compute(provider=hosts.provider(), volumes=[own], options=QUIET)
    nested = sky.Volume(bucket="c", mount=str(tmp_path / "m" / "in"), storage=_store(endpoint))
    with pytest.raises(ValueError, match="one mount is inside the other"):
        sky.Compute(provider=hosts.provider(), volumes=[volume, nested], options=QUIET)
    assert not (tmp_path / "m").exists()

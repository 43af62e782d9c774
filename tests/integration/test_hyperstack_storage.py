"""``sky.storage.Hyperstack``: an access key of its own for each use, made and deleted
through (a fake of) Hyperstack's API; the store is moto's S3 server on 127.0.0.1 (it
takes any key). Pools that mount it are in test_volumes.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from fake_hyperstack import FakeHyperstack

import skyward as sky
from skyward_trio import storage as _storage
from skyward_trio._checks import check_spec
from skyward_trio._compute import _revoke, _volume_mounts


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeHyperstack]:
    # Only its API: no VM is made, so it needs no root.
    with FakeHyperstack(root=tmp_path_factory.mktemp("hyperstack")) as api:
        yield api


def hyperstack(fake: FakeHyperstack, endpoint: str, **given: object) -> sky.storage.Storage:
    where = {"region": "CANADA-1", "endpoint": endpoint, "api_url": fake.api_url}
    return sky.storage.Hyperstack(**{**where, "api_key": fake.api_key, **given})  # type: ignore[arg-type]


def test_a_with_block_gets_a_key_of_its_own_deleted_after_it(
    fake: FakeHyperstack, endpoint: str, bucket: str, tmp_path: Path
) -> None:
    made = fake.access_keys_made
    (tmp_path / "a.txt").write_text("to Hyperstack")
    store = hyperstack(fake, endpoint)
    with store as s3:
        [key] = fake.access_keys.values()
        assert key["region"] == "CANADA-1"
        s3.upload(bucket, tmp_path / "a.txt")
        with store as again:  # a block inside it: a key of its own
            assert len(fake.access_keys) == 2
            assert again.ls(bucket) == ["a.txt"]
        assert list(fake.access_keys.values()) == [key]
        assert s3.download(bucket, "a.txt", tmp_path / "b.txt").read_text() == "to Hyperstack"
    assert fake.access_keys == {}
    assert fake.access_keys_made == made + 2


def test_async_with_makes_and_deletes_its_key_too(
    fake: FakeHyperstack, endpoint: str, bucket: str
) -> None:
    made = fake.access_keys_made

    async def main() -> list[str]:
        async with hyperstack(fake, endpoint) as s3:
            assert len(fake.access_keys) == 1
            return await s3.ls(bucket)

    assert trio.run(main) == []
    assert fake.access_keys == {}
    assert fake.access_keys_made == made + 1


def test_the_api_key_is_read_from_HYPERSTACK_API_KEY(
    fake: FakeHyperstack, endpoint: str, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = hyperstack(fake, endpoint, api_key=None)
    monkeypatch.delenv("HYPERSTACK_API_KEY", raising=False)
    with pytest.raises(ValueError, match="HYPERSTACK_API_KEY is not set: pass api_key=") as e:
        store.__enter__()
    assert "Hyperstack" in str(e.value)
    monkeypatch.setenv("HYPERSTACK_API_KEY", fake.api_key)
    with store as s3:
        assert s3.exists(bucket, "nothing") is False
    assert fake.access_keys == {}


def test_a_refused_api_key_says_what_to_check(fake: FakeHyperstack, endpoint: str) -> None:
    made = fake.access_keys_made
    with (
        pytest.raises(sky.storage.StorageError) as caught,
        hyperstack(fake, endpoint, api_key="hs_wrong"),
    ):
        pytest.fail("the block must not run")
    message = str(caught.value)
    assert "Hyperstack did not make an access key: HTTP 401" in message
    assert "check HYPERSTACK_API_KEY or api_key=" in message
    assert "hs_wrong" not in message
    assert caught.value.status == 401
    assert fake.access_keys_made == made


def test_a_key_that_cannot_be_deleted_is_named_with_what_to_do(
    fake: FakeHyperstack, endpoint: str
) -> None:
    fake.fail_key_deletes(1, status=403)
    with pytest.raises(sky.storage.StorageError) as caught, hyperstack(fake, endpoint):
        [key] = fake.access_keys.values()
    message = str(caught.value)
    assert f"Hyperstack did not delete access key {key['id']} ({key['access_key']})" in message
    assert "delete it in Hyperstack's console" in message
    assert key["secret_key"] not in message
    # It is still there, as the error says: the test deletes it.
    assert list(fake.access_keys) == [key["id"]]
    _storage.HyperstackKeys(api_key=fake.api_key, region="CANADA-1", api_url=fake.api_url).revoke(
        _storage.IssuedKey(key_id=str(key["id"]), access_key=key["access_key"], secret_key="")
    )
    assert fake.access_keys == {}


def test_a_delete_that_fails_for_a_moment_is_sent_again(
    fake: FakeHyperstack, endpoint: str
) -> None:
    fake.fail_key_deletes(1, status=503)
    with hyperstack(fake, endpoint):
        pass
    assert fake.access_keys == {}


def test_regions_and_what_is_refused_before_any_request() -> None:
    store = sky.storage.Hyperstack(region="CANADA-1", api_key="hs_secret_123")
    assert store.endpoint == "https://ca1.obj.nexgencloud.io"
    assert store.path_style is True
    assert store.region == "us-east-1"  # what requests are signed for: the key is CANADA-1's
    assert "hs_secret_123" not in repr(store)
    with pytest.raises(ValueError, match=r"Skyward knows the S3 endpoint of 'CANADA-1' only"):
        sky.storage.Hyperstack(region="NORWAY-1", api_key="k")
    with pytest.raises(ValueError, match=r"Hyperstack\(region=''\): pass a region"):
        sky.storage.Hyperstack(region="", api_key="k")
    with pytest.raises(TypeError, match=r"Hyperstack\(api_key=...\): a key is a str"):
        sky.storage.Hyperstack(region="CANADA-1", api_key=42)  # type: ignore[arg-type]
    issuer = store.key_issuer
    with pytest.raises(ValueError, match="makes the keys: pass no access_key or secret_key"):
        sky.storage.Storage(endpoint="https://x.example", access_key="a", key_issuer=issuer)
    with pytest.raises(TypeError, match="a key issuer has issue"):
        sky.storage.Storage(endpoint="https://x.example", key_issuer="not one")  # type: ignore[arg-type]


def test_a_volume_without_storage_on_sky_hyperstack_is_hyperstacks_own_store(
    fake: FakeHyperstack,
) -> None:
    provider = sky.Hyperstack(api_key=fake.api_key, api_url=fake.api_url)
    volumes = [
        sky.Volume(bucket="data", mount="/data"),
        sky.Volume(bucket="out", mount="/out", read_only=False),
    ]
    spec = sky.Spec(provider=provider, accelerator=sky.accelerators.A100(), volumes=volumes)
    check_spec(spec)  # accepted, as on sky.AWS
    issued: list[tuple[_storage.KeyIssuer, _storage.IssuedKey]] = []
    data, out = trio.run(_volume_mounts, spec, issued)
    [key] = fake.access_keys.values()  # one for the pool's volumes
    assert key["region"] == "CANADA-1"
    assert (data.url, data.region, data.path_style) == (
        "https://ca1.obj.nexgencloud.io",
        "us-east-1",
        True,
    )
    assert data.keys == out.keys == (key["access_key"], key["secret_key"])
    assert trio.run(_revoke, issued) is None
    assert fake.access_keys == {}
    assert issued == []

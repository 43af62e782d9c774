"""The ``volumes`` phase's text and what ``Compute`` refuses about volumes, without I/O."""

from __future__ import annotations

import attrs
import pytest
import trio

import skyward as sky
from skyward_trio._checks import check_spec
from skyward_trio._compute import _volume_mounts
from skyward_trio._volumes import Mount, mount_steps

KEY = "secret-key-0d1f7a"


def test_keys_go_to_a_password_file_never_to_the_s3fs_command_line() -> None:
    mount = Mount(
        bucket="data",
        prefix="/sets/",
        mount="/data",
        url="http://s:9",
        path_style=True,
        keys=("AKIA", KEY),
    )
    script = mount_steps([mount])
    assert KEY not in repr(mount)
    (s3fs_line,) = [line for line in script.splitlines() if "setsid s3fs" in line]
    assert KEY not in s3fs_line
    assert 'passwd_file="$v.passwd"' in s3fs_line
    assert "data:/sets" in s3fs_line
    assert "-o use_path_request_style -o ro" in s3fs_line
    assert f"printf '%s:%s\\n' AKIA {KEY}" in script  # bash's own printf: no command line


def test_an_instance_profile_signs_instead_of_keys_and_writable_has_no_ro() -> None:
    mount = Mount(
        bucket="b",
        mount="/out",
        read_only=False,
        url="https://s3.eu-west-1.amazonaws.com",
        region="eu-west-1",
    )
    (line,) = [x for x in mount_steps([mount]).splitlines() if "setsid s3fs" in x]
    assert "-o iam_role=auto" in line
    assert "-o endpoint=eu-west-1" in line
    assert "-o ro" not in line
    assert "passwd" not in line
    assert mount_steps([]) == ""


def test_gcp_without_storage_is_pointed_at_gcs_with_an_hmac_key() -> None:
    spec = sky.Spec(
        provider=sky.GCP(),
        accelerator=sky.accelerators.T4(),
        volumes=[sky.Volume(bucket="b", mount="/data")],
    )
    with pytest.raises(ValueError, match=r"on AWS only; for a Cloud Storage bucket pass "):
        check_spec(spec)


def test_aws_without_storage_is_accepted_and_a_store_must_be_a_storage() -> None:
    check_spec(sky.Spec(provider=sky.AWS(), volumes=[sky.Volume(bucket="b", mount="/data")]))
    bad = sky.Volume(bucket="b", mount="/data", storage="s3")
    with pytest.raises(TypeError, match=r"storage is a sky\.storage\.Storage"):
        check_spec(sky.Spec(provider=sky.AWS(), volumes=[bad]))
    with pytest.raises(ValueError, match=r"RunPod has none; pass storage=sky\.storage\.R2"):
        check_spec(
            sky.Spec(
                provider=sky.RunPod(),
                accelerator=sky.accelerators.A100(),
                volumes=[sky.Volume(bucket="b", mount="/data")],
            )
        )
    spaced = sky.Volume(bucket="b", mount="/my data", storage=sky.storage.S3())
    with pytest.raises(ValueError, match="no spaces"):
        check_spec(sky.Spec(provider=sky.AWS(), volumes=[spaced]))


def test_aws_mounts_s3_in_its_region_with_the_profile_or_this_clients_keys(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIACLIENT")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", KEY)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    volume = sky.Volume(bucket="b", mount="/data")
    spec = sky.Spec(provider=sky.AWS(region="eu-west-1"), volumes=[volume])
    (mount,) = trio.run(_volume_mounts, spec, [])
    assert (mount.url, mount.region, mount.path_style) == (
        "https://s3.eu-west-1.amazonaws.com",
        "eu-west-1",
        False,
    )
    assert mount.keys == ("AKIACLIENT", KEY)
    profiled = attrs.evolve(spec, provider=sky.AWS(region="eu-west-1", instance_profile="ml"))
    assert trio.run(_volume_mounts, profiled, [])[0].keys is None
    monkeypatch.setenv("AWS_SESSION_TOKEN", "tok")
    with pytest.raises(ValueError, match="temporary"):
        trio.run(_volume_mounts, spec, [])


def test_a_storages_key_functions_are_called_on_the_client() -> None:
    store = sky.storage.R2(account_id="acct", access_key="id", secret_key=lambda: KEY)
    spec = sky.Spec(
        provider=sky.SSH(hosts=["127.0.0.9"]),
        volumes=[sky.Volume(bucket="b", mount="/data", storage=store)],
    )
    (mount,) = trio.run(_volume_mounts, spec, [])
    assert mount.keys == ("id", KEY)
    assert mount.path_style == store.path_style
    assert mount.url == store.endpoint.rstrip("/")

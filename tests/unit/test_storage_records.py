"""``sky.storage``'s records and its request signing, without a store."""

from __future__ import annotations

import datetime
from collections.abc import Callable

import botocore.auth as botocore_auth
import botocore.awsrequest as botocore_awsrequest
import botocore.credentials as botocore_credentials
import httpx
import pytest

import skyward as sky
from skyward_trio.storage import _parts_up, _Requests, sign

NOW = datetime.datetime(2026, 11, 29, 12, 30, 5, tzinfo=datetime.UTC)


def _botocore(method: str, url: str, body: bytes) -> str:
    """The Authorization header botocore's S3 signer computes for the same request."""
    request = botocore_awsrequest.AWSRequest(method=method, url=url, data=body)
    credentials = botocore_credentials.Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCY")
    signer = botocore_auth.S3SigV4Auth(credentials, "s3", "eu-west-1")
    stamp = NOW.strftime("%Y%m%dT%H%M%SZ")
    request.context["timestamp"] = stamp
    request.headers["X-Amz-Content-SHA256"] = signer.payload(request)
    request.headers["X-Amz-Date"] = stamp
    canonical = signer.canonical_request(request)
    signature = signer.signature(signer.string_to_sign(request, canonical), request)
    return (
        f"AWS4-HMAC-SHA256 Credential={signer.scope(request)}, "
        f"SignedHeaders={signer.signed_headers(signer.headers_to_sign(request))}, "
        f"Signature={signature}"
    )


@pytest.mark.parametrize(
    ("method", "bucket", "key", "query", "body"),
    [
        ("GET", "data", "", {"list-type": "2", "prefix": "runs/a b+c/", "max-keys": "1000"}, b""),
        ("PUT", "data", "checkpoints/model v2.pt", None, b"weights" * 1000),
        ("PUT", "data", "big.bin", {"partNumber": "3", "uploadId": "x/y+z=="}, b"part"),
        ("POST", "data", "big.bin", {"uploads": ""}, b""),
        ("HEAD", "my.bucket", "a/ü/~name", None, b""),
    ],
)
def test_requests_are_signed_as_botocore_signs_them(
    method: str, bucket: str, key: str, query: dict[str, str] | None, body: bytes
) -> None:
    storage = sky.storage.Storage(
        endpoint="https://s3.eu-west-1.amazonaws.com", path_style=True, region="eu-west-1"
    )
    url = _Requests(storage, ("AKIDEXAMPLE", "x")).url(bucket, key, query)
    ours = sign(
        method,
        url,
        body=body,
        access_key="AKIDEXAMPLE",
        secret_key="wJalrXUtnFEMI/K7MDENG+bPxRfiCY",
        region="eu-west-1",
        now=NOW,
    )
    assert ours["authorization"] == _botocore(method, url, body)


def test_buckets_are_addressed_by_host_unless_path_style() -> None:
    aws = _Requests(sky.storage.S3(region="eu-west-1"), ("a", "b"))
    assert aws.url("data", "x/y z") == "https://data.s3.eu-west-1.amazonaws.com/x/y%20z"
    r2 = _Requests(sky.storage.R2(account_id="acct", access_key="a", secret_key="b"), ("a", "b"))
    assert r2.url("data", "k", {"uploads": ""}) == (
        "https://acct.r2.cloudflarestorage.com/data/k?uploads="
    )


def test_presets_point_at_their_services_and_hide_their_keys() -> None:
    presets = {
        sky.storage.S3(region="us-west-2"): ("https://s3.us-west-2.amazonaws.com", "us-west-2"),
        sky.storage.GCS(access_key="a", secret_key="s3cr3t"): (
            "https://storage.googleapis.com",
            "auto",
        ),
        sky.storage.Wasabi(region="eu-central-1", access_key="a", secret_key="s3cr3t"): (
            "https://s3.eu-central-1.wasabisys.com",
            "eu-central-1",
        ),
        sky.storage.Backblaze(region="us-west-004", key_id="a", app_key="s3cr3t"): (
            "https://s3.us-west-004.backblazeb2.com",
            "us-west-004",
        ),
    }
    for storage, (endpoint, region) in presets.items():
        assert (storage.endpoint, storage.region) == (endpoint, region)
        assert "s3cr3t" not in repr(storage)


def test_transfer_settings_are_tuned_within_what_stores_take() -> None:
    store = sky.storage.R2(account_id="a", access_key="k", secret_key="s")
    assert (store.part_size, store.parts_in_flight, store.attempts) == (64 * 2**20, 4, 5)
    tuned = store.tuned(parts_in_flight=16)
    assert (tuned.part_size, tuned.parts_in_flight, tuned.attempts) == (64 * 2**20, 16, 5)
    assert tuned.tuned(attempts=9, part_size=8 * 2**20).attempts == 9
    assert tuned.endpoint == store.endpoint
    with pytest.raises(ValueError, match=r"Storage\(part_size=1048576\): part_size is a whole"):
        store.tuned(part_size=2**20)  # S3 takes parts of 5 MiB at least
    with pytest.raises(ValueError, match=r"parts_in_flight is a whole number from 1 to 64"):
        store.tuned(parts_in_flight=0)
    with pytest.raises(ValueError, match=r"attempts is a whole number from 1 to 20, e.g. 10"):
        store.tuned(attempts=2.5)  # type: ignore[arg-type]


def test_bad_records_are_refused() -> None:
    with pytest.raises(ValueError, match="endpoint must be an http"):
        sky.storage.Storage(endpoint="s3.amazonaws.com")
    with pytest.raises(TypeError, match="a key is a str or a function"):
        sky.storage.Storage(endpoint="https://x", access_key=3)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (
            lambda: sky.storage.S3(region="moon"),
            ValueError,
            r"^S3\(region='moon'\): not an AWS region; they read like \"us-east-1\", "
            r"\"eu-west-2\" or \"ap-southeast-1\"\. Pass e\.g\. region=\"us-east-1\", or for "
            r"another S3-compatible store its URL as endpoint=",
        ),
        (
            lambda: sky.storage.S3(region="EU-WEST-2"),
            ValueError,
            r"not an AWS region; .* Pass region=\"eu-west-2\", or",
        ),
        (
            lambda: sky.storage.S3(region=5),
            TypeError,
            r"^S3\(region=5\): region must be a str, got int\. Pass e\.g\. region=\"us-east-1\"\.$",
        ),
        (
            lambda: sky.storage.S3(region=None, endpoint="http://127.0.0.1:9000"),
            TypeError,
            r"^S3\(region=None\): region must be a str, got NoneType",
        ),
        (
            lambda: sky.storage.R2(account_id=5, access_key="a", secret_key="b"),
            TypeError,
            r"^R2\(account_id=5\): account_id must be a str, got int\. Pass e\.g\. "
            r"account_id=\"0123456789abcdef0123456789abcdef\"\.$",
        ),
        (
            lambda: sky.storage.R2(
                account_id="https://acct.r2.cloudflarestorage.com", access_key="a", secret_key="b"
            ),
            ValueError,
            r"account_id must be the account id on Cloudflare's dashboard, not a URL: letters, "
            r"digits and '-', as it goes in the store's host name",
        ),
        (
            lambda: sky.storage.Wasabi(region="eu central 1", access_key="a", secret_key="b"),
            ValueError,
            r"^Wasabi\(region='eu central 1'\): region must be a Wasabi region: ",
        ),
        (
            lambda: sky.storage.Backblaze(region=4, key_id="a", app_key="b"),
            TypeError,
            r"^Backblaze\(region=4\): region must be a str, got int",
        ),
    ],
)
def test_presets_refuse_what_cannot_name_their_store(
    make: Callable[[], object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        make()


def test_aws_regions_of_every_shape_are_taken_and_other_stores_name_their_own() -> None:
    for region in ("us-east-1", "eu-west-2", "ap-southeast-1", "us-gov-west-1", "il-central-1"):
        assert sky.storage.S3(region=region).region == region
    # With an endpoint the store is not AWS, and the region is whatever it signs for.
    local = sky.storage.S3(region="garage", endpoint="http://127.0.0.1:3900")
    assert (local.endpoint, local.region, local.path_style) == (
        "http://127.0.0.1:3900",
        "garage",
        True,
    )


@pytest.mark.parametrize("method", ["upload", "download", "ls", "exists", "rm"])
def test_a_storage_used_as_a_client_says_to_open_one_with_with(method: str) -> None:
    storage = sky.storage.S3(region="us-east-1", access_key="a", secret_key="b")
    with pytest.raises(
        AttributeError,
        match=rf"^Storage has no {method}\(\): a Storage says where a store is; its client has "
        rf"{method}\(\)\. Open the client with `with`: `with sky\.storage\.S3\("
        rf'region="us-east-1"\) as s3: s3\.{method}\(\.\.\.\)` \(in trio, `async with '
        rf"\.\.\. as s3: await s3\.{method}\(\.\.\.\)`\)\.$",
    ):
        getattr(storage, method)
    with pytest.raises(AttributeError, match=r"^'Storage' object has no attribute 'uplaod'$"):
        storage.uplaod  # type: ignore[attr-defined]  # noqa: B018
    assert not hasattr(storage, method)


def test_missing_keys_say_where_they_come_from(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    with pytest.raises(ValueError, match="AWS_ACCESS_KEY_ID is not set"), sky.storage.S3():
        pass


def _parts_page(numbers: range, next_marker: int | None) -> httpx.Response:
    parts = "".join(
        f'<Part><PartNumber>{n}</PartNumber><ETag>"e{n}"</ETag><Size>{n * 10}</Size></Part>'
        for n in numbers
    )
    more = (
        f"<IsTruncated>true</IsTruncated><NextPartNumberMarker>{next_marker}</NextPartNumberMarker>"
        if next_marker
        else "<IsTruncated>false</IsTruncated>"
    )
    body = (
        '<ListPartsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        f"{parts}{more}</ListPartsResult>"
    )
    return httpx.Response(200, content=body.encode())


def test_the_parts_of_a_kept_upload_are_listed_page_by_page() -> None:
    """``_parts_up`` follows ListParts' pages by their marker, and says None when the
    store has no such upload (404)."""
    requests = _Requests(
        sky.storage.S3(region="us-east-1", access_key="a", secret_key="s"), ("a", "s")
    )
    listing = _parts_up(requests, "b", "k", "UP1", "upload of f to b/k")
    request, what, ok = next(listing)
    assert "uploadId=UP1" in request.url
    assert "part-number-marker" not in request.url
    assert (what, ok) == ("listing of the parts kept by an earlier upload of f to b/k", (200, 404))
    request, _, _ = listing.send(_parts_page(range(1, 3), next_marker=2))
    assert "part-number-marker=2" in request.url
    with pytest.raises(StopIteration) as done:
        listing.send(_parts_page(range(3, 4), next_marker=None))
    assert done.value.value == {1: ('"e1"', 10), 2: ('"e2"', 20), 3: ('"e3"', 30)}
    gone = _parts_up(requests, "b", "k", "UP2", "upload of f to b/k")
    next(gone)
    with pytest.raises(StopIteration) as done:
        gone.send(httpx.Response(404, content=b"<Error><Code>NoSuchUpload</Code></Error>"))
    assert done.value.value is None

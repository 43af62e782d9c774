"""The fake GCP's contract (``fake_gcp.py``): what ``sky.GCP`` relies on it answering the
way Google documents, tested without the provider."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import httpx
import pytest
from fake_gcp import FakeGCP, service_account_key
from waiting import wait_until

from skyward_trio._gcp import signed_jwt

pytestmark = pytest.mark.clouds

_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"


def _token(api: FakeGCP, key: dict[str, str] | None = None, **claims: Any) -> httpx.Response:
    assertion = signed_jwt(key or api.key, claims.pop("aud", api.token_uri), time.time())
    return httpx.post(api.token_uri, data={"grant_type": _GRANT, "assertion": assertion})


def _headers(api: FakeGCP) -> dict[str, str]:
    answer = _token(api)
    assert answer.status_code == 200, answer.text
    return {"Authorization": f"Bearer {answer.json()['access_token']}"}


def _body(name: str, zone: str = "us-central1-a", **more: Any) -> dict[str, Any]:
    return {
        "name": name,
        "machineType": f"zones/{zone}/machineTypes/g2-standard-4",
        "disks": [{"boot": True, "autoDelete": True, "initializeParams": {"sourceImage": "x"}}],
        "networkInterfaces": [{"accessConfigs": [{"type": "ONE_TO_ONE_NAT"}]}],
        "scheduling": {"onHostMaintenance": "TERMINATE"},
        **more,
    }


def test_the_token_endpoint_checks_the_jwt_signature_and_audience(fake_gcp: FakeGCP) -> None:
    api = fake_gcp
    good = _token(api)
    assert good.status_code == 200
    assert (good.json()["token_type"], good.json()["expires_in"]) == ("Bearer", 3599)
    other, _ = service_account_key(api.token_uri)
    forged = _token(api, {**other, "client_email": api.key["client_email"]})
    assert forged.status_code == 400
    assert forged.json() == {
        "error": "invalid_grant",
        "error_description": "Invalid JWT Signature.",
    }
    assert _token(api, aud="https://elsewhere/token").status_code == 400
    plain = httpx.post(api.token_uri, data={"grant_type": "client_credentials"})
    assert plain.json()["error"] == "unsupported_grant_type"


def test_the_api_wants_a_live_token(fake_gcp: FakeGCP) -> None:
    url = f"{fake_gcp.api_url}/projects/{fake_gcp.project}/aggregated/machineTypes"
    refused = httpx.get(url, headers={"Authorization": "Bearer nope"})
    assert refused.status_code == 401
    assert refused.json()["error"]["status"] == "UNAUTHENTICATED"
    headers = _headers(fake_gcp)
    assert httpx.get(url, headers=headers).status_code == 200
    fake_gcp.expire_tokens()
    assert httpx.get(url, headers=headers).status_code == 401


def test_aggregated_lists_come_in_pages(fake_gcp: FakeGCP) -> None:
    headers = _headers(fake_gcp)
    url = f"{fake_gcp.api_url}/projects/{fake_gcp.project}/aggregated/acceleratorTypes"
    zones: list[str] = []
    token = ""
    while True:
        page = httpx.get(url, params={"pageToken": token} if token else {}, headers=headers).json()
        zones += list(page["items"])
        token = page.get("nextPageToken", "")
        if not token:
            break
    assert sorted(zones) == [f"zones/{z}" for z in sorted(fake_gcp.accelerator_types)]


def test_inserts_are_strict_and_exhausted_zones_end_their_operation_in_error(
    fake_gcp: FakeGCP,
) -> None:
    api = fake_gcp
    headers = _headers(api)
    base = f"{api.api_url}/projects/{api.project}/zones/us-central1-a"
    unknown = httpx.post(f"{base}/instances", json=_body("a-1", colour="red"), headers=headers)
    assert unknown.status_code == 400
    assert '"colour"' in unknown.json()["error"]["message"]
    migrating = _body("a-2", scheduling={})
    refused = httpx.post(f"{base}/instances", json=migrating, headers=headers)
    assert "do not support live migration" in refused.json()["error"]["message"]
    api.exhausted.add(("g2-standard-4", "us-central1-a"))
    try:
        started = httpx.post(f"{base}/instances", json=_body("a-3"), headers=headers)
    finally:
        api.exhausted.clear()
    assert (started.status_code, started.json()["status"]) == (200, "RUNNING")
    name = started.json()["name"]
    done = httpx.post(f"{base}/operations/{name}/wait", headers=headers).json()
    assert done["status"] == "DONE"
    assert done["error"]["errors"][0]["code"] == "ZONE_RESOURCE_POOL_EXHAUSTED"
    assert httpx.get(f"{base}/instances/a-3", headers=headers).status_code == 404


@pytest.mark.parametrize("scopes", [["https://www.googleapis.com/auth/compute"], []])
def test_a_vm_metadata_server_gives_its_own_token_that_deletes_only_it(
    fake_gcp: FakeGCP, scopes: list[str]
) -> None:
    api = fake_gcp
    headers = _headers(api)
    base = f"{api.api_url}/projects/{api.project}/zones/us-central1-a"
    name = f"meta-{len(scopes)}"
    accounts = [{"email": "default", "scopes": scopes}]
    made = httpx.post(
        f"{base}/instances", json=_body(name, serviceAccounts=accounts), headers=headers
    )
    assert made.status_code == 200, made.text
    vm = api.vms[("us-central1-a", name)]
    assert vm.metadata is not None
    host, port = vm.metadata.server_address[:2]
    root = f"http://{host}:{port}/computeMetadata/v1"
    assert httpx.get(f"{root}/instance/name").status_code == 403  # no Metadata-Flavor
    flavor = {"Metadata-Flavor": "Google"}
    assert httpx.get(f"{root}/instance/name", headers=flavor).text == name
    assert httpx.get(f"{root}/instance/zone", headers=flavor).text.endswith("/zones/us-central1-a")
    assert httpx.get(f"{root}/project/project-id", headers=flavor).text == api.project
    token = httpx.get(f"{root}/instance/service-accounts/default/token", headers=flavor)
    if not scopes:
        assert token.status_code == 404
        httpx.delete(f"{base}/instances/{name}", headers=headers)
        return
    own = {"Authorization": f"Bearer {json.loads(token.text)['access_token']}"}
    listing = httpx.get(f"{api.api_url}/projects/{api.project}/aggregated/instances", headers=own)
    assert listing.status_code == 403
    deleted = httpx.delete(f"{base}/instances/{name}", headers=own)
    assert deleted.status_code == 200
    assert vm.deleted
    assert vm.self_deleted


def test_a_spot_vm_preempt_notice_sets_preempted_then_the_vm_is_deleted(
    fake_gcp: FakeGCP,
) -> None:
    api = fake_gcp
    headers = _headers(api)
    base = f"{api.api_url}/projects/{api.project}/zones/us-central1-a"
    spot = {"onHostMaintenance": "TERMINATE", "provisioningModel": "SPOT"}
    made = httpx.post(f"{base}/instances", json=_body("spot-1", scheduling=spot), headers=headers)
    assert made.status_code == 200, made.text
    plain = httpx.post(f"{base}/instances", json=_body("plain-1"), headers=headers)
    assert plain.status_code == 200, plain.text
    with pytest.raises(ValueError, match="not a spot VM"):
        api.preempt_notice("us-central1-a", "plain-1")
    vm = api.vms[("us-central1-a", "spot-1")]
    assert vm.metadata is not None
    host, port = vm.metadata.server_address[:2]
    url = f"http://{host}:{port}/computeMetadata/v1/instance/preempted"
    flavor = {"Metadata-Flavor": "Google"}
    assert httpx.get(url).status_code == 403  # no Metadata-Flavor
    first = httpx.get(url, headers=flavor)
    assert (first.status_code, first.text) == (200, "FALSE")
    assert first.headers["Metadata-Flavor"] == "Google"
    etag = first.headers["ETag"]
    # Held until timeout_sec with nothing changed: the same value and ETag.
    held = {"wait_for_change": "true", "last_etag": etag, "timeout_sec": "1"}
    # (A generous timeout: the fake's lock may be busy starting plain-1's machine.)
    same = httpx.get(url, headers=flavor, params=held, timeout=60)
    assert (same.text, same.headers["ETag"]) == ("FALSE", etag)
    assert httpx.get(url, headers=flavor, params={"wait": "1"}).status_code == 400
    # A held read answers when the VM is preempted.
    answers: list[httpx.Response] = []
    waiting = {**held, "timeout_sec": "60"}
    reader = threading.Thread(
        target=lambda: answers.append(httpx.get(url, headers=flavor, params=waiting, timeout=90))
    )
    reader.start()
    wait_until(lambda: vm.held == 1, "the read held", timeout=30, every=0.01)
    api.preempt_notice("us-central1-a", "spot-1", seconds=1)
    reader.join(timeout=30)
    (changed,) = answers
    assert changed.text == "TRUE"
    assert changed.headers["ETag"] != etag
    # A read from the old ETag answers at once: it differs already.
    assert httpx.get(url, headers=flavor, params=waiting, timeout=60).text == "TRUE"
    wait_until(lambda: vm.deleted, "the preempted VM deleted", timeout=30, every=0.05)
    assert vm.status == "TERMINATED"
    assert not vm.running
    assert httpx.get(f"{base}/instances/spot-1", headers=headers).status_code == 404
    httpx.delete(f"{base}/instances/plain-1", headers=headers)

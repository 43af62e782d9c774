"""``sky.GCP``'s settings and the pure parts of ``_gcp``: key checks, the signed JWT, GPU
shapes and their prices, Google's error words, the self-deletion command."""

from __future__ import annotations

import base64
import json
import shlex
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

import skyward as sky
from skyward_trio import _gcp
from skyward_trio._model import GCP


def _key(project: str | None = "my-project-1") -> tuple[dict[str, str], rsa.RSAPrivateKey]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    key = {
        "type": "service_account",
        "private_key_id": "abc",
        "private_key": pem,
        "client_email": "sa@my-project-1.iam.gserviceaccount.com",
        "token_uri": "https://oauth2.googleapis.com/token",
    }
    if project:
        key["project_id"] = project
    return key, private


@pytest.fixture(scope="module")
def key() -> dict[str, str]:
    return _key()[0]


def test_the_project_comes_from_the_argument_the_key_or_the_environment(
    key: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "key.json"
    path.write_text(json.dumps(key))
    assert GCP(credentials_file=str(path)).resolved_credentials()[1] == "my-project-1"
    assert GCP(credentials_file=str(path), project="other-1").resolved_credentials()[1] == (
        "other-1"
    )
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    assert GCP().resolved_credentials()[0]["client_email"] == key["client_email"]
    projectless = {k: v for k, v in key.items() if k != "project_id"}
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "env-project")
    assert GCP(credentials=json.dumps(projectless)).resolved_credentials()[1] == "env-project"
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT")
    with pytest.raises(ValueError, match="Export GOOGLE_CLOUD_PROJECT=my-project"):
        GCP(credentials=json.dumps(projectless)).resolved_credentials()


def test_a_missing_or_wrong_key_says_the_fix(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, key: dict[str, str]
) -> None:
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    with pytest.raises(ValueError, match="export GOOGLE_APPLICATION_CREDENTIALS=/path/to/key"):
        GCP().resolved_credentials()
    with pytest.raises(ValueError, match="cannot read the key file"):
        GCP(credentials_file=str(tmp_path / "none.json")).resolved_credentials()
    with pytest.raises(ValueError, match="not a JSON key file"):
        GCP(credentials="{nope").resolved_credentials()
    with pytest.raises(ValueError, match="not 'service_account'"):
        GCP(credentials='{"type": "authorized_user"}').resolved_credentials()
    emailless = {k: v for k, v in key.items() if k != "client_email"}
    with pytest.raises(ValueError, match="the key has no client_email") as raised:
        GCP(credentials=json.dumps(emailless)).resolved_credentials()
    assert "PRIVATE KEY" not in str(raised.value)


def test_settings_are_checked_when_made() -> None:
    with pytest.raises(ValueError, match="not a zone"):
        GCP(zone="us-central1")
    with pytest.raises(ValueError, match="not a project id"):
        GCP(project="My Project")
    with pytest.raises(ValueError, match="disk_gb"):
        GCP(disk_gb=5)
    with pytest.raises(ValueError, match="must be a service account's JSON key"):
        GCP(credentials="")
    assert "secret" not in repr(GCP(credentials='{"private_key": "secret"}'))


def test_the_jwt_is_signed_by_the_key_for_the_token_uri() -> None:
    key, private = _key()
    token = _gcp.signed_jwt(key, key["token_uri"], 1_000_000.0)
    head, claims, signature = token.split(".")

    def unb64(text: str) -> bytes:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))

    private.public_key().verify(
        unb64(signature), f"{head}.{claims}".encode(), padding.PKCS1v15(), hashes.SHA256()
    )
    assert json.loads(unb64(head)) == {"alg": "RS256", "typ": "JWT", "kid": "abc"}
    assert json.loads(unb64(claims)) == {
        "iss": key["client_email"],
        "scope": "https://www.googleapis.com/auth/cloud-platform",
        "aud": "https://oauth2.googleapis.com/token",
        "iat": 1_000_000,
        "exp": 1_003_600,
    }
    with pytest.raises(_gcp.GCPError, match="not an RSA key"):
        _gcp.signed_jwt({**key, "private_key": "junk"}, key["token_uri"], 0.0)


def _machine(name: str, cpus: int, gb: int, gpus: tuple[str, int] | None = None) -> dict:
    found: dict = {"name": name, "guestCpus": cpus, "memoryMb": gb * 1024}
    if gpus:
        found["accelerators"] = [
            {"guestAcceleratorType": gpus[0], "guestAcceleratorCount": gpus[1]}
        ]
    return found


def test_shapes_are_gpu_machine_types_and_n1_types_with_attached_gpus() -> None:
    types = {
        "us-central1-a": [
            _machine("n1-standard-8", 8, 30),
            _machine("g2-standard-4", 4, 16, ("nvidia-l4", 1)),
        ],
        "us-west1-b": [_machine("n1-standard-8", 8, 30), _machine("n1-standard-16", 16, 60)],
        "asia-east1-a": [_machine("ct5-x", 4, 16, ("ct5lp", 4))],
    }
    gpus = {
        "us-central1-a": [{"name": "nvidia-tesla-t4", "maximumCardsPerInstance": 1}],
        "us-west1-b": [{"name": "nvidia-tesla-t4", "maximumCardsPerInstance": 4}],
    }
    found = {s.name: zones for s, (_, zones) in _gcp._shapes(types, gpus).items()}
    assert found == {
        "g2-standard-4": ["us-central1-a"],
        "n1-standard-8+1xnvidia-tesla-t4": ["us-central1-a", "us-west1-b"],
        # n1-standard-32 is not listed in us-west1-b: no four-T4 shape there.
        "n1-standard-16+2xnvidia-tesla-t4": ["us-west1-b"],
    }


def test_gpu_prices_come_from_gpu_skus_per_region() -> None:
    def sku(description: str, usage: str, units: str, nanos: int, group: str = "GPU") -> dict:
        rate = {"unitPrice": {"currencyCode": "USD", "units": units, "nanos": nanos}}
        return {
            "description": description,
            "category": {"resourceGroup": group, "usageType": usage},
            "serviceRegions": ["us-central1", "us-east1"],
            "pricingInfo": [{"pricingExpression": {"usageUnit": "h", "tieredRates": [rate]}}],
        }

    prices: dict = {}
    for listed in (
        sku("Nvidia Tesla T4 GPU running in Americas", "OnDemand", "0", 350_000_000),
        sku(
            "Spot Preemptible Nvidia Tesla T4 GPU running in Americas",
            "Preemptible",
            "0",
            140_000_000,
        ),
        sku("Commitment v1: Nvidia Tesla T4 GPU in Americas for 1 Year", "Commit1Yr", "0", 1),
        sku("Nvidia H100 80GB GPU running in Americas", "OnDemand", "11", 60_000_000),
        sku("Nvidia Tesla A100 GPU running in Americas", "OnDemand", "2", 933_908_000),
        sku(
            "N1 Predefined Instance Core running in Americas",
            "OnDemand",
            "0",
            31_611_000,
            "N1Standard",
        ),
    ):
        _gcp._add_price(prices, listed)
    assert prices[("nvidia-tesla-t4", "us-east1", "OnDemand")] == pytest.approx(0.35)
    assert prices[("nvidia-tesla-t4", "us-central1", "Preemptible")] == pytest.approx(0.14)
    assert prices[("nvidia-h100-80gb", "us-central1", "OnDemand")] == pytest.approx(11.06)
    assert prices[("nvidia-tesla-a100", "us-central1", "OnDemand")] == pytest.approx(2.933908)
    assert ("nvidia-a100-80gb", "us-central1", "OnDemand") not in prices
    assert len(prices) == 8  # four GPU prices in two regions; no commitment, no core


def test_an_offer_is_priced_by_its_gpus_in_its_first_priced_region() -> None:
    shape = _gcp._Shape("n1-standard-16", "nvidia-tesla-t4", 2, attached=True)
    prices = {("nvidia-tesla-t4", "us-east1", "OnDemand"): 0.35}
    offer = _gcp._offer(
        shape, _machine("n1-standard-16", 16, 60), ["us-central1-a", "us-east1-c"], prices
    )
    assert (offer.on_demand_price, offer.spot_price) == (0.7, None)
    assert offer.accelerator == sky.accelerators.T4(count=2)
    assert (offer.vcpus, offer.memory_gb, offer.regions) == (
        16.0,
        60.0,
        ("us-central1-a", "us-east1-c"),
    )
    assert _gcp._shape_of(offer) == shape


def test_the_self_deletion_command_asks_the_metadata_server_then_the_api() -> None:
    command = _gcp.self_delete_command("https://compute.googleapis.com/compute/v1/")
    assert command.startswith('"$SKYWARD_PYTHON" -c ')
    _, _, command = shlex.split(command)
    compile(command, "self-delete", "exec")  # valid Python
    assert "instance/service-accounts/default/token" in command
    assert "'Metadata-Flavor': 'Google'" in command
    assert "GCE_METADATA_HOST" in command
    assert "'https://compute.googleapis.com/compute/v1' + '/projects/'" in command
    assert "method='DELETE'" in command


def test_operation_errors_and_failures_are_read_as_google_words_them() -> None:
    import httpx

    operation = {
        "status": "DONE",
        "error": {
            "errors": [{"code": "QUOTA_EXCEEDED", "message": "Quota 'GPUS_ALL_REGIONS' exceeded."}]
        },
    }
    assert _gcp._operation_error(operation) == (
        "QUOTA_EXCEEDED",
        "Quota 'GPUS_ALL_REGIONS' exceeded.",
    )
    assert _gcp._operation_error({"status": "DONE"}) is None
    refused = httpx.Response(
        403,
        json={
            "error": {
                "code": 403,
                "message": "Required 'compute.instances.create' permission",
                "status": "PERMISSION_DENIED",
                "errors": [{"reason": "forbidden"}],
            }
        },
    )
    assert (
        _gcp._describe_failure(refused)
        == "forbidden: Required 'compute.instances.create' permission"
    )
    assert _gcp._permission(refused)
    quota = httpx.Response(
        403,
        json={
            "error": {
                "code": 403,
                "message": "Quota exceeded",
                "status": "PERMISSION_DENIED",
                "errors": [{"reason": "quotaExceeded"}],
            }
        },
    )
    assert not _gcp._permission(quota)
    token = httpx.Response(
        400, json={"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
    )
    assert _gcp._describe_failure(token) == "invalid_grant: Invalid JWT Signature."
    assert "quota" in _gcp._quota_fix("QUOTA_EXCEEDED", "")


def test_a_toml_table_makes_a_gcp_provider(tmp_path: Path) -> None:
    from skyward_trio import config

    project = tmp_path / "skyward.toml"
    (tmp_path / "defaults.toml").write_text("")
    project.write_text(
        '[providers.g]\ntype = "gcp"\nzone = "us-central1-a"\ndisk_gb = 200\n'
        '[pools.train]\nprovider = "g"\naccelerator = "L4"\n'
    )
    (spec,) = config.validate(project, tmp_path / "defaults.toml").pools["train"].specs
    assert spec.provider == sky.GCP(zone="us-central1-a", disk_gb=200)
    project.write_text('[providers.g]\ntype = "gcp"\nzone = "Iowa"\n')
    with pytest.raises(config.ConfigError, match=r"providers\.g\.zone"):
        config.validate(project, tmp_path / "defaults.toml")


def test_the_cli_sends_the_key_of_its_own_shell(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, key: dict[str, str]
) -> None:
    """``sky compute create`` reads GOOGLE_APPLICATION_CREDENTIALS' file where it runs and
    sends its contents and the project, for a server started elsewhere; a key the spec
    gives, or none anywhere, is left as it is."""
    from skyward import _cli

    path = tmp_path / "key.json"
    path.write_text(json.dumps(key))
    spec = sky.Spec(provider=sky.GCP(zone="us-central1-a"), accelerator=sky.accelerators.L4())
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    sent = _cli._keyed(spec).provider
    assert (sent.zone, sent.project) == ("us-central1-a", "my-project-1")
    assert sent.credentials is not None
    assert json.loads(sent.credentials)["private_key"] == key["private_key"]
    given = sky.Spec(provider=sky.GCP(credentials="{}"), accelerator=sky.accelerators.L4())
    assert _cli._keyed(given).provider.credentials == "{}"
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS")
    assert _cli._keyed(spec).provider == sky.GCP(zone="us-central1-a")


def test_what_compute_refuses_before_creating() -> None:
    from skyward_trio import _checks

    with pytest.raises(ValueError, match="rents GPU VMs"):
        _checks.check_spec(sky.Spec(provider=sky.GCP()))
    with pytest.raises(ValueError, match="Compute Engine rents whole GPUs"):
        _checks.check_spec(sky.Spec(provider=sky.GCP(), accelerator=sky.accelerators.T4(count=0.5)))

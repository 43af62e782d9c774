"""``sky.AWS``'s pure parts: its config, EC2's GPUs as accelerators, the user data a node
boots with, the Price List filters and answers, what ``Compute`` refuses before anything is
rented, and ``[providers.X] type = "aws"`` in skyward.toml.

Provisioning through the APIs runs against moto and a fake Price List in
``tests/integration/test_aws.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio

import skyward as sky
from skyward_trio import _checks, _transport, config
from skyward_trio._aws import (
    AWSCluster,
    _hourly_usd,
    _instance_type,
    _price_filters,
    catalog,
    gpu_accelerator,
    neuron_accelerator,
    user_data,
)
from skyward_trio._offers import Choice, Offer

A = sky.accelerators


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"region": "us_east_1"}, ValueError, "not an AWS region name"),
        ({"region": ""}, ValueError, "region must not be empty"),
        ({"ami": "ubuntu-22.04"}, ValueError, r"AWS\(ami='ubuntu-22.04'\): not an EC2 id"),
        ({"subnet_id": "sg-0123456789abcdef0"}, ValueError, "subnet_id='subnet-0123"),
        ({"security_group_id": 7}, TypeError, "security_group_id must be a str"),
        ({"username": "Ubuntu"}, ValueError, "not a login name"),
        ({"ssh_cidr": "10.0.0.1/8"}, ValueError, "has host bits set"),
        ({"ssh_cidr": "anywhere"}, ValueError, "ssh_cidr='203.0.113.7/32'"),
        ({"endpoint_url": "ec2.amazonaws.com"}, ValueError, "not an http"),
        ({"profile": ""}, ValueError, "profile must not be empty"),
        ({"placement": "close"}, ValueError, r"placement must be 'cluster' .* placement='cluster'"),
        ({"placement_group": ""}, ValueError, "placement_group must not be empty"),
        (
            {"placement": "cluster", "placement_group": "mine"},
            ValueError,
            "pass one of them: placement to have Skyward make a group",
        ),
    ],
)
def test_bad_fields_are_refused_naming_the_fix(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        sky.AWS(**kwargs)


def test_good_fields_are_kept() -> None:
    aws = sky.AWS(
        region="eu-west-1",
        ami="ami-0123456789abcdef0",
        username="ec2-user",
        subnet_id="subnet-0a1b2c3d",
        security_group_id="sg-0a1b2c3d4e5f",
        ssh_cidr="203.0.113.7/32",
        instance_profile="arn:aws:iam::123456789012:instance-profile/ml",
        profile="work",
        endpoint_url="http://127.0.0.1:5000",
        placement="cluster",
    )
    assert aws.region == "eu-west-1"
    assert aws.placement == "cluster"
    assert sky.AWS(placement_group="training").placement_group == "training"
    assert aws.username == "ec2-user"


def gpu(name: str, count: int, mib: int, partition: float = 1.0) -> dict[str, Any]:
    """EC2's ``GpuInfo`` of an instance type."""
    return {
        "Gpus": [
            {
                "Name": name,
                "Manufacturer": "NVIDIA",
                "Count": count,
                "GpuPartitionSize": partition,
                "MemoryInfo": {"SizeInMiB": mib},
            }
        ]
    }


@pytest.mark.parametrize(
    ("info", "expected"),
    [
        (gpu("A100", 8, 40960), A.A100(count=8, memory="40GB", form_factor="SXM")),
        (gpu("A100", 8, 81920), A.A100(count=8, memory="80GB", form_factor="SXM")),
        (gpu("H100", 8, 81920), A.H100(count=8, form_factor="SXM")),
        (gpu("H200", 8, 144384), A.H200(count=8, form_factor="SXM")),
        (gpu("V100", 1, 16384), A.V100(count=1, memory="16GB", form_factor="SXM")),
        (gpu("V100", 8, 32768), A.V100(count=8, memory="32GB", form_factor="SXM")),
        (gpu("A10G", 4, 22888), A.A10G(count=4)),
        (gpu("T4g", 2, 16384), A.T4(count=2)),
        (gpu("L40S", 1, 45776), A.L40S(count=1)),
        (gpu("Radeon Pro V520", 1, 8192), None),  # no accelerator names it
        (gpu("L4", 1, 24576, partition=0.125), None),  # a shared slice of one
        ({"Gpus": []}, None),
    ],
)
def test_ec2_gpus_become_accelerators(
    info: dict[str, Any], expected: sky.accelerators.Accelerator | None
) -> None:
    assert gpu_accelerator(info) == expected


def test_instance_types_keep_what_a_spec_judges_and_drop_metal() -> None:
    entry = {
        "InstanceType": "g5g.2xlarge",
        "ProcessorInfo": {"SupportedArchitectures": ["arm64"]},
        "VCpuInfo": {"DefaultVCpus": 8},
        "MemoryInfo": {"SizeInMiB": 16384},
        "GpuInfo": gpu("T4g", 1, 16384),
    }
    kind = _instance_type(entry)
    assert kind is not None
    assert (kind.vcpus, kind.memory_gb, kind.architecture) == (8, 16, "arm64")
    assert kind.accelerator == A.T4(count=1)
    assert _instance_type(entry | {"InstanceType": "g5g.metal"}) is None
    assert _instance_type(entry | {"ProcessorInfo": {"SupportedArchitectures": ["i386"]}}) is None


def test_user_data_gives_the_pool_key_and_a_host_key_to_cloud_init(tmp_path: Path) -> None:
    host = _transport.generate_key()
    text = user_data("ssh-ed25519 AAAA pool", host)
    first, rest = text.split("\n", 1)
    assert first == "#cloud-config"
    data = json.loads(rest)
    assert data["ssh_authorized_keys"] == ["ssh-ed25519 AAAA pool"]
    assert data["ssh_deletekeys"] is True
    assert data["ssh_keys"]["ed25519_public"] == _transport.public_openssh(host)
    private = data["ssh_keys"]["ed25519_private"]
    assert private.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    key_file = tmp_path / "host_key"
    key_file.write_text(private)
    assert _transport.public_openssh(_transport.read_key(str(key_file))) == (
        _transport.public_openssh(host)
    )


def test_prices_are_asked_for_linux_on_shared_hardware_in_the_region() -> None:
    filters = _price_filters("eu-west-1", ["g5.xlarge", "g5.2xlarge"])
    fields = {f["Field"]: (f["Type"], f["Value"]) for f in filters}
    assert fields == {
        "regionCode": ("TERM_MATCH", "eu-west-1"),
        "operatingSystem": ("TERM_MATCH", "Linux"),
        "tenancy": ("TERM_MATCH", "Shared"),
        "preInstalledSw": ("TERM_MATCH", "NA"),
        "capacitystatus": ("TERM_MATCH", "Used"),
        "instanceType": ("ANY_OF", "g5.xlarge,g5.2xlarge"),
    }


def test_the_hourly_price_is_read_from_the_on_demand_term() -> None:
    def product(*dimensions: tuple[str, str]) -> dict[str, Any]:
        return {
            "terms": {
                "OnDemand": {
                    "SKU.T": {
                        "priceDimensions": {
                            f"SKU.T.{i}": {"unit": unit, "pricePerUnit": {"USD": usd}}
                            for i, (unit, usd) in enumerate(dimensions)
                        }
                    }
                }
            }
        }

    assert _hourly_usd(product(("Hrs", "1.0060000000"))) == 1.006
    assert _hourly_usd(product(("Quantity", "5"), ("Hrs", "0.5"))) == 0.5
    assert _hourly_usd(product(("Hrs", "0.0000000000"))) is None
    assert _hourly_usd(product(("Hrs", "n/a"))) is None
    assert _hourly_usd({"terms": {}}) is None


def test_fractional_gpus_and_bad_apt_names_are_refused_before_renting() -> None:
    with pytest.raises(ValueError, match=r"carries whole GPUs; pass count=1"):
        _checks.check_spec(sky.Spec(provider=sky.AWS(), accelerator=A.T4(count=0.5)))
    with pytest.raises(ValueError, match="not a Debian package name"):
        _checks.check_spec(sky.Spec(provider=sky.AWS(), image=sky.Image(apt=["git; rm -rf /"])))


def _no_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    # Nothing may ask the instance metadata service (not loopback) for a role's keys.
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name in ("AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"):
        monkeypatch.delenv(name, raising=False)


def test_no_credentials_is_a_setting_to_fix_not_a_spec_to_skip(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _no_credentials(monkeypatch, tmp_path)
    aws = sky.AWS(endpoint_url="http://127.0.0.1:9")
    with pytest.raises(ValueError, match=r"no AWS credentials found\. Export AWS_ACCESS_KEY_ID"):
        trio.run(lambda: catalog(aws, accelerator=None))
    with pytest.raises(ValueError, match=r"profile='work'\): no such profile"):
        trio.run(lambda: catalog(sky.AWS(profile="work"), accelerator=None))


def test_a_providers_table_of_type_aws(tmp_path: Path) -> None:
    project = tmp_path / "skyward.toml"
    (tmp_path / "defaults.toml").write_text("")
    project.write_text(
        '[providers.cloud]\ntype = "aws"\nregion = "eu-west-1"\nusername = "ec2-user"\n'
        '[pools.train]\nprovider = "cloud"\naccelerator = "A10G"\n'
    )
    loaded = config.validate(project, tmp_path / "defaults.toml")
    (spec,) = loaded.pools["train"].specs
    assert spec.provider == sky.AWS(region="eu-west-1", username="ec2-user")
    assert spec.accelerator == A.A10G()
    project.write_text('[providers.cloud]\ntype = "aws"\nregion = "mars-1"\n')
    with pytest.raises(sky.ConfigError, match=r"providers\.cloud\.region: AWS"):
        config.validate(project, tmp_path / "defaults.toml")


def test_a_type_out_of_capacity_gives_way_only_to_types_the_image_runs_on() -> None:
    """T4 comes on x86_64 (g4dn) and on arm64 (g5g): the image is made for the chosen
    type's architecture, so only types of that one are tried after it."""

    def offer(name: str, price: float, arch: str) -> Offer:
        return Offer(
            provider="sky.AWS()",
            name=name,
            architecture=arch,
            regions=("us-east-1",),
            on_demand_price=price,
            accelerator=A.T4(),
        )

    chosen = offer("g4dn.xlarge", 0.526, "x86_64")
    also = (offer("g5g.xlarge", 0.42, "arm64"), offer("g4dn.2xlarge", 0.752, "x86_64"))
    spec = sky.Spec(provider=sky.AWS(), accelerator=A.T4())
    choice = Choice(index=0, spec=spec, offer=chosen, spot=False, hourly_price=0.526, also=also)
    cluster = AWSCluster(
        sky.AWS(), job_id="0a0b0c0d", client_key=_transport.generate_key(), choice=choice
    )
    assert [o.name for o in cluster._offers] == ["g4dn.xlarge", "g4dn.2xlarge"]


@pytest.mark.parametrize(
    ("devices", "expected"),
    [
        ([{"Name": "Trainium2", "Count": 16}], A.Trainium2(count=16)),
        ([{"Name": "Inferentia2", "Count": 1}], A.Inferentia2(count=1)),
        ([{"Name": "Trainium", "Count": 16}], None),  # the first Trainium: no accelerator
        ([], None),
    ],
)
def test_aws_chips_become_accelerators(
    devices: list[dict[str, Any]], expected: sky.accelerators.Accelerator | None
) -> None:
    assert neuron_accelerator({"NeuronDevices": devices}) == expected


def test_aws_chips_need_an_image_named_before_renting() -> None:
    spec = sky.Spec(provider=sky.AWS(), accelerator=A.Trainium2(count=16))
    with pytest.raises(ValueError, match=r"pass sky\.AWS\(ami=\.\.\.\) a Neuron Deep Learning AMI"):
        _checks.check_spec(spec)
    neuron = sky.AWS(ami="ami-0123456789abcdef0")
    _checks.check_spec(sky.Spec(provider=neuron, accelerator=A.Inferentia2()))

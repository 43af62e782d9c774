"""``sky.containers`` image references and ``sky.Container``'s checks (no engine needed)."""

from __future__ import annotations

import attrs
import pytest

import skyward as sky
import skyward_trio
from skyward_trio.containers import DockerImage


def test_cuda_builds_nvidias_tags() -> None:
    assert str(sky.containers.cuda("12.9", variant="devel", ubuntu="24.04")) == (
        "nvidia/cuda:12.9.1-devel-ubuntu24.04"
    )
    image = sky.containers.cuda("12.8.0", variant="runtime", ubuntu="22.04")
    assert image.reference == "nvidia/cuda:12.8.0-runtime-ubuntu22.04"
    assert (image.cuda, image.ubuntu) == ("12.8.0", "22.04")
    # Ubuntu left out: the newest release that version was published for.
    assert str(sky.containers.cuda("12.1")) == "nvidia/cuda:12.1.1-devel-ubuntu22.04"
    # cuDNN variants are spelled as NVIDIA spelled them for each release.
    assert str(sky.containers.cuda("12.9", variant="cudnn-runtime")) == (
        "nvidia/cuda:12.9.1-cudnn-runtime-ubuntu24.04"
    )
    assert str(sky.containers.cuda("12.3", variant="cudnn-devel")) == (
        "nvidia/cuda:12.3.2-cudnn9-devel-ubuntu22.04"
    )
    assert str(sky.containers.cuda("11.8", variant="cudnn-devel", ubuntu="20.04")) == (
        "nvidia/cuda:11.8.0-cudnn8-devel-ubuntu20.04"
    )


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: sky.containers.cuda("12.7"), r"cuda\(version='12.7'\): no such release.*12.8"),
        (lambda: sky.containers.cuda("12.9.5"), r"releases go up to 12.9.1"),
        (lambda: sky.containers.cuda("12"), r"no such release"),
        (lambda: sky.containers.cuda("12.9.1.1"), r"no such release"),
        (lambda: sky.containers.cuda("12.9", variant="full"), r"variant must be one of"),
        (lambda: sky.containers.cuda("12.4", ubuntu="24.04"), r"Ubuntu 20.04, 22.04\."),
        (lambda: sky.containers.cuda("13.0", ubuntu="20.04"), r"Ubuntu 22.04, 24.04"),
        (lambda: sky.containers.ubuntu("23.04"), r"an LTS release"),
        (lambda: sky.containers.pytorch("2.8", cuda="12.4"), r"built for CUDA 12.6, 12.8, 12.9"),
        (lambda: sky.containers.pytorch("2.8.3"), r"releases go up to 2.8.0"),
        (lambda: sky.containers.pytorch("1.13"), r"no such release"),
        (lambda: sky.containers.pytorch("2.8", variant="slim"), r"'runtime' or 'devel'"),
        (lambda: sky.containers.runpod_pytorch("2.3"), r"no such release.*DockerImage.of"),
        (lambda: sky.containers.runpod_pytorch("2.8.1"), r"publishes PyTorch 2.8 as 2.8.0"),
        (lambda: sky.containers.runpod_pytorch("2.4", ubuntu="24.04"), r"Ubuntu 22.04"),
    ],
)
def test_helpers_refuse_what_the_family_never_published(call: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()  # type: ignore[operator]


def test_helpers_refuse_a_version_that_is_not_a_str() -> None:
    with pytest.raises(TypeError, match=r"version must be a str such as"):
        sky.containers.cuda(12.9)  # type: ignore[arg-type]


def test_ubuntu_pytorch_and_runpod_tags() -> None:
    assert str(sky.containers.ubuntu("24.04")) == "ubuntu:24.04"
    image = sky.containers.pytorch("2.8", cuda="12.8")
    assert image.reference == "pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime"
    assert image.cuda == "12.8"
    assert str(sky.containers.pytorch("2.3.0", cuda="11.8", variant="devel")) == (
        "pytorch/pytorch:2.3.0-cuda11.8-cudnn8-devel"
    )
    assert str(sky.containers.pytorch("2.9")) == "pytorch/pytorch:2.9.1-cuda13.0-cudnn9-runtime"
    assert str(sky.containers.runpod_pytorch("2.8")) == (
        "runpod/pytorch:2.8.0-py3.11-cuda12.8.1-cudnn-devel-ubuntu22.04"
    )
    assert str(sky.containers.runpod_pytorch("2.4.0")) == (
        "runpod/pytorch:2.4.0-py3.11-cuda12.4.1-devel-ubuntu22.04"
    )


def test_docker_image_of_wraps_any_reference_and_is_frozen() -> None:
    image = sky.containers.DockerImage.of("nvcr.io/nvidia/pytorch:25.08-py3", cuda="13.0")
    assert image == sky.DockerImage(reference="nvcr.io/nvidia/pytorch:25.08-py3", cuda="13.0")
    assert sky.DockerImage is skyward_trio.DockerImage is DockerImage
    assert str(image) == "nvcr.io/nvidia/pytorch:25.08-py3"
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        image.reference = "x"  # type: ignore[misc]
    assert str(DockerImage.of("localhost:5000/me/node@sha256:" + "a" * 64))
    assert str(DockerImage.of("me/node:py{python_version}"))
    for bad, message in [
        ("Python:3.12", "not an image reference"),
        ("python:3.12 slim", "not an image reference"),
        ("me/node:{version}", r"only placeholder may be \{python_version\}"),
    ]:
        with pytest.raises(ValueError, match=message):
            DockerImage.of(bad)
    with pytest.raises(ValueError, match=r"cuda='twelve'"):
        DockerImage.of("me/node", cuda="twelve")
    with pytest.raises(TypeError, match="non-empty str"):
        DockerImage.of("")


def test_container_defaults_and_its_image() -> None:
    provider = sky.Container()
    assert (provider.image, provider.ssh_user, provider.binary) == (
        "python:{python_version}-slim",
        "root",
        "docker",
    )
    assert provider.image_reference("3.12") == "python:3.12-slim"
    cuda = sky.Container(image=sky.containers.cuda("12.9"), binary="podman")
    assert cuda.image_reference("3.12") == "nvidia/cuda:12.9.1-devel-ubuntu24.04"
    assert sky.Spec(provider=cuda).provider is cuda


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"image": 3}, TypeError, r"Container\(image=3\): image must be a str or a sky.Docker"),
        ({"image": ""}, ValueError, r"image must not be empty"),
        ({"image": "Ubuntu"}, ValueError, r"not an image reference.*image='python:3.12-slim'"),
        ({"ssh_user": "Bob"}, ValueError, r"ssh_user='Bob'\): not a login name"),
        ({"ssh_user": "a;b"}, ValueError, r"not a login name"),
        ({"ssh_user": None}, TypeError, r"ssh_user must be a str"),
        ({"binary": ""}, ValueError, r"binary must not be empty.*binary='podman'"),
        ({"binary": "docker --host x"}, ValueError, r"without arguments"),
        ({"binary": "-v"}, ValueError, r"a command name or path"),
    ],
)
def test_container_checks_each_field(kwargs: dict[str, object], error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        sky.Container(**kwargs)  # type: ignore[arg-type]

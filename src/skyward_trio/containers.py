"""``sky.containers``: references to public container images, as ``DockerImage`` records.

Each helper builds the tag its image family really publishes, from the versions you name,
and refuses a combination that family never published (a typo would otherwise surface
minutes later as a failed pull on every node). The tables below list what each family
publishes; a release newer than them is wrapped with :meth:`DockerImage.of`.

- ``cuda("12.9", variant="devel", ubuntu="24.04")`` → ``nvidia/cuda:12.9.1-devel-ubuntu24.04``
  (Docker Hub's ``nvidia/cuda``: a minor version means its last patch release; variants
  ``base``, ``runtime``, ``devel``, ``cudnn-runtime``, ``cudnn-devel``, spelled as the
  family does for that release: ``cudnn8-`` up to 12.2, ``cudnn9-`` for 12.3, ``cudnn-``
  from 12.4).
- ``ubuntu("24.04")`` → ``ubuntu:24.04`` (the LTS releases 18.04 to 24.04).
- ``pytorch("2.8", cuda="12.8")`` → ``pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime``
  (Docker Hub's official PyTorch images, keyed by PyTorch's own version; NVIDIA's NGC
  images, ``nvcr.io/nvidia/pytorch:25.08-py3``, are keyed by NGC release and wrapped with
  ``DockerImage.of``).
- ``runpod_pytorch("2.8")`` →
  ``runpod/pytorch:2.8.0-py3.11-cuda12.8.1-cudnn-devel-ubuntu22.04`` (RunPod's images;
  each PyTorch release comes with one Python and one CUDA).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import attrs

__all__ = ["DockerImage", "cuda", "pytorch", "runpod_pytorch", "ubuntu"]

# registry[:port]/path[:tag][@digest], lower-case path components, the way the engines
# parse a reference. ``{python_version}`` is allowed anywhere: a provider formats it.
_REFERENCE = re.compile(
    r"(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?"  # registry host (a dot, a port or localhost)
    r"[a-z0-9]+(?:[._-]+[a-z0-9]+)*(?:/[a-z0-9]+(?:[._-]+[a-z0-9]+)*)*"  # path
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"  # tag
    r"(?:@sha256:[0-9a-f]{64})?"  # digest
)
_VERSION = re.compile(r"[0-9]+\.[0-9]+(\.[0-9]+)?")


def check_reference(reference: str) -> str | None:
    """Why ``reference`` is not an image reference, or None when it is one."""
    concrete = reference.replace("{python_version}", "3.12")
    if "{" in concrete or "}" in concrete:
        return "its only placeholder may be {python_version}"
    if _REFERENCE.fullmatch(concrete) is None:
        return (
            "not an image reference (repository[:tag], lower-case, e.g. "
            "'python:3.12-slim' or 'ghcr.io/me/node:1')"
        )
    return None


@attrs.frozen(kw_only=True)
class DockerImage:
    """A container image, by reference, with what it is known to carry.

    Attributes:
        reference: What ``docker pull`` takes (``nvidia/cuda:12.9.1-devel-ubuntu24.04``);
            may contain ``{python_version}``, which a provider replaces with the
            client's ``X.Y``.
        cuda: The CUDA version inside, if any (``"12.9.1"``).
        ubuntu: The Ubuntu release it is built on, if known (``"24.04"``).
    """

    reference: str
    cuda: str | None = None
    ubuntu: str | None = None

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.reference, str) or not self.reference:
            raise TypeError(
                f"DockerImage(reference={self.reference!r}): reference must be a non-empty "
                "str, e.g. 'nvidia/cuda:12.9.1-devel-ubuntu24.04'."
            )
        problem = check_reference(self.reference)
        if problem is not None:
            raise ValueError(f"DockerImage(reference={self.reference!r}): {problem}.")
        for arg in ("cuda", "ubuntu"):
            value = getattr(self, arg)
            if value is not None and (
                not isinstance(value, str) or re.fullmatch(r"[0-9]+(\.[0-9]+){1,2}", value) is None
            ):
                raise ValueError(
                    f"DockerImage({arg}={value!r}): {arg} is a version such as '12.8' or "
                    "'22.04', or None when unknown."
                )

    @classmethod
    def of(
        cls, reference: str, *, cuda: str | None = None, ubuntu: str | None = None
    ) -> DockerImage:
        """Any image by its reference, with the CUDA and Ubuntu versions it carries."""
        return cls(reference=reference, cuda=cuda, ubuntu=ubuntu)

    def __str__(self) -> str:
        return self.reference


def _minor(helper: str, arg: str, value: object, known: Mapping[str, object]) -> str:
    """``value`` as ``X.Y``, refused unless it is one of ``known``."""
    if not isinstance(value, str):
        raise TypeError(
            f"containers.{helper}({arg}={value!r}): {arg} must be a str such as "
            f"{next(iter(known))!r}, got {type(value).__name__}."
        )
    minor = ".".join(value.split(".")[:2])
    if _VERSION.fullmatch(value) is None or minor not in known:
        raise ValueError(
            f"containers.{helper}({arg}={value!r}): no such release in this family's tags; "
            f"known: {', '.join(known)}. For another image use "
            "sky.containers.DockerImage.of('repository:tag')."
        )
    return minor


def _patch_release(helper: str, family: str, version: str, minor: str, last: str) -> str:
    """``X.Y.Z`` for ``version``: ``X.Y`` is its last patch ``last``; a patch past it is
    refused."""
    if version.count(".") < 2:
        return last
    patch = version.split(".")[2]
    if not patch.isdigit() or int(patch) > int(last.split(".")[2]):
        raise ValueError(
            f"containers.{helper}(version={version!r}): {family} {minor}'s releases go up "
            f"to {last}. Pass e.g. version={minor!r} (its last patch, {last})."
        )
    return version


# nvidia/cuda: minor release -> (last patch, Ubuntu releases it was published for).
_CUDA: dict[str, tuple[str, tuple[str, ...]]] = {
    "11.8": ("11.8.0", ("18.04", "20.04", "22.04")),
    "12.0": ("12.0.1", ("18.04", "20.04", "22.04")),
    "12.1": ("12.1.1", ("20.04", "22.04")),
    "12.2": ("12.2.2", ("20.04", "22.04")),
    "12.3": ("12.3.2", ("20.04", "22.04")),
    "12.4": ("12.4.1", ("20.04", "22.04")),
    "12.5": ("12.5.1", ("20.04", "22.04")),
    "12.6": ("12.6.3", ("20.04", "22.04", "24.04")),
    "12.8": ("12.8.1", ("20.04", "22.04", "24.04")),
    "12.9": ("12.9.1", ("20.04", "22.04", "24.04")),
    "13.0": ("13.0.2", ("22.04", "24.04")),
}
_CUDA_VARIANTS = ("base", "runtime", "devel", "cudnn-runtime", "cudnn-devel")


def _cudnn_prefix(minor: str) -> str:
    major, low = (int(part) for part in minor.split("."))
    if (major, low) <= (12, 2):
        return "cudnn8-"
    if (major, low) == (12, 3):
        return "cudnn9-"
    return "cudnn-"


def cuda(version: str, variant: str = "devel", ubuntu: str | None = None) -> DockerImage:
    """``nvidia/cuda``: ``version`` ``X.Y`` (its last patch) or ``X.Y.Z``; ``ubuntu`` None
    takes the newest release that version was published for."""
    minor = _minor("cuda", "version", version, _CUDA)
    last, releases = _CUDA[minor]
    full = _patch_release("cuda", "CUDA", version, minor, last)
    if variant not in _CUDA_VARIANTS:
        raise ValueError(
            f"containers.cuda(variant={variant!r}): variant must be one of "
            f"{', '.join(map(repr, _CUDA_VARIANTS))}."
        )
    release = releases[-1] if ubuntu is None else ubuntu
    if release not in releases:
        raise ValueError(
            f"containers.cuda({version!r}, ubuntu={ubuntu!r}): nvidia/cuda {minor} is "
            f"published for Ubuntu {', '.join(releases)}. Pass one of those, or leave "
            "ubuntu out for the newest."
        )
    kind = variant.replace("cudnn-", _cudnn_prefix(minor))
    return DockerImage(
        reference=f"nvidia/cuda:{full}-{kind}-ubuntu{release}", cuda=full, ubuntu=release
    )


_UBUNTU = ("18.04", "20.04", "22.04", "24.04")


def ubuntu(version: str) -> DockerImage:
    """``ubuntu:X.Y``, an LTS release. The image has neither sshd nor Python: a provider
    installs sshd with apt-get, and ``Image(apt=[...])`` can add the rest."""
    if version not in _UBUNTU:
        raise ValueError(
            f"containers.ubuntu({version!r}): pass an LTS release, one of "
            f"{', '.join(map(repr, _UBUNTU))}."
        )
    return DockerImage(reference=f"ubuntu:{version}", ubuntu=version)


# pytorch/pytorch: minor release -> (last patch, cuDNN major, CUDA X.Y builds, oldest first).
_PYTORCH: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "2.1": ("2.1.2", "8", ("11.8", "12.1")),
    "2.2": ("2.2.2", "8", ("11.8", "12.1")),
    "2.3": ("2.3.1", "8", ("11.8", "12.1")),
    "2.4": ("2.4.1", "9", ("11.8", "12.1", "12.4")),
    "2.5": ("2.5.1", "9", ("11.8", "12.1", "12.4")),
    "2.6": ("2.6.0", "9", ("11.8", "12.4", "12.6")),
    "2.7": ("2.7.1", "9", ("11.8", "12.6", "12.8")),
    "2.8": ("2.8.0", "9", ("12.6", "12.8", "12.9")),
    "2.9": ("2.9.1", "9", ("12.6", "12.8", "13.0")),
}


def pytorch(version: str, cuda: str | None = None, variant: str = "runtime") -> DockerImage:
    """``pytorch/pytorch``: PyTorch ``version`` (``X.Y`` is its last patch release) built
    for CUDA ``cuda`` ``X.Y`` (None: the newest it was built for); ``variant`` is
    ``runtime`` or ``devel``."""
    minor = _minor("pytorch", "version", version, _PYTORCH)
    last, cudnn, builds = _PYTORCH[minor]
    full = _patch_release("pytorch", "PyTorch", version, minor, last)
    chosen = builds[-1] if cuda is None else cuda
    if chosen not in builds:
        raise ValueError(
            f"containers.pytorch({version!r}, cuda={cuda!r}): pytorch/pytorch {minor} is "
            f"built for CUDA {', '.join(builds)}. Pass one of those, or leave cuda out."
        )
    if variant not in ("runtime", "devel"):
        raise ValueError(
            f"containers.pytorch(variant={variant!r}): variant is 'runtime' or 'devel'."
        )
    return DockerImage(
        reference=f"pytorch/pytorch:{full}-cuda{chosen}-cudnn{cudnn}-{variant}",
        cuda=chosen,
        ubuntu="22.04",
    )


# runpod/pytorch: minor release -> (PyTorch, Python, CUDA, flavour, Ubuntu releases).
_RUNPOD: dict[str, tuple[str, str, str, str, tuple[str, ...]]] = {
    "2.0": ("2.0.1", "3.10", "11.8.0", "devel", ("22.04",)),
    "2.1": ("2.1.0", "3.10", "12.1.1", "devel", ("22.04",)),
    "2.2": ("2.2.0", "3.10", "12.1.1", "devel", ("22.04",)),
    "2.4": ("2.4.0", "3.11", "12.4.1", "devel", ("22.04",)),
    "2.8": ("2.8.0", "3.11", "12.8.1", "cudnn-devel", ("22.04", "24.04")),
}


def runpod_pytorch(version: str, ubuntu: str | None = None) -> DockerImage:
    """``runpod/pytorch``: RunPod's PyTorch ``version`` image (one Python and one CUDA per
    release); ``ubuntu`` None takes the oldest (the most widely published) release."""
    minor = _minor("runpod_pytorch", "version", version, _RUNPOD)
    torch, python, cuda_full, flavour, releases = _RUNPOD[minor]
    if version.count(".") == 2 and version != torch:
        raise ValueError(
            f"containers.runpod_pytorch(version={version!r}): RunPod publishes PyTorch "
            f"{minor} as {torch}. Pass version={minor!r}."
        )
    release = releases[0] if ubuntu is None else ubuntu
    if release not in releases:
        raise ValueError(
            f"containers.runpod_pytorch({version!r}, ubuntu={ubuntu!r}): runpod/pytorch "
            f"{torch} is published for Ubuntu {', '.join(releases)}."
        )
    return DockerImage(
        reference=f"runpod/pytorch:{torch}-py{python}-cuda{cuda_full}-{flavour}-ubuntu{release}",
        cuda=cuda_full,
        ubuntu=release,
    )

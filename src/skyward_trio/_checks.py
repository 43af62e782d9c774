"""What ``Compute`` refuses before anything is provisioned, beyond the records' own checks.

The records (``Spec``, ``Image``, ...) check each field alone. These checks need more: two
fields together (an accelerator on ``sky.Local()``), this client (its Python version), or
this machine (the files an image includes, the SSH keys and config a host logs in with, the
container engine's command), or a provider's reach (what volumes it can mount). Fields not
built yet are refused here too: accepting and ignoring them would be a silent fallback, and
the records keep validating them, so a config written today keeps working when they land.

``Compute`` runs them on its specs; ``config.validate`` on every pool of the files.

Layer 5: it reads the providers' configs (layer 4) and is used by ``_compute`` and
``config``.
"""

from __future__ import annotations

import math
import os
import posixpath
import re
from collections.abc import Iterable

from ._aws import NEURON
from ._bootstrap import requirement_name
from ._container import check_container
from ._model import (
    AWS,
    GCP,
    SSH,
    Container,
    Hyperstack,
    JarvisLabs,
    Lambda,
    Local,
    MassedCompute,
    Novita,
    RunPod,
    Scaleway,
    Spec,
    TensorDock,
    VastAI,
    Verda,
    Volume,
    Vultr,
)
from ._plugin import collective
from ._providers import ssh_targets
from ._source import check_source
from ._version import PYTHON_VERSION
from .accelerators import Accelerator
from .storage import Storage

__all__ = ["check_spec", "check_specs"]


def check_specs(specs: Iterable[Spec]) -> None:
    """Refuse, before anything is provisioned, what cannot work (see the module)."""
    for spec in specs:
        check_spec(spec)


def check_spec(spec: Spec) -> None:
    """Refuse ``spec`` if it cannot work from here (see the module).

    Raises:
        ValueError: A field its provider cannot honour, or one not built yet.
        FileNotFoundError: A file it names (an include, an SSH key) is not on this machine.
        SSHError: An SSH key that cannot be loaded or decrypted.
    """
    _image(spec)
    if isinstance(spec.provider, Local) and spec.accelerator is not None:
        raise ValueError(
            f"accelerator={spec.accelerator!r}: sky.Local() runs on this machine and provides "
            "no accelerators; drop accelerator= to test locally, or pick a cloud provider"
        )
    if isinstance(spec.provider, Container):
        check_container(spec)
    if isinstance(spec.provider, RunPod):
        _runpod(spec)
    if isinstance(spec.provider, AWS):
        _aws(spec)
    if isinstance(spec.provider, VastAI):
        _vastai(spec)
    if isinstance(spec.provider, Lambda):
        _lambda(spec)
    if isinstance(spec.provider, Hyperstack):
        _hyperstack(spec)
    if isinstance(spec.provider, Vultr):
        _vultr(spec)
    if isinstance(spec.provider, Verda):
        _verda(spec)
    if isinstance(spec.provider, Scaleway):
        _scaleway(spec)
    if isinstance(spec.provider, Novita):
        _novita(spec)
    if isinstance(spec.provider, GCP):
        _gcp(spec)
    if isinstance(spec.provider, TensorDock):
        _tensordock(spec)
    if isinstance(spec.provider, MassedCompute):
        _massedcompute(spec)
    if isinstance(spec.provider, JarvisLabs):
        _jarvislabs(spec)
    fixed = collective(spec)
    nodes = spec.nodes
    partial = nodes.min is not None and nodes.min < nodes.desired
    if fixed is not None and (nodes.ceiling != nodes.desired or partial):
        raise ValueError(
            f"nodes={nodes!r} with plugin {fixed.name!r}: its nodes join one group whose size "
            "is fixed when they join, and a pool that grows or starts with fewer nodes would "
            f"hang it at its first collective; pass a fixed count, e.g. nodes={nodes.desired}"
        )
    if spec.volumes:
        _volumes(spec)


def _volumes(spec: Spec) -> None:
    """Volumes are mounted with s3fs on machines Skyward logs in to; each needs a store."""
    provider = spec.provider
    first = spec.volumes[0]
    if isinstance(provider, Local):
        raise ValueError(
            f"volumes=[{first!r}, ...]: sky.Local() nodes are processes on this machine, and "
            "Skyward mounts nothing on it; use sky.SSH or a cloud provider, or read the "
            "bucket with sky.storage inside the function"
        )
    if isinstance(provider, Container):
        raise ValueError(
            f"volumes=[{first!r}, ...]: sky.Container starts its containers without "
            "/dev/fuse or the SYS_ADMIN capability, so s3fs cannot mount in them; use "
            "sky.SSH or a cloud provider, or read the bucket with sky.storage inside the "
            "function"
        )
    seen: dict[str, Volume] = {}
    for volume in spec.volumes:
        if volume.storage is not None and not isinstance(volume.storage, Storage):
            raise TypeError(
                f"Volume(storage={volume.storage!r}): storage is a sky.storage.Storage, e.g. "
                "sky.storage.R2(...), or None for the provider's own object store"
            )
        if volume.storage is None and isinstance(provider, GCP):
            raise ValueError(
                f"{volume!r}: storage=None mounts the provider's own object store with the "
                "machine's own credentials, which Skyward does on AWS only; for a Cloud "
                "Storage bucket pass storage=sky.storage.GCS(...) with an HMAC key"
            )
        if volume.storage is None and not isinstance(provider, (AWS, Hyperstack)):
            raise ValueError(
                f"{volume!r}: storage=None mounts the provider's own object store, and "
                f"{type(provider).__name__} has none; pass storage=sky.storage.R2(...) (or "
                "S3, GCS, Wasabi, Backblaze, Hyperstack)"
            )
        if _BLANK.search(volume.mount) or _BLANK.search(volume.bucket + volume.prefix):
            raise ValueError(
                f"{volume!r}: mount, bucket and prefix must hold no spaces, backslashes or "
                "control characters (FUSE's mount table cannot show them); pick another path"
            )
        mount = posixpath.normpath(volume.mount)
        for other, taken in seen.items():
            if mount == other or mount.startswith(other + "/") or other.startswith(mount + "/"):
                raise ValueError(
                    f"{volume!r} and {taken!r}: one mount is inside the other; give each "
                    "volume a directory of its own"
                )
        seen[mount] = volume


_BLANK = re.compile(r"[\s\\\x00-\x1f]")


def _image(spec: Spec) -> None:
    image = spec.image
    if image.python not in ("auto", PYTHON_VERSION):
        raise ValueError(
            f"Image(python={image.python!r}): this client runs Python {PYTHON_VERSION}, and "
            "a function pickled by one Python version cannot run on another (cloudpickle "
            "ships bytecode). Run the client with Python "
            f"{image.python}, or pass python='auto'."
        )
    unknown = sorted(
        {pkg for index in image.pip_indexes for pkg in index.packages}
        - {requirement_name(r) for r in image.pip}
    )
    if unknown:
        raise ValueError(
            f"Image(pip_indexes=...) names {', '.join(map(repr, unknown))}, which "
            "Image(pip=[...]) does not install; add them to pip, or drop them from the index"
        )
    for include in image.includes:
        if not os.path.exists(os.path.expanduser(include)):
            raise FileNotFoundError(
                f"Image(includes=[{include!r}]): no such file or directory here (relative to "
                f"{os.getcwd()}); includes are paths on this machine"
            )
    if isinstance(spec.provider, SSH):
        hosts = len(spec.provider.hosts)
        most = spec.nodes.ceiling
        if most > hosts:
            raise ValueError(
                f"nodes={most}: sky.SSH gives one node per host and has {hosts} host(s) "
                f"({', '.join(h.host for h in spec.provider.hosts)}); add hosts to "
                f"SSH(hosts=[...]), or pass nodes={hosts}"
            )
        ssh_targets(spec.provider)  # every host resolves and has something to log in with
    if isinstance(
        spec.provider,
        SSH
        | Container
        | AWS
        | VastAI
        | Lambda
        | Hyperstack
        | Vultr
        | Verda
        | Scaleway
        | Novita
        | GCP
        | TensorDock
        | MassedCompute
        | JarvisLabs,
    ):
        for package in image.apt:
            if _APT_PACKAGE.fullmatch(package) is None:
                raise ValueError(
                    f"Image(apt=[{package!r}]): not a Debian package name (optionally with "
                    "=version or /release). Pass package names, e.g. apt=['git', 'ffmpeg']."
                )
        check_source(image.skyward_source)
    if isinstance(spec.provider, Local):
        if image.apt:
            raise ValueError(
                f"Image(apt={list(image.apt)!r}): sky.Local() runs on this machine and never "
                "runs apt-get on it; install system packages yourself, or use a remote provider"
            )
        if image.skyward_source not in ("auto", "local"):
            raise ValueError(
                f"Image(skyward_source={image.skyward_source!r}): sky.Local() nodes run the "
                "Skyward installed here; skyward_source applies to remote machines. Pass "
                "'auto' or 'local'."
            )


# A package as apt-get install takes it: name[:arch][=version|/release]. Nothing a
# shell would expand, nothing apt-get would read as an option.
_APT_PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]*(:[a-z0-9-]+)?([=/][A-Za-z0-9+.:~_-]+)?")


def _whole(accelerator: Accelerator, why: str) -> None:
    if accelerator.count != int(accelerator.count):
        raise ValueError(
            f"accelerator={accelerator.name}(count={accelerator.count:g}): {why}; pass "
            f"count={max(1, int(accelerator.count))} or more"
        )


def _gpus(spec: Spec, rents: str, example: str, note: str = "") -> Accelerator:
    """The spec's accelerator, for a provider that rents GPU machines only."""
    if spec.accelerator is None:
        raise ValueError(
            f"{rents} and this spec asks for no accelerator; pass e.g. "
            f"accelerator=sky.accelerators.{example}(){note}"
        )
    return spec.accelerator


def _runpod(spec: Spec) -> None:
    """RunPod rents GPU pods by whole GPUs, and CPU pods (a spec with no accelerator) on
    demand in its secure cloud only: it prices them nowhere else."""
    provider = spec.provider
    assert isinstance(provider, RunPod)
    if spec.accelerator is not None:
        _whole(spec.accelerator, "RunPod rents whole GPUs")
    elif spec.allocation == "spot":
        raise ValueError(
            "allocation='spot': sky.RunPod() rents CPU pods (this spec asks for no "
            "accelerator) on demand only; RunPod has no spot price for them. Pass "
            "allocation='on-demand', or an accelerator= for a spot GPU pod"
        )
    elif provider.cloud_type != "secure":
        raise ValueError(
            f"RunPod(cloud_type={provider.cloud_type!r}): RunPod rents CPU pods (this spec "
            "asks for no accelerator) in its secure cloud only; pass "
            "RunPod(cloud_type='secure'), or an accelerator= for a community GPU pod"
        )
    if spec.disk_gb is not None:
        raise ValueError(
            f"disk_gb={spec.disk_gb:g}: sky.RunPod() sizes each pod's disk itself; drop "
            f"disk_gb= and pass RunPod(container_disk_gb={math.ceil(spec.disk_gb)})"
        )


def _aws(spec: Spec) -> None:
    """EC2 instances carry whole GPUs, several to a type; AWS's own chips need an image
    with their driver, which Skyward does not pick."""
    accelerator = spec.accelerator
    if accelerator is None:
        return
    _whole(accelerator, "an EC2 instance carries whole GPUs")
    assert isinstance(spec.provider, AWS)
    if accelerator.name in NEURON and spec.provider.ami is None:
        raise ValueError(
            f"accelerator={accelerator.name}(): its instances need an image with AWS's Neuron "
            "driver, and sky.AWS() picks none for them; pass sky.AWS(ami=...) a Neuron Deep "
            "Learning AMI of your region (aws ssm get-parameters-by-path --recursive --path "
            "/aws/service/neuron lists them)"
        )


def _vastai(spec: Spec) -> None:
    """Vast rents GPU machines by whole GPUs."""
    _whole(_gpus(spec, "sky.VastAI() rents GPU machines", "RTX_4090"), "Vast.ai rents whole GPUs")


def _lambda(spec: Spec) -> None:
    """Lambda rents GPU instances by whole GPUs, each type with its own disk."""
    _whole(_gpus(spec, "sky.Lambda() rents GPU instances", "A100"), "Lambda rents whole GPUs")


def _hyperstack(spec: Spec) -> None:
    """Hyperstack rents GPU VMs by whole GPUs, each flavor with its own disk."""
    _whole(
        _gpus(
            spec,
            "sky.Hyperstack() rents GPU virtual machines",
            "H100",
            " (its CPU flavors are not supported yet)",
        ),
        "Hyperstack rents whole GPUs",
    )


def _vultr(spec: Spec) -> None:
    """Vultr rents Cloud GPU instances by whole GPUs, each plan with its own disk."""
    _whole(
        _gpus(
            spec,
            "sky.Vultr() rents Cloud GPU instances",
            "A100",
            " (its CPU plans are not supported yet)",
        ),
        "sky.Vultr() rents whole GPUs (its fractional vGPU plans are not offered)",
    )


def _verda(spec: Spec) -> None:
    """Verda rents GPU instances by whole GPUs, each type with its own disk."""
    _whole(
        _gpus(
            spec,
            "sky.Verda() rents GPU instances",
            "H100",
            " (its CPU instance types are not supported yet)",
        ),
        "Verda rents whole GPUs",
    )


def _scaleway(spec: Spec) -> None:
    """Scaleway rents GPU Instances by whole GPUs."""
    _whole(
        _gpus(
            spec,
            "sky.Scaleway() rents GPU Instances",
            "L4",
            " (its CPU Instance types are not supported yet)",
        ),
        "Scaleway rents whole GPUs",
    )


def _novita(spec: Spec) -> None:
    """Novita rents GPU instances by whole GPUs."""
    _whole(
        _gpus(
            spec,
            "sky.Novita() rents GPU instances",
            "RTX_4090",
            " (its CPU instances are not supported yet)",
        ),
        "Novita rents whole GPUs",
    )


def _gcp(spec: Spec) -> None:
    """Compute Engine rents GPU VMs by whole GPUs."""
    _whole(
        _gpus(
            spec, "sky.GCP() rents GPU VMs", "L4", " (its CPU machine types are not supported yet)"
        ),
        "Compute Engine rents whole GPUs",
    )


def _tensordock(spec: Spec) -> None:
    """TensorDock rents GPU VMs by whole GPUs."""
    _whole(
        _gpus(
            spec,
            "sky.TensorDock() rents GPU VMs",
            "RTX_4090",
            " (its CPU-only VMs are not supported yet)",
        ),
        "TensorDock rents whole GPUs",
    )


def _massedcompute(spec: Spec) -> None:
    """Massed Compute rents GPU VMs by whole GPUs."""
    _whole(
        _gpus(spec, "sky.MassedCompute() rents GPU instances", "L40S"),
        "Massed Compute rents whole GPUs",
    )


def _jarvislabs(spec: Spec) -> None:
    """JarvisLabs rents GPU container instances by whole GPUs."""
    _whole(
        _gpus(
            spec,
            "sky.JarvisLabs() rents GPU instances",
            "L4",
            " (its CPU VMs are not supported yet)",
        ),
        "JarvisLabs rents whole GPUs",
    )

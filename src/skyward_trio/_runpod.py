"""``sky.RunPod``: GPU and CPU pods rented through RunPod's public APIs.

RunPod's GraphQL API lists the GPU types with their prices per GPU-hour (secure or
community cloud; on demand, or spot as an "interruptible" pod); its REST API v2 catalog
lists the CPU flavors, each with its vCPU range, its RAM per vCPU and its price per
vCPU-hour (secure cloud, on demand only); its REST API v1 creates, reads and deletes
pods. A spec with an accelerator gets a GPU pod; one without gets a CPU pod
(``computeType: "CPU"``) of the cheapest flavor and vCPU count meeting its ``vcpus`` and
``memory_gb``. Each node is one pod: the client creates it with the pool's
public key in ``PUBLIC_KEY`` (RunPod's images start sshd with it), waits until the pod
has a public address and its SSH port answers, pins the host key it presents then (RunPod
does not publish it, so the first answer is trusted for that pod only: trust on first
use, never a known_hosts entry a later pod on the same address could reuse) and logs in
once to learn the home directory.

Nothing is left billing: every pod this cluster creates is named
``skyward-<job>-<node>-<n>``; ``terminate`` deletes a pod and confirms it gone, and
``aclose`` deletes every pod of the job still listed, including one whose create request
was cut short before its answer came. A pod whose client vanished deletes itself when
the worker's lease (``Spec.ttl``) runs out, with ``runpodctl`` inside the pod.

The API key travels only in the ``Authorization`` header; errors quote RunPod's answer,
which never holds it.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, TypeGuard

import attrs
import httpx
import trio

from . import _transport, accelerators
from ._model import RunPod
from ._offers import Catalog, Choice, Offer
from ._providers import (
    Instance,
    KeyedAPI,
    ended_on_failure,
    failure_words,
    first_host_key,
    poll_delays,
    remote_workdir,
    response_json,
    response_object,
    said,
)
from ._rented import whole_gpus
from ._version import PYTHON_VERSION
from .accelerators import Accelerator

__all__ = ["GPU_TYPES", "RunPodCluster", "RunPodError", "catalog", "cpu_vcpu_counts"]

#: RunPod's GPU type ids and what each is, per GPU. Types not listed here are not offered
#: (an accelerator Skyward cannot name could not be asked for).
GPU_TYPES: Mapping[str, Accelerator] = {
    "NVIDIA A100 80GB PCIe": accelerators.A100(form_factor="PCIe"),
    "NVIDIA A100-SXM4-80GB": accelerators.A100(form_factor="SXM"),
    "NVIDIA H100 PCIe": accelerators.H100(form_factor="PCIe"),
    "NVIDIA H100 80GB HBM3": accelerators.H100(form_factor="SXM"),
    "NVIDIA H100 NVL": accelerators.H100(form_factor="NVL"),
    "NVIDIA H200": accelerators.H200(form_factor="SXM"),
    "NVIDIA B200": accelerators.B200(),
    "NVIDIA A40": accelerators.A40(),
    "NVIDIA L4": accelerators.L4(),
    "NVIDIA L40": accelerators.L40(),
    "NVIDIA L40S": accelerators.L40S(),
    "NVIDIA RTX A6000": accelerators.RTX_A6000(),
    "NVIDIA RTX 6000 Ada Generation": accelerators.RTX_6000_Ada(),
    "NVIDIA GeForce RTX 4090": accelerators.RTX_4090(),
    "NVIDIA GeForce RTX 5090": accelerators.RTX_5090(),
    "AMD Instinct MI300X OAM": accelerators.MI300X(),
}

_GPU_TYPES_QUERY = (
    "query GpuTypes { gpuTypes { id displayName memoryInGb secureCloud communityCloud "
    "securePrice communityPrice secureSpotPrice communitySpotPrice maxGpuCount } }"
)

#: The command a pod runs to delete itself when the worker's lease runs out.
_SELF_DELETE = 'runpodctl remove pod "$RUNPOD_POD_ID"'


#: What RunPod's CPU pods run on (the CPU types RunPod lists are Intel and AMD ones).
_CPU_ARCHITECTURE = "x86_64"


class RunPodError(RuntimeError):
    """RunPod's API refused a request or could not be reached; the message quotes it."""


def _describe_failure(response: httpx.Response) -> str:
    """RunPod's own words for a failed request (its JSON ``error``, else the body)."""
    body, words = response_object(response), None
    if isinstance(body.get("error"), str):
        words = body["error"]
    elif isinstance(body.get("errors"), list) and body["errors"]:
        words = "; ".join(
            str(e.get("message", e) if isinstance(e, dict) else e) for e in body["errors"]
        )
    return failure_words(response, words)


_said = functools.partial(said, describe=_describe_failure)


def _gpu_types_in(body: object) -> list[dict[str, Any]] | None:
    """The ``gpuTypes`` of a GraphQL answer, or None when it has none (GraphQL answers an
    error with ``"data": null`` and its ``errors``, still with status 200)."""
    data = body.get("data") if isinstance(body, dict) else None
    types = data.get("gpuTypes") if isinstance(data, dict) else None
    return [t for t in types if isinstance(t, dict)] if isinstance(types, list) else None


class _API(KeyedAPI[RunPod]):
    """RunPod's REST and GraphQL APIs."""

    cloud = "RunPod"
    error = RunPodError
    key_fix = "check RUNPOD_API_KEY or RunPod(api_key=...) and that the key may manage pods"

    def describe(self, response: httpx.Response) -> str:
        return _describe_failure(response)

    async def gpu_types(self) -> list[dict[str, Any]]:
        """The GraphQL ``gpuTypes``: RunPod's GPU types with their prices per GPU-hour."""
        response = await self.send(
            "POST", self.config.graphql_url, json={"query": _GPU_TYPES_QUERY}
        )
        types = _gpu_types_in(response_json(response)) if response.status_code == 200 else None
        if types is None:
            raise RunPodError(f"RunPod did not list its GPU types {_said(response)}")
        return types

    async def cpu_types(self) -> list[dict[str, Any]]:
        """The v2 catalog's ``cpus``: RunPod's CPU flavors with their prices per vCPU-hour."""
        url = self.config.catalog_url.rstrip("/") + "/catalog/cpus"
        response = await self.send("GET", url)
        body = response_json(response) if response.status_code == 200 else None
        flavors = body.get("cpus") if isinstance(body, dict) else None
        if not isinstance(flavors, list):
            raise RunPodError(f"RunPod did not list its CPU flavors {_said(response)}")
        return [f for f in flavors if isinstance(f, dict)]


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _offer(config: RunPod, entry: Mapping[str, Any], gpus: int) -> Offer | None:
    """One GPU type as an offer of nodes with ``gpus`` of it, or None if not offered."""
    kind = GPU_TYPES.get(str(entry.get("id")))
    if kind is None:
        return None
    cloud = config.cloud_type  # "secure" or "community"
    if entry.get(f"{cloud}Cloud") is False:
        return None

    def price(field: str) -> float | None:
        value = entry.get(field)
        if _is_number(value) and value > 0:
            return round(float(value) * gpus, 4)
        return None

    most = entry.get("maxGpuCount")
    # A type RunPod gives no maximum for: 8, the most a RunPod machine carries.
    most = most if isinstance(most, int) and most > 0 else 8
    return Offer(
        provider="sky.RunPod()",
        name=str(entry["id"]),
        on_demand_price=price(f"{cloud}Price"),
        spot_price=price(f"{cloud}SpotPrice"),
        # The pod it prices has `gpus` of them; more than a pod can carry is the most it
        # can, so a spec asking for more is refused saying so.
        accelerator=attrs.evolve(kind, count=min(gpus, most)),
    )


def cpu_vcpu_counts(least: int, most: int) -> list[int]:
    """The vCPU counts a CPU pod of a flavor allowing ``least`` to ``most`` may have: the
    powers of two in that range (RunPod's catalog documents its vCPU counts as powers of
    two; a count between two is not offered, so a spec asking for one gets the next)."""
    counts: list[int] = []
    count = 1
    while count <= most:
        if count >= least:
            counts.append(count)
        count *= 2
    return counts


def _cpu_offers(config: RunPod, entry: Mapping[str, Any]) -> list[Offer]:
    """One CPU flavor as offers, one per vCPU count it allows; none if it is not offered
    (secure cloud only: RunPod prices its CPU pods nowhere else), or not priced or sized."""
    flavor = entry.get("id")
    vcpu = entry.get("vcpu")
    price = entry.get("price")
    ram = entry.get("ramGbPerVcpu")
    per_vcpu = price.get("securePerVcpu") if isinstance(price, dict) else None
    least = vcpu.get("min") if isinstance(vcpu, dict) else None
    most = vcpu.get("max") if isinstance(vcpu, dict) else None
    if (
        config.cloud_type != "secure"
        or not isinstance(flavor, str)
        or not flavor
        or not (_is_number(per_vcpu) and per_vcpu > 0)
        or not (_is_number(ram) and ram > 0)
        or not (isinstance(least, int) and isinstance(most, int))
    ):
        return []
    return [
        Offer(
            provider="sky.RunPod()",
            # RunPod's own name for such a pod: flavor, vCPUs, GB of RAM (cpu3c-8-16).
            name=f"{flavor}-{count}-{count * ram:g}",
            vcpus=count,
            memory_gb=count * ram,
            architecture=_CPU_ARCHITECTURE,
            on_demand_price=round(per_vcpu * count, 4),
            ref=flavor,
        )
        for count in cpu_vcpu_counts(least, most)
    ]


async def catalog(
    config: RunPod,
    *,
    gpus: float,
    accelerator: Accelerator | None = None,
    everything: bool = False,
) -> Catalog:
    """RunPod's pods as offers: for a spec asking for an ``accelerator``, its GPU types
    priced per node of ``gpus`` GPUs; for one asking for none, its CPU pods (each flavor
    at each vCPU count it allows); with ``everything`` and no accelerator, both.

    A CPU offer carries no accelerator, which a spec's ``accelerator`` does not judge
    (``_offers``): GPU and CPU offers are never listed together for a spec.

    Raises:
        ValueError: No API key is set (a setting to fix, not a spec to skip).
    """
    config.resolved_api_key()  # before any request: the fix is the user's
    want_gpus = accelerator is not None or everything
    want_cpus = accelerator is None
    api = _API(config)
    offers: list[Offer] = []
    try:
        if want_gpus:
            types = await api.gpu_types()
            listed = (_offer(config, entry, whole_gpus(gpus)) for entry in types)
            offers += [o for o in listed if o is not None]
        if want_cpus:
            cpus = [o for entry in await api.cpu_types() for o in _cpu_offers(config, entry)]
            # The biggest first: a spec none can meet is told first what the most is.
            offers += sorted(cpus, key=lambda o: (-(o.vcpus or 0), -(o.memory_gb or 0)))
    except RunPodError as exc:
        return Catalog(error=str(exc))
    finally:
        await api.aclose()
    return Catalog(offers=tuple(offers))


@attrs.frozen
class _Pod:
    """What the REST API says of one pod."""

    id: str
    status: str  # desiredStatus: RUNNING, EXITED, TERMINATED
    public_ip: str | None
    ssh_port: int | None
    cost_per_hour: float | None  # what RunPod bills for it (costPerHr), when it says


def _pod(body: object) -> _Pod:
    if not isinstance(body, dict) or not isinstance(body.get("id"), str):
        raise RunPodError(f"RunPod answered with no pod: {str(body)[:300]}")
    mappings = body.get("portMappings")
    port = mappings.get("22") if isinstance(mappings, dict) else None
    ip = body.get("publicIp")
    cost = body.get("costPerHr")
    return _Pod(
        id=body["id"],
        status=str(body.get("desiredStatus", "")),
        public_ip=ip if isinstance(ip, str) and ip else None,
        ssh_port=port if isinstance(port, int) and not isinstance(port, bool) else None,
        cost_per_hour=float(cost) if _is_number(cost) and cost > 0 else None,
    )


class RunPodCluster:
    """One pool's pods on RunPod (see the module)."""

    name = "runpod"
    # Pods of one account do not reach each other's private addresses: the collections
    # store runs in the client.
    peers_reachable = False

    def __init__(
        self,
        config: RunPod,
        *,
        job_id: str,
        client_key: _transport.SSHKey,
        choice: Choice,
        python_version: str = PYTHON_VERSION,
    ) -> None:
        accelerator = choice.spec.accelerator
        self.config = config
        self.job_id = job_id
        self._choice = choice
        # A GPU pod: its count, and the spec's GPU types, cheapest first. A CPU pod: its
        # vCPU count, and the flavors that give it and meet the spec, cheapest first.
        self._gpus = whole_gpus(accelerator.count) if accelerator is not None else 0
        self._vcpus = int(choice.offer.vcpus or 0) if accelerator is None else 0
        offers = (choice.offer, *choice.also)
        self._gpu_types = [o.name for o in offers] if accelerator is not None else []
        self._cpu_flavors = list(
            dict.fromkeys(
                str(o.ref) for o in offers if accelerator is None and o.vcpus == self._vcpus
            )
        )
        self._image = config.image_reference(python_version)
        self._public_key = _transport.public_openssh(client_key)
        self._login = _transport.Login(keys=(client_key,), tried="the pool's own key")
        self._api = _API(config)
        self._serial = 0
        self._live: set[str] = set()  # pod ids created and not yet confirmed gone
        self._placement_lock = trio.Lock()
        self._placement: dict[str, Any] | None = None  # where pods go: asked once per pool

    @property
    def _prefix(self) -> str:
        return f"skyward-{self.job_id}-"

    @property
    def _what(self) -> str:
        """The pod this cluster creates, in words (``2 x NVIDIA L4``, ``CPU pod of 8
        vCPUs (cpu3c or cpu5c)``)."""
        if self._gpu_types:
            return f"{self._gpus} x {' or '.join(self._gpu_types)}"
        return f"CPU pod of {self._vcpus} vCPUs ({' or '.join(self._cpu_flavors)})"

    def _body(self, name: str) -> dict[str, Any]:
        common = {
            "name": name,
            "imageName": self._image,
            "ports": ["22/tcp"],
            "env": {"PUBLIC_KEY": self._public_key},
            "containerDiskInGb": self.config.container_disk_gb,
            "supportPublicIp": True,
        }
        if not self._gpu_types:
            # RunPod gives the pod the flavor's RAM per vCPU; there is nothing to ask of
            # memory. No interruptible: CPU pods have no spot price (check_spec refuses
            # allocation="spot" for them), and secure cloud only (cloud_type="community"
            # is refused likewise).
            return common | {
                "computeType": "CPU",
                # The chosen flavor first, then the spec's others at this vCPU count,
                # cheapest first, tried in that order ("custom"), not by availability.
                "cpuFlavorIds": self._cpu_flavors,
                "cpuFlavorPriority": "custom",
                "vcpuCount": self._vcpus,
                "cloudType": "SECURE",
            }
        return common | {
            # The chosen type first, then the spec's other types, cheapest first: RunPod
            # takes the first with capacity left.
            "gpuTypeIds": self._gpu_types,
            "gpuCount": self._gpus,
            "cloudType": self.config.cloud_type.upper(),
            "interruptible": self._choice.spot,
        }

    async def _placed(self) -> dict[str, Any]:
        """The create's data centres and network volume (RunPod(data_center_ids=...,
        network_volume_id=...)): the volume is looked up once per pool, and pods go to its
        data centre."""
        config = self.config
        async with self._placement_lock:
            if self._placement is None:
                placement: dict[str, Any] = {}
                if config.data_center_ids is not None:
                    # In the order given: "custom" tries them so, not by availability.
                    placement["dataCenterIds"] = list(config.data_center_ids)
                    placement["dataCenterPriority"] = "custom"
                if config.network_volume_id is not None:
                    home = await self._volume_data_center(config.network_volume_id)
                    placement |= {
                        "networkVolumeId": config.network_volume_id,
                        "volumeMountPath": config.volume_mount_path,
                        "dataCenterIds": [home],
                    }
                self._placement = placement
            return self._placement

    async def _volume_data_center(self, volume_id: str) -> str:
        """The data centre of network volume ``volume_id``, which pods must run in."""
        response = await self._api.request("GET", f"/networkvolumes/{volume_id}")
        home = response_object(response).get("dataCenterId")
        if response.status_code == 404:
            raise RunPodError(
                f"RunPod has no network volume {volume_id!r} in this account; check "
                "RunPod(network_volume_id=...) against the console's Storage page"
            )
        if response.status_code != 200 or not isinstance(home, str) or not home:
            raise RunPodError(
                f"RunPod did not say where network volume {volume_id!r} is {_said(response)}"
            )
        allowed = self.config.data_center_ids
        if allowed is not None and home not in allowed:
            raise RunPodError(
                f"RunPod's network volume {volume_id!r} is in data centre {home}, not one of "
                f"data_center_ids={list(allowed)}: a pod mounts a volume only in the volume's "
                f"data centre. Add {home!r} to data_center_ids, or pass None"
            )
        return home

    async def provision(self, node: int) -> Instance:
        """Create a pod, wait for its SSH port, pin its host key and learn its home."""
        placement = await self._placed()
        self._serial += 1
        name = f"{self._prefix}{node}-{self._serial}"
        body = self._body(name) | placement
        response = await self._api.request("POST", "/pods", json=body)
        if response.status_code not in (200, 201):
            raise RunPodError(f"RunPod did not create a pod of {self._what} {_said(response)}")
        pod = _pod(response_json(response))
        self._live.add(pod.id)
        async with ended_on_failure(lambda: self._delete(pod.id), RunPodError):
            self._check_price(pod)
            host, port = await self._address(pod)
            host_key = await first_host_key(host, port)
            workdir = await remote_workdir(
                host,
                port,
                user="root",
                login=self._login,
                host_key=host_key,
                name=f"{self.job_id}-{node}",
            )
        return Instance(
            id=pod.id,
            node=node,
            host=host,
            port=port,
            username="root",
            host_key=host_key,
            private_ip=host,
            public_ip=host,
            python=None,
            workdir=workdir,
            hourly_price=pod.cost_per_hour or self._choice.hourly_price,
            on_lease_expiry=_SELF_DELETE,  # login: None, the pool's own key (PUBLIC_KEY)
        )

    def _check_price(self, pod: _Pod) -> None:
        """Refuse a pod RunPod bills above ``Spec.max_hourly_cost`` (its prices moved since
        they were listed): it is deleted before it runs anything."""
        cap = self._choice.spec.max_hourly_cost
        if cap is not None and pod.cost_per_hour is not None and pod.cost_per_hour > cap:
            raise RunPodError(
                f"RunPod bills pod {pod.id} ${pod.cost_per_hour:g}/h, over "
                f"max_hourly_cost={cap:g} (its price rose since it was listed); the pod was "
                "deleted. Raise max_hourly_cost or try again later"
            )

    async def _get(self, pod_id: str) -> _Pod | None:
        """The pod as RunPod sees it now; None once it is gone."""
        response = await self._api.request("GET", f"/pods/{pod_id}")
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise RunPodError(f"RunPod did not say how pod {pod_id} is {_said(response)}")
        return _pod(response_json(response))

    async def _address(self, pod: _Pod) -> tuple[str, int]:
        """Poll until the pod has a public IP and port 22 mapped (the caller's deadline)."""
        delays = poll_delays()
        while True:
            if pod.status in ("EXITED", "TERMINATED"):
                raise RunPodError(f"pod {pod.id} stopped before it came up ({pod.status})")
            if pod.public_ip is not None and pod.ssh_port is not None:
                return pod.public_ip, pod.ssh_port
            await trio.sleep(next(delays))
            now = await self._get(pod.id)
            if now is None:
                raise RunPodError(f"pod {pod.id} was deleted before it came up")
            pod = now

    async def alive(self, instance: Instance) -> bool:
        """Whether RunPod still runs the pod (False once it is interrupted or deleted)."""
        try:
            pod = await self._get(instance.id)
        except RunPodError:
            return True  # the API did not answer: the reconnection finds out
        return pod is not None and pod.status == "RUNNING"

    async def terminate(self, instance: Instance) -> None:
        """Delete the pod and confirm RunPod no longer lists it; raise otherwise."""
        await self._delete(instance.id)

    async def _delete(self, pod_id: str) -> None:
        response = await self._api.request("DELETE", f"/pods/{pod_id}")
        if response.status_code not in (200, 202, 204, 404):
            raise RunPodError(
                f"RunPod did not delete pod {pod_id} {_said(response)}; "
                f"delete it in RunPod's console"
            )
        pod = await self._get(pod_id)
        if pod is not None and pod.status != "TERMINATED":
            raise RunPodError(
                f"RunPod still lists pod {pod_id} as {pod.status} after deleting it; "
                "delete it in RunPod's console"
            )
        self._live.discard(pod_id)

    async def aclose(self) -> None:
        """Delete every pod of this job still there, those never handed out included (a
        create cut short before RunPod answered); raise naming any left."""
        failed: list[str] = []
        try:
            with trio.move_on_after(60) as scope:
                unlisted = await self._find_strays()
                if unlisted is not None:
                    failed.append(unlisted)
                for pod_id in list(self._live):
                    try:
                        await self._delete(pod_id)
                    except RunPodError as exc:
                        failed.append(f"{pod_id} ({exc})")
            if scope.cancelled_caught:
                failed.append("no answer from RunPod within 60 s")
        finally:
            await self._api.aclose()
        if failed:
            raise RunPodError(
                "sky.RunPod could not confirm every pod of this pool deleted; these may "
                f"still bill: {'; '.join(failed)}. Check RunPod's console for pods named "
                f"{self._prefix}*"
            )

    async def _find_strays(self) -> str | None:
        """Add the job's pods RunPod lists to those to delete; or say why it could not
        list them (a pod created but never answered for may then be left)."""
        try:
            listed = await self._api.request("GET", "/pods")
        except RunPodError as exc:
            return f"the job's pods could not be listed: {exc}"
        pods = response_json(listed) if listed.status_code == 200 else None
        if not isinstance(pods, list):
            return f"the job's pods could not be listed {_said(listed)}"
        for body in pods:
            if isinstance(body, dict) and str(body.get("name", "")).startswith(self._prefix):
                self._live.add(str(body.get("id")))
        return None

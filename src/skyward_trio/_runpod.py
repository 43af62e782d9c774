"""``sky.RunPod``: GPU pods rented through RunPod's public APIs.

RunPod's GraphQL API lists the GPU types with their prices per GPU-hour (secure or
community cloud; on demand, or spot as an "interruptible" pod); its REST API creates,
reads and deletes pods. Each node is one pod: the client creates it with the pool's
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

import math
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
    first_host_key,
    poll_delays,
    remote_workdir,
    response_json,
)
from ._version import PYTHON_VERSION
from .accelerators import Accelerator

__all__ = ["GPU_TYPES", "RunPodCluster", "RunPodError", "catalog"]

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


class RunPodError(RuntimeError):
    """RunPod's API refused a request or could not be reached; the message quotes it."""


def _describe_failure(response: httpx.Response) -> str:
    """RunPod's own words for a failed request (its JSON ``error``, else the body)."""
    text = response.text.strip()
    body = response_json(response)
    if isinstance(body, dict):
        if isinstance(body.get("error"), str):
            text = body["error"]
        elif isinstance(body.get("errors"), list) and body["errors"]:
            text = "; ".join(
                str(e.get("message", e) if isinstance(e, dict) else e) for e in body["errors"]
            )
    return text[:500] or f"HTTP {response.status_code}"


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
            raise RunPodError(
                f"RunPod did not list its GPU types ({response.status_code}: "
                f"{_describe_failure(response)})"
            )
        return types


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


def _whole_gpus(count: float) -> int:
    """GPUs per pod: RunPod rents whole ones (a fractional count is refused before)."""
    return max(1, math.ceil(count))


async def catalog(config: RunPod, *, gpus: float) -> Catalog:
    """RunPod's GPU types as offers, priced per node of ``gpus`` GPUs.

    Raises:
        ValueError: No API key is set (a setting to fix, not a spec to skip).
    """
    config.resolved_api_key()  # before any request: the fix is the user's
    api = _API(config)
    try:
        types = await api.gpu_types()
    except RunPodError as exc:
        return Catalog(error=str(exc))
    finally:
        await api.aclose()
    offers = (_offer(config, entry, _whole_gpus(gpus)) for entry in types)
    return Catalog(offers=tuple(o for o in offers if o is not None))


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
        assert accelerator is not None  # check_spec refuses a RunPod spec without one
        self.config = config
        self.job_id = job_id
        self._choice = choice
        self._gpus = _whole_gpus(accelerator.count)
        self._gpu_types = [offer.name for offer in (choice.offer, *choice.also)]
        self._image = config.image_reference(python_version)
        self._public_key = _transport.public_openssh(client_key)
        self._login = _transport.Login(keys=(client_key,), tried="the pool's own key")
        self._api = _API(config)
        self._serial = 0
        self._live: set[str] = set()  # pod ids created and not yet confirmed gone

    @property
    def _prefix(self) -> str:
        return f"skyward-{self.job_id}-"

    def _body(self, name: str) -> dict[str, Any]:
        return {
            "name": name,
            "imageName": self._image,
            # The chosen type first, then the spec's other types, cheapest first: RunPod
            # takes the first with capacity left.
            "gpuTypeIds": self._gpu_types,
            "gpuCount": self._gpus,
            "cloudType": self.config.cloud_type.upper(),
            "interruptible": self._choice.spot,
            "ports": ["22/tcp"],
            "env": {"PUBLIC_KEY": self._public_key},
            "containerDiskInGb": self.config.container_disk_gb,
            "supportPublicIp": True,
        }

    async def provision(self, node: int) -> Instance:
        """Create a pod, wait for its SSH port, pin its host key and learn its home."""
        self._serial += 1
        name = f"{self._prefix}{node}-{self._serial}"
        response = await self._api.request("POST", "/pods", json=self._body(name))
        if response.status_code not in (200, 201):
            raise RunPodError(
                f"RunPod did not create a pod of {self._gpus} x "
                f"{' or '.join(self._gpu_types)} ({response.status_code}: "
                f"{_describe_failure(response)})"
            )
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
            raise RunPodError(
                f"RunPod did not say how pod {pod_id} is ({response.status_code}: "
                f"{_describe_failure(response)})"
            )
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
                f"RunPod did not delete pod {pod_id} ({response.status_code}: "
                f"{_describe_failure(response)}); delete it in RunPod's console"
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
            return f"the job's pods could not be listed ({listed.status_code}: " + (
                f"{_describe_failure(listed)})"
            )
        for body in pods:
            if isinstance(body, dict) and str(body.get("name", "")).startswith(self._prefix):
                self._live.add(str(body.get("id")))
        return None

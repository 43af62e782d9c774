"""Skyward's trio-native core: ``async with skyward_trio.Compute(...) as pool``.

Layers, lowest first; a module imports only its own layer or lower (``tests/unit/test_layers.py``
enforces it):

1. records and pure decisions: ``_errors``, ``_version``, ``_model``, ``accelerators``, ``time``,
   ``metrics`` (the collectors of ``Image(metrics=...)``), ``_info``, ``_runtime``, ``_shard``,
   ``_function``, ``_bootstrap``, ``_volumes`` (the s3fs mounts of ``sky.Volume``), ``_capture``,
   ``_output``, ``_autoscale``, ``_cost``, ``_pids`` (whether a process runs),
   ``_heartbeat`` (when the other end of a session went silent), ``_offers`` (offers
   against specs, and which spec to try first), ``containers`` (image references for
   ``sky.Container`` and the clouds), ``_plugin`` (the ``Plugin`` record and its client
   hooks' calls), ``plugins`` (the built-in plugins), ``storage`` (the S3-compatible
   client; httpx is imported when one opens)
2. wire: ``_wire`` (sans-I/O framing), ``_serial`` (cloudpickle + lz4 payloads)
3. the worker and the collections store: ``_execute``, ``_procpool``, ``_procchild``, ``worker``,
   ``_collections`` (the proxies and a node's connection to the store), ``_shared`` (the
   ``sky.dict`` ... ``sky.lock`` factories), ``_eventual`` (``consistency="eventual"``),
   ``_store`` (the store service), ``_sampler`` (a worker's metric sampler), ``_notices``
   (a worker's watch for its machine's spot interruption notice), ``_pluginrun``
   (the plugins' hooks on a node) (only trio +
   layers 1-2: imported on remote machines)
4. transport and providers: ``_transport`` (the one asyncssh module), ``_aio``
   (trio-asyncio, imported so that it leaves the process's own asyncio alone), ``_sshtrim``,
   ``_providers`` (``Local`` and ``SSH``), ``_container`` (``sky.Container``), ``_runpod``
   (``sky.RunPod``), ``_aws`` (``sky.AWS``: boto3, imported when a pool uses it),
   ``_vastai`` (``sky.VastAI``), ``_rented`` (what the clouds below share),
   ``_lambda`` (``sky.Lambda``), ``_hyperstack``
   (``sky.Hyperstack``), ``_vultr`` (``sky.Vultr``), ``_verda`` (``sky.Verda``),
   ``_scaleway`` (``sky.Scaleway``),
   ``_novita`` (``sky.Novita``),
   ``_gcp`` (``sky.GCP``),
   ``_tensordock`` (``sky.TensorDock``),
   ``_massedcompute`` (``sky.MassedCompute``),
   ``_jarvislabs`` (``sky.JarvisLabs``),
   ``_market`` (``offers()``: the providers' listings, cached), ``_source`` (where remote
   nodes get Skyward), ``_localnode`` (a Local node's SSH server process, forked by the
   fork server it also runs), ``_nodeforks`` (the client's side of that fork server),
   ``_connection``,
   ``_storelink`` (the client's link to the store)
5. config and supervision: ``config`` (``skyward.toml``: named pools); ``_checks`` (what
   ``Compute`` refuses before provisioning); ``_pool`` (``Pool``,
   scheduler); ``_supervisor`` (brings nodes up, replaces lost ones, tears down);
   ``_compute`` (``Compute``: opens and closes a pool); ``_session`` (``Session``: pools
   opened and closed at any point); ``_reaper`` (ends a dead client's machines on the
   clouds whose machines cannot end themselves); ``_health`` (health checks);
   ``testing`` (the fault kit); ``_eventbus`` (events); ``_console`` (the consoles)
6. the pool server: ``_server`` (``sky server start``: holds pools by name, relays
   clients' calls), ``_serverwire`` (its frames, event lines and state file, which its
   clients share without importing the server), ``_client`` (``Client``: a pool the server
   holds, from trio; what both faces' clients share)

The package imports nothing of its own but ``_version`` until a name is first used
(``__getattr__`` below): a worker (``python -m skyward_trio.worker``) loads only the modules
it runs on, not the client's records and decisions, and a function that refers to
``skyward_trio`` (or ``skyward``) loads what it uses and never asyncssh.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
    from collections.abc import Mapping

    from . import accelerators, config, containers, metrics, plugins, storage, time
    from ._client import Client
    from ._compute import Compute
    from ._errors import (
        BudgetExceededError,
        ConfigError,
        ConnectionLostError,
        NoActivePoolError,
        NoOfferError,
        PoolClosedError,
        ProvisionError,
        RemoteError,
        SerializationError,
        ServerError,
        SkywardError,
        TaskTimeoutError,
        TeardownError,
        VersionMismatchError,
        VersionMismatchWarning,
    )
    from ._eventbus import EventStream
    from ._events import (
        BootstrapProgress,
        ClusterDestroyed,
        ClusterProvisioned,
        ClusterReady,
        ClusterRequested,
        ClusterScaled,
        Error,
        Event,
        InstanceAtRisk,
        InstanceBootstrapped,
        InstanceDestroyed,
        InstanceInterrupting,
        InstancePreempted,
        InstanceProvisioned,
        InstanceReplaced,
        Log,
        Metric,
        TaskCompleted,
        TaskStarted,
        WorkSubmitted,
    )
    from ._function import Function, PendingFunction, PendingFunctionGroup, function, gather
    from ._info import AcceleratorInfo, InstanceInfo, NetworkInfo, PeerInfo
    from ._market import offers
    from ._model import (
        AWS,
        DEFAULT_IMAGE,
        GCP,
        SSH,
        Container,
        HealthChecker,
        Hyperstack,
        Image,
        JarvisLabs,
        Lambda,
        Local,
        LogConfig,
        MassedCompute,
        Nodes,
        Novita,
        Options,
        PipIndex,
        ProviderConfig,
        RunPod,
        Scaleway,
        Spec,
        SSHHost,
        TensorDock,
        VastAI,
        Verda,
        Volume,
        Vultr,
        Worker,
    )
    from ._offers import Offer, Offers
    from ._output import CallbackWriter, redirect_output, silent, stderr, stdout
    from ._pool import CancelledCallError, Future, ItemStream, Pool, ResultStream
    from ._procpool import ChildDied
    from ._runtime import instance_info, is_head
    from ._session import Session
    from ._shard import shard
    from ._shared import barrier, counter, dict, lock, queue, set
    from .containers import DockerImage

__all__ = [
    "AWS",
    "DEFAULT_IMAGE",
    "GCP",
    "SSH",
    "AcceleratorInfo",
    "BootstrapProgress",
    "BudgetExceededError",
    "CallbackWriter",
    "CancelledCallError",
    "ChildDied",
    "Client",
    "ClusterDestroyed",
    "ClusterProvisioned",
    "ClusterReady",
    "ClusterRequested",
    "ClusterScaled",
    "Compute",
    "ConfigError",
    "ConnectionLostError",
    "Container",
    "DockerImage",
    "Error",
    "Event",
    "EventStream",
    "Function",
    "Future",
    "HealthChecker",
    "Hyperstack",
    "Image",
    "InstanceAtRisk",
    "InstanceBootstrapped",
    "InstanceDestroyed",
    "InstanceInfo",
    "InstanceInterrupting",
    "InstancePreempted",
    "InstanceProvisioned",
    "InstanceReplaced",
    "ItemStream",
    "JarvisLabs",
    "Lambda",
    "Local",
    "Log",
    "LogConfig",
    "MassedCompute",
    "Metric",
    "NetworkInfo",
    "NoActivePoolError",
    "NoOfferError",
    "Nodes",
    "Novita",
    "Offer",
    "Offers",
    "Options",
    "PeerInfo",
    "PendingFunction",
    "PendingFunctionGroup",
    "PipIndex",
    "Pool",
    "PoolClosedError",
    "ProviderConfig",
    "ProvisionError",
    "RemoteError",
    "ResultStream",
    "RunPod",
    "SSHHost",
    "Scaleway",
    "SerializationError",
    "ServerError",
    "Session",
    "SkywardError",
    "Spec",
    "TaskCompleted",
    "TaskStarted",
    "TaskTimeoutError",
    "TeardownError",
    "TensorDock",
    "VastAI",
    "Verda",
    "VersionMismatchError",
    "VersionMismatchWarning",
    "Volume",
    "Vultr",
    "WorkSubmitted",
    "Worker",
    "__version__",
    "accelerators",
    "barrier",
    "config",
    "containers",
    "counter",
    "dict",
    "function",
    "gather",
    "instance_info",
    "is_head",
    "lock",
    "metrics",
    "offers",
    "plugins",
    "queue",
    "redirect_output",
    "set",
    "shard",
    "silent",
    "stderr",
    "stdout",
    "storage",
    "time",
]

#: The module each public name comes from, imported when the name is first used (above).
_HOMES: Mapping[str, tuple[str, ...]] = {
    "_errors": (
        "BudgetExceededError",
        "ConfigError",
        "ConnectionLostError",
        "NoActivePoolError",
        "NoOfferError",
        "PoolClosedError",
        "ProvisionError",
        "RemoteError",
        "SerializationError",
        "ServerError",
        "SkywardError",
        "TaskTimeoutError",
        "TeardownError",
        "VersionMismatchError",
        "VersionMismatchWarning",
    ),
    "_events": (
        "BootstrapProgress",
        "ClusterDestroyed",
        "ClusterProvisioned",
        "ClusterReady",
        "ClusterRequested",
        "ClusterScaled",
        "Error",
        "Event",
        "InstanceAtRisk",
        "InstanceBootstrapped",
        "InstanceDestroyed",
        "InstanceInterrupting",
        "InstancePreempted",
        "InstanceProvisioned",
        "InstanceReplaced",
        "Log",
        "Metric",
        "TaskCompleted",
        "TaskStarted",
        "WorkSubmitted",
    ),
    "_function": ("Function", "PendingFunction", "PendingFunctionGroup", "function", "gather"),
    "_info": ("AcceleratorInfo", "InstanceInfo", "NetworkInfo", "PeerInfo"),
    "_model": (
        "AWS",
        "DEFAULT_IMAGE",
        "GCP",
        "SSH",
        "Container",
        "HealthChecker",
        "Hyperstack",
        "Image",
        "JarvisLabs",
        "Lambda",
        "Local",
        "LogConfig",
        "MassedCompute",
        "Nodes",
        "Novita",
        "Options",
        "PipIndex",
        "ProviderConfig",
        "RunPod",
        "Scaleway",
        "Spec",
        "SSHHost",
        "TensorDock",
        "VastAI",
        "Verda",
        "Volume",
        "Vultr",
        "Worker",
    ),
    "_offers": ("Offer", "Offers"),
    "_output": ("CallbackWriter", "redirect_output", "silent", "stderr", "stdout"),
    "_runtime": ("instance_info", "is_head"),
    "_shard": ("shard",),
    "_shared": ("barrier", "counter", "dict", "lock", "queue", "set"),
    "containers": ("DockerImage",),
    "_pool": ("CancelledCallError", "Future", "ItemStream", "Pool", "ResultStream"),
    "_compute": ("Compute",),
    "_session": ("Session",),
    "_client": ("Client",),
    "_eventbus": ("EventStream",),
    "_market": ("offers",),
    "_procpool": ("ChildDied",),
}
_HOME = {name: module for module, names in _HOMES.items() for name in names}
_SUBMODULES = frozenset(
    {"accelerators", "config", "containers", "metrics", "plugins", "storage", "time"}
)


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module 'skyward_trio' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})

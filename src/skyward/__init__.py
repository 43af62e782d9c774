"""Skyward: run ordinary Python functions on rented machines, over SSH.

    import skyward as sky

    @sky.function
    def work(x):
        return x * 2

    with sky.Compute(nodes=2) as pool:       # sky.Local() when no provider is given
        print(work(21) >> pool)              # 42, on one node
        print(work(1) @ pool)                # [2, 2], on every node

This is the sync face: calls block and return values. ``skyward_trio`` is the same API for
trio programs. The pool machinery is imported on first use, so a worker running a function
that refers to ``sky`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from skyward_trio import (
    AWS,
    DEFAULT_IMAGE,
    GCP,
    SSH,
    AcceleratorInfo,
    BootstrapProgress,
    BudgetExceededError,
    CallbackWriter,
    ClusterDestroyed,
    ClusterProvisioned,
    ClusterReady,
    ClusterRequested,
    ClusterScaled,
    ConfigError,
    ConnectionLostError,
    Container,
    DockerImage,
    Error,
    Event,
    Function,
    HealthChecker,
    Hyperstack,
    Image,
    InstanceAtRisk,
    InstanceBootstrapped,
    InstanceDestroyed,
    InstanceInfo,
    InstanceInterrupting,
    InstancePreempted,
    InstanceProvisioned,
    InstanceReplaced,
    JarvisLabs,
    Lambda,
    Local,
    Log,
    LogConfig,
    MassedCompute,
    Metric,
    NetworkInfo,
    NoActivePoolError,
    Nodes,
    NoOfferError,
    Novita,
    Offer,
    Offers,
    Options,
    PeerInfo,
    PendingFunction,
    PendingFunctionGroup,
    PipIndex,
    PoolClosedError,
    ProviderConfig,
    ProvisionError,
    RemoteError,
    RunPod,
    Scaleway,
    SerializationError,
    ServerError,
    SkywardError,
    Spec,
    SSHHost,
    TaskCompleted,
    TaskStarted,
    TaskTimeoutError,
    TeardownError,
    TensorDock,
    VastAI,
    Verda,
    VersionMismatchError,
    VersionMismatchWarning,
    Volume,
    Vultr,
    Worker,
    WorkSubmitted,
    __version__,
    accelerators,
    barrier,
    containers,
    counter,
    dict,
    function,
    gather,
    instance_info,
    is_head,
    lock,
    metrics,
    queue,
    redirect_output,
    set,
    shard,
    silent,
    stderr,
    stdout,
    time,
)

from . import plugins, storage
from ._offers import offers

if TYPE_CHECKING:
    from skyward_trio import ChildDied, config

    from ._client import Client
    from ._session import Session
    from ._sync import Compute, Pool

__all__ = [
    "AWS",
    "DEFAULT_IMAGE",
    "GCP",
    "SSH",
    "AcceleratorInfo",
    "BootstrapProgress",
    "BudgetExceededError",
    "CallbackWriter",
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
    "Function",
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


def __getattr__(name: str) -> Any:
    if name == "testing":
        import skyward_trio.testing

        return skyward_trio.testing
    if name == "config":
        import skyward_trio.config

        return skyward_trio.config
    if name == "ChildDied":
        import skyward_trio

        return skyward_trio.ChildDied
    if name == "Client":
        from ._client import Client

        return Client
    if name == "Session":
        from ._session import Session

        return Session
    if name in ("Compute", "Pool"):
        from . import _sync

        return getattr(_sync, name)
    raise AttributeError(f"module 'skyward' has no attribute {name!r}")

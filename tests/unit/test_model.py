"""Model records: defaults, conversions, immutability, and the errors bad input gets."""

from __future__ import annotations

import pathlib
import pickle
import subprocess
import sys
import textwrap

import attrs
import pytest

from skyward_trio import accelerators
from skyward_trio import metrics as sky_metrics
from skyward_trio._model import (
    ALLOCATION_STRATEGIES,
    ARCHITECTURES,
    CONSOLE_MODES,
    DEFAULT_IMAGE,
    EXECUTOR_KINDS,
    LOG_LEVELS,
    SELECTION_STRATEGIES,
    SKYWARD_SOURCES,
    HealthChecker,
    Image,
    Local,
    LogConfig,
    Nodes,
    Options,
    PipIndex,
    ProviderConfig,
    Spec,
    Volume,
    Worker,
    resolve_compute_args,
    to_nodes,
)
from skyward_trio._plugin import Plugin


@attrs.frozen(kw_only=True)
class FakeCloud(ProviderConfig):
    region: str = "us-east-1"


def spec(**overrides: object) -> Spec:
    fields: dict[str, object] = {"provider": Local(), **overrides}
    return Spec(**fields)  # type: ignore[arg-type]


# --- literal choices ----------------------------------------------------------------------------


def test_choice_tuples_match_the_reference() -> None:
    assert ALLOCATION_STRATEGIES == ("spot-if-available", "spot", "on-demand", "cheapest")
    assert SELECTION_STRATEGIES == ("cheapest", "first")
    assert EXECUTOR_KINDS == ("auto", "thread", "process")
    assert CONSOLE_MODES == ("rich", "minimal", "log", "silent")
    assert ARCHITECTURES == ("x86_64", "arm64")
    assert LOG_LEVELS == ("TRACE", "DEBUG", "INFO", "WARNING", "ERROR")
    assert SKYWARD_SOURCES == ("auto", "local", "github", "pypi")


# --- providers ----------------------------------------------------------------------------------


def test_local_is_a_frozen_provider_config() -> None:
    assert isinstance(Local(), ProviderConfig)
    assert Local() == Local()
    assert hash(Local()) == hash(Local())
    assert attrs.fields(Local) == ()
    assert "127.0.0.x" in (Local.__doc__ or "")
    cloud = FakeCloud(region="eu-west-1")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        cloud.region = "x"  # type: ignore[misc]


# --- nodes --------------------------------------------------------------------------------------


def test_nodes_defaults_and_properties() -> None:
    fixed = Nodes(desired=4)
    assert (fixed.desired, fixed.max, fixed.min) == (4, None, None)
    assert (fixed.ready_at, fixed.ceiling, fixed.is_elastic) == (4, 4, False)
    both = Nodes(desired=4, min=2, max=16)
    assert (both.ready_at, both.ceiling, both.is_elastic) == (2, 16, True)
    assert Nodes(desired=8, min=8, max=8).is_elastic is False
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        fixed.desired = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        Nodes(4)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"desired": 0}, ValueError, r"Nodes\(desired=0\): desired must be >= 1"),
        ({"desired": -3}, ValueError, r"desired=-3"),
        (
            {"desired": True},
            TypeError,
            r"Nodes\(desired=True\): desired must be an int >= 1, got bool",
        ),
        ({"desired": 2.0}, TypeError, r"desired must be an int >= 1, got float"),
        ({"desired": "4"}, TypeError, r"got str"),
        (
            {"desired": 4, "min": 5},
            ValueError,
            r"Nodes\(min=5\): min must be between 1 and desired \(4\)",
        ),
        ({"desired": 4, "min": 0}, ValueError, r"Nodes\(min=0\): min must be >= 1"),
        ({"desired": 4, "min": False}, TypeError, r"min must be an int"),
        ({"desired": 4, "max": 3}, ValueError, r"Nodes\(max=3\): max must be >= desired \(4\)"),
        ({"desired": 4, "max": 8.5}, TypeError, r"max must be an int"),
    ],
)
def test_nodes_rejects_bad_counts(kwargs: dict[str, object], error: type, match: str) -> None:
    with pytest.raises(error, match=match) as raised:
        Nodes(**kwargs)  # type: ignore[arg-type]
    assert "Pass" in str(raised.value)


def test_to_nodes_accepts_the_three_forms() -> None:
    assert to_nodes(4) == Nodes(desired=4)
    assert to_nodes((2, 8)) == Nodes(desired=2, max=8)
    assert to_nodes((3, 3)) == Nodes(desired=3, max=3)
    assert to_nodes([2, 8]) == Nodes(desired=2, max=8)  # type: ignore[arg-type]
    partial = Nodes(desired=8, min=4)
    assert to_nodes(partial) is partial


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ((8, 2), r"nodes=\(8, 2\): a \(low, high\) pair needs 1 <= low <= high"),
        ((0, 4), r"nodes=\(0, 4\): a \(low, high\) pair needs 1 <= low <= high"),
        (0, r"nodes=0: a node count must be >= 1"),
        (-1, r"nodes=-1"),
        ("4", r"nodes='4' \(str\) is not a node spec"),
        (True, r"nodes=True \(bool\) is not a node spec"),
        (2.0, r"nodes=2.0 \(float\)"),
        ((1, 2, 3), r"is not a node spec"),
        ((1.0, 2), r"is not a node spec"),
        (None, r"nodes=None"),
    ],
)
def test_to_nodes_rejects_everything_else_and_explains_the_forms(value: object, match: str) -> None:
    with pytest.raises(ValueError, match=match) as raised:
        to_nodes(value)  # type: ignore[arg-type]
    message = str(raised.value)
    if "pair needs" not in message:
        assert "nodes=4" in message
        assert "nodes=(2, 8)" in message
        assert "sky.Nodes(desired=8, min=4)" in message


# --- pip index and image ------------------------------------------------------------------------


def test_pip_index_converts_lists_to_tuples() -> None:
    index = PipIndex(
        url="https://download.pytorch.org/whl/cu121", packages=["torch", "torchvision"]
    )
    assert index.packages == ("torch", "torchvision")
    assert PipIndex(url="https://x").packages == ()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        index.url = "y"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"url": ""}, ValueError, r"PipIndex\(url=''\): url must not be empty"),
        ({"url": 3}, TypeError, r"PipIndex\(url=3\): url must be a str, got int"),
        (
            {"url": "https://x", "packages": "torch"},
            TypeError,
            r"packages must be a list of str, got str",
        ),
        ({"url": "https://x", "packages": [1]}, TypeError, r"packages=1\): packages must be a str"),
    ],
)
def test_pip_index_rejects_bad_input(kwargs: dict[str, object], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        PipIndex(**kwargs)  # type: ignore[arg-type]


def test_image_defaults_match_the_reference() -> None:
    image = Image()
    assert image.python == "auto"
    assert image.pip == ()
    assert image.pip_indexes == ()
    assert image.apt == ()
    assert image.env == {}
    assert image.shell_vars == {}
    assert image.includes == ()
    assert image.excludes == ()
    assert image.skyward_source == "auto"
    assert image.metrics == (sky_metrics.Default(),)
    assert image.bootstrap_timeout == 300
    assert image == DEFAULT_IMAGE


def test_image_converts_sequences_and_freezes_mappings() -> None:
    index = PipIndex(url="https://x", packages=["torch"])
    image = Image(
        python="3.13",
        pip=["torch", "transformers"],
        pip_indexes=[index],
        apt=["git"],
        env={"HF_HOME": "/data/hf"},
        shell_vars={"IP": "hostname -I"},
        includes=["./src", pathlib.Path("lib")],
        excludes=["*.ckpt"],
        metrics=[sky_metrics.CPU(), sky_metrics.Disk("/data")],
        bootstrap_timeout=600.0,
    )
    assert image.pip == ("torch", "transformers")
    assert image.pip_indexes == (index,)
    assert image.apt == ("git",)
    assert image.includes == ("./src", "lib")
    assert image.excludes == ("*.ckpt",)
    assert image.metrics == (sky_metrics.CPU(), sky_metrics.Disk("/data"))
    assert image.bootstrap_timeout == 600
    assert type(image.bootstrap_timeout) is int
    assert image.env["HF_HOME"] == "/data/hf"
    assert image.env == {"HF_HOME": "/data/hf"}
    assert dict(image.shell_vars) == {"IP": "hostname -I"}
    with pytest.raises(TypeError):
        image.env["X"] = "1"  # type: ignore[index]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        image.pip = ()  # type: ignore[misc]


def test_image_env_is_a_copy_not_a_view_of_the_callers_dict() -> None:
    env = {"A": "1"}
    image = Image(env=env)
    env["A"] = "2"
    assert image.env["A"] == "1"


def test_image_is_hashable_and_picklable() -> None:
    one = Image(pip=["torch"], env={"A": "1", "B": "2"})
    two = Image(pip=("torch",), env={"B": "2", "A": "1"})
    assert one == two
    assert hash(one) == hash(two)
    assert {one: "cached"}[two] == "cached"
    assert one != Image(pip=["torch"], env={"A": "1"})
    restored = pickle.loads(pickle.dumps(one))
    assert restored == one
    assert restored.env["B"] == "2"
    assert attrs.evolve(one, apt=["git"]).apt == ("git",)


def test_image_metrics_may_be_disabled() -> None:
    assert Image(metrics=None).metrics is None


def test_image_takes_one_collector_or_the_default_set_as_a_tuple() -> None:
    assert Image(metrics=sky_metrics.GPU()).metrics == (sky_metrics.GPU(),)
    assert Image(metrics=sky_metrics.Default(interval=1)).metrics == (
        sky_metrics.Default(interval=1),
    )


def test_image_resolved_python() -> None:
    assert Image().resolved_python == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert Image(python="3.12").resolved_python == "3.12"


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"python": "3"},
            ValueError,
            r"Image\(python='3'\): python must be 'auto' or a 'X.Y' version",
        ),
        ({"python": "3.12.1"}, ValueError, r"python=\"3.13\""),
        ({"python": 3.12}, ValueError, r"Image\(python=3.12\)"),
        (
            {"pip": "torch"},
            TypeError,
            r"Image\(pip='torch'\): pip must be a list of str, got str.*pip=\[",
        ),
        ({"pip": [""]}, ValueError, r"pip must not be empty"),
        ({"apt": "git"}, TypeError, r"apt must be a list of str"),
        ({"includes": "./src"}, TypeError, r"includes must be a list of str"),
        ({"excludes": 3}, TypeError, r"excludes must be a list of str, got int"),
        (
            {"pip_indexes": ["https://x"]},
            TypeError,
            r"every item of pip_indexes must be a PipIndex",
        ),
        ({"env": ["A=1"]}, TypeError, r"Image\(env=\['A=1'\]\): env must be a dict, got list"),
        ({"env": {"A": 1}}, TypeError, r"the value of 'A' must be a str, got 1 \(int\)"),
        ({"env": {"": "1"}}, ValueError, r"key '' is not a variable name"),
        ({"env": {"A=B": "1"}}, ValueError, r"key 'A=B' is not a variable name"),
        ({"shell_vars": {1: "x"}}, ValueError, r"Image\(shell_vars=...\): key 1"),
        (
            {"skyward_source": "git"},
            ValueError,
            r"skyward_source must be one of 'auto', 'local', 'github', 'pypi'",
        ),
        (
            {"metrics": "all"},
            TypeError,
            r"Image\(metrics='all'\): metrics must be collectors from sky.metrics, got str",
        ),
        ({"metrics": 3}, TypeError, r"got int. .* or None to sample nothing"),
        ({"metrics": [object]}, TypeError, r"every item of metrics must be a collector"),
        (
            {"metrics": [sky_metrics.CPU(), sky_metrics.CPU(interval=1)]},
            ValueError,
            r"Image\(metrics=...\): CPU\(interval=3.0\) and CPU\(interval=1\) both report 'cpu'",
        ),
        ({"bootstrap_timeout": 0}, ValueError, r"bootstrap_timeout must be >= 1"),
        (
            {"bootstrap_timeout": 90.5},
            TypeError,
            r"bootstrap_timeout must be an int >= 1, got float",
        ),
    ],
)
def test_image_rejects_bad_input(kwargs: dict[str, object], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        Image(**kwargs)  # type: ignore[arg-type]


# --- volume -------------------------------------------------------------------------------------


def test_volume_defaults() -> None:
    volume = Volume(bucket="my-data", mount="/data")
    assert (volume.prefix, volume.read_only, volume.storage) == ("", True, None)
    assert Volume(bucket="b", mount="/opt/data").mount == "/opt/data"
    assert Volume(bucket="b", mount="/tmpdata", prefix="x/", read_only=False).read_only is False
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        volume.mount = "/other"  # type: ignore[misc]


@pytest.mark.parametrize(
    "mount",
    [
        "/",
        "/opt",
        "/opt/",
        "//opt",
        "/opt/skyward",
        "/opt/skyward/x",
        "/root",
        "/tmp",
        "/tmp/../root",
    ],
)
def test_volume_refuses_the_workers_own_directories(mount: str) -> None:
    with pytest.raises(ValueError, match=r"mount must not be one of /, /opt, /opt/skyward, /root"):
        Volume(bucket="b", mount=mount)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"bucket": "b", "mount": "data"},
            ValueError,
            r"Volume\(mount='data'\): mount must be an absolute path.*mount=\"/data\"",
        ),
        ({"bucket": "b", "mount": ""}, ValueError, r"mount must not be empty"),
        (
            {"bucket": "", "mount": "/data"},
            ValueError,
            r"Volume\(bucket=''\): bucket must not be empty",
        ),
        ({"bucket": None, "mount": "/data"}, TypeError, r"bucket must be a str, got NoneType"),
        (
            {"bucket": "s3://my-data/train/", "mount": "/data"},
            ValueError,
            r"bucket='s3://my-data/train/'\): bucket is the bucket's bare name, without a "
            r"scheme\. Pass bucket=\"my-data\", prefix=\"train/\" \(the storage=",
        ),
        (
            {"bucket": "my-data/train", "mount": "/data"},
            ValueError,
            r"without a folder\. Pass bucket=\"my-data\", prefix=\"train\"\.$",
        ),
        ({"bucket": "gs://my-data", "mount": "/data"}, ValueError, r"Pass bucket=\"my-data\" \("),
        ({"bucket": "b", "mount": "/data", "prefix": 3}, TypeError, r"prefix must be a str"),
        (
            {"bucket": "b", "mount": "/data", "read_only": "yes"},
            TypeError,
            r"read_only must be True or False",
        ),
    ],
)
def test_volume_rejects_bad_input(kwargs: dict[str, object], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        Volume(**kwargs)  # type: ignore[arg-type]


# --- worker, logging, options -------------------------------------------------------------------


def test_worker_defaults_and_resolved_executor() -> None:
    worker = Worker()
    assert (worker.concurrency, worker.buffer, worker.executor, worker.reuse_processes) == (
        1,
        0,
        "auto",
        True,
    )
    assert worker.resolved_executor == "thread"
    assert Worker(executor="thread").resolved_executor == "thread"
    assert Worker(executor="process").resolved_executor == "process"
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        worker.concurrency = 2  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"concurrency": 0},
            ValueError,
            r"Worker\(concurrency=0\): concurrency must be >= 1.*concurrency=4",
        ),
        ({"concurrency": 1.5}, TypeError, r"concurrency must be an int >= 1, got float"),
        ({"buffer": -1}, ValueError, r"Worker\(buffer=-1\): buffer must be >= 0"),
        (
            {"executor": "gpu"},
            ValueError,
            r"Worker\(executor='gpu'\): executor must be one of 'auto', 'thread', 'process'",
        ),
        ({"executor": "Thread"}, ValueError, r"Pass e.g. executor='thread'"),
        ({"reuse_processes": 1}, TypeError, r"reuse_processes must be True or False"),
    ],
)
def test_worker_rejects_bad_input(kwargs: dict[str, object], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        Worker(**kwargs)  # type: ignore[arg-type]


def test_log_config_defaults() -> None:
    config = LogConfig()
    assert config.level == "INFO"
    assert config.file == "~/.skyward/logs/skyward.log"
    assert config.console is True
    assert config.rotation == "50 MB"
    assert config.retention == 10
    assert LogConfig(file=pathlib.Path("/var/log/sky.log")).file == "/var/log/sky.log"


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"level": "VERBOSE"},
            ValueError,
            r"LogConfig\(level='VERBOSE'\): level must be one of "
            r"'TRACE', 'DEBUG', 'INFO', 'WARNING', 'ERROR'",
        ),
        ({"level": "debug"}, ValueError, r"Pass e.g. level='DEBUG'"),
        ({"file": ""}, ValueError, r"file must not be empty"),
        ({"console": "yes"}, TypeError, r"console must be True or False"),
        ({"rotation": 50}, TypeError, r"rotation must be a str"),
        ({"retention": 0}, ValueError, r"retention must be >= 1"),
    ],
)
def test_log_config_rejects_bad_input(kwargs: dict[str, object], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        LogConfig(**kwargs)  # type: ignore[arg-type]


def test_options_defaults_match_the_reference() -> None:
    options = Options()
    assert options.selection == "cheapest"
    assert options.worker is None
    assert options.provision_timeout is None
    assert options.ssh_timeout is None
    assert options.bootstrap_timeout is None
    assert options.provision_retry_delay is None
    assert options.max_provision_attempts is None
    assert options.ssh_retry_interval is None
    assert options.default_compute_timeout == 300.0
    assert options.autoscale_cooldown == 30.0
    assert options.autoscale_idle_timeout == 60.0
    assert options.reconcile_tick_interval == 15.0
    assert options.shutdown_timeout == 120.0
    assert options.console is True
    assert options.logging is True
    assert options.cluster is None
    assert options.retry_on_interruption == 3
    assert options.health_checker is None
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        options.selection = "first"  # type: ignore[misc]


def test_options_accepts_the_documented_values() -> None:
    options = Options(
        selection="first",
        worker=Worker(concurrency=4),
        provision_timeout=600,
        ssh_timeout=30.5,
        provision_retry_delay=0,
        max_provision_attempts=5,
        autoscale_cooldown=0,
        console="minimal",
        logging=LogConfig(level="DEBUG"),
        cluster=False,
        retry_on_interruption=0,
    )
    assert options.worker == Worker(concurrency=4)
    for mode in CONSOLE_MODES:
        assert Options(console=mode).console == mode
    assert Options(console=False, logging=False).logging is False


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"selection": "best"},
            ValueError,
            r"Options\(selection='best'\): selection must be one of 'cheapest', 'first'",
        ),
        (
            {"worker": 4},
            TypeError,
            r"Options\(worker=4\): worker must be a sky.Worker or None, got int"
            r".*sky.Worker\(concurrency=4\)",
        ),
        (
            {"console": "fancy"},
            ValueError,
            r"Options\(console='fancy'\): console must be True, False or one of "
            r"'rich', 'minimal', 'log', 'silent'",
        ),
        ({"console": 1}, ValueError, r"console must be True, False or one of"),
        (
            {"logging": "debug"},
            TypeError,
            r"Options\(logging='debug'\): logging must be True, False or a sky.LogConfig",
        ),
        (
            {"provision_timeout": 0},
            ValueError,
            r"Options\(provision_timeout=0\): provision_timeout must be > 0 seconds",
        ),
        ({"ssh_timeout": -1}, ValueError, r"ssh_timeout must be > 0 seconds"),
        (
            {"bootstrap_timeout": "10"},
            TypeError,
            r"bootstrap_timeout must be a number of seconds > 0, got str",
        ),
        ({"ssh_retry_interval": float("nan")}, ValueError, r"ssh_retry_interval must be > 0"),
        (
            {"provision_retry_delay": -0.5},
            ValueError,
            r"provision_retry_delay must be >= 0 seconds",
        ),
        ({"max_provision_attempts": 0}, ValueError, r"max_provision_attempts must be >= 1"),
        (
            {"default_compute_timeout": 0},
            ValueError,
            r"default_compute_timeout must be > 0.*sky.time.minutes",
        ),
        (
            {"default_compute_timeout": None},
            TypeError,
            r"default_compute_timeout must be a number of seconds",
        ),
        ({"autoscale_cooldown": -1}, ValueError, r"autoscale_cooldown must be >= 0"),
        ({"autoscale_idle_timeout": 0}, ValueError, r"autoscale_idle_timeout must be > 0"),
        ({"reconcile_tick_interval": True}, TypeError, r"reconcile_tick_interval must be a number"),
        ({"shutdown_timeout": -5}, ValueError, r"shutdown_timeout must be > 0"),
        ({"cluster": "yes"}, TypeError, r"cluster must be True or False"),
        ({"retry_on_interruption": -1}, ValueError, r"retry_on_interruption must be >= 0"),
        (
            {"health_checker": print},
            TypeError,
            r"Options\(health_checker=.*\): health_checker must be a sky.HealthChecker or None"
            r".*sky.HealthChecker\(probe, interval=30, failures=3\)",
        ),
    ],
)
def test_options_rejects_bad_input(kwargs: dict[str, object], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        Options(**kwargs)  # type: ignore[arg-type]


def _gpu_ok() -> bool:
    return True


def test_health_checker_defaults_and_options() -> None:
    checker = HealthChecker(_gpu_ok)
    assert (checker.probe, checker.interval, checker.failures, checker.timeout) == (
        _gpu_ok,
        30.0,
        3,
        10.0,
    )
    assert HealthChecker(_gpu_ok, interval=0.5, failures=1, timeout=60).failures == 1
    assert Options(health_checker=checker).health_checker is checker
    with pytest.raises(TypeError):
        HealthChecker(_gpu_ok, 5.0)  # type: ignore[misc]  # only the probe is positional
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        checker.failures = 5  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"probe": "torch.cuda.is_available"},
            TypeError,
            r"HealthChecker\(probe='torch.cuda.is_available'\): probe must be a callable "
            r"taking no arguments, got str",
        ),
        (
            {"interval": 0},
            ValueError,
            r"HealthChecker\(interval=0\): interval must be > 0 seconds.*interval=",
        ),
        (
            {"probe": lambda node: True},
            TypeError,
            r"HealthChecker\(probe=.*<lambda>\(node\)\): probe is called with no arguments, "
            r"and this one cannot be \(missing a required argument: 'node'\)",
        ),
        ({"interval": "30"}, TypeError, r"interval must be a number of seconds > 0, got str"),
        (
            {"failures": 0},
            ValueError,
            r"HealthChecker\(failures=0\): failures must be >= 1.*failures=3",
        ),
        ({"failures": 1.5}, TypeError, r"failures must be an int >= 1, got float"),
        ({"failures": True}, TypeError, r"failures must be an int >= 1, got bool"),
        ({"timeout": -1}, ValueError, r"HealthChecker\(timeout=-1\): timeout must be > 0"),
        ({"timeout": None}, TypeError, r"timeout must be a number of seconds > 0, got NoneType"),
    ],
)
def test_health_checker_rejects_bad_input(
    kwargs: dict[str, object], error: type, match: str
) -> None:
    fields: dict[str, object] = {"probe": _gpu_ok, **kwargs}
    with pytest.raises(error, match=match):
        HealthChecker(**fields)  # type: ignore[arg-type]


# --- spec ---------------------------------------------------------------------------------------


def test_spec_defaults_match_the_reference() -> None:
    made = Spec(provider=Local())
    assert made.accelerator is None
    assert made.nodes == Nodes(desired=1)
    assert made.vcpus is None
    assert made.memory_gb is None
    assert made.disk_gb is None
    assert made.architecture is None
    assert made.allocation == "spot-if-available"
    assert made.image is DEFAULT_IMAGE
    assert made.region is None
    assert made.max_hourly_cost is None
    assert made.ttl == 600
    assert made.volumes == ()
    assert made.plugins == ()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        made.ttl = 0  # type: ignore[misc]
    with pytest.raises(TypeError):
        Spec(Local())  # type: ignore[call-arg]


def test_spec_normalises_nodes_and_converts_sequences() -> None:
    volume = Volume(bucket="b", mount="/data")
    plugin = Plugin.create("p")
    made = spec(
        accelerator=accelerators.A100(count=8),
        nodes=(2, 8),
        vcpus=8,
        memory_gb=31.5,
        disk_gb=200,
        architecture="arm64",
        allocation="on-demand",
        region="us-east-1",
        max_hourly_cost=2.5,
        ttl=0,
        volumes=[volume],
        plugins=[plugin],
    )
    assert made.nodes == Nodes(desired=2, max=8)
    assert made.volumes == (volume,)
    assert made.plugins == (plugin,)
    assert spec(nodes=4).nodes == Nodes(desired=4)
    partial = Nodes(desired=8, min=4)
    assert spec(nodes=partial).nodes is partial
    assert spec(ttl=600.0).ttl == 600
    for strategy in ALLOCATION_STRATEGIES:
        assert spec(allocation=strategy).allocation == strategy


def test_spec_is_hashable_and_evolves_with_checks() -> None:
    one = spec(accelerator=accelerators.H100(), image=Image(env={"A": "1"}), nodes=2)
    two = spec(accelerator=accelerators.H100(), image=Image(env={"A": "1"}), nodes=(2, 2))
    assert one != two
    assert hash(one) == hash(
        spec(accelerator=accelerators.H100(), image=Image(env={"A": "1"}), nodes=2)
    )
    assert attrs.evolve(one, nodes=3).nodes == Nodes(desired=3)
    with pytest.raises(ValueError, match=r"nodes=0"):
        attrs.evolve(one, nodes=0)


def test_spec_accepts_any_provider_config_subclass() -> None:
    assert spec(provider=FakeCloud()).provider == FakeCloud()


@pytest.mark.parametrize("provider", ["aws", None, 3, ProviderConfig, ProviderConfig()])
def test_spec_provider_must_be_a_provider_config_instance(provider: object) -> None:
    with pytest.raises(TypeError, match=r"provider=sky.Local\(\)"):
        Spec(provider=provider)  # type: ignore[arg-type]


def test_spec_provider_given_as_class_says_to_call_it() -> None:
    with pytest.raises(
        TypeError, match=r"Spec\(provider=Local\): .*not the class.*provider=sky.Local\(\)"
    ):
        Spec(provider=Local)  # type: ignore[arg-type]
    with pytest.raises(
        TypeError,
        match=r"Spec\(provider='aws'\).*got str. Pass provider=sky.Local\(\) or sky.AWS\(\)",
    ):
        Spec(provider="aws")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("given", "suggestion"),
    [
        ("A100", "sky.accelerators.A100()"),
        ("H100", "sky.accelerators.H100()"),
        ("h100", "sky.accelerators.H100()"),
        ("rtx-4090", "sky.accelerators.RTX_4090()"),
        ("My-GPU", 'sky.accelerators.Custom("My-GPU")'),
        # A misspelled model: the models it is nearest, the look-alike O/0 folded.
        (
            "A1OO",
            "sky.accelerators.A100() or sky.accelerators.A10() or sky.accelerators.V100(), "
            'or accelerator=sky.accelerators.Custom("A1OO") for a model not in the catalog',
        ),
    ],
)
def test_spec_string_accelerator_fails_with_the_factory_to_use(given: str, suggestion: str) -> None:
    with pytest.raises(TypeError) as raised:
        spec(accelerator=given)
    message = str(raised.value)
    assert f"accelerator={given!r}" in message
    assert "skyward.toml" in message
    assert f"Pass accelerator={suggestion}." in message


def test_spec_accelerator_factory_without_call_says_to_call_it() -> None:
    with pytest.raises(TypeError, match=r"accelerator=sky.accelerators.A100\(\)"):
        spec(accelerator=accelerators.A100)


def test_spec_accelerator_of_another_type() -> None:
    with pytest.raises(
        TypeError,
        match=r"Spec\(accelerator=8\): accelerator must be an Accelerator or None, got int",
    ):
        spec(accelerator=8)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"nodes": 0}, ValueError, r"nodes=0: a node count must be >= 1"),
        ({"nodes": (8, 2)}, ValueError, r"nodes=\(8, 2\)"),
        ({"nodes": "4"}, ValueError, r"is not a node spec"),
        (
            {"vcpus": 0},
            ValueError,
            r"Spec\(vcpus=0\): vcpus must be a number > 0 \(vCPUs\) or None",
        ),
        ({"vcpus": "8"}, TypeError, r"Spec\(vcpus='8'\): vcpus must be a number"),
        ({"memory_gb": -1}, ValueError, r"memory_gb must be a number > 0 \(GB\)"),
        ({"max_hourly_cost": 0}, ValueError, r"max_hourly_cost must be a number > 0 \(USD\)"),
        ({"disk_gb": 0}, ValueError, r"Spec\(disk_gb=0\): disk_gb must be >= 1"),
        ({"disk_gb": 10.5}, TypeError, r"disk_gb must be an int"),
        (
            {"architecture": "amd64"},
            ValueError,
            r"Spec\(architecture='amd64'\): architecture must be one of 'x86_64', 'arm64'",
        ),
        (
            {"allocation": "spot-only"},
            ValueError,
            r"Spec\(allocation='spot-only'\): allocation must be one of "
            r"'spot-if-available', 'spot', 'on-demand', 'cheapest'",
        ),
        (
            {"image": {"pip": ["torch"]}},
            TypeError,
            r"Spec\(image=.*image must be a sky.Image, got dict",
        ),
        ({"region": ""}, ValueError, r"region must not be empty"),
        ({"ttl": -1}, ValueError, r"Spec\(ttl=-1\): ttl must be >= 0.*ttl=0 disables"),
        ({"ttl": 1.5}, TypeError, r"ttl must be an int >= 0, got float"),
        (
            {"volumes": Volume(bucket="b", mount="/data")},
            TypeError,
            r"volumes must be a list of Volume, got Volume",
        ),
        ({"volumes": ["/data"]}, TypeError, r"every item of volumes must be a Volume"),
        ({"plugins": 3}, TypeError, r"Spec\(plugins=3\): plugins must be a list of Plugin"),
        ({"plugins": ["torch"]}, TypeError, r"every item of plugins must be a Plugin"),
    ],
)
def test_spec_rejects_bad_input(kwargs: dict[str, object], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        spec(**kwargs)


# --- Compute(...) arguments ---------------------------------------------------------------------


def test_no_arguments_is_one_local_node_and_says_it_defaulted() -> None:
    specs, defaulted = resolve_compute_args((), None, {})
    assert specs == (Spec(provider=Local()),)
    assert defaulted is True


def test_flat_kwargs_build_one_spec() -> None:
    accelerator = accelerators.A100()
    specs, defaulted = resolve_compute_args(
        (), None, {"provider": FakeCloud(), "accelerator": accelerator, "nodes": 4}
    )
    assert specs == (Spec(provider=FakeCloud(), accelerator=accelerator, nodes=4),)
    assert defaulted is False


def test_flat_kwargs_without_provider_default_to_local() -> None:
    specs, defaulted = resolve_compute_args((), None, {"nodes": (2, 4)})
    assert specs == (Spec(provider=Local(), nodes=Nodes(desired=2, max=4)),)
    assert defaulted is True


def test_positional_specs_are_kept_in_order() -> None:
    first = Spec(provider=FakeCloud(region="a"))
    second = Spec(provider=Local(), nodes=2)
    specs, defaulted = resolve_compute_args((first, second), None, {})
    assert specs == (first, second)
    assert defaulted is False


def test_flat_kwargs_are_validated_by_spec() -> None:
    with pytest.raises(TypeError, match=r"Pass accelerator=sky.accelerators.A100\(\)"):
        resolve_compute_args((), None, {"accelerator": "A100"})


@pytest.mark.parametrize(
    ("value", "hint"),
    [
        (Local(), r"provider=Local\(\)"),
        (Options(), r"options=Options\("),
        (accelerators.T4(), r"accelerator=Accelerator\("),
        ("train", r"name='train'"),
        (3, r"sky.Compute\(sky.Spec\(provider=sky.AWS\(\)\)\)"),
    ],
)
def test_positional_arguments_must_be_specs(value: object, hint: str) -> None:
    with pytest.raises(TypeError, match=r"positional arguments must be sky.Spec objects") as raised:
        resolve_compute_args((Spec(provider=Local()), value), None, {})
    assert "positional argument 2" in str(raised.value)
    assert raised.match(hint)


def test_mixing_specs_and_flat_kwargs_names_the_kwargs() -> None:
    with pytest.raises(
        TypeError, match=r"positional Spec objects and Spec fields .*\(nodes, accelerator\)"
    ):
        resolve_compute_args(
            (Spec(provider=Local()),), None, {"nodes": 2, "accelerator": accelerators.T4()}
        )


def test_name_with_specs_or_kwargs_names_what_clashed() -> None:
    with pytest.raises(
        TypeError, match=r"Compute\(name='train'\) cannot be combined with positional Spec objects"
    ):
        resolve_compute_args((Spec(provider=Local()),), "train", {})
    with pytest.raises(
        TypeError, match=r"Compute\(name='train'\) cannot be combined with nodes=, region="
    ):
        resolve_compute_args((), "train", {"nodes": 2, "region": "x"})


def test_a_name_alone_resolves_no_spec_here() -> None:
    # skyward_trio.config (a layer above) loads the named pool: tests/unit/test_config.py.
    assert resolve_compute_args((), "train", {}) == ((), False)


def test_unknown_kwargs_list_the_valid_ones() -> None:
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\): gpu, zone") as raised:
        resolve_compute_args((), None, {"gpu": "A100", "zone": "a"})
    message = str(raised.value)
    assert "Valid Spec keywords: provider, accelerator, nodes," in message
    assert "sky.Options" not in message


@pytest.mark.parametrize("knob", ["selection", "worker", "console", "provision_timeout"])
def test_options_fields_passed_to_compute_point_to_options(knob: str) -> None:
    with pytest.raises(
        TypeError, match=rf"{knob} belongs on sky.Options\(...\).*options=sky.Options\({knob}=...\)"
    ):
        resolve_compute_args((), None, {knob: 1, "nodes": 2})


def test_model_imports_only_stdlib_and_attrs() -> None:
    # These modules are imported on remote workers, which must start fast and light.
    code = textwrap.dedent(
        """
        import sys
        import skyward_trio._model, skyward_trio.accelerators, skyward_trio.time
        heavy = {"trio", "asyncssh", "httpx", "rich", "cattrs", "cloudpickle", "asyncio"}
        print(sorted(heavy & {name.split(".")[0] for name in sys.modules}))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"

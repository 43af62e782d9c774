"""``skyward.toml``: merging, every error path, ``validate`` and ``Compute(name=...)``'s checks.

Nothing here provisions: ``Compute(...)`` is only constructed, which is where a named pool is
loaded and checked.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import attrs
import pytest
import trio

import skyward as sky
import skyward_trio
from skyward_trio import accelerators, config
from skyward_trio import metrics as sky_metrics
from skyward_trio.config import Config, validate
from skyward_trio.storage import resolved_keys


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    """A project and a global file that do not exist yet (paths given to ``validate``)."""
    return tmp_path / "project" / "skyward.toml", tmp_path / "home" / "defaults.toml"


def load(project: Path, text: str = "", defaults: str = "") -> Config:
    """Writes the project and the global file (empty unless given) and reads them as
    ``validate`` does, without its pools' ``Compute`` checks (tested on their own below):
    the reading is tested with pools that need what this machine lacks (SSH keys, GPUs)."""
    write(project, text)
    return config._load(project, write(project.parent.parent / "home" / "defaults.toml", defaults))


def problems(project: Path, text: str, defaults: str = "") -> list[str]:
    with pytest.raises(sky.ConfigError) as raised:
        load(project, text, defaults)
    return list(raised.value.problems)


@pytest.fixture
def project(files: tuple[Path, Path]) -> Path:
    return files[0]


# -- the files and the merge ---------------------------------------------------------------------


def test_the_default_files_are_read_from_the_cwd_and_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(write(tmp_path / "work" / "skyward.toml", "[pools.a]\n").parent)
    write(tmp_path / "home" / ".skyward" / "defaults.toml", "[pools.b]\nnodes = 0\n")
    with pytest.raises(sky.ConfigError) as raised:
        validate()
    # Each problem names the file it came from, as the user knows it.
    assert raised.value.problems == (
        "~/.skyward/defaults.toml: pools.b.nodes: a node count must be >= 1, got 0; "
        + config._NODES_FORMS,
    )
    write(tmp_path / "home" / ".skyward" / "defaults.toml", "[pools.b]\nnodes = 2\n")
    loaded = validate()
    assert loaded.files == ("~/.skyward/defaults.toml", "skyward.toml")
    assert sorted(loaded.pools) == ["a", "b"]


def test_both_files_missing_is_an_empty_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    loaded = validate()
    assert (loaded.files, dict(loaded.pools), dict(loaded.providers)) == ((), {}, {})
    assert loaded.summary() == "OK: no configuration file: 0 pools, 0 providers"


def test_a_file_given_explicitly_must_exist(tmp_path: Path) -> None:
    with pytest.raises(sky.ConfigError, match=r"nowhere.toml: no such file"):
        validate(tmp_path / "nowhere.toml")


def test_the_project_wins_key_by_key_tables_merge_and_arrays_are_replaced(project: Path) -> None:
    loaded = load(
        project,
        """
        [pools.train]
        nodes = 2
        image = { pip = ["numpy"], env = { B = "project" } }
        """,
        defaults="""
        [pools.train]
        nodes = 8
        ttl = 60
        image = { pip = ["torch", "six"], env = { A = "global", B = "global" } }

        [pools.other]
        """,
    )
    train = loaded.pools["train"]
    assert train.specs[0].nodes == sky.Nodes(desired=2)  # scalar: the project's
    assert train.specs[0].ttl == 60  # kept from the global file
    assert train.specs[0].image.pip == ("numpy",)  # array: replaced whole
    assert dict(train.specs[0].image.env) == {"A": "global", "B": "project"}  # table: merged
    assert sorted(loaded.pools) == ["other", "train"]
    assert train.files == (str(project.parent.parent / "home" / "defaults.toml"), str(project))


def test_a_value_replaced_by_the_project_is_blamed_on_the_project(project: Path) -> None:
    found = problems(
        project,
        '[pools.train]\nnodes = "two"\n',
        defaults="[pools.train]\nnodes = { desired = 2 }\nttl = -1\n",
    )
    home = str(project.parent.parent / "home" / "defaults.toml")
    assert [line.split(": ")[0:2] for line in found] == [
        [str(project), "pools.train.nodes"],
        [home, "pools.train.ttl"],
    ]


def test_a_syntax_error_names_the_file_and_line(project: Path) -> None:
    found = problems(project, '[pools.train]\nnodes = 2\nconsole = "log\n')
    assert len(found) == 1
    assert found[0].startswith(f"{project}: line 3: not valid TOML: ")
    assert found[0].endswith('console = "log')


def test_syntax_errors_in_both_files_are_reported_together(project: Path) -> None:
    found = problems(project, "[pools\n", defaults="x = = 1\n")
    assert [line.split(": ")[1] for line in found] == ["line 1", "line 1"]
    assert "defaults.toml" in found[0]
    assert str(project) in found[1]


# -- unknown keys and types ----------------------------------------------------------------------


def test_unknown_keys_are_errors_with_a_suggestion(project: Path) -> None:
    found = problems(
        project,
        """
        pool = 1
        [pools.train]
        nodez = 2
        concurrency = 4
        pip = ["torch"]
        zzz = 1
        image = { pipp = ["torch"] }
        worker = { concurency = 2 }
        """,
    )
    assert found == [
        f"{project}: pool: unknown key 'pool'; did you mean 'pools'?",
        f"{project}: pools.train.nodez: unknown key 'nodez'; did you mean 'nodes'?",
        f"{project}: pools.train.concurrency: unknown key 'concurrency' here: it belongs "
        "in [pools.train.worker]",
        f"{project}: pools.train.pip: unknown key 'pip' here: it belongs in [pools.train.image]",
        f"{project}: pools.train.zzz: unknown key 'zzz'; valid keys: "
        + ", ".join((*config._SPEC_FIELDS, *config._OPTIONS_FIELDS, "specs")),
        f"{project}: pools.train.image.pipp: unknown key 'pipp'; did you mean 'pip'?",
        f"{project}: pools.train.worker.concurency: unknown key 'concurency'; "
        "did you mean 'concurrency'?",
    ]


@pytest.mark.parametrize(
    ("toml", "path", "expected"),
    [
        ("image = 3", "pools.train.image", "expected a table of Image fields (pip, env, ...), "),
        ("image.env = { A = 1 }", "pools.train.image.env", "the value of 'A' must be a str"),
        ('image.pip = "torch"', "pools.train.image.pip", "pip must be a list of str"),
        ("worker = [1]", "pools.train.worker", "expected a table of Worker fields"),
        ('worker.executor = "fork"', "pools.train.worker.executor", "executor must be one of"),
        ('logging = "yes"', "pools.train.logging", "expected a table of LogConfig fields"),
        ('logging.level = "LOUD"', "pools.train.logging.level", "level must be one of"),
        ('console = "loud"', "pools.train.console", "console must be True, False or one of"),
        ('ttl = "10m"', "pools.train.ttl", "ttl must be an int >= 0, got str"),
        ('allocation = "free"', "pools.train.allocation", "allocation must be one of"),
        ("image.metrics = 3", "pools.train.image.metrics", "expected an array, e.g. metrics ="),
        (
            'image.metrics = ["cpuu"]',
            "pools.train.image.metrics[0]",
            "unknown collector kind 'cpuu'; did you mean 'cpu'?",
        ),
        (
            'image.metrics = [{ kind = "disk", path = "data" }]',
            "pools.train.image.metrics[0].path",
            "path must be an absolute path",
        ),
        (
            'image.pip_indexes = [{ url = "https://x", packges = ["torch"] }]',
            "pools.train.image.pip_indexes[0].packges",
            "unknown key 'packges'; did you mean 'packages'?",
        ),
        (
            'volumes = [{ bucket = "b", mount = "/opt" }]',
            "pools.train.volumes[0].mount",
            "mount must not be one of",
        ),
        ('volumes = [{ bucket = "b" }]', "pools.train.volumes[0]", "missing key 'mount'"),
        ('plugins = ["torchh"]', "pools.train.plugins[0]", "did you mean 'torch'?"),
        (
            'plugins = [{ kind = "keras", bakend = "jax" }]',
            "pools.train.plugins[0].bakend",
            "unknown key 'bakend'; did you mean 'backend'?",
        ),
        (
            'plugins = [{ kind = "torch", backend = "nvlink" }]',
            "pools.train.plugins[0]",
            "backend must be one of 'nccl', 'gloo', 'mpi'",
        ),
        ("plugins = [3]", "pools.train.plugins[0]", "a plugin of your own is passed to Compute"),
        ('plugins = ["mig"]', "pools.train.plugins[0]", "plugin 'mig' needs profile: write"),
        (
            'plugins = [{ kind = "mps", active_thread_percentage = 0 }]',
            "pools.train.plugins[0]",
            "a whole percentage from 1 to 100",
        ),
        (
            'volumes = [{ bucket = "b", mount = "/data", storage = "r2" }]',
            "pools.train.volumes[0].storage",
            "storage 'r2' needs both its keys named: access_key_env and secret_key_env",
        ),
        (
            'volumes = [{ bucket = "b", mount = "/d", storage = { kind = "gcs", '
            'access_key = "GOOG1E", secret_key_env = "S" } }]',
            "pools.train.volumes[0].storage.access_key",
            "a file should not hold keys: name the variables that hold them",
        ),
        (
            'volumes = [{ bucket = "b", mount = "/d", storage = { kind = "s3", '
            'access_key_env = "A" } }]',
            "pools.train.volumes[0].storage",
            "needs both its keys named",
        ),
        (
            'volumes = [{ bucket = "b", mount = "/d", storage = { kind = "wasabi", '
            'region = "us-east-1", access_key_env = "1A", secret_key_env = "S" } }]',
            "pools.train.volumes[0].storage.access_key_env",
            "expected the name of an environment variable, got '1A'",
        ),
        (
            'volumes = [{ bucket = "b", mount = "/d", storage = { kind = "hyperstack", '
            'region = "CANADA-1", api_key = "hs_live_123" } }]',
            "pools.train.volumes[0].storage.api_key",
            'name the variable that holds it, api_key_env = "..."',
        ),
        (
            'volumes = [{ bucket = "b", mount = "/d", storage = { kind = "hyperstack", '
            'region = "CANADA-1", access_key_env = "A" } }]',
            "pools.train.volumes[0].storage.access_key_env",
            "unknown key 'access_key_env'; did you mean 'api_key_env'?",
        ),
        (
            'volumes = [{ bucket = "b", mount = "/d", storage = { kind = "minio" } }]',
            "pools.train.volumes[0].storage",
            "unknown storage 'minio'",
        ),
        ("health_checker = 1", "pools.train.health_checker", "cannot hold"),
    ],
)
def test_a_wrong_value_is_reported_at_its_key_path(
    project: Path, toml: str, path: str, expected: str
) -> None:
    found = problems(project, f"[pools.train]\n{toml}\n")
    assert len(found) == 1, found
    assert found[0].startswith(f"{project}: {path}: ")
    assert expected in found[0]


def test_every_bad_field_of_one_record_is_reported(project: Path) -> None:
    found = problems(
        project,
        '[pools.train]\nworker = { concurrency = 0, buffer = -1, executor = "fork" }\n',
    )
    assert [line.split(": ")[1] for line in found] == [
        "pools.train.worker.concurrency",
        "pools.train.worker.buffer",
        "pools.train.worker.executor",
    ]


def test_problems_of_many_pools_and_providers_come_in_one_error(project: Path) -> None:
    with pytest.raises(sky.ConfigError) as raised:
        load(
            project,
            """
            [providers.cloud]
            type = "lamda"
            [pools.a]
            nodes = 0
            [pools.b]
            console = 1
            """,
        )
    message = str(raised.value)
    assert message.startswith("3 problems in the Skyward configuration:\n  ")
    assert "providers.cloud.type" in message
    assert "pools.a.nodes" in message
    assert "pools.b.console" in message


# -- nodes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "nodes"),
    [
        ("4", sky.Nodes(desired=4)),
        ("[2, 8]", sky.Nodes(desired=2, max=8)),
        ("{ desired = 4, min = 2, max = 16 }", sky.Nodes(desired=4, min=2, max=16)),
    ],
)
def test_the_three_node_forms(project: Path, toml: str, nodes: sky.Nodes) -> None:
    assert load(project, f"[pools.p]\nnodes = {toml}\n").pools["p"].specs[0].nodes == nodes


@pytest.mark.parametrize(
    ("toml", "path", "expected"),
    [
        ('"4"', "pools.p.nodes", "got a string ('4')"),
        ("true", "pools.p.nodes", "got a boolean (True)"),
        ("0", "pools.p.nodes", "a node count must be >= 1, got 0"),
        ("[8, 2]", "pools.p.nodes", "expected [low, high] with 1 <= low <= high, got [8, 2]"),
        ("[1, 2, 3]", "pools.p.nodes", "expected [low, high]"),
        ("{ desired = 2, min = 3 }", "pools.p.nodes.min", "min must be between 1 and desired"),
        ("{ desird = 2 }", "pools.p.nodes.desird", "did you mean 'desired'?"),
        ("{ max = 2 }", "pools.p.nodes", "missing key 'desired'"),
    ],
)
def test_bad_node_forms(project: Path, toml: str, path: str, expected: str) -> None:
    found = problems(project, f"[pools.p]\nnodes = {toml}\n")
    assert any(line.startswith(f"{project}: {path}: ") and expected in line for line in found), (
        found
    )


# -- providers -----------------------------------------------------------------------------------


def test_providers_are_built_and_named_by_pools(project: Path) -> None:
    loaded = load(
        project,
        """
        [providers.lab]
        type = "ssh"
        hosts = ["gpu1", "alice@gpu2:2222", { host = "gpu3", port = 2200 }]
        user = "bob"
        ssh_config = false
        proxy_jump = "bob@bastion:2222"

        [pools.train]
        provider = "lab"

        [pools.here]
        provider = "local"

        [pools.default]
        """,
    )
    lab = loaded.providers["lab"]
    assert lab == sky.SSH(
        hosts=["gpu1", "alice@gpu2:2222", sky.SSHHost(host="gpu3", port=2200)],
        user="bob",
        ssh_config=None,
        proxy_jump="bob@bastion:2222",
    )
    assert loaded.pools["train"].specs[0].provider is lab
    assert loaded.pools["here"].specs[0].provider == sky.Local()
    assert not loaded.pools["here"].provider_defaulted
    assert loaded.pools["default"].specs[0].provider == sky.Local()
    assert loaded.pools["default"].provider_defaulted


def test_container_providers_are_built_from_a_table_or_the_bare_type(project: Path) -> None:
    loaded = load(
        project,
        """
        [providers.box]
        type = "container"
        image = "localhost/node:py{python_version}"
        binary = "podman"
        ssh_user = "alice"

        [pools.boxed]
        provider = "box"
        nodes = 2

        [pools.plain]
        provider = "container"
        """,
    )
    box = sky.Container(
        image="localhost/node:py{python_version}", binary="podman", ssh_user="alice"
    )
    assert loaded.pools["boxed"].specs[0].provider == box
    assert loaded.pools["plain"].specs[0].provider == sky.Container()
    bad = problems(project, '[providers.box]\ntype = "container"\nbinary = "podman -v"\n')
    assert [line.split(": ")[:2] for line in bad] == [[str(project), "providers.box.binary"]]


def test_an_unknown_provider_name_lists_the_defined_ones(project: Path) -> None:
    found = problems(
        project,
        """
        [providers.lab]
        type = "ssh"
        hosts = ["gpu1"]
        [pools.train]
        provider = "labb"
        """,
    )
    assert found == [
        f"{project}: pools.train.provider: no provider 'labb'; did you mean 'lab'? the "
        "[providers.NAME] tables defined are 'lab', and a type that needs no fields may be "
        "named without one: 'local', 'container', 'runpod', 'aws', 'vastai', 'lambda', "
        "'hyperstack', 'vultr', 'verda', 'scaleway', 'novita', 'gcp', 'tensordock', "
        "'massedcompute', 'jarvislabs'"
    ]


def test_the_other_fields_of_a_pool_with_a_bad_provider_are_still_checked(
    project: Path,
) -> None:
    found = problems(project, '[pools.train]\nprovider = "nowhere"\nttl = -1\n')
    assert [line.split(": ")[1] for line in found] == ["pools.train.provider", "pools.train.ttl"]


def test_a_bare_type_that_needs_fields_says_to_define_a_table(project: Path) -> None:
    (found,) = problems(project, '[pools.train]\nprovider = "ssh"\n')
    assert "type 'ssh' needs fields (hosts): define them in a [providers.NAME] table" in found


def test_provider_table_errors(project: Path) -> None:
    found = problems(
        project,
        """
        [providers.a]
        type = "lokal"
        [providers.b]
        hosts = ["x"]
        [providers.c]
        type = "ssh"
        hosts = ["gpu1", "gpu2:22x", { host = "h", prot = 22 }, 3]
        [providers.d]
        type = "local"
        region = "x"
        [pools.p]
        provider = "c"
        """,
    )
    assert found == [
        f"{project}: providers.a.type: unknown provider type 'lokal'; did you mean 'local'? "
        "the types are 'local', 'ssh', 'container', 'runpod', 'aws', 'vastai', 'lambda', "
        "'hyperstack', 'vultr', 'verda', 'scaleway', 'novita', 'gcp', 'tensordock', "
        "'massedcompute', 'jarvislabs'",
        f"{project}: providers.b: missing key 'type': one of 'local', 'ssh', 'container', "
        "'runpod', 'aws', 'vastai', 'lambda', 'hyperstack', 'vultr', 'verda', 'scaleway', "
        "'novita', 'gcp', 'tensordock', 'massedcompute', 'jarvislabs'",
        f"{project}: providers.c.hosts[1]: SSH(hosts=['gpu2:22x']): '22x' is not a port "
        "number; hosts are 'user@host:port' with user and port optional. Pass e.g. "
        'hosts=["gpu1", "alice@gpu2:2222"] or hosts=[sky.SSHHost(host="gpu1")].',
        f"{project}: providers.c.hosts[2].prot: unknown key 'prot'; did you mean 'port'?",
        f'{project}: providers.c.hosts[3]: expected "user@host:port" (user and port '
        "optional) or a table { host = ..., user = ..., port = ... }, got an integer (3)",
        f"{project}: providers.d.region: unknown key 'region'; valid keys: ",
        # pools.p names the broken provider c: its problems are reported once, above.
    ]


# -- accelerators --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ('"A100"', accelerators.A100()),
        ('"rtx-4090"', accelerators.RTX_4090()),
        ('{ name = "H100", count = 8, form_factor = "SXM" }',
         accelerators.H100(count=8, form_factor="SXM")),
        ('{ name = "A100", memory = "40GB" }', accelerators.A100(memory="40GB")),
        ('{ custom = "MyGPU", memory = "48GB", count = 2 }',
         accelerators.Custom("MyGPU", memory="48GB", count=2)),
    ],
)  # fmt: skip
def test_accelerator_strings_and_tables(
    project: Path, toml: str, expected: accelerators.Accelerator
) -> None:
    assert load(project, f"[pools.p]\naccelerator = {toml}\n").pools["p"].specs[0].accelerator == (
        expected
    )


@pytest.mark.parametrize(
    ("toml", "path", "expected"),
    [
        ('"A1000"', "pools.p.accelerator", "'A1000' is not in the accelerator catalog; did you "
         "mean 'A100'"),
        ('"MyGPU"', "pools.p.accelerator", 'accelerator = { custom = "MyGPU", memory = "48GB" }'),
        ('{ name = "A100", memory = "20GB" }', "pools.p.accelerator.memory", "memory must be one "
         "of '40GB', '80GB'"),
        ('{ name = "T4", form_factor = "SXM" }', "pools.p.accelerator.form_factor", "unknown key "
         "'form_factor'; valid keys: count"),
        ('{ name = "H100", count = 0 }', "pools.p.accelerator.count", "count must be > 0"),
        ('{ name = "Q9" }', "pools.p.accelerator.name", "'Q9' is not in the accelerator catalog"),
        ("{ count = 2 }", "pools.p.accelerator", 'expected name = "<model>"'),
        ("7", "pools.p.accelerator", "expected a table of an accelerator"),
    ],
)  # fmt: skip
def test_accelerator_errors(project: Path, toml: str, path: str, expected: str) -> None:
    (found,) = problems(project, f"[pools.p]\naccelerator = {toml}\n")
    assert found.startswith(f"{project}: {path}: ")
    assert expected in found


# -- what a pool holds ---------------------------------------------------------------------------


def test_plugins_are_built_in_ones_by_name_or_table(project: Path) -> None:
    loaded = load(
        project,
        """
        [pools.train]
        plugins = ["joblib", { kind = "torch", backend = "nccl", version = "2.8.0" }]
        """,
    )
    joblib, torch = loaded.pools["train"].specs[0].plugins
    assert (joblib.name, torch.name) == ("joblib", "torch")
    assert torch.transform is not None
    image = torch.transform(sky.Image(), sky.plugins.Cluster(spec=sky.Spec(provider=sky.Local())))
    assert image.pip == ("torch==2.8.0",)


def test_the_gpu_plugins_take_their_arguments_from_a_table(project: Path) -> None:
    loaded = load(
        project,
        """
        [pools.gpu]
        worker = { concurrency = 2, executor = "process" }
        plugins = [
            { kind = "mig", profile = "3g.40gb" },
            { kind = "mps", active_thread_percentage = 50 },
            { kind = "cuml", cuda = "cu13" },
        ]
        """,
    )
    assert [p.name for p in loaded.pools["gpu"].specs[0].plugins] == ["mig", "mps", "cuml"]


def test_accelerate_takes_its_config_as_a_table(project: Path) -> None:
    loaded = load(
        project,
        """
        [pools.train]
        nodes = 2
        plugins = [
            { kind = "accelerate", config = { mixed_precision = "bf16", num_processes = 2 } },
        ]
        """,
    )
    spec = loaded.pools["train"].specs[0]
    (accelerate,) = spec.plugins
    assert (accelerate.name, accelerate.collective) == ("accelerate", True)
    assert accelerate.transform is not None
    cluster = sky.plugins.Cluster
    assert accelerate.transform(sky.Image(), cluster(spec=spec)).pip == ("accelerate",)
    with pytest.raises(ValueError, match="'num_processes': 2"):  # the table reached it
        accelerate.transform(
            sky.Image(), cluster(spec=attrs.evolve(spec, nodes=sky.Nodes(desired=3)))
        )
    (found,) = problems(
        project,
        '[pools.train]\nplugins = [{ kind = "accelerate", config = { num_machines = 2 } }]\n',
    )
    assert found.startswith(f"{project}: pools.train.plugins[0]: ")
    assert "num_machines is set by Skyward from the pool" in found


def test_a_volumes_storage_names_the_variables_that_hold_its_keys(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = load(
        project,
        """
        [[pools.data.volumes]]
        bucket = "b"
        mount = "/r2"
        storage.kind = "r2"
        storage.account_id = "acct"
        storage.access_key_env = "MY_R2_KEY"
        storage.secret_key_env = "MY_R2_SECRET"

        [[pools.data.volumes]]
        bucket = "c"
        mount = "/b2"
        storage = { kind = "backblaze", region = "us-west-004", access_key_env = "B2_ID", \
secret_key_env = "B2_KEY" }

        [[pools.data.volumes]]
        bucket = "d"
        mount = "/s3"
        storage = { kind = "s3", region = "eu-west-1" }

        [[pools.data.volumes]]
        bucket = "e"
        mount = "/hs"
        storage = { kind = "hyperstack", region = "CANADA-1", api_key_env = "MY_HS_KEY" }

        [[pools.data.volumes]]
        bucket = "f"
        mount = "/hs2"
        storage = { kind = "hyperstack", region = "CANADA-1" }
        """,
    )
    r2, b2, s3, hs, hs2 = (volume.storage for volume in loaded.pools["data"].specs[0].volumes)
    assert hs == attrs.evolve(
        sky.storage.Hyperstack(region="CANADA-1"),
        key_issuer=sky.storage.HyperstackKeys(
            api_key=sky.storage.EnvKey("MY_HS_KEY"), region="CANADA-1"
        ),
    )
    assert hs2 == sky.storage.Hyperstack(region="CANADA-1")  # its key: HYPERSTACK_API_KEY
    assert r2 == attrs.evolve(
        sky.storage.R2(account_id="acct", access_key="x", secret_key="y"),
        access_key=sky.storage.EnvKey("MY_R2_KEY"),
        secret_key=sky.storage.EnvKey("MY_R2_SECRET"),
    )
    assert b2.endpoint == "https://s3.us-west-004.backblazeb2.com"
    assert s3 == sky.storage.S3(region="eu-west-1")  # keys: AWS_ACCESS_KEY_ID and its pair
    monkeypatch.setenv("MY_R2_KEY", "key-from-the-shell")
    monkeypatch.delenv("MY_R2_SECRET", raising=False)
    with pytest.raises(
        ValueError, match=r"the variable MY_R2_SECRET \(named in skyward\.toml\) is not set; export"
    ):
        trio.run(resolved_keys, r2)
    monkeypatch.setenv("MY_R2_SECRET", "its-secret")
    assert trio.run(resolved_keys, r2) == ("key-from-the-shell", "its-secret")


def test_a_pool_holds_a_spec_and_its_options(project: Path) -> None:
    loaded = load(
        project,
        """
        [pools.train]
        nodes = [1, 3]
        region = "eu"
        ttl = 0
        console = "silent"
        retry_on_interruption = 5
        logging = { level = "DEBUG", file = "~/run.log" }
        worker = { concurrency = 4, executor = "process" }
        image.python = "auto"
        image.env = { HF_HOME = "/data/hf" }
        image.pip_indexes = [
            { url = "https://download.pytorch.org/whl/cu121", packages = ["torch"] },
        ]
        image.metrics = [
            "default",
            { kind = "cpu", interval = 1 },
            { kind = "custom", name = "q", command = "echo 1" },
        ]
        volumes = [{ bucket = "data", mount = "/data", read_only = false }]

        [pools.plain]
        nodes = 2
        [pools.quiet]
        image.metrics = false
        logging = false
        """,
    )  # fmt: skip
    train = loaded.pools["train"]
    assert train.specs[0].nodes == sky.Nodes(desired=1, max=3)
    assert (train.specs[0].region, train.specs[0].ttl) == ("eu", 0)
    assert train.specs[0].image.pip_indexes == (
        sky.PipIndex(url="https://download.pytorch.org/whl/cu121", packages=["torch"]),
    )
    assert train.specs[0].image.metrics == (
        sky_metrics.Default(),
        sky_metrics.CPU(interval=1),
        sky_metrics.Custom("q", "echo 1"),
    )
    assert train.specs[0].volumes == (sky.Volume(bucket="data", mount="/data", read_only=False),)
    assert train.options == sky.Options(
        console="silent",
        retry_on_interruption=5,
        logging=sky.LogConfig(level="DEBUG", file="~/run.log"),
        worker=sky.Worker(concurrency=4, executor="process"),
    )
    assert loaded.pools["plain"].options is None  # no Options field set: options= is free
    quiet = loaded.pools["quiet"]
    assert quiet.specs[0].image.metrics is None
    assert quiet.options == sky.Options(logging=False)
    home = project.parent.parent / "home" / "defaults.toml"
    assert loaded.summary() == f"OK: {home}, {project}: 3 pools (train, plain, quiet), 0 providers"


def test_relative_includes_are_relative_to_their_files_folder(project: Path) -> None:
    loaded = load(
        project,
        '[pools.a]\nimage.includes = ["src", "/abs/lib"]\n',
        defaults='[pools.b]\nimage.includes = ["shared"]\n',
    )
    assert loaded.pools["a"].specs[0].image.includes == (str(project.parent / "src"), "/abs/lib")
    home = project.parent.parent / "home"
    assert loaded.pools["b"].specs[0].image.includes == (str(home / "shared"),)


def test_specs_tables_are_tried_in_order_each_over_the_pools_own_fields(project: Path) -> None:
    loaded = load(
        project,
        """
        [providers.lab]
        type = "ssh"
        hosts = ["gpu1", "gpu2"]

        [pools.train]
        nodes = 2
        ttl = 30
        image = { pip = ["numpy"] }
        selection = "cheapest"

        [[pools.train.specs]]
        provider = "lab"
        vcpus = 8

        [[pools.train.specs]]
        nodes = 1
        image = { env = { A = "1" } }
        """,
    )
    train = loaded.pools["train"]
    lab = loaded.providers["lab"]
    image = sky.Image(pip=["numpy"])
    assert train.specs == (
        sky.Spec(provider=lab, nodes=2, ttl=30, image=image, vcpus=8),
        # A key a spec sets replaces the pool's whole (image too); the rest is the pool's.
        sky.Spec(provider=sky.Local(), nodes=1, ttl=30, image=sky.Image(env={"A": "1"})),
    )
    assert train.options == sky.Options(selection="cheapest")
    assert not train.provider_defaulted  # one of them names its provider
    both = load(project, "[pools.p]\n[[pools.p.specs]]\nnodes = 1\n[[pools.p.specs]]\nttl = 0\n")
    assert both.pools["p"].provider_defaulted


def test_the_projects_specs_replace_the_global_ones_whole(project: Path) -> None:
    loaded = load(
        project,
        "[pools.train]\n[[pools.train.specs]]\nnodes = 3\n",
        defaults="[pools.train]\nttl = 5\n[[pools.train.specs]]\nnodes = 1\n"
        "[[pools.train.specs]]\nnodes = 2\n",
    )
    assert loaded.pools["train"].specs == (sky.Spec(provider=sky.Local(), nodes=3, ttl=5),)


def test_specs_errors_name_the_spec_and_key(project: Path) -> None:
    found = problems(
        project,
        """
        [pools.train]
        nodes = 2

        [[pools.train.specs]]
        nodes = 0
        console = "log"
        pip = ["torch"]

        [[pools.train.specs]]
        provider = "nowhere"
        accelerator = "A1000"

        [pools.flat]
        specs = ["aws"]

        [pools.empty]
        specs = []
        """,
    )
    p = str(project)
    assert found[:5] == [
        f"{p}: pools.train.specs[0].console: unknown key 'console' here: it belongs in "
        "[pools.train]: Options are the pool's, not a spec's",
        f"{p}: pools.train.specs[0].pip: unknown key 'pip' here: it belongs in "
        "[pools.train.specs[0].image]",
        f"{p}: pools.train.specs[0].nodes: a node count must be >= 1, got 0; "
        + config._NODES_FORMS,
        found[3],  # the unknown provider, with the names defined (tested above)
        found[4],  # the unknown accelerator, with close names (tested above)
    ]
    assert found[3].startswith(f"{p}: pools.train.specs[1].provider: no provider 'nowhere'")
    assert found[4].startswith(f"{p}: pools.train.specs[1].accelerator: ")
    assert found[5:] == [
        f"{p}: pools.flat.specs: expected [[pools.flat.specs]] tables, each with the Spec "
        'fields that differ (provider = "aws", accelerator = "A100", ...), got an array',
        f"{p}: pools.empty.specs: expected at least one spec: [[pools.empty.specs]] tables, "
        'each with the Spec fields that differ (provider = "aws", accelerator = "A100", ...); '
        "or drop the key",
    ]


def test_a_missing_pool_lists_the_defined_pools_and_files(project: Path) -> None:
    loaded = load(project, "[pools.train]\n[pools.eval]\n")
    with pytest.raises(sky.ConfigError) as raised:
        loaded.pool("trian")
    home = project.parent.parent / "home" / "defaults.toml"
    assert str(raised.value) == (
        f"no pool 'trian': read {home} and {project} (./skyward.toml over "
        "~/.skyward/defaults.toml), the pools defined are eval, train; did you mean 'train'? "
        "Define it in ./skyward.toml as a [pools.trian] table."
    )


# -- Compute(name=...) ---------------------------------------------------------------------------


@pytest.fixture
def in_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return tmp_path / "skyward.toml"


@pytest.mark.parametrize("face", [sky.Compute, skyward_trio.Compute])
def test_compute_name_loads_the_pool_before_provisioning(in_project: Path, face: type) -> None:
    write(in_project, '[pools.train]\nnodes = 3\nconsole = "log"\n[pools.free]\nnodes = 2\n')
    core = face(name="train")
    core = getattr(core, "_core", core)  # the sync face wraps the trio one
    assert core.specs == (sky.Spec(provider=sky.Local(), nodes=3),)
    assert core.options == sky.Options(console="log")
    assert core.defaulted_to_local
    write(
        in_project,
        "[pools.train]\nnodes = 3\n[[pools.train.specs]]\nttl = 1\n[[pools.train.specs]]\n"
        "[pools.free]\nnodes = 2\n",
    )
    several = face(name="train")
    several = getattr(several, "_core", several)
    assert several.specs == (
        sky.Spec(provider=sky.Local(), nodes=3, ttl=1),
        sky.Spec(provider=sky.Local(), nodes=3),
    )
    free = face(name="free", options=sky.Options(console="silent"))
    free = getattr(free, "_core", free)
    assert free.options == sky.Options(console="silent")


@pytest.mark.parametrize("face", [sky.Compute, skyward_trio.Compute])
def test_compute_name_errors(in_project: Path, face: type) -> None:
    write(in_project, '[pools.train]\nconsole = "log"\n')
    with pytest.raises(
        TypeError, match=r"\[pools.train\] in skyward.toml already sets Options fields \(console\)"
    ):
        face(name="train", options=sky.Options())
    with pytest.raises(TypeError, match=r"cannot be combined with nodes="):
        face(name="train", nodes=2)
    with pytest.raises(TypeError, match=r"name must be a str"):
        face(name=3)
    with pytest.raises(sky.ConfigError, match=r"no pool 'nope': read skyward.toml"):
        face(name="nope")
    write(in_project, '[pools.train]\nconsole = "log"\n[pools.broken]\nnodes = 0\n')
    with pytest.raises(sky.ConfigError, match=r"skyward.toml: pools.broken.nodes: "):
        face(name="train")  # a broken file is refused whole


def test_config_error_is_public_and_pickles() -> None:
    assert sky.ConfigError is skyward_trio.ConfigError
    assert issubclass(sky.ConfigError, sky.SkywardError)
    assert sky.config is skyward_trio.config is config
    error = pickle.loads(pickle.dumps(sky.ConfigError(("a: b: c", "d: e: f"))))
    assert error.problems == ("a: b: c", "d: e: f")
    assert str(error).startswith("2 problems")


# -- validate: what Compute would refuse ---------------------------------------------------------


def test_validate_runs_computes_checks_on_every_pool(
    project: Path, bare_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(
        project,
        """
        [providers.lab]
        type = "ssh"
        hosts = ["gpu1"]

        [pools.gpu]
        accelerator = "A100"

        [pools.remote]
        provider = "lab"

        [pools.pair]
        [[pools.pair.specs]]
        [[pools.pair.specs]]
        image = { includes = ["missing"] }

        [pools.fine]
        nodes = 2
        """,
    )
    monkeypatch.chdir(project.parent)
    home = write(
        bare_home / ".skyward" / "defaults.toml", '[pools.fine2]\nimage.includes = ["."]\n'
    )
    with pytest.raises(sky.ConfigError) as raised:
        validate(project, home)
    found = raised.value.problems
    assert [line.split(": ")[:2] for line in found] == [
        [str(project), "pools.gpu"],
        [str(project), "pools.remote"],
        [str(project), "pools.pair.specs[1]"],
    ]
    assert "sky.Local() runs on this machine and provides no accelerators" in found[0]
    assert "no private key given, no SSH agent running" in found[1]
    assert f"Image(includes=['{project.parent / 'missing'}']): no such file" in found[2]
    # Compute opens a pool of the same file (./skyward.toml over ~/.skyward/defaults.toml):
    # only its own specs are checked.
    core = skyward_trio.Compute(name="fine")
    assert core.specs == (sky.Spec(provider=sky.Local(), nodes=2),)
    with pytest.raises(ValueError, match="provides no accelerators"):
        skyward_trio.Compute(name="gpu")


# -- python -m skyward_trio.config validate ------------------------------------------------------


def test_main_prints_problems_or_a_summary(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(project, "[pools.a]\nnodes = 0\n[pools.b]\nnodez = 1\n")
    home = write(project.parent / "defaults.toml", "[pools.c]\nconsole = 1\n")
    assert config.main(["validate", "--project", str(project), "--defaults", str(home)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert [line.split(": ")[:2] for line in err.splitlines()] == [
        [str(home), "pools.c.console"],
        [str(project), "pools.a.nodes"],
        [str(project), "pools.b.nodez"],
    ]
    write(project, "[pools.a]\nnodes = 2\n")
    assert config.main(["validate", "--project", str(project)]) == 0
    assert capsys.readouterr().out.startswith(f"OK: {project}: 1 pool (a), 0 providers")


def test_python_dash_m_validate(in_project: Path) -> None:
    write(in_project, '[pools.a]\nprovider = "lamda"\n')
    run = subprocess.run(
        [sys.executable, "-m", "skyward_trio.config", "validate"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 1
    assert run.stderr.startswith(
        "skyward.toml: pools.a.provider: no provider 'lamda'; did you mean 'lambda'?"
    )
    write(in_project, "[pools.a]\n")
    run = subprocess.run(
        [sys.executable, "-m", "skyward_trio.config", "validate"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert run.stdout == "OK: skyward.toml: 1 pool (a), 0 providers\n"


def test_sky_compute_create_reads_the_named_keys_in_its_own_shell(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The specs go to the server, which may run from another shell: ``sky compute
    create`` reads the variables ``skyward.toml`` names where it runs, when it can."""
    from skyward._cli import _keyed

    named = sky.storage.R2(
        account_id="a", access_key=sky.storage.EnvKey("K1"), secret_key=sky.storage.EnvKey("K2")
    )
    volume = sky.Volume(bucket="b", mount="/data", storage=named)
    spec = sky.Spec(provider=sky.SSH(hosts=["h"]), volumes=[volume])
    monkeypatch.setenv("K1", "one")
    monkeypatch.delenv("K2", raising=False)
    (keyed,) = _keyed(spec).volumes
    assert keyed.storage.access_key == "one"
    assert keyed.storage.secret_key == sky.storage.EnvKey("K2")  # left to the server's shell
    monkeypatch.delenv("K1")
    assert _keyed(spec) is spec  # nothing to read here


def test_the_cli_sends_a_hyperstack_stores_api_key_from_its_own_shell(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``sky compute create`` reads the variable a hyperstack store names (or
    HYPERSTACK_API_KEY) where it runs, for a server started elsewhere."""
    from skyward import _cli

    def spec(api_key: object) -> sky.Spec:
        store = sky.storage.Hyperstack(region="CANADA-1", api_key=api_key)  # type: ignore[arg-type]
        volume = sky.Volume(bucket="b", mount="/d", storage=store)
        return sky.Spec(provider=sky.SSH(hosts=["h"]), volumes=[volume])

    def sent(given: sky.Spec) -> object:
        (volume,) = _cli._keyed(given).volumes
        assert volume.storage is not None
        assert volume.storage.key_issuer is not None
        return volume.storage.key_issuer.api_key  # type: ignore[attr-defined]

    monkeypatch.setenv("MY_HS", "named-here")
    monkeypatch.setenv("HYPERSTACK_API_KEY", "default-here")
    assert sent(spec(sky.storage.EnvKey("MY_HS"))) == "named-here"
    assert sent(spec(None)) == "default-here"
    assert sent(spec("from-python")) == "from-python"
    monkeypatch.delenv("MY_HS")
    assert sent(spec(sky.storage.EnvKey("MY_HS"))) == sky.storage.EnvKey("MY_HS")

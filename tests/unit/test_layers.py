"""The layer map in ``skyward_trio/__init__.py`` holds: no module imports a higher layer."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "skyward_trio"

LAYERS = {
    "_errors": 1,
    "_pids": 1,
    "_version": 1,
    "_model": 1,
    "accelerators": 1,
    "metrics": 1,
    "time": 1,
    "_info": 1,
    "_runtime": 1,
    "_shard": 1,
    "_function": 1,
    "_bootstrap": 1,
    "_volumes": 1,
    "_capture": 1,
    "_output": 1,
    "_autoscale": 1,
    "_cost": 1,
    "_events": 1,
    "_logging": 1,
    "_envcheck": 1,
    "_heartbeat": 1,
    "_offers": 1,
    "containers": 1,
    "_plugin": 1,
    "plugins": 1,
    "storage": 1,
    "_wire": 2,
    "_serial": 2,
    "_execute": 3,
    "_procchild": 3,
    "_procpool": 3,
    "worker": 3,
    "_collections": 3,
    "_eventual": 3,
    "_shared": 3,
    "_store": 3,
    "_sampler": 3,
    "_notices": 3,
    "_pluginrun": 3,
    "_storelink": 4,
    "_sshtrim": 4,
    "_transport": 4,
    "_aio": 4,
    "_providers": 4,
    "_container": 4,
    "_runpod": 4,
    "_aws": 4,
    "_vastai": 4,
    "_rented": 4,
    "_lambda": 4,
    "_hyperstack": 4,
    "_vultr": 4,
    "_verda": 4,
    "_scaleway": 4,
    "_novita": 4,
    "_jarvislabs": 4,
    "_gcp": 4,
    "_tensordock": 4,
    "_massedcompute": 4,
    "_market": 4,
    "_source": 4,
    "_localnode": 4,
    "_nodeforks": 4,
    "_connection": 4,
    "config": 5,
    "_checks": 5,
    "_health": 5,
    "_pool": 5,
    "_supervisor": 5,
    "_compute": 5,
    "_reaper": 5,
    "testing": 5,
    "_eventbus": 5,
    "_console": 5,
    "_session": 5,
    "_server": 6,
    "_serverwire": 6,
    "_client": 6,
}


def _internal_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("skyward_trio."):
            found.add(node.module.split(".")[1])  # type: ignore[union-attr]
    return found


def test_every_module_has_a_layer() -> None:
    modules = {p.stem for p in SRC.glob("*.py") if p.stem != "__init__"}
    assert modules == set(LAYERS), "add new modules to LAYERS and to the map in __init__"


@pytest.mark.parametrize("module", sorted(LAYERS))
def test_imports_go_down_only(module: str) -> None:
    layer = LAYERS[module]
    for imported in _internal_imports(SRC / f"{module}.py"):
        assert LAYERS[imported] <= layer, (
            f"{module} (layer {layer}) imports {imported} (layer {LAYERS[imported]})"
        )


def test_only_transport_and_localnode_import_asyncssh() -> None:
    for path in SRC.glob("*.py"):
        text = path.read_text()
        if path.stem in ("_transport", "_localnode", "_aio"):
            continue
        assert "import asyncssh" not in text, path.name
        assert "import trio_asyncio" not in text, path.name  # only through _aio


def _printed(code: str) -> str:
    """What ``code`` prints, run in a fresh interpreter (nothing imported yet)."""
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.mark.parametrize(
    "statement",
    ["import skyward_trio.worker", "import skyward; skyward.instance_info; skyward.shard"],
)
def test_worker_import_path_is_light(statement: str) -> None:
    heavy = "{'asyncssh', 'trio_asyncio', 'httpx', 'rich', 'cattrs'}"
    assert _printed(f"{statement}\nimport sys\nprint(sorted({heavy} & set(sys.modules)))") == "[]"


@pytest.mark.parametrize("module", ["skyward_trio.worker", "skyward_trio._procchild"])
def test_a_worker_loads_none_of_the_clients_records(module: str) -> None:
    # The package's names load on first use: a worker (or a process executor's child),
    # started on every node of every pool, does not pay for the client's records, events
    # and decisions.
    client_side = ["_model", "_events", "_function", "_offers", "storage", "plugins", "_plugin"]
    code = (
        f"import sys, {module}\n"
        f"print(sorted(m for m in {client_side!r} if 'skyward_trio.' + m in sys.modules))"
    )
    assert _printed(code) == "[]"


def test_the_package_names_load_on_first_use_and_are_all_there() -> None:
    code = (
        "import sys, skyward_trio\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('skyward_trio.'))\n"
        "missing = [n for n in skyward_trio.__all__ if not hasattr(skyward_trio, n)]\n"
        "print(loaded, missing, set(skyward_trio.__all__) <= set(dir(skyward_trio)))"
    )
    assert _printed(code) == "['skyward_trio._version'] [] True"


def test_a_servers_client_and_the_sky_command_load_no_ssh() -> None:
    # A client sends its calls to the server over HTTP; `sky server status` or `sky
    # compute list` only ask the server: none of them holds a pool, so none pays for
    # asyncssh (about a third of a second at each start) or the server's own modules.
    code = (
        "import sys, skyward._cli, skyward._client, skyward_trio._client\n"
        "held = {'asyncssh', 'trio_asyncio', 'skyward_trio._server', 'skyward_trio._compute'}\n"
        "print(sorted(held & set(sys.modules)))"
    )
    assert _printed(code) == "[]"

"""The ``sky`` command: the pool server, offers, configuration, the log, the version.

    sky server start                       # a background process that holds pools
    sky compute create train               # [pools.train] of ./skyward.toml, held there
    sky compute list                       # then sky.Client("train") in any script
    sky compute view train                 # its events as log lines, as they happen
    sky compute run train fit.py --lr 3e-4 # fit.py here; its `>> sky` runs on train
    sky compute delete train               # its machines terminated
    sky server stop                        # every pool closed, then the server exits
    sky offers list runpod vastai --accelerator H100 --count 8 --spot --cheapest 5
    sky offers fetch aws                   # refresh the cached listing
    sky providers check runpod             # is the key set up, does the API answer?
    sky config validate                    # ./skyward.toml over ~/.skyward/defaults.toml
    sky config show
    sky log --follow                       # the pool log, as it is written
    sky version

A provider is named as in ``skyward.toml``: a ``[providers.NAME]`` table, or a type
(``aws``, ``runpod``, ``vastai``, ...) with its defaults and the credentials in the
environment. Exit status: 0, 1 when something failed (a provider's listing included),
2 for a bad command line.
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import attrs
import cattrs

import skyward_trio
from skyward_trio import ConfigError, Offer, Offers, ProviderConfig, SkywardError, accelerators
from skyward_trio._cost import duration
from skyward_trio._model import PROVIDER_TYPES
from skyward_trio.accelerators import Accelerator

from ._offers import offers

__all__ = ["main"]

_LOG_FILE = "~/.skyward/logs/skyward.log"


class _Refused(Exception):
    """A command line that names something that does not exist: said, exit status 2."""


def _providers(names: Sequence[str], args: argparse.Namespace) -> list[ProviderConfig]:
    """The providers ``names`` stand for: skyward.toml's first, then types; all of the
    file's when none is named."""
    from skyward_trio import config as sky_config

    loaded = sky_config.validate(args.project, args.defaults)
    if not names:
        if not loaded.providers:
            types = ", ".join(PROVIDER_TYPES)
            raise _Refused(
                "name a provider, e.g. runpod: skyward.toml defines none "
                f"([providers.NAME] tables); the types are {types}"
            )
        return list(loaded.providers.values())
    found: list[ProviderConfig] = []
    for name in names:
        if name in loaded.providers:
            found.append(loaded.providers[name])
        elif name.lower() in PROVIDER_TYPES:
            found.append(PROVIDER_TYPES[name.lower()]())
        else:
            defined = ", ".join(loaded.providers) or "none"
            raise _Refused(
                f"no provider {name!r}: not a [providers.NAME] table (defined: {defined}) nor "
                f"a type ({', '.join(PROVIDER_TYPES)})"
            )
    return found


def _accelerator(args: argparse.Namespace) -> Accelerator | None:
    if args.accelerator is None:
        if args.memory is not None or args.count != 1:
            raise _Refused("--count and --memory need --accelerator (--accelerator A100 --count 8)")
        return None
    factory = accelerators.by_name(args.accelerator)
    if factory is None:
        from skyward_trio.config import _unknown_accelerator

        raise _Refused(f"--accelerator: {_unknown_accelerator(args.accelerator)}")
    fields: dict[str, Any] = {"count": args.count}
    if args.memory is not None:
        fields["memory"] = args.memory
    try:
        return factory(**fields)
    except (TypeError, ValueError) as exc:
        raise _Refused(f"--accelerator {args.accelerator}: {exc}") from None


def _query(args: argparse.Namespace) -> Offers:
    listed = offers(
        _providers(args.providers, args),
        accelerator=_accelerator(args),
        region=args.region,
        max_age=0 if args.command == "fetch" or args.refresh else args.max_age,
    )
    if args.spot:
        listed = listed.spot()
    elif args.on_demand:
        listed = listed.on_demand()
    if args.max_price is not None:
        listed = listed.max_price(args.max_price)
    return listed.cheapest(args.cheapest)


def _gpus(offer: Offer) -> str:
    kind = offer.accelerator
    if kind is None:
        return "-"
    variant = " ".join(v for v in (kind.form_factor, kind.memory) if v)
    return f"{kind.count:g}× {kind.name}" + (f" {variant}" if variant else "")


def _usd(price: float | None) -> str:
    return "-" if price is None else f"${price:,.4g}"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def _age(fetched_at: float | None) -> str:
    if fetched_at is None:
        return "nothing fetched"
    seconds = max(0, round(time.time() - fetched_at))
    return f"fetched {seconds} s ago" if seconds < 120 else f"fetched {seconds // 60} min ago"


def _table(listed: Offers, out: TextIO) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{len(listed)} offer(s), {_age(listed.fetched_at)}, USD per node-hour")
    for column in ("provider", "offer", "accelerators", "vCPUs", "memory GB", "regions"):
        table.add_column(column)
    table.add_column("spot", justify="right")
    table.add_column("on demand", justify="right")
    for offer in listed:
        regions = ", ".join(offer.regions[:3]) + (" ..." if len(offer.regions) > 3 else "")
        table.add_row(
            offer.provider,
            offer.name,
            _gpus(offer),
            _number(offer.vcpus),
            _number(offer.memory_gb),
            regions or "-",
            _usd(offer.spot_price),
            _usd(offer.on_demand_price),
        )
    # Piped, a table as wide as it needs (up to 200 columns) rather than 80 and wrapped.
    Console(file=out, width=None if out.isatty() else 200).print(table)


def _offers(args: argparse.Namespace) -> int:
    listed = _query(args)
    if args.command == "fetch":
        providers = ", ".join(dict.fromkeys(o.provider for o in listed)) or "no provider"
        print(f"fetched {len(listed)} offer(s) from {providers}")
    elif args.json:
        rows = [
            {**cattrs.unstructure(offer), "price": listed.price(offer), "pricing": listed.pricing}
            for offer in listed
        ]
        print(json.dumps(rows, indent=2))
    else:
        _table(listed, sys.stdout)
    for provider, why in listed.errors:
        print(f"{provider}: {why}", file=sys.stderr)
    return 1 if listed.errors else 0


def _config(args: argparse.Namespace) -> int:
    from skyward_trio import config as sky_config

    loaded = sky_config.validate(args.project, args.defaults)
    if args.command == "validate":
        print(loaded.summary())
        return 0
    print(f"# read: {', '.join(loaded.files) or 'no configuration file'}")
    for name, provider in loaded.providers.items():
        print(f"providers.{name}: {provider!r}")
    for name, pool in loaded.pools.items():
        for index, spec in enumerate(pool.specs):
            at = f"pools.{name}" + (f".specs[{index}]" if len(pool.specs) > 1 else "")
            print(f"{at}: {spec!r}")
        if pool.options is not None:
            print(f"pools.{name}.options: {pool.options!r}")
    return 0


def _providers_command(args: argparse.Namespace) -> int:
    from skyward_trio import config as sky_config

    if args.command == "list":
        loaded = sky_config.validate(args.project, args.defaults)
        for name, provider in loaded.providers.items():
            print(f"{name}: {provider!r}")
        print(f"# types: {', '.join(PROVIDER_TYPES)}")
        return 0
    failed = 0
    for provider in _providers(args.providers, args):
        label = f"sky.{type(provider).__name__}()"
        try:
            listed = offers(provider, max_age=0)
        except (TypeError, ValueError, ImportError) as exc:
            print(f"{label}: not set up: {exc}")
            failed += 1
            continue
        if listed.errors:
            print(f"{label}: failed: {listed.errors[0][1]}")
            failed += 1
        else:
            print(f"{label}: OK, {len(listed)} offer(s)")
    return 1 if failed else 0


def _pool_line(pool: dict[str, Any]) -> str:
    nodes = pool.get("nodes")
    count = f"{nodes['ready']}/{nodes['desired']} node(s)" if nodes else "-"
    cost = pool.get("cost_usd")
    return (
        f"{pool['name']:<16} {pool['state']:<9} {pool['provider']:<10} {count:<13} "
        f"{'-' if cost is None else _usd(cost):<8} {duration(time.time() - pool['created'])}"
    )


def _server(args: argparse.Namespace) -> int:
    from . import _client

    if args.command == "start":
        _say_left(_client.left_by_stopped())  # a server stopped by a signal said it only here
        new = _client.start_server(port=args.port)
        print(
            f"skyward server started: {new['url']} (pid {new['pid']}); its log: {_client.LOG_FILE}"
        )
        return 0
    if args.command == "stop":
        closed, left = _client.stop_server()
        print("skyward server stopped" + (f"; closed {', '.join(closed)}" if closed else ""))
        _say_left(left)
        return 1 if left else 0
    state = _client.server_state()
    if state is None:
        print("skyward server: not running (start it with `sky server start`)")
        return 1
    status = _client.request("GET", "/status")
    print(
        f"skyward server {status['version']}: running at {state['url']} (pid "
        f"{status['pid']}, up {duration(time.time() - status['started'])}), "
        f"{len(status['pools'])} pool(s)"
    )
    for pool in status["pools"]:
        print(f"  {_pool_line(pool)}")
    _say_left(status.get("left", {}))
    return 0


def _say_left(left: dict[str, list[str]]) -> None:
    """Say (on stderr) which pools the server closed by itself (their idle timeout, or
    stopping) without confirming everything they started ended, and what each close
    said."""
    for name, closes in sorted(left.items()):
        for said in closes:
            print(
                f"sky: pool {name} was closed by the server, but not everything it started "
                f"could be confirmed ended: {said}",
                file=sys.stderr,
            )


def _compute(args: argparse.Namespace) -> int:
    from skyward_trio import config as sky_config

    from . import _client

    if args.command == "create":
        specs, options, _ = sky_config.named(
            args.name, None, project=args.project, defaults=args.defaults
        )
        _client.running_state()  # before anything is sent
        specs = tuple(_keyed(spec) for spec in specs)
        print(f"creating pool {args.name}", flush=True)
        console = _log_lines()
        made = _client.request_create(
            args.name, specs, options, idle_timeout=args.idle_timeout, on_event=console.on_event
        )
        nodes = made.get("nodes") or {"ready": 0}
        idle = ""
        if args.idle_timeout is not None:
            idle = f"; closed after {duration(args.idle_timeout)} without a call"
        print(f"pool {args.name} ready: {nodes['ready']} node(s) on {made['provider']}{idle}")
        return 0
    if args.command == "list":
        pools = _client.request("GET", "/pools")
        if args.json:
            print(json.dumps(pools, indent=2))
            return 0
        print(f"{'NAME':<16} {'STATE':<9} {'PROVIDER':<10} {'NODES':<13} {'COST':<8} AGE")
        for pool in pools:
            print(_pool_line(pool))
        _say_left(_client.request("GET", "/status").get("left", {}))
        return 0
    if args.command == "view":
        return _view(args.name)
    if args.command == "run":
        return _run(args.name, args.command_line)
    if args.command == "get":
        print(json.dumps(_client.request("GET", f"/pools/{args.name}"), indent=2))
        return 0
    left = _client.request("DELETE", f"/pools/{args.name}").get("left")
    if left is not None:
        print(
            f"sky: pool {args.name} closed, but not everything it started could be confirmed "
            f"ended: {left}",
            file=sys.stderr,
        )
        return 1
    print(f"pool {args.name} closed; its machines are terminated")
    return 0


def _run(name: str, command_line: list[str]) -> int:
    """Run a script (or ``-m module``) here, as ``python`` would, inside ``with
    sky.Client(name):``: its ``>> sky`` and ``@ sky`` reach the pool the server holds."""
    from . import _client

    if command_line[:1] == ["--"]:
        command_line = command_line[1:]
    module = command_line[1] if command_line[:1] == ["-m"] and len(command_line) > 1 else None
    if not command_line or (command_line[0] == "-m" and module is None):
        raise _Refused(
            f"sky compute run {name}: name a script to run: `sky compute run {name} train.py "
            f"[ARGS...]`, or a module: `sky compute run {name} -m package.module [ARGS...]`"
        )
    if module is None and not Path(command_line[0]).is_file():
        raise _Refused(f"sky compute run {name}: no script {command_line[0]!r} here")
    client = _client.Client(name)
    client.info()  # the pool is there, or this says which the server holds
    saved_argv, saved_path = sys.argv[:], sys.path[:]
    try:
        with client:
            if module is not None:
                sys.argv = [module, *command_line[2:]]
                sys.path.insert(0, os.getcwd())
                runpy.run_module(module, run_name="__main__", alter_sys=True)
            else:
                script = command_line[0]
                sys.argv = [script, *command_line[1:]]
                sys.path.insert(0, str(Path(script).resolve().parent))
                runpy.run_path(script, run_name="__main__")
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        raise
    except BaseException:
        traceback.print_exc()
        return 1
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
        client.close()
    return 0


_UNITS = {"": 1, "s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def _seconds(text: str) -> float:
    """``--idle-timeout``: ``90`` or ``90s``, ``30m``, ``2h``, ``1d``."""
    number = text.strip().rstrip("smhdin")
    unit = text.strip()[len(number) :]
    try:
        value = float(number) * _UNITS[unit]
    except (ValueError, KeyError):
        value = -1.0
    if value <= 0:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration: give seconds (90) or a number and a unit "
            "(90s, 30m, 2h, 1d), above 0"
        )
    return value


def _keyed(spec: Any) -> Any:
    """``spec`` with the keys ``skyward.toml`` names read here, from this shell's
    environment: its provider's API key when the file names none, and its volumes'
    storage keys (``access_key_env``...). The server (started from another shell, maybe)
    need not have them. A key this shell lacks is left to the server's own."""
    provider = spec.provider
    if getattr(provider, "api_key", "") is None and hasattr(provider, "resolved_api_key"):
        try:
            spec = attrs.evolve(
                spec, provider=attrs.evolve(provider, api_key=provider.resolved_api_key())
            )
        except ValueError:
            pass
    if getattr(provider, "client_secret", "") is None and hasattr(provider, "resolved_credentials"):
        try:  # sky.Verda: an OAuth client's id and secret
            client_id, secret = provider.resolved_credentials()
            spec = attrs.evolve(
                spec,
                provider=attrs.evolve(provider, client_id=client_id, client_secret=secret),
            )
        except ValueError:
            pass
    if hasattr(provider, "secret_key") and None in (provider.secret_key, provider.project_id):
        try:  # sky.Scaleway: a secret key and the Project's id
            secret, project = provider.resolved_credentials()
            spec = attrs.evolve(
                spec, provider=attrs.evolve(provider, secret_key=secret, project_id=project)
            )
        except ValueError:
            pass
    if hasattr(provider, "credentials_file") and provider.credentials is None:
        try:  # sky.GCP: the service account key's JSON, and the project
            key, project = provider.resolved_credentials()
            spec = attrs.evolve(
                spec,
                provider=attrs.evolve(provider, credentials=json.dumps(key), project=project),
            )
        except ValueError:
            pass
    volumes = tuple(_volume_keyed(volume) for volume in spec.volumes)
    return attrs.evolve(spec, volumes=volumes) if volumes != spec.volumes else spec


def _volume_keyed(volume: Any) -> Any:
    from skyward_trio._model import HYPERSTACK_API_KEY_ENV
    from skyward_trio.storage import EnvKey, HyperstackKeys

    storage = volume.storage
    if storage is None:
        return volume
    issuer = storage.key_issuer
    if isinstance(issuer, HyperstackKeys):  # its API key: named, or HYPERSTACK_API_KEY
        given = issuer.api_key
        name = given.name if isinstance(given, EnvKey) else None
        name = HYPERSTACK_API_KEY_ENV if given is None else name
        if name is None or name not in os.environ:
            return volume
        issuer = attrs.evolve(issuer, api_key=os.environ[name])
        return attrs.evolve(volume, storage=attrs.evolve(storage, key_issuer=issuer))
    read = {}
    for field in ("access_key", "secret_key"):
        key = getattr(storage, field)
        if isinstance(key, EnvKey) and key.name in os.environ:
            read[field] = os.environ[key.name]
    return attrs.evolve(volume, storage=attrs.evolve(storage, **read)) if read else volume


def _log_lines() -> Any:
    """A log console writing to stdout (events as ``HH:MM:SS  <label>  <message>`` lines)."""
    from skyward_trio._console import LogConsole, heartbeat_interval

    return LogConsole(interval=heartbeat_interval(), defaulted_to_local=False, out=sys.stdout)


def _view(name: str) -> int:
    """Print a pool's events as the log console does, until it closes or Ctrl-C."""
    from . import _client

    console = _log_lines()
    with _client.Client(name) as pool:
        for event in pool.events():
            console.on_event(event)
            console.beat_if_due(time.time())
    print(f"pool {name} closed")
    return 0


def _tail(path: Path, lines: int) -> list[str]:
    with path.open(errors="replace") as log:
        return log.readlines()[-lines:] if lines else []


def _log(args: argparse.Namespace) -> int:
    path = Path(os.path.expanduser(args.file))
    if not path.exists():
        print(
            f"no log at {path}: pools write it when they run (Options(logging=...) "
            "names another file: pass it with --file)",
            file=sys.stderr,
        )
        return 1
    sys.stdout.writelines(_tail(path, args.lines))
    sys.stdout.flush()
    if not args.follow:
        return 0
    with path.open(errors="replace") as log:
        log.seek(0, os.SEEK_END)
        while True:
            line = log.readline()
            if line:
                sys.stdout.write(line)
                sys.stdout.flush()
            elif path.stat().st_size < log.tell():  # rotated: the new file from its start
                log.close()
                log = path.open(errors="replace")
            else:
                time.sleep(0.2)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sky", description="Skyward: the pool server, offers, configuration and logs."
    )
    commands = parser.add_subparsers(dest="group", required=True)

    commands.add_parser("version", help="print the version")

    files = argparse.ArgumentParser(add_help=False)
    files.add_argument("--project", help="the project file (default ./skyward.toml)")
    files.add_argument("--defaults", help="the global file (default ~/.skyward/defaults.toml)")

    server = commands.add_parser("server", help="the background process that holds pools")
    server_commands = server.add_subparsers(dest="command", required=True)
    started = server_commands.add_parser("start", help="start it (on 127.0.0.1)")
    started.add_argument("--port", type=int, default=0, help="its TCP port (default: any free)")
    server_commands.add_parser("stop", help="close every pool it holds, then stop it")
    server_commands.add_parser("status", help="whether it runs, and its pools")

    compute = commands.add_parser("compute", help="pools the server holds")
    compute_commands = compute.add_subparsers(dest="command", required=True)
    created = compute_commands.add_parser(
        "create", parents=[files], help="create [pools.NAME] of skyward.toml on the server"
    )
    created.add_argument("name", help="a [pools.NAME] table of skyward.toml")
    created.add_argument(
        "--idle-timeout",
        type=_seconds,
        metavar="DURATION",
        help="close it after this long without a call: 90 (seconds), 30m, 2h, 1d",
    )
    listed = compute_commands.add_parser("list", help="the pools the server holds")
    listed.add_argument("--json", action="store_true", help="as JSON")
    got = compute_commands.add_parser("get", help="one pool, as JSON")
    got.add_argument("name")
    viewed = compute_commands.add_parser(
        "view", help="follow a pool: its events as log lines, until it closes or Ctrl-C"
    )
    viewed.add_argument("name")
    ran = compute_commands.add_parser(
        "run",
        help="run a Python script here whose `>> sky` and `@ sky` reach a pool the server holds",
        usage="sky compute run NAME (SCRIPT | -m MODULE) [ARGS ...]",
    )
    ran.add_argument("name", help="a pool the server holds")
    ran.add_argument(
        "command_line", nargs=argparse.REMAINDER, help="SCRIPT [ARGS ...] or -m MODULE [ARGS ...]"
    )
    deleted = compute_commands.add_parser("delete", help="close a pool: terminate its machines")
    deleted.add_argument("name")

    offer = commands.add_parser("offers", help="what providers offer, and at what price")
    offer_commands = offer.add_subparsers(dest="command", required=True)
    asked = argparse.ArgumentParser(add_help=False, parents=[files])
    asked.add_argument(
        "providers", nargs="*", help="[providers.NAME] tables or types (default: the file's)"
    )
    asked.add_argument("--accelerator", help="a model of sky.accelerators (H100, A100, L4, ...)")
    asked.add_argument("--count", type=int, default=1, help="accelerators per node (default 1)")
    asked.add_argument("--memory", help="the accelerator's memory (80GB)")
    asked.add_argument("--region", help="the AWS region to price (default: the provider's)")
    shown = offer_commands.add_parser(
        "list", parents=[asked], help="list offers (from the cache when fresh)"
    )
    pricing = shown.add_mutually_exclusive_group()
    pricing.add_argument("--spot", action="store_true", help="spot offers, priced so")
    pricing.add_argument("--on-demand", action="store_true", help="on-demand offers, priced so")
    shown.add_argument("--max-price", type=float, help="USD per node-hour, at most")
    shown.add_argument("--cheapest", type=int, help="the N cheapest only")
    shown.add_argument(
        "--max-age", type=float, default=900.0, help="seconds a cached listing is used (900)"
    )
    shown.add_argument("--refresh", action="store_true", help="fetch now, whatever the cache")
    shown.add_argument("--json", action="store_true", help="JSON, one object per offer")
    offer_commands.add_parser("fetch", parents=[asked], help="fetch listings now and cache them")

    providers = commands.add_parser("providers", help="the providers, and whether they answer")
    provider_commands = providers.add_subparsers(dest="command", required=True)
    provider_commands.add_parser(
        "list", parents=[files], help="skyward.toml's providers and the types there are"
    )
    checked = provider_commands.add_parser(
        "check", parents=[files], help="list each one's offers now: its key works, its API answers"
    )
    checked.add_argument(
        "providers", nargs="*", help="[providers.NAME] tables or types (default: the file's)"
    )

    config = commands.add_parser("config", help="check or show skyward.toml")
    config_commands = config.add_subparsers(dest="command", required=True)
    config_commands.add_parser("validate", parents=[files], help="check the files")
    config_commands.add_parser("show", parents=[files], help="every provider and pool, built")

    log = commands.add_parser("log", help="show the pool log (~/.skyward/logs/skyward.log)")
    log.add_argument("--file", default=_LOG_FILE, help=f"the log file (default {_LOG_FILE})")
    log.add_argument("-n", "--lines", type=int, default=50, help="lines to show first (50)")
    log.add_argument("-f", "--follow", action="store_true", help="then print lines as they come")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one ``sky`` command; returns its exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.group == "offers" and args.command == "fetch":
        args.spot = args.on_demand = args.refresh = False
        args.max_price = args.cheapest = None
    try:
        if args.group == "version":
            print(f"skyward {skyward_trio.__version__}")
            return 0
        if args.group == "offers":
            return _offers(args)
        if args.group == "config":
            return _config(args)
        if args.group == "providers":
            return _providers_command(args)
        if args.group == "server":
            return _server(args)
        if args.group == "compute":
            return _compute(args)
        return _log(args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    except SkywardError as exc:  # the server not running, or refusing
        print(f"sky: {exc}", file=sys.stderr)
        return 1
    except _Refused as exc:
        parser.exit(2, f"sky: {exc}\n")
    except (TypeError, ValueError, ImportError) as exc:  # a provider not set up, say
        print(f"sky: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `sky ... | head`: the reader had enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def main_exit() -> None:
    """The ``sky`` console script."""
    sys.exit(main())

"""``python -m arc_actors`` / ``arc-actors``: the command line.

``serve [APP]`` serves a ``Server``; APP is ``module:attribute``, ``path/to/file.py[:attribute]``,
or nothing for the built-in demo agents; ``--fault`` arms faults, ``--admin-port`` opens the fault admin
endpoint. ``chaos URL`` drives a running server and reports what it lost. Bad input is one line on
stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from arc_actors import __version__
from arc_actors.chaos import (
    DEFAULT_CONCURRENCY,
    DEFAULT_DURATION_S,
    DEFAULT_GRACE_S,
    DEFAULT_TIMEOUT_S,
    ChaosError,
    ChaosProgress,
    run_chaos,
)
from arc_actors.config import DEFAULT_CONFIG_FILE, UNSET, ConfigError, load_settings
from arc_actors.demo import DEMO_AGENTS
from arc_actors.faults import SPEC_FORM, FaultSpecError
from arc_actors.logs import configure_logging
from arc_actors.server import Server

DEFAULT_ATTRIBUTE = "server"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


class AppError(Exception):
    """APP does not name a Server; the message says why."""


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "chaos":
        return _chaos(args)
    parser.print_help()
    return 2


def _serve(args: argparse.Namespace) -> int:
    try:
        server = load_app(args.app)
        flags = {
            "host": args.host,
            "port": args.port,
            "log_level": args.log_level,
            "log_json": args.log_json,
            "engine": args.engine,
            "ray_address": args.ray_address,
        }
        settings = load_settings(args.config, overrides=flags)
        server.configure(settings)
    except (AppError, ConfigError) as exc:
        print(f"arc_actors: {exc}", file=sys.stderr)
        return 2
    serving = settings.server
    log_level = _given(serving.log_level, "INFO")
    log_json = _given(serving.log_json, False)
    if args.fault:
        configure_logging(log_level, json_lines=log_json)
        try:
            server.faults.arm(args.fault, seed=args.fault_seed)
        except FaultSpecError as exc:
            print(f"arc_actors: --fault {exc}", file=sys.stderr)
            return 2
    server.run(
        host=_given(serving.host, DEFAULT_HOST),
        port=_given(serving.port, DEFAULT_PORT),
        log_level=log_level,
        log_json=log_json,
        admin_port=args.admin_port,
    )
    return 0


def _given(value: Any, default: Any) -> Any:
    return default if value is UNSET else value


def _chaos(args: argparse.Namespace) -> int:
    agents = [agent.strip() for agent in args.agents.split(",") if agent.strip()] if args.agents else None
    try:
        report = run_chaos(
            args.url,
            agents=agents,
            duration_s=args.duration,
            concurrency=args.concurrency,
            rate=args.rate,
            requests=args.requests,
            seed=args.seed,
            timeout_s=args.timeout,
            grace_s=args.grace,
            progress=_progress_printer(),
        )
    except (ChaosError, ValueError) as exc:
        print(f"arc_actors: chaos: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\narc_actors: chaos: interrupted, no report", file=sys.stderr)
        return 130
    if args.json:
        sys.stdout.write(report.to_json().decode() + "\n")
    else:
        print(report.render())
    return 1 if report.lost else 0


def _progress_printer() -> Callable[[ChaosProgress], None]:
    """A live progress line on stderr: rewritten in place on a terminal, one line per update elsewhere."""
    live = sys.stderr.isatty()

    def show(progress: ChaosProgress) -> None:
        if live:
            sys.stderr.write("\r" + progress.line().ljust(79))
        else:
            sys.stderr.write(progress.line() + "\n")
        sys.stderr.flush()

    return show


def load_app(app: str | None) -> Server:
    """The :class:`Server` that APP names (see the module docstring)."""
    if app is None:
        from arc_actors.demo import build_server

        return build_server()
    target, _, attribute = app.partition(":")
    attribute = attribute or DEFAULT_ATTRIBUTE
    module = _load_file(Path(target)) if target.endswith(".py") else _import(target)
    value = getattr(module, attribute, None)
    if callable(value) and not isinstance(value, Server):
        try:
            value = value()
        except Exception as exc:  # noqa: BLE001 - a failing APP factory is one line, not a traceback
            raise AppError(f"{app!r}: calling {target}.{attribute}() failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(value, Server):
        found = "nothing" if value is None else type(value).__name__
        raise AppError(f"{app!r}: {target}.{attribute} is {found}, not an arc_actors Server")
    return value


def _import(name: str) -> ModuleType:
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        return importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - any failure to load APP is one line, not a traceback
        raise AppError(f"cannot import APP module {name!r}: {type(exc).__name__}: {exc}") from None


def _load_file(path: Path) -> ModuleType:
    if not path.is_file():
        raise AppError(f"APP file {str(path)!r} does not exist")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.resolve().parent))
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - any failure to load APP is one line, not a traceback
        raise AppError(f"cannot load APP file {str(path)!r}: {type(exc).__name__}: {exc}") from None
    return module


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="arc-actors",
        description="Serve many ARC agents in one process, each agent an actor with its own mailbox.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="serve agents behind POST /arc",
        description="Serve a Server's agents behind POST /arc, with GET /health and GET /agent-info. "
        "Stops cleanly on SIGINT or SIGTERM.",
    )
    serve.add_argument(
        "app",
        nargs="?",
        metavar="APP",
        help="the Server to serve: 'module:attribute' or 'file.py[:attribute]' (attribute defaults to "
        f"'{DEFAULT_ATTRIBUTE}'; a function returning a Server also works). Omit it to serve the "
        f"built-in demo agents {', '.join(DEMO_AGENTS)}.",
    )
    serve.add_argument("--host", help=f"interface to listen on (default: {DEFAULT_HOST}; env ARC_HOST)")
    serve.add_argument("--port", type=int, help=f"port to listen on (default: {DEFAULT_PORT}; env ARC_PORT)")
    serve.add_argument(
        "--log-level",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        type=str.upper,
        help="log level (default: INFO; env ARC_LOG_LEVEL)",
    )
    serve.add_argument(
        "--log-json",
        action="store_true",
        default=None,
        help="log one JSON object per line (env ARC_LOG_JSON)",
    )
    serve.add_argument(
        "--engine",
        choices=["pykka", "ray"],
        help="what runs the agents: pykka threads in this process, or Ray actors on a cluster "
        "(default: pykka; env ARC_ENGINE; ray needs pip install 'arc-actors[ray]')",
    )
    serve.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="with --engine ray: the Ray cluster to join, e.g. 'auto' (default: start a local Ray; "
        "env ARC_RAY_ADDRESS)",
    )
    serve.add_argument(
        "--config",
        metavar="PATH",
        help=f"TOML settings file (default: ./{DEFAULT_CONFIG_FILE} when it exists); ARC_* environment "
        "variables override it and flags override both",
    )
    serve.add_argument(
        "--fault",
        action="append",
        metavar="SPEC",
        help=f"inject faults, repeatable: {SPEC_FORM} with KIND crash, hang, latency or error, e.g. "
        "finance-agent:crash=0.2,hang=0.05:5s or hr-agent.chat.start:latency=1:100ms-300ms or "
        "support-agent:error=0.1:-41003",
    )
    serve.add_argument("--fault-seed", type=int, default=0, help="seed of the faults' draws (default: %(default)s)")
    serve.add_argument(
        "--admin-port",
        type=int,
        metavar="PORT",
        help="serve the fault admin endpoint (GET/PUT/DELETE /faults) on 127.0.0.1:PORT; off by default",
    )
    chaos = commands.add_parser(
        "chaos",
        help="drive an ARC server with chat.start load and report what it lost",
        description="Send chat.start requests to a running ARC server's agents for a bounded time, each agent "
        "loaded on its own (its own callers, or its own rate), then report per agent: sent, answered, lost "
        "(no ARC answer at all), unfinished (in flight when the run ended), answers per second, errors by "
        "code, latency percentiles, and restarts when /health reports them. Exits 1 when anything is lost.",
    )
    chaos.add_argument("url", metavar="URL", help="the server's /arc endpoint, e.g. http://127.0.0.1:8000/arc")
    chaos.add_argument("--agents", help="comma-separated agent ids (default: the agents /agent-info lists)")
    chaos.add_argument(
        "--duration", type=float, default=DEFAULT_DURATION_S, help="seconds of load (default: %(default)s)"
    )
    chaos.add_argument(
        "--concurrency",
        type=int,
        default=DEFAULT_CONCURRENCY,
        help="callers per agent, each sending its next request when its last is answered (default: %(default)s)",
    )
    chaos.add_argument(
        "--rate",
        type=float,
        help="instead of callers: requests a second per agent, sent on schedule whatever comes back",
    )
    chaos.add_argument(
        "--requests", type=int, help="stop after this many requests, split among the agents (default: only --duration)"
    )
    chaos.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help="seconds to wait for each answer before counting it lost (default: %(default)s)",
    )
    chaos.add_argument(
        "--grace",
        type=float,
        default=DEFAULT_GRACE_S,
        help="seconds to wait after --duration for the answers still due, before counting them unfinished "
        "(default: %(default)s)",
    )
    chaos.add_argument("--seed", type=int, default=0, help="seed of the message draws (default: 0)")
    chaos.add_argument("--json", action="store_true", help="print the report as one JSON object")
    return parser

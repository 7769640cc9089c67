"""``python -m arc_actors`` / ``arc-actors``: the command line.

``serve [APP]`` serves a ``Server``; APP is ``module:attribute``, ``path/to/file.py[:attribute]``,
or nothing for the built-in demo agents. Bad input is one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from arc_actors.config import DEFAULT_CONFIG_FILE, UNSET, ConfigError, load_settings
from arc_actors.server import Server

DEFAULT_ATTRIBUTE = "server"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


class AppError(Exception):
    """APP does not name a Server; the message says why."""


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command != "serve":
        parser.print_help()
        return 2
    try:
        server = load_app(args.app)
        flags = {"host": args.host, "port": args.port, "log_level": args.log_level, "log_json": args.log_json}
        settings = load_settings(args.config, overrides=flags)
        server.configure(settings)
    except (AppError, ConfigError) as exc:
        print(f"arc_actors: {exc}", file=sys.stderr)
        return 2
    serving = settings.server
    server.run(
        host=_given(serving.host, DEFAULT_HOST),
        port=_given(serving.port, DEFAULT_PORT),
        log_level=_given(serving.log_level, "INFO"),
        log_json=_given(serving.log_json, False),
    )
    return 0


def _given(value: Any, default: Any) -> Any:
    return default if value is UNSET else value


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
        "built-in demo agents finance-agent, hr-agent and support-agent.",
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
        "--config",
        metavar="PATH",
        help=f"TOML settings file (default: ./{DEFAULT_CONFIG_FILE} when it exists); ARC_* environment "
        "variables override it and flags override both",
    )
    return parser

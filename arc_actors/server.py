"""``Server``: where agents are declared and the runtime is assembled and run.

It keeps the reference SDK's API (``Server(server_id=...)``, ``@server.agent_handler(agent_id,
method)``, ``server.run(host, port)``) and adds ``server.add_agent(AgentSubclass)``. Every agent id,
however declared, becomes one actor.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web
from loguru import logger

from arc_actors.admin import AdminPortError, AdminSite
from arc_actors.agent import Agent, AgentSpec, Handler
from arc_actors.auth import AuthConfig, Authenticator
from arc_actors.chats import ChatBook
from arc_actors.config import UNSET, ConfigError, Settings
from arc_actors.engine import AgentState, Engine, EngineUnavailable
from arc_actors.faults import FaultInjector, FaultPlan
from arc_actors.gateway import (
    DEFAULT_BODY_TIMEOUT_S,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_MAX_PARAMS_BYTES,
    DEFAULT_MAX_PARAMS_CONTAINERS,
    DEFAULT_MAX_PARAMS_DEPTH,
    Gateway,
    GatewayConfig,
)
from arc_actors.logs import configure_logging
from arc_actors.metrics import Metrics
from arc_actors.pykka_engine import PykkaEngine
from arc_actors.router import Router
from arc_actors.store import DEFAULT_MAX_RECORDS, ServingStore, Store
from arc_actors.streaming import DEFAULT_KEEPALIVE_S
from arc_actors.supervisor import RestartPolicy, Supervisor, hang_after_from_env
from arc_actors.tasks import TaskBook, live_task
from arc_actors.webhooks import WebhookConfig, Webhooks, accept_notifications

H = TypeVar("H", bound=Handler)

DRAIN_TIMEOUT_S = 5.0
"""How long a stopping server lets agents finish the requests already queued or running."""
STOP_TIMEOUT_S = 1.0
"""How long, after the drain, a stopping server waits for agents' threads to end (a hung one never does)."""
AGENT_START_WAIT_S = 10.0
"""How long a starting server waits for its agents' first instances (``on_start``) before it listens."""
ENGINES = ("pykka", "ray")
"""What runs the agents: ``pykka`` in this process (the default), ``ray`` on a Ray cluster."""
DEFAULT_MAILBOX_SIZE = 1000
"""How many requests may wait for an agent before more are refused -44007 (backpressure)."""
ENGINE_ENV = "ARC_ENGINE"
RAY_ADDRESS_ENV = "ARC_RAY_ADDRESS"

ADMIN_SITE = web.AppKey("arc_actors_admin_site", AdminSite)
DRAIN = web.AppKey("arc_actors_drain", Callable[[], Awaitable[None]])
"""The app's drain, for ``run`` to start on SIGTERM before aiohttp closes its connections."""
"""Where an app keeps its fault admin endpoint, when it has one."""


def new_event_loop() -> asyncio.AbstractEventLoop:
    """The gateway's event loop: uvloop where it is installed (about 15% more requests per second
    on the demo agents), else asyncio's own."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


GC_YOUNG_THRESHOLD = 10_000
"""Allocations the collector lets pass before it looks at young objects (Python's default: 700)."""


def _check_can_listen(host: str, port: int) -> None:
    """End the process with one line, before any agent starts, when it could not listen on ``host:port``
    (aiohttp binds only after the agents have started, and the system takes a port over 65535 modulo
    65536, silently)."""
    where = f"arc_actors: cannot listen on {host}:{port}"
    if not 0 <= port <= 65535:
        raise SystemExit(f"{where}: a port is 0-65535")
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise SystemExit(f"{where}: {exc.strerror}") from None
    for family, kind, protocol, _, address in addresses:
        with socket.socket(family, kind, protocol) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp's own socket
            try:
                probe.bind(address)
            except OSError as exc:
                raise SystemExit(f"{where}: {exc.strerror or exc}") from None


class _StopOnSignals:
    """On SIGTERM or SIGINT, drain while the connections are still open, then stop as aiohttp does on
    a signal: aiohttp closes every connection before its shutdown hooks run, so a caller whose keep-alive
    connection was open would get a reset instead of the drain's -41002. A signal before serving began,
    or a second one, stops at once."""

    def __init__(self, app: web.Application) -> None:
        self._app = app
        self._serving = False
        self._draining: list[asyncio.Task[None]] = []

    async def install(self, _: web.Application) -> None:
        loop = asyncio.get_running_loop()
        for signal_number in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):  # no signal handlers on this platform's loop
                loop.add_signal_handler(signal_number, self._on_signal)

    async def serving(self, _: web.Application) -> None:
        self._serving = True

    def _on_signal(self) -> None:
        if self._draining or not self._serving:
            _stop()
        else:
            self._draining.append(asyncio.get_running_loop().create_task(self._drain_then_stop()))

    async def _drain_then_stop(self) -> None:
        try:
            await self._app[DRAIN]()
        finally:
            asyncio.get_running_loop().call_soon(_stop)


def _stop() -> None:
    raise web.GracefulExit  # what aiohttp's own signal handler raises: run_app then cleans up


async def _tune_garbage_collector(_: web.Application) -> None:
    """Set the collector for a server: what exists once it has started (modules, agents) is moved out of
    its sight, so full collections stop walking it (each took 20-40 ms); and the young generation's
    threshold is raised above the objects a few dozen requests in flight hold, which at 700 were
    collected every 90 requests. Measured at c=64: the collector's time fell from some 10 to under
    2 µs per request."""
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


async def _agents_started(router: Router, timeout_s: float) -> list[str]:
    """Wait until no agent is still making its first instance; returns the ids still starting at the
    deadline. Requests would queue meanwhile anyway, but ``/health`` then says ``healthy`` from the first
    answer on."""
    deadline = time.monotonic() + timeout_s
    while True:
        starting = [agent_id for agent_id in router.agent_ids if router.status(agent_id).state is AgentState.STARTING]
        if not starting or time.monotonic() > deadline:
            return starting
        await asyncio.sleep(0.01)


class Server:
    """A set of agents served behind one ``POST /arc`` endpoint."""

    def __init__(
        self,
        server_id: str = "arc-server",
        *,
        version: str = "1.0.0",
        description: str = "",
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        reference_statuses: bool = False,
        restart_policy: RestartPolicy | None = None,
        mailbox_size: int = DEFAULT_MAILBOX_SIZE,
        request_timeout_s: float | None = None,
        drain_timeout_s: float = DRAIN_TIMEOUT_S,
        max_params_depth: int = DEFAULT_MAX_PARAMS_DEPTH,
        max_params_containers: int = DEFAULT_MAX_PARAMS_CONTAINERS,
        max_params_bytes: int = DEFAULT_MAX_PARAMS_BYTES,
        max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
        body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S,
        auth: AuthConfig | None = None,
        metrics: bool = True,
        store: Store | str | Path | None = None,
        state_max_records: int = DEFAULT_MAX_RECORDS,
        faults: FaultPlan | None = None,
        stream_keepalive_s: float = DEFAULT_KEEPALIVE_S,
        engine: str | None = None,
        ray_address: str | None = None,
        ray_namespace: str | None = None,
        webhooks: WebhookConfig | None = None,
    ) -> None:
        """``restart_policy``, ``mailbox_size`` and ``request_timeout_s`` are the defaults for agents that
        bring none of their own; the policy's ``hang_after_s``, when unset, comes from
        ``ARC_HANG_AFTER_S`` (else 120 s). ``max_body_bytes``, ``max_params_bytes``, ``max_params_depth``,
        ``max_params_containers`` and ``max_header_bytes`` (per header line, enforced by aiohttp's
        parser) bound what a request may carry, and ``body_timeout_s`` how long its body may take to
        arrive.
        On SIGTERM or SIGINT the server refuses new requests and lets queued and running ones finish for
        up to ``drain_timeout_s``; what is left then is answered -41002.
        ``auth``, when enabled, puts ``/arc`` behind bearer tokens; a bad one (a missing key, PyJWT not
        installed) is an error here. ``metrics`` serves Prometheus metrics at ``GET /metrics``.
        ``store`` keeps managed chats and tasks: a path is an SQLite file (opened when serving starts, closed when
        it stops), a ``Store`` is used as it is (its owner closes it), None keeps
        them in memory for as long as the server serves. The two the server opens itself keep at most
        ``state_max_records`` of each kind (chats, tasks, subscriptions; 0: no bound), forgetting the least
        recently written first, so that no stream of requests can take all the memory or the disk.
        ``stream_keepalive_s`` is how long a streamed (SSE) answer may stay silent before a ``: keep-alive``
        comment frame is sent.
        ``webhooks`` says how task events are delivered to ``task.subscribe`` callbacks (secret, allow
        list, timeout, retries, queue); the default delivers anywhere, unsigned.
        ``faults`` turns fault injection on and arms that plan (``FaultPlan()`` arms nothing, to arm
        faults later through ``faults``). Unless injection is turned on before serving, handlers
        are never wrapped.
        ``engine`` is what runs the agents (see ``ENGINES``; None: ``ARC_ENGINE``, else ``pykka``). With
        ``ray``, ``ray_address`` is the cluster to join (None: ``ARC_RAY_ADDRESS``, else a local Ray
        is started) and ``ray_namespace`` where the agents' actors are named (default
        ``arc_actors-<server_id>``: every gateway serving this app reaches the same actors)."""
        self.server_id = server_id
        self.metrics = metrics
        self.store = store
        self.state_max_records = state_max_records
        self.webhooks = webhooks or WebhookConfig()
        self.restart_policy = restart_policy or RestartPolicy()
        self.mailbox_size = mailbox_size
        self.request_timeout_s = request_timeout_s
        self.drain_timeout_s = drain_timeout_s
        self.engine = engine
        self.ray_address = ray_address
        self.ray_namespace = ray_namespace
        self._authenticator: Authenticator | None = None
        if auth is not None:
            self._set_auth(auth)
        self._config = GatewayConfig(
            server_id=server_id,
            version=version,
            description=description or f"arc_actors server {server_id}",
            max_body_bytes=max_body_bytes,
            max_params_depth=max_params_depth,
            max_params_containers=max_params_containers,
            max_params_bytes=max_params_bytes,
            max_header_bytes=max_header_bytes,
            body_timeout_s=body_timeout_s,
            reference_statuses=reference_statuses,
            stream_keepalive_s=stream_keepalive_s,
        )
        self._check_settings()
        self._handlers: dict[str, dict[str, Handler]] = {}
        self._handler_options: dict[str, dict[str, Any]] = {}
        self._classes: dict[str, AgentSpec] = {}
        self._agent_overrides: dict[str, dict[str, Any]] = {}
        self._router: Router | None = None
        self.faults = FaultInjector(lambda: self.agent_methods)
        """This server's fault registry: arm, clear, and count injected faults, also while serving."""
        if faults is not None:
            self.faults.arm(faults)

    def _set_auth(self, auth: AuthConfig) -> None:
        self._authenticator = Authenticator(auth) if auth.enabled else None
        if not auth.enabled and (auth.tokens or auth.jwt is not None):
            logger.warning("auth has tokens or jwt configured but enabled is false: /arc is open to anyone")

    def _check_settings(self) -> None:
        if self.mailbox_size < 1:
            raise ValueError(f"mailbox_size must be >= 1, got {self.mailbox_size!r}")
        if self.state_max_records < 0:
            raise ValueError(f"state_max_records must be >= 0 (0: no bound), got {self.state_max_records!r}")
        if self.drain_timeout_s < 0:
            raise ValueError(f"drain_timeout_s must be >= 0, got {self.drain_timeout_s!r}")
        if self.request_timeout_s is not None and not self.request_timeout_s > 0:
            raise ValueError(f"request_timeout_s must be > 0, got {self.request_timeout_s!r}")
        if self.engine is not None and self.engine not in ENGINES:
            raise ValueError(f"engine is one of {', '.join(ENGINES)}, got {self.engine!r}")
        for name in ("stream_keepalive_s", "body_timeout_s"):
            if not getattr(self._config, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self._config, name)!r}")
        limits = ("max_body_bytes", "max_params_bytes", "max_params_depth", "max_params_containers", "max_header_bytes")
        for name in limits:
            if getattr(self._config, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self._config, name)!r}")

    def configure(self, settings: Settings) -> None:
        """Apply what a configuration (file, environment, flags) sets, over what the code passed.

        Raises ``ConfigError`` naming an agent the server does not declare or
        a value out of range."""
        server = settings.server
        names = (
            "mailbox_size",
            "request_timeout_s",
            "drain_timeout_s",
            "metrics",
            "restart_policy",
            "engine",
            "ray_address",
            "ray_namespace",
            "state_max_records",
        )
        for name in names:
            if getattr(server, name) is not UNSET:
                setattr(self, name, getattr(server, name))
        if server.state_path is not UNSET:
            self.store = server.state_path
        gateway_fields = (
            "max_body_bytes",
            "max_params_bytes",
            "max_params_depth",
            "max_params_containers",
            "max_header_bytes",
            "body_timeout_s",
            "reference_statuses",
            "stream_keepalive_s",
        )
        changes = {name: getattr(server, name) for name in gateway_fields if getattr(server, name) is not UNSET}
        self._config = replace(self._config, **changes)
        hooks = {
            name.removeprefix("webhook_"): getattr(server, name)
            for name in server.__struct_fields__
            if name.startswith("webhook_") and getattr(server, name) is not UNSET
        }
        try:
            self.webhooks = replace(self.webhooks, **hooks)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if settings.auth is not UNSET:
            try:
                self._set_auth(settings.auth)
            except (ValueError, RuntimeError) as exc:
                raise ConfigError(f"[auth]: {exc}") from None
        unknown = sorted(set(settings.agents) - set(self.agent_ids))
        if unknown:
            raise ConfigError(f"config names agents this server does not declare: {', '.join(unknown)}")
        for agent_id, agent in settings.agents.items():
            options = {
                name: getattr(agent, name) for name in agent.__struct_fields__ if getattr(agent, name) is not UNSET
            }
            self._agent_overrides[agent_id] = {
                "policy" if name == "restart_policy" else name: value for name, value in options.items()
            }
        try:
            self._check_settings()
            self._specs()
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    def agent_handler(
        self,
        agent_id: str,
        method: str,
        policy: RestartPolicy | None = None,
        *,
        concurrency: int | None = None,
        mailbox_size: int | None = None,
        request_timeout_s: float | None = None,
        managed_chats: bool | None = None,
        max_in_flight: int | None = None,
    ) -> Callable[[H], H]:
        """Declare ``async def handler(params, context)`` (or a plain ``def``) as ``agent_id``'s
        handler of ARC ``method``. All handlers of one agent id share one agent, and its options
        (``policy``, ``concurrency``, ``mailbox_size``, ``request_timeout_s``, ``managed_chats``,
        ``max_in_flight``): any of
        its handlers may carry them, two different values of one option are an error."""
        if agent_id in self._classes:
            raise ValueError(f"agent {agent_id!r} is already added as {self._classes[agent_id]!r}")
        options = self._handler_options.setdefault(agent_id, {})
        given = {
            "policy": policy,
            "concurrency": concurrency,
            "mailbox_size": mailbox_size,
            "request_timeout_s": request_timeout_s,
            "managed_chats": managed_chats,
            "max_in_flight": max_in_flight,
        }
        for name, value in given.items():
            if value is not None and options.setdefault(name, value) != value:
                raise ValueError(f"agent {agent_id!r} has two different {name} values: {options[name]!r} and {value!r}")

        def register(handler: H) -> H:
            if not callable(handler):
                raise TypeError(f"a handler is callable, got {handler!r}")
            methods = self._handlers.setdefault(agent_id, {})
            if method in methods:
                raise ValueError(f"agent {agent_id!r} already has a handler for {method!r}")
            methods[method] = handler
            return handler

        return register

    def add_agent(
        self,
        agent_class: type[Agent],
        *args: Any,
        agent_id: str | None = None,
        policy: RestartPolicy | None = None,
        concurrency: int | None = None,
        mailbox_size: int | None = None,
        request_timeout_s: float | None = None,
        managed_chats: bool | None = None,
        max_in_flight: int | None = None,
        **kwargs: Any,
    ) -> None:
        """Serve an ``Agent`` subclass; each (re)start makes ``agent_class(*args, **kwargs)``.

        ``agent_id``, ``policy``, ``concurrency``, ``mailbox_size``, ``request_timeout_s``,
        ``managed_chats`` and ``max_in_flight`` default to the class attributes of the same names
        (``restart_policy`` for ``policy``)."""
        spec = AgentSpec.of_class(
            agent_class,
            agent_id,
            args,
            kwargs,
            policy,
            concurrency,
            mailbox_size,
            request_timeout_s,
            managed_chats,
            max_in_flight,
        )
        if spec.agent_id in self._classes or spec.agent_id in self._handlers:
            raise ValueError(f"agent {spec.agent_id!r} is already declared on this server")
        self._classes[spec.agent_id] = spec

    @property
    def agent_ids(self) -> list[str]:
        """Every agent id declared so far, in declaration order."""
        return [*self._handlers, *self._classes]

    @property
    def agent_methods(self) -> dict[str, tuple[str, ...]]:
        """Every agent id declared so far with the methods it answers."""
        return {spec.agent_id: spec.methods for spec in self._specs()}

    def _specs(self) -> list[AgentSpec]:
        """Every agent's spec, with the configuration's overrides applied."""
        specs = [
            AgentSpec.of_handlers(agent_id, handlers, **self._handler_options.get(agent_id, {}))
            for agent_id, handlers in self._handlers.items()
        ]
        specs += self._classes.values()
        return [replace(spec, **self._agent_overrides.get(spec.agent_id, {})) for spec in specs]

    def create_app(self, *, admin_port: int | None = None) -> web.Application:
        """A fresh aiohttp application: its start-up opens the chat and task stores and spawns every agent's actor,
        its clean-up stops them and closes the store.

        ``admin_port`` (0: a free one) serves the fault admin endpoint on 127.0.0.1 alongside, and turns
        fault injection on."""
        specs = self._specs()
        if not specs:
            raise ValueError(f"server {self.server_id!r} has no agents: declare one before serving")
        if admin_port is not None:
            self.faults.enable()
        store = ServingStore(self.store, self.state_max_records or None, keep=live_task)
        webhooks = Webhooks(self.webhooks, store)
        chats, tasks = ChatBook(store), TaskBook(store, webhooks)
        specs = [accept_notifications(tasks.manage(chats.manage(spec))) for spec in self.faults.wire(specs)]
        supervisor = Supervisor(
            {spec.agent_id: spec.policy for spec in specs if spec.policy is not None},
            self.restart_policy,
            self.restart_policy.hang_after_s or hang_after_from_env(),
        )
        engine = self._engine(self._engine_name(), supervisor)
        router = Router(specs, engine, tasks.front(engine))
        if self._authenticator is not None:
            self._authenticator.check_agents(router.agent_ids)
        metrics = Metrics(router, webhooks) if self.metrics else None
        gateway = Gateway(router, self._config, self._authenticator, metrics)
        app = gateway.application()
        if metrics is not None:
            metrics.install(app, gateway)

        async def actors(_: web.Application) -> AsyncIterator[None]:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, store.open)
            await loop.run_in_executor(None, tasks.recover)
            router.start()
            self._router = router
            watchdog = asyncio.create_task(engine.watch_for_hangs())
            starting = await _agents_started(router, AGENT_START_WAIT_S)
            if starting:
                logger.warning("still starting after {} s, serving anyway: {}", AGENT_START_WAIT_S, ", ".join(starting))
            logger.info("{} agents started: {}", len(specs), ", ".join(router.agent_ids))
            yield
            watchdog.cancel()
            self._router = None
            busy = await loop.run_in_executor(None, engine.stop, STOP_TIMEOUT_S)
            if busy:
                logger.warning("agents still busy at shutdown, abandoned: {}", ", ".join(busy))
            await loop.run_in_executor(None, store.close)

        async def drain(_: web.Application | None = None) -> None:
            if gateway.draining:
                return  # begun already, on a signal (see run)
            gateway.draining = True
            logger.info("draining: new requests refused, up to {} s for queued and running ones", self.drain_timeout_s)
            unserved = await engine.drain(self.drain_timeout_s)
            for agent_id, count in unserved.items():
                logger.warning("{} requests to {} answered -41002 at the drain deadline", count, agent_id)

        app.cleanup_ctx.append(webhooks.serve)  # first in, last out: agents' final events are still queued
        app.cleanup_ctx.append(actors)
        app.on_shutdown.append(drain)
        app[DRAIN] = drain
        if admin_port is not None:
            app[ADMIN_SITE] = AdminSite(self.faults, admin_port)
            app.cleanup_ctx.append(app[ADMIN_SITE].serve)
        return app

    def _engine_name(self) -> str:
        name = self.engine or os.environ.get(ENGINE_ENV) or "pykka"
        if name not in ENGINES:
            raise ValueError(f"{ENGINE_ENV} is one of {', '.join(ENGINES)}, got {name!r}")
        return name

    def _engine(self, name: str, supervisor: Supervisor) -> Engine:
        if name == "pykka":
            return PykkaEngine(supervisor, self.mailbox_size, self.request_timeout_s)
        from arc_actors.ray_engine import RayEngine

        return RayEngine(
            supervisor,
            self.mailbox_size,
            self.request_timeout_s,
            address=self.ray_address or os.environ.get(RAY_ADDRESS_ENV) or None,
            namespace=self.ray_namespace or f"arc_actors-{self.server_id}",
        )

    def runner_options(self) -> dict[str, Any]:
        """The aiohttp runner's keyword arguments this server needs, for ``web.run_app`` or an
        ``AppRunner`` of one's own: the drain-aware shutdown timeout, the header-size limits, and no
        unpacking of compressed bodies as they arrive (the gateway refuses them, see ``Gateway``)."""
        header = self._config.max_header_bytes
        return {
            "access_log": None,
            "shutdown_timeout": self.drain_timeout_s + STOP_TIMEOUT_S,
            "max_line_size": header,
            "max_field_size": header,
            "auto_decompress": False,
        }

    def restart_agent(self, agent_id: str) -> None:
        """Bring an agent back with a fresh instance, typically one marked ``failed`` after too many
        crashes; its failure history is forgotten. Safe to call from any thread while serving."""
        if self._router is None:
            raise RuntimeError(f"server {self.server_id!r} is not serving")
        self._router.restart(agent_id)

    def run(
        self,
        host: str = "0.0.0.0",  # noqa: S104 - the reference SDK's default, kept for its users
        port: int = 8000,
        *,
        log_level: str = "INFO",
        log_json: bool = False,
        admin_port: int | None = None,
    ) -> None:
        """Serve until SIGINT or SIGTERM, then drain, stop every agent and return.

        ``admin_port`` serves the fault admin endpoint on 127.0.0.1 (see ``create_app``). A port
        that cannot be bound ends the process with a one-line message, not a traceback."""
        configure_logging(log_level, json_lines=log_json)
        _check_can_listen(host, port)
        try:
            app = self.create_app(admin_port=admin_port)
        except EngineUnavailable as exc:
            raise SystemExit(f"arc_actors: {exc}") from None
        app.on_startup.append(_tune_garbage_collector)  # after the agents' start: this process is ours
        signals = _StopOnSignals(app)
        app.on_startup.insert(0, signals.install)  # first: a signal while the agents start stops at once
        app.on_startup.append(signals.serving)
        try:
            web.run_app(
                app,
                host=host,
                port=port,
                print=logger.info,
                loop=new_event_loop(),
                handle_signals=False,
                **self.runner_options(),
            )
        except AdminPortError as exc:
            raise SystemExit(f"arc_actors: {exc.strerror}") from None
        except OSError as exc:
            raise SystemExit(f"arc_actors: cannot listen on {host}:{port}: {exc.strerror or exc}") from None

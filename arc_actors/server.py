"""``Server``: where agents are declared and the runtime is assembled and run.

It keeps the reference SDK's API (``Server(server_id=...)``, ``@server.agent_handler(agent_id,
method)``, ``server.run(host, port)``) and adds ``server.add_agent(AgentSubclass)``. Every agent id,
however declared, becomes one actor.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from aiohttp import web
from loguru import logger

from arc_actors.admin import AdminPortError, AdminSite
from arc_actors.agent import Agent, AgentSpec, Handler
from arc_actors.faults import FaultInjector, FaultPlan
from arc_actors.gateway import DEFAULT_MAX_BODY_BYTES, Gateway, GatewayConfig
from arc_actors.logs import configure_logging
from arc_actors.pykka_engine import PykkaEngine
from arc_actors.router import Router
from arc_actors.supervisor import RestartPolicy, Supervisor, hang_after_from_env

H = TypeVar("H", bound=Handler)

ADMIN_SITE = web.AppKey("arc_actors_admin_site", AdminSite)
"""Where an app keeps its fault admin endpoint, when it has one."""

STOP_TIMEOUT_S = 5.0
"""How long a stopping server waits for agents to finish the messages already in their mailboxes."""


def new_event_loop() -> asyncio.AbstractEventLoop:
    """The gateway's event loop: uvloop where it is installed (about 15% more requests per second
    on the demo agents), else asyncio's own."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


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
        faults: FaultPlan | None = None,
    ) -> None:
        """``restart_policy`` is the default for agents that bring none of their own; its
        ``hang_after_s``, when unset, comes from ``ARC_HANG_AFTER_S`` (else 120 s).

        ``faults`` turns fault injection on and arms that plan (``FaultPlan()`` arms nothing, to arm
        faults later through :attr:`faults`). Unless injection is turned on before serving, handlers
        are never wrapped."""
        self.server_id = server_id
        self.restart_policy = restart_policy or RestartPolicy()
        self._config = GatewayConfig(
            server_id=server_id,
            version=version,
            description=description or f"arc_actors server {server_id}",
            max_body_bytes=max_body_bytes,
            reference_statuses=reference_statuses,
        )
        self._handlers: dict[str, dict[str, Handler]] = {}
        self._handler_policies: dict[str, RestartPolicy] = {}
        self._classes: dict[str, AgentSpec] = {}
        self._router: Router | None = None
        self.faults = FaultInjector(lambda: self.agent_methods)
        """This server's fault registry: arm, clear, and count injected faults, also while serving."""
        if faults is not None:
            self.faults.arm(faults)

    def agent_handler(self, agent_id: str, method: str, policy: RestartPolicy | None = None) -> Callable[[H], H]:
        """Declare ``async def handler(params, context)`` (or a plain ``def``) as ``agent_id``'s
        handler of ARC ``method``. All handlers of one agent id share one actor, and one
        ``policy``: any of them may carry it, two different ones are an error."""
        if agent_id in self._classes:
            raise ValueError(f"agent {agent_id!r} is already added as {self._classes[agent_id]!r}")
        if policy is not None:
            known = self._handler_policies.setdefault(agent_id, policy)
            if known != policy:
                raise ValueError(f"agent {agent_id!r} has two different restart policies: {known!r} and {policy!r}")

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
        **kwargs: Any,
    ) -> None:
        """Serve an :class:`Agent` subclass; each (re)start makes ``agent_class(*args, **kwargs)``.

        ``agent_id`` defaults to the class attribute ``agent_id``, ``policy`` to its ``restart_policy``."""
        spec = AgentSpec.of_class(agent_class, agent_id, args, kwargs, policy)
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
        specs = [
            AgentSpec.of_handlers(agent_id, handlers, self._handler_policies.get(agent_id))
            for agent_id, handlers in self._handlers.items()
        ]
        return specs + list(self._classes.values())

    def create_app(self, *, admin_port: int | None = None) -> web.Application:
        """A fresh aiohttp application: its start-up spawns every agent's actor, its clean-up stops them.

        ``admin_port`` (0: a free one) serves the fault admin endpoint on 127.0.0.1 alongside, and turns
        fault injection on."""
        specs = self._specs()
        if not specs:
            raise ValueError(f"server {self.server_id!r} has no agents: declare one before serving")
        if admin_port is not None:
            self.faults.enable()
        specs = self.faults.wire(specs)
        supervisor = Supervisor(
            {spec.agent_id: spec.policy for spec in specs if spec.policy is not None},
            self.restart_policy,
            self.restart_policy.hang_after_s or hang_after_from_env(),
        )
        engine = PykkaEngine(supervisor)
        router = Router(specs, engine)
        app = Gateway(router, self._config).application()

        async def actors(_: web.Application) -> AsyncIterator[None]:
            router.start()
            self._router = router
            logger.info("{} agents started: {}", len(specs), ", ".join(router.agent_ids))
            watchdog = asyncio.create_task(engine.watch_for_hangs())
            yield
            watchdog.cancel()
            self._router = None
            busy = await asyncio.get_running_loop().run_in_executor(None, engine.stop, STOP_TIMEOUT_S)
            if busy:
                logger.warning("agents still busy at shutdown, abandoned: {}", ", ".join(busy))

        app.cleanup_ctx.append(actors)
        if admin_port is not None:
            app[ADMIN_SITE] = AdminSite(self.faults, admin_port)
            app.cleanup_ctx.append(app[ADMIN_SITE].serve)
        return app

    def restart_agent(self, agent_id: str) -> None:
        """Bring an agent back with a fresh instance, typically one marked ``failed`` after too many
        crashes; its failure history is forgotten. Safe to call from any thread while serving."""
        if self._router is None:
            raise RuntimeError(f"server {self.server_id!r} is not serving")
        self._router.restart(agent_id)

    def run(
        self,
        host: str = "0.0.0.0",  # noqa: S104
        port: int = 8000,
        *,
        log_level: str = "INFO",
        admin_port: int | None = None,
    ) -> None:
        """Serve until SIGINT or SIGTERM, then stop every agent and return.

        ``admin_port`` serves the fault admin endpoint on 127.0.0.1 (see :meth:`create_app`). A port
        that cannot be bound ends the process with a one-line message, not a traceback."""
        configure_logging(log_level)
        app = self.create_app(admin_port=admin_port)
        try:
            web.run_app(
                app,
                host=host,
                port=port,
                print=logger.info,
                access_log=None,
                shutdown_timeout=STOP_TIMEOUT_S,
                loop=new_event_loop(),
            )
        except AdminPortError as exc:
            raise SystemExit(f"arc_actors: {exc.strerror}") from None
        except OSError as exc:
            raise SystemExit(f"arc_actors: cannot listen on {host}:{port}: {exc.strerror or exc}") from None

"""arc_actors' pytest plugin, loaded by pytest through the ``pytest11`` entry point: installing
arc_actors is enough, no conftest needed.

Fixtures:

* ``arc_server(app, admin=False)``: serve ``app`` (a ``Server``, an ``Agent`` subclass, or a list of
  them) on a free loopback port, fault injection on, until the test ends; returns its ``RunningServer``.
* ``arc_app``: define it (in a test module or conftest) to return the app the fixtures below serve.
* ``arc_running``: ``arc_app`` served by ``arc_server``.
* ``arc_client``: a ``Client`` of ``arc_running``.
* ``arc_faults(*specs, seed=0, on=None)``: arm faults on ``arc_running`` (or on the ``RunningServer``
  given as ``on``); returns the server's ``FaultInjector``. Every server armed is disarmed when the test
  ends.
* ``arc_chaos(on=None, **options)``: a chaos run against ``arc_running`` (or ``on``); returns its
  ``ChaosReport``. Check it with ``arc_actors.testing.assert_all_answered``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest

from arc_actors.agent import Agent
from arc_actors.chaos import ChaosReport, run_chaos
from arc_actors.client import Client
from arc_actors.faults import FaultInjector, FaultPlan
from arc_actors.server import Server
from arc_actors.testing import RunningServer, serving

App = Server | type[Agent] | Iterable[type[Agent]]


def as_server(app: App) -> Server:
    """``app`` as a ``Server``: a server as it is, agent classes added to a new one."""
    if isinstance(app, Server):
        return app
    server = Server(server_id="arc-test")
    for agent_class in [app] if isinstance(app, type) else list(app):
        server.add_agent(agent_class)
    return server


@pytest.fixture
def arc_server() -> Iterator[Callable[..., RunningServer]]:
    """``arc_server(app, admin=False)`` serves ``app`` on a free loopback port until the test ends."""
    with ExitStack() as stack:

        def start(app: App, *, admin: bool = False) -> RunningServer:
            server = as_server(app)
            server.faults.enable()
            return stack.enter_context(serving(server, admin_port=0 if admin else None))

        yield start


@pytest.fixture
def arc_app() -> App:
    """The app ``arc_running``, ``arc_client``, ``arc_faults`` and ``arc_chaos`` serve: define your own."""
    raise pytest.UsageError(
        "define an `arc_app` fixture returning a Server or Agent subclasses, or serve one with arc_server(app)"
    )


@pytest.fixture
def arc_running(arc_app: App, arc_server: Callable[..., RunningServer]) -> RunningServer:
    """``arc_app`` served on a free loopback port for this test."""
    return arc_server(arc_app)


@pytest.fixture
def arc_client(arc_running: RunningServer) -> Client:
    """A client of ``arc_running``; each call opens its own connection, so any event loop may use it."""
    return Client(arc_running.url)


@pytest.fixture
def arc_faults(request: pytest.FixtureRequest) -> Iterator[Callable[..., FaultInjector]]:
    """``arc_faults(*specs, seed=0, on=None)`` arms faults (text specs or one ``FaultPlan``) on
    ``arc_running`` or ``on``; everything armed is disarmed after the test."""
    armed: list[FaultInjector] = []

    def arm(*specs: str | FaultPlan, seed: int = 0, on: RunningServer | None = None) -> FaultInjector:
        running = on or request.getfixturevalue("arc_running")
        injector = running.server.faults
        plan = specs[0] if len(specs) == 1 and isinstance(specs[0], FaultPlan) else specs
        injector.arm(plan, seed=seed)
        armed.append(injector)
        return injector

    yield arm
    for injector in armed:
        injector.clear()


@pytest.fixture
def arc_chaos(request: pytest.FixtureRequest) -> Callable[..., ChaosReport]:
    """``arc_chaos(on=None, **options)`` runs ``arc_actors.chaos.run_chaos`` against ``arc_running``
    or ``on`` and returns its report."""

    def chaos(on: RunningServer | None = None, **options: Any) -> ChaosReport:
        running = on or request.getfixturevalue("arc_running")
        return run_chaos(running.url, **options)

    return chaos

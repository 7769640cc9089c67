"""Helpers for testing agents against a real server on a free loopback port.

``with serving(server) as running:`` starts the server's own event loop in a background thread,
exactly as ``server.run`` would serve it, and always stops it, agents included, on the way out.
``assert_all_answered`` checks a chaos run lost nothing. The pytest fixtures built on these live in
``arc_actors.pytest_plugin``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from aiohttp import web

from arc_actors.chaos import ChaosReport
from arc_actors.server import ADMIN_SITE, STOP_TIMEOUT_S, Server, new_event_loop

START_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class RunningServer:
    """Where a server started by ``serving`` listens, and the server itself."""

    host: str
    port: int
    admin_port: int | None = None
    server: Server | None = field(default=None, compare=False, repr=False)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The ARC endpoint, as ``Client`` takes it."""
        return f"{self.base_url}/arc"

    @property
    def admin_url(self) -> str | None:
        """The fault admin endpoint, when the server has one."""
        return None if self.admin_port is None else f"http://127.0.0.1:{self.admin_port}/faults"


@contextmanager
def serving(
    server: Server, host: str = "127.0.0.1", port: int = 0, *, admin_port: int | None = None
) -> Iterator[RunningServer]:
    """Serve ``server`` on ``host:port`` (port 0: a free one) for the duration of the block;
    ``admin_port`` (0: a free one) also serves its fault admin endpoint on 127.0.0.1."""
    loop = new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name=f"arc-server-{server.server_id}", daemon=True)
    thread.start()
    app = server.create_app(admin_port=admin_port)
    runner = web.AppRunner(app, **server.runner_options())
    try:
        bound_port = asyncio.run_coroutine_threadsafe(_start(runner, host, port), loop).result(START_TIMEOUT_S)
        admin = app.get(ADMIN_SITE)
        yield RunningServer(host, bound_port, admin.port if admin else None, server)
    finally:
        stop_within_s = START_TIMEOUT_S + server.drain_timeout_s + STOP_TIMEOUT_S
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(stop_within_s)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(START_TIMEOUT_S)
        loop.close()


async def _start(runner: web.AppRunner, host: str, port: int) -> int:
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    return runner.addresses[0][1]


def assert_all_answered(report: ChaosReport) -> None:
    """Fail unless every request of the chaos run got an ARC answer: sent == answered and lost == 0,
    for every agent. The message names the agents that lost requests."""
    losers = [
        f"{agent_id} lost {agent.lost} of {agent.sent}"
        for agent_id, agent in report.agents.items()
        if agent.lost or agent.answered != agent.sent
    ]
    if losers:
        raise AssertionError(f"{report.lost} of {report.sent} requests got no ARC answer: {'; '.join(losers)}")

"""Helpers for testing agents against a real server on a free loopback port.

``with serving(server) as running:`` starts the server's own event loop in a background thread,
exactly as ``server.run`` would serve it, and always stops it, agents included, on the way out.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from aiohttp import web

from arc_actors.server import STOP_TIMEOUT_S, Server, new_event_loop

START_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class RunningServer:
    """Where a server started by :func:`serving` listens."""

    host: str
    port: int

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The ARC endpoint, as ``Client`` takes it."""
        return f"{self.base_url}/arc"


@contextmanager
def serving(server: Server, host: str = "127.0.0.1", port: int = 0) -> Iterator[RunningServer]:
    """Serve ``server`` on ``host:port`` (port 0: a free one) for the duration of the block."""
    loop = new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name=f"arc-server-{server.server_id}", daemon=True)
    thread.start()
    runner = web.AppRunner(server.create_app(), **server.runner_options())
    try:
        bound_port = asyncio.run_coroutine_threadsafe(_start(runner, host, port), loop).result(START_TIMEOUT_S)
        yield RunningServer(host, bound_port)
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

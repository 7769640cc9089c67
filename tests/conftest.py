"""Shared test helpers: raw ARC posts and small agent servers on free loopback ports."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from loguru import logger

from arc_actors import Client, Server
from arc_actors.testing import RunningServer, serving

logger.enable("arc_actors")  # the tests are the application here: some read what the runtime logs


def envelope(target_agent: str = "echo-agent", method: str = "test.echo", params: Any = None, **fields: Any) -> dict:
    """A valid request envelope, with any field overridden."""
    request = {
        "arc": "1.0",
        "id": "req-1",
        "method": method,
        "requestAgent": "test-client",
        "targetAgent": target_agent,
        "params": {} if params is None else params,
    }
    request.update(fields)
    return request


async def post_raw(url: str, body: bytes | str, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    """POST bytes as they are; return the HTTP status and the decoded JSON answer."""
    async with aiohttp.ClientSession() as session, session.post(url, data=body, headers=headers or {}) as reply:
        return reply.status, json.loads(await reply.read())


async def post(url: str, request: dict) -> dict:
    status, answer = await post_raw(url, json.dumps(request))
    assert status == 200, answer
    return answer


async def wait_for_health(client: Client, agent_id: str, key: str, value: int) -> None:
    """Poll /health until ``agents[agent_id][key] == value`` (mailbox depth, busy workers, ...)."""
    deadline = time.monotonic() + 10
    while (await client.health())["agents"][agent_id][key] != value:
        assert time.monotonic() < deadline, f"{agent_id} {key} never reached {value}"
        await asyncio.sleep(0.01)


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def echo_server() -> Server:
    """One agent that echoes its params and context, on a custom method and on chat.start."""
    server = Server(server_id="test-server")

    async def echo(params: dict, context: Any) -> dict:
        return {"params": params, "traceId": context["trace_id"], "requestId": context.request_id}

    server.agent_handler("echo-agent", "test.echo")(echo)
    server.agent_handler("echo-agent", "chat.start")(echo)
    return server


@pytest.fixture
def echo_url() -> Iterator[str]:
    with serving(echo_server()) as running:
        yield running.url


@pytest.fixture
def serve() -> Iterator[Any]:
    """``serve(server)`` starts a server for the test and stops it afterwards."""
    stack: list[Any] = []

    def start(server: Server) -> RunningServer:
        context = serving(server)
        stack.append(context)
        return context.__enter__()

    yield start
    for context in reversed(stack):
        context.__exit__(None, None, None)


# The engines: tests about behaviour both must share take the `engine` fixture and run on each.

RAY_MISSING = "the ray engine's tests need Ray: pip install '.[test,ray]'"


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[Any]:
    """One small local Ray for the whole session (2 CPUs, 100 MB object store, no dashboard)."""
    ray = pytest.importorskip("ray", reason=RAY_MISSING)
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=100 * 2**20,
        log_to_driver=False,
        logging_level="WARNING",
    )
    yield ray
    ray.shutdown()


@pytest.fixture(params=["pykka", pytest.param("ray", marks=pytest.mark.ray)])
def engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test once per engine: servers made without an ``engine`` take ``ARC_ENGINE``. A test
    that does not take it runs on the pykka engine only; in a module that takes it for every test, a
    test marked ``pykka_only("why")`` does too."""
    if request.param == "ray":
        request.getfixturevalue("ray_cluster")
    monkeypatch.setenv("ARC_ENGINE", request.param)
    return request.param


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the ray runs of tests marked ``pykka_only``; the marker must say why."""
    deselected = []
    for item in items:
        marker = item.get_closest_marker("pykka_only")
        if marker is None:
            continue
        if not marker.args:
            raise pytest.UsageError(f"{item.nodeid}: pykka_only needs its reason, pykka_only('why')")
        if getattr(item, "callspec", None) is not None and item.callspec.params.get("engine") == "ray":
            deselected.append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if item not in deselected]


class Receiver:
    """A webhook receiver on a free loopback port (``async with Receiver() as receiver``): it records every
    POST (headers, body) and answers each with the next of ``statuses``, then 204. With ``hold`` it
    answers nothing until it is closed, like a receiver that hangs."""

    def __init__(self, statuses: tuple[int, ...] = (), *, hold: bool = False) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self._statuses = list(statuses)
        self._hold = hold
        self._closing: asyncio.Event | None = None

    async def __aenter__(self) -> Receiver:
        self._closing = asyncio.Event()
        app = web.Application()
        app.router.add_post("/hooks", self._receive)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/hooks"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closing.set()
        await self._runner.cleanup()

    async def _receive(self, request: web.Request) -> web.Response:
        self.requests.append((dict(request.headers), await request.read()))
        if self._hold:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), 30)
        return web.Response(status=self._statuses.pop(0) if self._statuses else 204)

    @property
    def events(self) -> list[str]:
        return [headers["X-ARC-Event"] for headers, _ in self.requests]

    async def wait_for(self, count: int) -> None:
        """Wait (at most 10 s) until ``count`` requests have arrived."""
        await wait_until(lambda: len(self.requests) >= count, f"{count} webhook requests")


async def wait_until(done: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    """Poll ``done`` until it holds, failing the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, f"never saw {what}"
        await asyncio.sleep(0.01)


# Serving as a user does: a real `python -m arc_actors` process.

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "arc_actors", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )


def wait_healthy(port: int, process: subprocess.Popen, timeout_s: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as reply:
                return json.loads(reply.read())
        except OSError:
            time.sleep(0.1)
    raise AssertionError("server did not become healthy")


def arc_post(port: int, request: dict) -> dict:
    body = json.dumps(request).encode()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/arc", data=body, timeout=5) as reply:
        return json.loads(reply.read())


@contextlib.contextmanager
def serving_process(stopper: Callable[[subprocess.Popen], None], env: dict[str, str]) -> Iterator[int]:
    """``python -m arc_actors serve`` (the demo agents) on a free port, healthy, for the block; then
    SIGTERM, and it must exit 0. Yields the port."""
    port = free_port()
    process = start("serve", "--port", str(port), env=env)
    stopper(process)
    wait_healthy(port, process)
    yield port
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=20) == 0


@pytest.fixture
def stopper():
    processes: list[subprocess.Popen] = []
    yield processes.append
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.communicate()

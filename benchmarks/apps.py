"""The agents the benchmarks serve, as APPs for ``python -m arc_actors serve benchmarks/apps.py:NAME``.

Every agent answers chat.start with :data:`CHAT_RESULT`, the same bytes the bare server answers, so
the only difference between the two is the runtime in between.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any

import aiohttp

from arc_actors import Agent, RestartPolicy, Server

CHAT_RESULT: dict[str, Any] = {
    "type": "chat",
    "chat": {
        "chatId": "chat-1",
        "status": "ACTIVE",
        "message": {"role": "agent", "parts": [{"type": "text", "content": "hello"}]},
    },
}

GIVING_UP_AGENT = "crashing-default-policy-agent"
"""A crashing agent under the default policy: marked failed after 10 restarts, then answered -41002."""
BUSY_AGENT = "busy-echo-agent"
"""A well-behaved neighbour: its load shows what any neighbour's traffic costs the shared gateway."""
SCALE_AGENTS_ENV = "ARC_BENCH_AGENTS"
BLOCK_ENV = "ARC_BENCH_BLOCK_S"
SLOW_HANDLER_S = 0.005
"""The flooded neighbour's service time: 200 requests a second at most, far fewer than its flood."""
BURN_S = 0.05
LATENCY_ENV = "ARC_BENCH_LATENCY_S"
STUB_URL_ENV = "ARC_BENCH_STUB_URL"
"""How long the waiting agents' handlers await (``io_bound.py``), standing in for an LLM call."""


class EchoAgent(Agent):
    """Answers chat.start at once (``async def``, as the seed's and the demo's handlers are)."""

    agent_id = "echo-agent"

    async def chat_start(self, params: dict[str, Any], context: Any) -> dict[str, Any]:
        return CHAT_RESULT


class SyncEchoAgent(Agent):
    """The same answer from a plain ``def`` handler, which needs no event loop in the agent's thread."""

    agent_id = "sync-echo-agent"

    def chat_start(self, params: dict[str, Any], context: Any) -> dict[str, Any]:
        return CHAT_RESULT


class OwnChatsEchoAgent(SyncEchoAgent):
    """The ``def`` handler of an agent that keeps its own chats (``managed_chats = False``): the runtime
    records nothing, so this is the gateway and the actor hop alone."""

    agent_id = "own-chats-echo-agent"
    managed_chats = False


class CrashingAgent(Agent):
    """Crashes on every request; its policy restarts it every time, at once, so it never gives up.
    (``backoff_factor=1``: with 2, the 1,025th restart within the window overflows the backoff.)"""

    agent_id = "crashing-agent"
    restart_policy = RestartPolicy(
        max_restarts=10**9, within_s=1, backoff_initial_s=0, backoff_factor=1, backoff_jitter=0
    )

    def chat_start(self, params: dict[str, Any], context: Any) -> dict[str, Any]:
        raise RuntimeError("crash on purpose")


class BlockingAgent(Agent):
    """Blocks its thread on every request, for ``ARC_BENCH_BLOCK_S`` seconds (default 3600)."""

    agent_id = "blocking-agent"

    def chat_start(self, params: dict[str, Any], context: Any) -> dict[str, Any]:
        threading.Event().wait(float(os.environ.get(BLOCK_ENV, "3600")))
        return CHAT_RESULT


class SlowAgent(Agent):
    """Takes 5 ms per request without holding the GIL; flooded, it refuses what overflows its mailbox."""

    agent_id = "slow-agent"
    mailbox_size = 64

    def chat_start(self, params: dict[str, Any], context: Any) -> dict[str, Any]:
        time.sleep(SLOW_HANDLER_S)
        return CHAT_RESULT


class BurningAgent(Agent):
    """Computes for 50 ms per request, holding the GIL but for the interpreter's switch interval."""

    agent_id = "burning-agent"

    def chat_start(self, params: dict[str, Any], context: Any) -> dict[str, Any]:
        deadline = time.perf_counter() + BURN_S
        while time.perf_counter() < deadline:
            pass
        return CHAT_RESULT


class WaitingAgent(Agent):
    """Awaits ``ARC_BENCH_LATENCY_S`` per chat.start, as an agent waiting on an LLM does."""

    agent_id = "llm-agent"
    managed_chats = False  # the same work as the reference's handler: no chat record

    def __init__(self) -> None:
        self.latency_s = float(os.environ.get(LATENCY_ENV, "0.1"))

    async def chat_start(self, params: dict[str, Any], context: Any) -> dict[str, Any]:
        await asyncio.sleep(self.latency_s)
        return CHAT_RESULT


class CallingAgent(Agent):
    """Calls the LLM stand-in (``benchmarks/llm_stub.py`` at ``ARC_BENCH_STUB_URL``) per chat.start, with
    one aiohttp session on the agent's own loop, as an agent calling an LLM API over HTTP does."""

    agent_id = "http-llm-agent"
    managed_chats = False

    def __init__(self) -> None:
        self.url = os.environ.get(STUB_URL_ENV, "")
        self.session: aiohttp.ClientSession | None = None

    async def chat_start(self, params: dict[str, Any], context: Any) -> dict[str, Any]:
        if self.session is None:  # made on the loop it is used on, the agent's own
            self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        async with self.session.post(self.url, json={"prompt": "hi"}) as reply:
            reply.raise_for_status()
            await reply.json()
        return CHAT_RESULT

    async def on_stop(self) -> None:
        if self.session is not None:
            await self.session.close()


def waiting_agents() -> Server:
    """The I/O-bound server: the waiting agent, its twin serving one request at a time (as every agent
    did before interleaving), and the agent waiting on a real HTTP call."""
    server = Server(server_id="bench-server", mailbox_size=5000)
    server.add_agent(WaitingAgent, max_in_flight=1000)
    server.add_agent(WaitingAgent, agent_id="strict-llm-agent", max_in_flight=1)
    server.add_agent(CallingAgent, max_in_flight=1000)
    return server


def echo_agents() -> Server:
    """The gateway-overhead server: the async echo agent, its sync twin, and a sync one keeping its own
    chats (each measured alone)."""
    server = Server(server_id="bench-server")
    server.add_agent(EchoAgent)
    server.add_agent(SyncEchoAgent)
    server.add_agent(OwnChatsEchoAgent)
    return server


def neighbours() -> Server:
    """The isolation server: one healthy agent and a neighbour for each kind of trouble."""
    server = Server(server_id="bench-server")
    for agent_class in (EchoAgent, CrashingAgent, BlockingAgent, SlowAgent, BurningAgent):
        server.add_agent(agent_class)
    server.add_agent(CrashingAgent, agent_id=GIVING_UP_AGENT, policy=RestartPolicy())
    server.add_agent(EchoAgent, agent_id=BUSY_AGENT)
    return server


def many_agents(count: int | None = None) -> Server:
    """``count`` echo agents (default: ``ARC_BENCH_AGENTS``) named ``agent-0``, ``agent-1``, ..."""
    count = int(os.environ.get(SCALE_AGENTS_ENV, "100")) if count is None else count
    server = Server(server_id="bench-server")
    for number in range(count):
        server.add_agent(EchoAgent, agent_id=f"agent-{number}")
    return server

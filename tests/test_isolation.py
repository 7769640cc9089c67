"""Fault isolation, the point of the project: a crash, a blocked thread, even SystemExit in one agent
never reaches another agent, and /health never waits on an agent."""

from __future__ import annotations

import asyncio
import time

import pytest
from conftest import envelope, post

from arc_actors import Agent, Client, Server, handles
from arc_actors.testing import serving

BLOCK_S = 3.0


class BlockingAgent(Agent):
    """Blocks its own thread the way a careless LLM call would: a sync sleep inside async def."""

    agent_id = "blocking-agent"

    @handles("work.run")
    async def block(self, params, context):
        time.sleep(params.get("seconds", BLOCK_S))
        return {"slept": True}


class FastAgent(Agent):
    agent_id = "fast-agent"

    def on_start(self):
        self.served = 0

    @handles("work.run")
    async def serve(self, params, context):
        self.served += 1
        return {"served": self.served}


class FaultyAgent(Agent):
    agent_id = "faulty-agent"

    @handles("work.run")
    def fail(self, params, context):
        fault = params["raise"]
        if fault == "SystemExit":
            raise SystemExit(3)
        if fault == "KeyboardInterrupt":
            raise KeyboardInterrupt
        if fault == "ZeroDivisionError":
            return 1 / 0
        return {"ok": True}

    @handles("work.exit")
    async def exit_from_coroutine(self, params, context):
        raise SystemExit("from a coroutine")


@pytest.fixture
def url():
    server = Server(server_id="isolation")
    for agent_class in (BlockingAgent, FastAgent, FaultyAgent):
        server.add_agent(agent_class)
    with serving(server) as running:
        yield running.url


async def wait_for(predicate, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def test_blocking_agent_does_not_delay_fifty_concurrent_requests_to_another_agent(url):
    async def scenario() -> None:
        client = Client(url)
        blocked = asyncio.ensure_future(post(url, envelope("blocking-agent", "work.run")))
        queued = asyncio.ensure_future(post(url, envelope("blocking-agent", "work.run", params={"seconds": 0})))
        await wait_for(lambda: in_flight(client, "blocking-agent", 2))  # the second waits behind the first
        started = time.monotonic()
        answers = await asyncio.gather(*(post(url, envelope("fast-agent", "work.run", id=i)) for i in range(50)))
        elapsed = time.monotonic() - started
        assert not blocked.done(), "the blocking agent should still be blocked"
        assert sorted(answer["result"]["served"] for answer in answers) == list(range(1, 51))
        assert all(answer["error"] is None for answer in answers)
        assert elapsed < BLOCK_S / 2
        assert (await blocked)["result"] == {"slept": True}
        assert (await queued)["result"] == {"slept": True}

    asyncio.run(scenario())


async def mailbox_depth(client: Client, agent_id: str, depth: int) -> bool:
    """True once ``depth`` requests wait in the agent's mailbox behind the one it is serving."""
    return (await client.health())["agents"][agent_id]["mailbox"] == depth


async def in_flight(client: Client, agent_id: str, count: int) -> bool:
    """True once ``count`` requests are in flight on the agent's instance (its ``busy`` in /health)."""
    return (await client.health())["agents"][agent_id]["busy"] == count


def test_health_answers_at_once_while_an_agent_is_blocked(url):
    async def scenario() -> None:
        blocked = [asyncio.ensure_future(post(url, envelope("blocking-agent", "work.run", id=i))) for i in range(2)]
        client = Client(url)
        await wait_for(lambda: in_flight(client, "blocking-agent", 2))  # the second waits behind the first
        started = time.monotonic()
        health = await client.health()
        elapsed = time.monotonic() - started
        assert not any(request.done() for request in blocked)
        assert health["agents"]["blocking-agent"]["status"] == "running"
        assert health["agents"]["fast-agent"] == {**health["agents"]["fast-agent"], "mailbox": 0, "restarts": 0}
        assert elapsed < 1.0, f"/health took {elapsed:.3f} s"
        for request in blocked:
            request.cancel()

    asyncio.run(scenario())


@pytest.mark.parametrize("fault", ["SystemExit", "KeyboardInterrupt", "ZeroDivisionError"])
def test_fatal_exceptions_stay_inside_the_agent_that_raised_them(url, fault):
    async def scenario() -> None:
        failed = await post(url, envelope("faulty-agent", "work.run", params={"raise": fault}))
        assert failed["error"]["code"] == -32603
        assert failed["error"]["message"] == "Internal error"
        assert set(failed["error"]["details"]) == {"errorId"}
        assert fault not in str(failed)
        assert (await post(url, envelope("fast-agent", "work.run")))["result"] == {"served": 1}
        assert (await post(url, envelope("faulty-agent", "work.run", params={"raise": None})))["result"] == {"ok": True}
        health = await Client(url).health()
        assert {agent["status"] for agent in health["agents"].values()} == {"running"}

    asyncio.run(scenario())


def test_system_exit_from_a_coroutine_handler_stays_inside_its_agent(url):
    async def scenario() -> None:
        for _ in range(2):
            failed = await post(url, envelope("faulty-agent", "work.exit"))
            assert failed["error"]["code"] == -32603
        assert (await post(url, envelope("faulty-agent", "work.run", params={"raise": None})))["result"] == {"ok": True}
        assert (await post(url, envelope("fast-agent", "work.run")))["result"] == {"served": 1}

    asyncio.run(scenario())


def test_agent_state_survives_between_requests_and_is_per_agent(url):
    async def scenario() -> None:
        served = [(await post(url, envelope("fast-agent", "work.run")))["result"]["served"] for _ in range(3)]
        assert served == [1, 2, 3]

    asyncio.run(scenario())

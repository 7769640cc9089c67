"""Agents calling agents, on either engine: through the target's mailbox, with the trace id, never a deadlock."""

from __future__ import annotations

import asyncio
import time

import pytest
from conftest import envelope, post, run

from arc_actors import Agent, ARCError, Server, handles
from arc_actors.testing import serving

pytestmark = pytest.mark.usefixtures("engine")


class Finance(Agent):
    agent_id = "finance-agent"

    @handles("quote.salary")
    async def quote(self, params, context):
        salary = await context.call("hr-agent", "salary.get", {"employee": params["employee"]})
        return {"salary": salary, "via": context.agent_id}

    @handles("quote.missing")
    async def missing(self, params, context):
        try:
            await context.call("payroll-agent", "salary.get", {})
        except ARCError as exc:
            return {"caught": exc.code}


class HR(Agent):
    agent_id = "hr-agent"

    @handles("salary.get")
    def salary(self, params, context):
        return {
            "employee": params["employee"],
            "amount": 4200,
            "asked_by": context.request_agent,
            "trace_id": context.trace_id,
            "call_chain": list(context.call_chain),
        }


class PingPong(Agent):
    """Calls the agent named in params: a -> b -> a closes a cycle."""

    @handles("bounce")
    async def bounce(self, params, context):
        return await context.call(params["next"], "bounce", {"next": context.agent_id})


class Relay(Agent):
    """Calls relay-(n+1) until told to stop: a chain of agents, each waiting on the next."""

    @handles("relay")
    async def relay(self, params, context):
        number = int(context.agent_id.split("-")[1])
        return await context.call(f"relay-{number + 1}", "relay", params)


def test_an_agent_calls_another_through_its_mailbox_with_the_trace_id():
    server = Server(server_id="calls")
    server.add_agent(Finance)
    server.add_agent(HR)
    with serving(server) as running:
        answer = run(post(running.url, envelope("finance-agent", "quote.salary", {"employee": "e-7"}, traceId="t-42")))
    assert answer["result"] == {
        "salary": {
            "employee": "e-7",
            "amount": 4200,
            "asked_by": "finance-agent",
            "trace_id": "t-42",
            "call_chain": ["finance-agent"],
        },
        "via": "finance-agent",
    }


def test_a_call_to_an_unknown_agent_raises_a_catchable_arc_error():
    server = Server(server_id="calls")
    server.add_agent(Finance)
    server.add_agent(HR)
    with serving(server) as running:
        answer = run(post(running.url, envelope("finance-agent", "quote.missing")))
    assert answer["result"] == {"caught": -41001}


def test_a_call_cycle_through_a_strict_agent_is_answered_with_an_arc_error_within_a_second_not_a_deadlock():
    server = Server(server_id="cycle")
    server.add_agent(PingPong, agent_id="ping", max_in_flight=1)
    server.add_agent(PingPong, agent_id="pong", max_in_flight=1)
    with serving(server) as running:
        started = time.monotonic()
        answer = run(post(running.url, envelope("ping", "bounce", {"next": "pong"})))
        elapsed = time.monotonic() - started
        again = run(post(running.url, envelope("pong", "bounce", {"next": "ping"})))
    assert answer["error"]["code"] == -41003
    assert answer["error"]["details"] == {"agentId": "ping", "callChain": ["ping", "pong", "ping"]}
    assert "max_in_flight = 1" in answer["error"]["message"]
    assert elapsed < 1.0
    assert again["error"]["details"]["callChain"] == ["pong", "ping", "pong"]


class Ledger(Agent):
    """Has its books closed by the auditor, who asks the ledger back for its balance: ledger -> auditor ->
    ledger, while the ledger's first request awaits."""

    agent_id = "ledger"

    @handles("books.close")
    async def close(self, params, context):
        return await context.call("auditor", "audit", params)

    @handles("balance.get")
    async def balance(self, params, context):
        await asyncio.sleep(0.01)
        return {"balance": 100}


class Auditor(Agent):
    agent_id = "auditor"

    @handles("audit")
    async def audit(self, params, context):
        balance = await context.call("ledger", "balance.get", params)
        return {"audited": balance, "call_chain": list(context.call_chain)}


def ledger_server(**ledger_options) -> Server:
    server = Server(server_id="books")
    server.add_agent(Ledger, **ledger_options)
    server.add_agent(Auditor)
    return server


def test_a_call_back_into_an_agent_that_awaits_is_served():
    with serving(ledger_server()) as running:
        answer = run(post(running.url, envelope("ledger", "books.close")))
    assert answer["result"] == {"audited": {"balance": 100}, "call_chain": ["ledger"]}


def test_calls_back_into_an_agent_whose_requests_in_flight_all_await_them_are_served_not_deadlocked():
    # Both requests the ledger may have in flight await the auditor, who calls the ledger back: the calls
    # back are part of requests the ledger carries already, so they are served past its bound.
    with serving(ledger_server(max_in_flight=2)) as running:

        async def both() -> list[dict]:
            bodies = [envelope("ledger", "books.close", id=f"close-{n}") for n in range(2)]
            return await asyncio.gather(*(post(running.url, body) for body in bodies))

        started = time.monotonic()
        answers = run(both())
        elapsed = time.monotonic() - started
    assert [answer["result"]["audited"] for answer in answers] == [{"balance": 100}] * 2
    assert elapsed < 1.0


def test_a_call_back_into_a_conversation_its_caller_holds_is_refused_not_deadlocked():
    with serving(ledger_server()) as running:
        started = time.monotonic()
        answer = run(post(running.url, envelope("ledger", "books.close", {"chatId": "chat-7"})))
        elapsed = time.monotonic() - started
    assert answer["error"]["code"] == -41003
    assert answer["error"]["details"] == {
        "agentId": "ledger",
        "callChain": ["ledger", "auditor", "ledger"],
        "conversation": "chat-7",
    }
    assert elapsed < 1.0


def test_an_endless_bounce_between_two_agents_that_await_ends_at_the_depth_bound():
    server = Server(server_id="bounce")
    server.add_agent(PingPong, agent_id="ping")
    server.add_agent(PingPong, agent_id="pong")
    with serving(server) as running:
        answer = run(post(running.url, envelope("ping", "bounce", {"next": "pong"})))
    assert answer["error"]["code"] == -41003
    assert len(answer["error"]["details"]["callChain"]) == 9


@pytest.mark.pykka_only("twelve agents are twelve Ray worker processes; the bound is the router's, as for cycles")
def test_a_chain_of_calls_deeper_than_the_bound_is_refused():
    server = Server(server_id="relay")
    for number in range(12):
        server.add_agent(Relay, agent_id=f"relay-{number}")
    with serving(server) as running:
        answer = run(post(running.url, envelope("relay-0", "relay")))
    assert answer["error"]["code"] == -41003
    assert answer["error"]["details"]["callChain"] == [f"relay-{number}" for number in range(9)]

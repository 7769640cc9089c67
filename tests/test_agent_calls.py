"""Agents calling agents, on either engine: through the target's mailbox, with the trace id, never a deadlock."""

from __future__ import annotations

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


def test_a_call_cycle_is_answered_with_an_arc_error_within_a_second_not_a_deadlock():
    server = Server(server_id="cycle")
    server.add_agent(PingPong, agent_id="ping")
    server.add_agent(PingPong, agent_id="pong")
    with serving(server) as running:
        started = time.monotonic()
        answer = run(post(running.url, envelope("ping", "bounce", {"next": "pong"})))
        elapsed = time.monotonic() - started
        again = run(post(running.url, envelope("pong", "bounce", {"next": "ping"})))
    assert answer["error"]["code"] == -41003
    assert answer["error"]["details"] == {"agentId": "ping", "callChain": ["ping", "pong", "ping"]}
    assert elapsed < 1.0
    assert again["error"]["details"]["callChain"] == ["pong", "ping", "pong"]


@pytest.mark.pykka_only("twelve agents are twelve Ray worker processes; the bound is the router's, as for cycles")
def test_a_chain_of_calls_deeper_than_the_bound_is_refused():
    server = Server(server_id="relay")
    for number in range(12):
        server.add_agent(Relay, agent_id=f"relay-{number}")
    with serving(server) as running:
        answer = run(post(running.url, envelope("relay-0", "relay")))
    assert answer["error"]["code"] == -41003
    assert answer["error"]["details"]["callChain"] == [f"relay-{number}" for number in range(9)]

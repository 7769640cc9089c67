"""Fault injection: the spec language, the plan's draws, and faults applied by a real server (on either
engine: on ray they strike in the agent's worker process)."""

from __future__ import annotations

import re
import time
from collections import Counter

import pytest
from conftest import envelope, post, run

from arc_actors import Agent, Client, Fault, FaultPlan, RestartPolicy, Server, handles
from arc_actors.demo import build_server
from arc_actors.faults import FaultSpecError
from arc_actors.testing import serving

FAST_RESTARTS = RestartPolicy(max_restarts=1000, backoff_initial_s=0.001, backoff_max_s=0.01, hang_after_s=0.3)
DEMO_AGENTS = build_server().agent_methods


def say(text: str = "hi") -> dict:
    return {"initialMessage": {"role": "user", "parts": [{"type": "text", "content": text}]}}


class Counting(Agent):
    """Counts the requests its current instance served, so a restart shows."""

    agent_id = "counting-agent"

    def on_start(self):
        self.served = 0

    @handles("work.run")
    def work(self, params, context):
        self.served += 1
        return {"served": self.served}

    async def chat_start(self, params, context):
        return {"type": "chat", "chat": {"chatId": "c-1", "status": "ACTIVE"}}


async def codes(url: str, agent_id: str, method: str, params: dict, count: int) -> list:
    """Send ``count`` requests one after another; the error code of each, or "ok"."""
    answers = [await post(url, envelope(agent_id, method, params, id=n)) for n in range(count)]
    return [answer["error"]["code"] if answer["error"] else "ok" for answer in answers]


def test_spec_names_agent_faults_probabilities_and_arguments():
    plan = FaultPlan.parse(
        [
            "finance-agent:crash=0.2,hang=0.05:5s",
            "hr-agent.chat.start:latency=1:100ms-300ms",
            "eu.support-agent.v2:error=0.1:-41003",
        ],
        seed=7,
    )
    assert plan.seed == 7
    assert plan.rules == {
        ("finance-agent", None): (Fault.crash(0.2), Fault.hang(0.05, 5.0)),
        ("hr-agent", "chat.start"): (Fault.latency(1, 0.1, 0.3),),
        ("eu.support-agent.v2", None): (Fault.error(0.1, -41003),),
    }
    assert FaultPlan.parse(plan.specs(), seed=7) == plan
    assert plan.specs() == [
        "finance-agent:crash=0.2,hang=0.05:5s",
        "hr-agent.chat.start:latency=1:100ms-300ms",
        "eu.support-agent.v2:error=0.1:-41003",
    ]


def test_specs_for_one_target_add_up():
    plan = FaultPlan.parse(["finance-agent:crash=0.2", "finance-agent:latency=1:2m"])
    assert plan.rules == {("finance-agent", None): (Fault.crash(0.2), Fault.latency(1, 120.0))}


def test_against_a_servers_agents_any_method_they_handle_is_told_apart():
    agents = {"counting-agent": ("work.run", "chat.start"), "counting-agent.v2": ("work.run",)}
    plan = FaultPlan.parse(["counting-agent.work.run:crash=1", "counting-agent.v2:crash=0.5"], agents=agents)
    assert set(plan.rules) == {("counting-agent", "work.run"), ("counting-agent.v2", None)}


@pytest.mark.parametrize(
    ("spec", "complaint"),
    [
        ("finance-agent", "expected AGENT[.METHOD]:KIND=P[:ARG],..."),
        (":crash=0.2", "no agent id before ':'"),
        ("finance-agent:crsh=0.2", "unknown fault kind 'crsh' in 'crsh=0.2' (kinds: crash, hang, latency, error)"),
        ("finance-agent:crash=often", "probability 'often' is not a number in [0, 1]"),
        ("finance-agent:crash=1.5", "probability '1.5' is not in [0, 1]"),
        ("finance-agent:crash=0.2:5s", "crash takes no argument"),
        ("finance-agent:hang=0.05", "hang needs a duration, e.g. hang=0.05:5s"),
        ("finance-agent:latency=1:200", "duration '200' is not a number with a unit ms, s or m"),
        ("finance-agent:latency=1:0s", "duration '0s' must be > 0"),
        ("finance-agent:latency=1:300ms-100ms", "duration range '300ms-100ms' runs backwards"),
        ("finance-agent:error=0.1", "error needs an ARC error code, e.g. error=0.1:-41003"),
        ("finance-agent:error=0.1:oops", "error code 'oops' is not an integer"),
        ("finance-agent:crash=0.7,error=0.5:-41003", "probabilities of finance-agent add up to 1.2"),
        ("finanse-agent:crash=0.2", "no agent 'finanse-agent' on this server (agents: finance-agent, hr-agent"),
        ("finance-agent.task.create:crash=1", "agent 'finance-agent' has no method 'task.create' (methods: chat"),
    ],
)
def test_a_bad_spec_is_a_one_line_error_naming_what_is_wrong(spec, complaint):
    with pytest.raises(FaultSpecError) as raised:
        FaultPlan.parse(spec, agents=DEMO_AGENTS)
    assert complaint in str(raised.value)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    ("make", "complaint"),
    [
        (lambda: Fault.crash(-0.1), "probability must be in [0, 1]"),
        (lambda: Fault.hang(0.1, 0), "hang fault needs a duration > 0"),
        (lambda: Fault.latency(1, 0.3, 0.1), "max_duration_s 0.1 is below duration_s 0.3"),
        (lambda: Fault(kind="crash", code=-41003), "crash fault takes no error code"),
        (lambda: Fault(kind="error"), "error fault needs an ARC error code"),
    ],
)
def test_faults_made_in_python_are_checked_too(make, complaint):
    with pytest.raises(FaultSpecError, match=re.escape(complaint)):
        make()


def test_draws_follow_the_probabilities_and_repeat_under_the_same_seed():
    plan = FaultPlan.parse("a:crash=0.2,hang=0.05:1s,latency=0.5:10ms-20ms", seed=3)

    def kinds(seed_plan: FaultPlan) -> list[tuple[str, ...]]:
        rng = seed_plan.rng_for("a")
        return [tuple(fault.kind.value for fault, _ in seed_plan.draw("a", "chat.start", rng)) for _ in range(10_000)]

    first = kinds(plan)
    assert first == kinds(FaultPlan.parse("a:crash=0.2,hang=0.05:1s,latency=0.5:10ms-20ms", seed=3))
    assert first != kinds(FaultPlan.parse("a:crash=0.2,hang=0.05:1s,latency=0.5:10ms-20ms", seed=4))
    counted = Counter(kind for struck in first for kind in struck)
    assert 1_800 < counted["crash"] < 2_200
    assert 400 < counted["hang"] < 600
    assert 4_700 < counted["latency"] < 5_300
    assert not any({"crash", "hang"} <= set(struck) for struck in first)
    rng = plan.rng_for("a")
    latencies = [s for _ in range(200) for fault, s in plan.draw("a", "chat.start", rng) if fault.kind == "latency"]
    assert all(0.01 <= seconds <= 0.02 for seconds in latencies)


@pytest.mark.usefixtures("engine")
def test_crash_fault_answers_internal_error_and_restarts_the_agent_like_a_real_crash():
    server = Server(restart_policy=FAST_RESTARTS, faults=FaultPlan())
    server.add_agent(Counting)
    server.faults.arm("counting-agent.work.run:crash=1")
    with serving(server) as running:
        crashed = run(codes(running.url, "counting-agent", "work.run", {}, 3))
        chat = run(post(running.url, envelope("counting-agent", "chat.start", say())))
        health = run(Client(running.url).health())
    assert crashed == [-32603, -32603, -32603]
    assert chat["result"]["chat"]["chatId"] == "c-1"
    assert health["agents"]["counting-agent"]["restarts"] == 3
    assert health["agents"]["counting-agent"]["last_crash"]["type"] == "InjectedCrash"
    assert server.faults.injected["counting-agent"] == {"crash": 3, "hang": 0, "latency": 0, "error": 0}


@pytest.mark.usefixtures("engine")
def test_hang_fault_longer_than_the_watchdog_is_answered_agent_timeout_and_restarts_the_agent():
    server = Server(restart_policy=FAST_RESTARTS, faults=FaultPlan.parse("counting-agent:hang=1:2s"))
    server.add_agent(Counting)
    with serving(server) as running:
        hung = run(post(running.url, envelope("counting-agent", "work.run")))
        health = run(Client(running.url).health())
    assert hung["error"]["code"] == -41006
    assert hung["error"]["details"] == {"agentId": "counting-agent", "hangAfterS": 0.3}
    assert health["agents"]["counting-agent"]["restarts"] == 1
    assert health["agents"]["counting-agent"]["last_crash"]["type"] == "Hang"
    assert server.faults.injected["counting-agent"]["hang"] == 1


@pytest.mark.usefixtures("engine")
def test_latency_fault_delays_the_answer_and_the_handler_still_runs():
    server = Server(faults=FaultPlan.parse("counting-agent:latency=1:200ms"))
    server.add_agent(Counting)
    with serving(server) as running:
        started = time.monotonic()
        first = run(post(running.url, envelope("counting-agent", "work.run")))
        second = run(post(running.url, envelope("counting-agent", "work.run")))
        elapsed = time.monotonic() - started
    assert (first["result"], second["result"]) == ({"served": 1}, {"served": 2})
    assert elapsed >= 0.4
    assert server.faults.injected["counting-agent"]["latency"] == 2


def test_error_fault_on_one_method_leaves_the_others_alone_and_the_most_specific_rule_wins():
    server = build_server()
    server.faults.arm(["hr-agent.chat.message:error=1:-43001", "finance-agent:error=1:-41002"])
    server.faults.arm([*server.faults.plan.specs(), "finance-agent.chat.start:latency=1:1ms"])

    def message(url: str, agent_id: str, chat_id: str) -> dict:
        return run(
            post(url, envelope(agent_id, "chat.message", {"chatId": chat_id, "message": say()["initialMessage"]}))
        )

    with serving(server) as running:
        hr_start = run(post(running.url, envelope("hr-agent", "chat.start", say("salary"))))
        hr_message = message(running.url, "hr-agent", hr_start["result"]["chat"]["chatId"])
        finance_start = run(post(running.url, envelope("finance-agent", "chat.start", say("invoice"))))
        finance_message = message(running.url, "finance-agent", finance_start["result"]["chat"]["chatId"])
        unknown_chat = message(running.url, "finance-agent", "no-such-chat")
    assert hr_start["error"] is None
    assert hr_message["error"] == {
        "code": -43001,
        "message": "Injected error -43001",
        "details": {"agentId": "hr-agent", "injected": True},
    }
    assert finance_start["error"] is None
    assert finance_message["error"]["code"] == -41002
    assert unknown_chat["error"]["code"] == -43001  # answered by the runtime: no handler, no fault
    assert server.faults.injected["finance-agent"] == {"crash": 0, "hang": 0, "latency": 1, "error": 1}


def outcomes_with_seed(seed: int) -> list:
    server = Server(faults=FaultPlan.parse("counting-agent:error=0.5:-42004", seed=seed))
    server.add_agent(Counting)
    with serving(server) as running:
        return run(codes(running.url, "counting-agent", "work.run", {}, 40))


def test_the_same_seed_gives_the_same_faults_in_every_run():
    first = outcomes_with_seed(11)
    assert set(first) == {"ok", -42004}
    assert outcomes_with_seed(11) == first
    assert outcomes_with_seed(12) != first


@pytest.mark.usefixtures("engine")  # what the admin API does, on either engine
def test_faults_are_armed_and_cleared_while_serving_and_counts_are_kept():
    server = Server(faults=FaultPlan())
    server.add_agent(Counting)
    with serving(server) as running:
        before = run(codes(running.url, "counting-agent", "work.run", {}, 2))
        server.faults.arm("counting-agent:error=1:-41002")
        armed = run(codes(running.url, "counting-agent", "work.run", {}, 2))
        server.faults.clear()
        cleared = run(codes(running.url, "counting-agent", "work.run", {}, 2))
    assert (before, armed, cleared) == (["ok", "ok"], [-41002, -41002], ["ok", "ok"])
    assert server.faults.plan.specs() == []
    assert server.faults.injected["counting-agent"]["error"] == 2


def test_fault_injection_is_off_unless_turned_on_before_serving():
    server = Server()
    server.add_agent(Counting)
    with serving(server) as running:
        with pytest.raises(RuntimeError, match="fault injection is off on this server, which already serves"):
            server.faults.arm("counting-agent:crash=1")
        answer = run(post(running.url, envelope("counting-agent", "work.run")))
    assert answer["result"] == {"served": 1}
    assert server.faults.injected == {}
    assert not server.faults.enabled


def test_a_plan_naming_an_unknown_agent_is_refused_before_serving():
    server = Server(faults=FaultPlan({"nobody": [Fault.crash(1)]}))
    server.add_agent(Counting)
    with pytest.raises(FaultSpecError, match=r"no agent 'nobody' on this server \(agents: counting-agent\)$"):
        server.create_app()
    unaware = FaultPlan.parse("counting-agent.work.run:crash=1")  # parsed knowing no agents
    with pytest.raises(
        FaultSpecError,
        match=re.escape("for method 'work.run' of agent 'counting-agent', arm the spec with server.faults.arm()"),
    ):
        server.faults.arm(unaware)
    with pytest.raises(FaultSpecError, match=re.escape("agent 'counting-agent' has no method 'task.create'")):
        server.faults.arm(FaultPlan({("counting-agent", "task.create"): [Fault.crash(1)]}))

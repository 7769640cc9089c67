"""Supervision: restarts on crash with nothing queued lost, escalation, the hung-handler watchdog."""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from collections import Counter

import aiohttp
import pytest
from conftest import envelope, post, run, wait_for_health

from arc_actors import Agent, Client, RestartPolicy, Server, handles
from arc_actors.supervisor import Supervisor
from arc_actors.testing import serving

FAST_RESTARTS = RestartPolicy(max_restarts=1000, backoff_initial_s=0.001, backoff_max_s=0.01)


class EveryThirdCrashes(Agent):
    agent_id = "flaky-agent"
    restart_policy = FAST_RESTARTS

    def on_start(self):
        self.seen = 0

    @handles("work.run")
    def work(self, params, context):
        self.seen += 1
        if self.seen == 3:
            raise RuntimeError("every third message")
        return {"seen": self.seen}


class Healthy(Agent):
    @handles("work.run")
    async def work(self, params, context):
        await asyncio.sleep(0)
        return {"ok": True}


@pytest.mark.usefixtures("engine")
def test_agent_crashing_on_every_third_message_under_load_loses_nothing_and_is_restarted_per_crash():
    server = Server(server_id="load")
    server.add_agent(EveryThirdCrashes)
    server.add_agent(Healthy, agent_id="healthy-1")
    server.add_agent(Healthy, agent_id="healthy-2")
    agents = ["flaky-agent", "healthy-1", "healthy-2"]
    total, in_flight = 600, 20

    async def load(url: str) -> dict[str, Counter]:
        codes: dict[str, Counter] = {agent: Counter() for agent in agents}
        gate = asyncio.Semaphore(in_flight)
        async with aiohttp.ClientSession() as session:

            async def one(i: int) -> None:
                agent = agents[i % len(agents)]
                async with gate, session.post(url, json=envelope(agent, "work.run", id=i)) as reply:
                    answer = await reply.json(content_type=None)
                    assert answer["id"] == i
                    codes[agent][answer["error"]["code"] if answer["error"] else "ok"] += 1

            await asyncio.gather(*(one(i) for i in range(total)))
        return codes

    with serving(server) as running:
        codes = run(load(running.url))
        health = run(Client(running.url).health())

    assert sum(sum(counter.values()) for counter in codes.values()) == total
    assert codes["healthy-1"] == Counter(ok=200)
    assert codes["healthy-2"] == Counter(ok=200)
    crashes = 200 // 3
    assert codes["flaky-agent"] == Counter({"ok": 200 - crashes, -32603: crashes})
    assert health["agents"]["flaky-agent"]["restarts"] == crashes
    assert health["agents"]["flaky-agent"]["last_crash"]["type"] == "RuntimeError"
    assert health["agents"]["healthy-1"]["restarts"] == 0
    assert health["status"] == "healthy"


class CrashesOnRequest(Agent):
    agent_id = "crashy"
    restart_policy = RestartPolicy(max_restarts=3, within_s=60, backoff_initial_s=0.01)
    instances = itertools.count(1)

    def on_start(self):
        self.instance = next(self.instances)

    @handles("work.run")
    def work(self, params, context):
        time.sleep(params.get("sleep", 0))
        if params.get("crash"):
            raise ValueError("asked to crash")
        return {"instance": self.instance}


@pytest.mark.usefixtures("engine")
def test_request_queued_behind_a_crashing_one_is_answered_by_the_restarted_instance():
    CrashesOnRequest.instances = itertools.count(1)
    server = Server(server_id="queue")
    server.add_agent(CrashesOnRequest)

    async def scenario(url: str) -> tuple[dict, dict, dict]:
        crashing = asyncio.ensure_future(post(url, envelope("crashy", "work.run", {"crash": True, "sleep": 0.5})))
        await wait_for_health(Client(url), "crashy", "busy", 1)
        queued = asyncio.ensure_future(post(url, envelope("crashy", "work.run", id="queued")))
        await wait_for_health(Client(url), "crashy", "mailbox", 1)
        return await crashing, await queued, await Client(url).health()

    with serving(server) as running:
        crashed, queued, health = run(scenario(running.url))
    assert crashed["error"]["code"] == -32603
    assert queued["error"] is None
    assert queued["result"] == {"instance": 2}
    assert health["agents"]["crashy"]["restarts"] == 1
    assert health["agents"]["crashy"]["status"] == "running"


@pytest.mark.usefixtures("engine")
def test_always_crashing_agent_escalates_to_failed_and_answers_not_available_at_once_until_restarted():
    CrashesOnRequest.instances = itertools.count(1)
    server = Server(server_id="escalation")
    server.add_agent(CrashesOnRequest)
    server.add_agent(Healthy, agent_id="healthy")
    crash = envelope("crashy", "work.run", {"crash": True})

    async def scenario(url: str) -> tuple[Counter, list[float], dict, dict]:
        answers = await asyncio.gather(*(post(url, crash) for _ in range(10)))
        codes = Counter(answer["error"]["code"] for answer in answers)
        timings = []
        for _ in range(5):
            started = time.monotonic()
            answer = await post(url, envelope("crashy", "work.run"))
            timings.append(time.monotonic() - started)
            assert answer["error"]["code"] == -41002
            assert answer["error"]["details"]["agentId"] == "crashy"
        assert (await post(url, envelope("healthy", "work.run")))["result"] == {"ok": True}
        return codes, timings, await Client(url).health(), answer

    with serving(server) as running:
        codes, timings, health, refused = run(scenario(running.url))
        server.restart_agent("crashy")
        revived = run(post(running.url, envelope("crashy", "work.run")))
        health_after = run(Client(running.url).health())

    assert codes == Counter({-32603: 4, -41002: 6})  # the first crash plus 3 restarts, then given up
    assert statistics.median(timings) < 0.1, timings
    assert health["status"] == "degraded"
    assert health["agents"]["crashy"]["status"] == "failed"
    assert health["agents"]["crashy"]["restarts"] == 3
    assert health["agents"]["crashy"]["escalations"] == 1
    assert health["agents"]["healthy"]["status"] == "running"
    assert refused["error"]["details"]["lastCrash"]["type"] == "ValueError"
    assert revived["result"] == {"instance": 5}
    assert health_after["status"] == "healthy"
    assert health_after["agents"]["crashy"]["status"] == "running"


class Sleeper(Agent):
    agent_id = "sleeper"
    restart_policy = RestartPolicy(hang_after_s=2)

    @handles("work.run")
    async def work(self, params, context):
        time.sleep(params.get("sleep", 0))
        return {"slept": params.get("sleep", 0)}


@pytest.mark.usefixtures("engine")
def test_hung_handler_is_answered_with_agent_timeout_and_the_agent_serves_again_at_once():
    server = Server(server_id="hang")
    server.add_agent(Sleeper)

    async def scenario(url: str) -> tuple[dict, float, dict, dict, dict]:
        started = time.monotonic()
        hung = asyncio.ensure_future(post(url, envelope("sleeper", "work.run", {"sleep": 60})))
        await asyncio.sleep(0.1)
        queued = asyncio.ensure_future(post(url, envelope("sleeper", "work.run", id="queued")))
        hung_answer = await hung
        elapsed = time.monotonic() - started
        next_answer = await post(url, envelope("sleeper", "work.run", id="next"))
        return hung_answer, elapsed, await queued, next_answer, await Client(url).health()

    with serving(server) as running:
        hung, elapsed, queued, following, health = run(scenario(running.url))
    assert hung["error"]["code"] == -41006
    assert hung["error"]["details"] == {"agentId": "sleeper", "hangAfterS": 2}
    assert 1.9 < elapsed < 4.0, elapsed
    assert queued["result"] == {"slept": 0}
    assert following["result"] == {"slept": 0}
    assert health["agents"]["sleeper"]["restarts"] == 1
    assert health["agents"]["sleeper"]["last_crash"]["type"] == "Hang"
    assert health["agents"]["sleeper"]["status"] == "running"


@pytest.mark.usefixtures("engine")
def test_hang_threshold_comes_from_the_environment_unless_the_agent_has_its_own(monkeypatch):
    monkeypatch.setenv("ARC_HANG_AFTER_S", "1")
    server = Server(server_id="env-hang")
    server.add_agent(Sleeper, agent_id="own-policy")
    server.add_agent(Sleeper, agent_id="env-policy", policy=RestartPolicy())

    async def scenario(url: str) -> tuple[dict, float]:
        started = time.monotonic()
        answer = await post(url, envelope("env-policy", "work.run", {"sleep": 30}))
        return answer, time.monotonic() - started

    with serving(server) as running:
        answer, elapsed = run(scenario(running.url))
    assert answer["error"]["code"] == -41006
    assert 0.9 < elapsed < 2.5, elapsed
    supervisor = Supervisor({"own-policy": Sleeper.restart_policy}, RestartPolicy(), 1.0)
    assert supervisor.hang_after_s("own-policy") == 2
    assert supervisor.hang_after_s("anyone-else") == 1.0


def test_bad_hang_threshold_in_the_environment_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("ARC_HANG_AFTER_S", "soon")
    server = Server(server_id="bad-env")
    server.add_agent(Sleeper)
    with pytest.raises(ValueError, match="ARC_HANG_AFTER_S must be a number of seconds, got 'soon'"):
        server.create_app()


@pytest.mark.usefixtures("engine")
def test_policy_on_a_decorated_handler_applies_to_its_agent_and_two_policies_are_an_error():
    server = Server(server_id="decorated")
    tight = RestartPolicy(max_restarts=0)

    @server.agent_handler("fragile", "work.run", policy=tight)
    def work(params, context):
        raise RuntimeError("boom")

    @server.agent_handler("fragile", "work.other", policy=tight)
    def other(params, context):
        return "never reached"

    with pytest.raises(ValueError, match="two different policy values"):
        server.agent_handler("fragile", "work.third", policy=RestartPolicy(max_restarts=1))

    with serving(server) as running:
        first = run(post(running.url, envelope("fragile", "work.run")))
        second = run(post(running.url, envelope("fragile", "work.other")))
    assert first["error"]["code"] == -32603
    assert second["error"]["code"] == -41002


def test_backoff_grows_by_its_factor_up_to_its_cap():
    policy = RestartPolicy(backoff_initial_s=0.1, backoff_factor=3, backoff_max_s=1, backoff_jitter=0)
    assert [policy.backoff_s(n) for n in range(1, 5)] == pytest.approx([0.1, 0.3, 0.9, 1.0])
    assert policy.backoff_s(5000) == 1.0  # thousands of restarts in a window stay at the cap
    jittered = RestartPolicy(backoff_initial_s=1, backoff_jitter=0.2)
    assert all(0.8 <= jittered.backoff_s(1) <= 1.2 for _ in range(50))


def test_backoff_grows_with_failures_in_a_row_and_a_served_request_starts_it_over():
    policy = RestartPolicy(max_restarts=100, backoff_initial_s=0.1, backoff_factor=2, backoff_jitter=0)
    supervisor = Supervisor({"flaky": policy}, RestartPolicy(), 60)
    in_a_row = [supervisor.on_failure("flaky", "boom").delay_s for _ in range(3)]
    assert supervisor.backoff_s("flaky") == pytest.approx(0.4)
    supervisor.served("flaky")
    assert supervisor.backoff_s("flaky") == 0
    forgiven = []
    for _ in range(3):
        forgiven.append(supervisor.on_failure("flaky", "boom").delay_s)
        supervisor.served("flaky")
    assert in_a_row == pytest.approx([0.1, 0.2, 0.4])
    assert forgiven == pytest.approx([0.1, 0.1, 0.1])


def test_the_intensity_counts_every_failure_served_requests_between_them_or_not():
    supervisor = Supervisor({"flaky": RestartPolicy(max_restarts=3, within_s=60)}, RestartPolicy(), 60)
    decisions = []
    for _ in range(4):
        decisions.append(supervisor.on_failure("flaky", "boom").restart)
        supervisor.served("flaky")
    assert decisions == [True, True, True, False]


class CrashesOneInThree(EveryThirdCrashes):
    """The poison message of issue 17: a generous intensity and the default backoff."""

    restart_policy = RestartPolicy(max_restarts=10_000, within_s=10, backoff_jitter=0)


@pytest.mark.usefixtures("engine")
def test_an_agent_crashing_on_one_message_in_three_restarts_after_the_first_backoff_every_time():
    server = Server(server_id="forgiving")
    server.add_agent(CrashesOneInThree)
    with serving(server) as running:
        client = Client(running.url)
        backoffs = []
        for i in range(15):
            answer = run(post(running.url, envelope("flaky-agent", "work.run", id=i)))
            if answer["error"] is not None:
                run(wait_for_health(client, "flaky-agent", "restarts", len(backoffs) + 1))
                backoffs.append(run(client.health())["agents"]["flaky-agent"]["backoff_s"])
        assert run(post(running.url, envelope("flaky-agent", "work.run")))["result"] == {"seen": 1}
        run(wait_for_health(client, "flaky-agent", "backoff_s", 0))
    # Before: 0.05 s, 0.1, 0.2, 0.4, 0.8, however many requests were served between the crashes.
    assert backoffs == [0.05] * 5


def test_a_crash_storm_logs_one_restart_line_a_second_counting_those_left_out(monkeypatch):
    from loguru import logger

    import arc_actors.supervisor as supervisor_module

    clock = iter([100.0, 100.1, 100.2, 100.9, 101.0, 101.05, 102.5])

    class Clock:
        @staticmethod
        def monotonic() -> float:
            return next(clock)

    monkeypatch.setattr(supervisor_module, "time", Clock)
    storm = RestartPolicy(max_restarts=100, within_s=60, backoff_initial_s=0, backoff_jitter=0)
    supervisor = Supervisor({"stormy": storm}, RestartPolicy(), 60)
    lines: list[str] = []
    sink = logger.add(lines.append, level="WARNING", format="{message}")
    try:
        decisions = [supervisor.on_failure("stormy", "boom") for _ in range(7)]
    finally:
        logger.remove(sink)
    assert all(decision.restart for decision in decisions)
    assert [line.split(": restart ")[1].strip() for line in lines] == [
        "1 of 100 allowed within 60 s, in 0.000 s (failure 1 in a row)",
        "5 of 100 allowed within 60 s, in 0.000 s (failure 5 in a row) (3 more restarts since the last such line)",
        "7 of 100 allowed within 60 s, in 0.000 s (failure 7 in a row) (1 more restarts since the last such line)",
    ]


@pytest.mark.parametrize(
    ("fields", "complaint"),
    [
        ({"max_restarts": -1}, "max_restarts must be >= 0"),
        ({"within_s": 0}, "within_s must be > 0"),
        ({"backoff_factor": 0.5}, "backoff_factor must be >= 1"),
        ({"backoff_jitter": 1}, r"backoff_jitter must be in \[0, 1\)"),
        ({"hang_after_s": 0}, "hang_after_s must be > 0"),
    ],
)
def test_restart_policy_refuses_nonsense(fields, complaint):
    with pytest.raises(ValueError, match=complaint):
        RestartPolicy(**fields)


class Chaotic(Agent):
    """Crashes or hangs when the request says so: the client knows exactly how many faults it caused."""

    restart_policy = RestartPolicy(max_restarts=1000, backoff_initial_s=0.001, backoff_max_s=0.01, hang_after_s=0.3)

    @handles("work.run")
    def work(self, params, context):
        if params["fault"] == "crash":
            raise RuntimeError("injected crash")
        if params["fault"] == "hang":
            time.sleep(2)
        return {"ok": True}


@pytest.mark.usefixtures("engine")
def test_mixed_crashes_and_hangs_lose_nothing_and_restarts_equal_faults():
    import random

    server = Server(server_id="chaos")
    agents = [f"chaotic-{n}" for n in range(3)]
    for agent_id in agents:
        server.add_agent(Chaotic, agent_id=agent_id)
    server.add_agent(Healthy, agent_id="bystander")
    rng = random.Random(7)
    plan = [
        (i, agents[i % 3] if i % 4 else "bystander", rng.choices(["crash", "hang", None], [0.2, 0.05, 0.75])[0])
        for i in range(400)
    ]
    plan = [(i, agent, fault if agent != "bystander" else None) for i, agent, fault in plan]

    async def load(url: str) -> Counter:
        outcomes: Counter = Counter()
        gate = asyncio.Semaphore(20)
        async with aiohttp.ClientSession() as session:

            async def one(i: int, agent: str, fault: str | None) -> None:
                body = envelope(agent, "work.run", {"fault": fault}, id=i)
                async with gate, session.post(url, json=body) as reply:
                    answer = await reply.json(content_type=None)
                    code = answer["error"]["code"] if answer["error"] else "ok"
                    outcomes[(agent == "bystander", fault, code)] += 1

            await asyncio.gather(*(one(*step) for step in plan))
        return outcomes

    with serving(server) as running:
        outcomes = run(load(running.url))
        health = run(Client(running.url).health())

    planned = Counter((agent == "bystander", fault) for _, agent, fault in plan)
    assert sum(outcomes.values()) == len(plan)
    assert outcomes == Counter(
        {
            (True, None, "ok"): planned[(True, None)],
            (False, None, "ok"): planned[(False, None)],
            (False, "crash", -32603): planned[(False, "crash")],
            (False, "hang", -41006): planned[(False, "hang")],
        }
    )
    restarts = sum(health["agents"][agent]["restarts"] for agent in agents)
    assert restarts == planned[(False, "crash")] + planned[(False, "hang")]
    assert health["agents"]["bystander"]["restarts"] == 0


class SlowToStartOnce(Agent):
    agent_id = "slow-start"
    restart_policy = RestartPolicy(hang_after_s=0.5, backoff_initial_s=0.01)
    instances = itertools.count(1)

    def on_start(self):
        self.instance = next(self.instances)
        if self.instance == 1:
            time.sleep(30)

    @handles("work.run")
    def work(self, params, context):
        return {"instance": self.instance}


@pytest.mark.usefixtures("engine")
def test_hung_on_start_is_abandoned_and_requests_queued_meanwhile_are_served_by_the_next_instance():
    SlowToStartOnce.instances = itertools.count(1)
    server = Server(server_id="slow-start")
    server.add_agent(SlowToStartOnce)
    with serving(server) as running:
        answer = run(post(running.url, envelope("slow-start", "work.run")))
        health = run(Client(running.url).health())
    assert answer["result"] == {"instance": 2}
    assert health["agents"]["slow-start"]["restarts"] == 1
    assert health["agents"]["slow-start"]["last_crash"]["message"] == "on_start hung for more than 0.5 s"

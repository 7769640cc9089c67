"""The ray engine's own guarantees: a worker process dying (killed, or ``os._exit`` in a handler) is
answered and replaced under the agent's policy, never a hang and never an answer twice; several
gateways reach the same actors; a handler waiting on a gateway that went silent gets an ARC error;
Ray missing is one clear line."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections import Counter

import aiohttp
import msgspec
import pytest
from conftest import ROOT, envelope, free_port, post, run, start, wait_healthy

from arc_actors import Agent, ARCError, Client, RestartPolicy, Server, handles
from arc_actors.agent import AgentSpec, Context
from arc_actors.ray_host import AgentHost, Ask, Errand, Reply
from arc_actors.supervisor import FailureHistory
from arc_actors.testing import serving

pytestmark = pytest.mark.ray


class Worker(Agent):
    agent_id = "worker"
    restart_policy = RestartPolicy(max_restarts=5, within_s=60, backoff_initial_s=0.01, backoff_max_s=0.05)

    @handles("work.run")
    async def work(self, params, context):
        if params.get("exit"):
            os._exit(3)
        await asyncio.sleep(params.get("sleep", 0))
        return {"pid": os.getpid()}


def ray_server(server_id: str, agent: type[Agent] = Worker, **options) -> Server:
    server = Server(server_id=server_id, engine="ray", **options)
    server.add_agent(agent)
    return server


def test_worker_process_killed_mid_load_every_request_answered_once_and_the_agent_replaced(ray_cluster):
    total, in_flight = 300, 20

    async def load(url: str) -> tuple[Counter, Counter, set]:
        answers: Counter = Counter()
        codes: Counter = Counter()
        pids: set = set()
        gate = asyncio.Semaphore(in_flight)
        async with aiohttp.ClientSession() as session:

            async def one(i: int) -> None:
                body = envelope("worker", "work.run", {"sleep": 0.005}, id=i)
                async with gate, session.post(url, json=body) as reply:
                    answer = await reply.json(content_type=None)
                answers[answer["id"]] += 1
                codes[answer["error"]["code"] if answer["error"] else "ok"] += 1
                if answer["result"]:
                    pids.add(answer["result"]["pid"])
                if i == 100:  # mid-load: kill the agent's worker process from outside
                    ray_cluster.kill(ray_cluster.get_actor("worker", namespace="arc_actors-killed"))

            await asyncio.gather(*(one(i) for i in range(total)))
        return answers, codes, pids

    with serving(ray_server("killed")) as running:
        answers, codes, pids = run(load(running.url))
        after = run(post(running.url, envelope("worker", "work.run", id="after")))
        health = run(Client(running.url).health())

    assert sorted(answers) == list(range(total))  # every request answered ...
    assert set(answers.values()) == {1}  # ... exactly once
    assert set(codes) <= {"ok", -41002}
    assert codes["ok"] >= total - in_flight - 1  # at most what was in flight at the kill is lost
    assert len(pids) == 2  # the killed process and its replacement
    assert after["result"]["pid"] in pids
    assert health["agents"]["worker"]["restarts"] == 1
    assert health["agents"]["worker"]["status"] == "running"
    assert health["agents"]["worker"]["last_crash"]["type"] == "WorkerDied"


def test_os_exit_in_a_handler_answers_not_available_and_the_next_request_meets_a_new_process(ray_cluster):
    with serving(ray_server("exits")) as running:
        first = run(post(running.url, envelope("worker", "work.run", id=1)))
        exited = run(post(running.url, envelope("worker", "work.run", {"exit": True}, id=2)))
        following = run(post(running.url, envelope("worker", "work.run", id=3)))
        health = run(Client(running.url).health())
    assert exited["error"]["code"] == -41002
    assert exited["error"]["details"]["lastCrash"]["type"] == "WorkerDied"
    assert following["error"] is None, following
    assert following["result"]["pid"] != first["result"]["pid"]
    assert health["agents"]["worker"]["restarts"] == 1


class FragileProcess(Worker):
    agent_id = "worker"
    restart_policy = RestartPolicy(max_restarts=1, within_s=60, backoff_initial_s=0.01)


def test_process_deaths_beyond_the_policy_escalate_to_failed_until_restarted_by_hand(ray_cluster):
    server = ray_server("escalates", FragileProcess)
    exit_now = envelope("worker", "work.run", {"exit": True})
    with serving(server) as running:
        deaths = [run(post(running.url, exit_now))["error"]["code"] for _ in range(2)]
        started = time.monotonic()
        refused = run(post(running.url, envelope("worker", "work.run")))
        refused_in = time.monotonic() - started
        health = run(Client(running.url).health())
        server.restart_agent("worker")
        revived = run(post(running.url, envelope("worker", "work.run")))
    assert deaths == [-41002, -41002]
    assert refused["error"]["code"] == -41002
    assert refused["error"]["details"]["lastCrash"]["type"] == "WorkerDied"
    assert refused_in < 1.0, refused_in
    assert health["agents"]["worker"]["status"] == "failed"
    assert (health["agents"]["worker"]["restarts"], health["agents"]["worker"]["escalations"]) == (1, 1)
    assert health["status"] == "degraded"
    assert "pid" in revived["result"]


class DiesAtStart(Agent):
    agent_id = "worker"
    restart_policy = RestartPolicy(max_restarts=1, within_s=60, backoff_initial_s=0.01)

    def on_start(self):
        os._exit(3)

    @handles("work.run")
    def work(self, params, context):
        return {}


def test_processes_dying_before_their_first_report_still_escalate_under_the_policy(ray_cluster):
    async def until_failed(url: str) -> dict:
        deadline = time.monotonic() + 20
        while (agent := (await Client(url).health())["agents"]["worker"])["status"] != "failed":
            assert time.monotonic() < deadline, agent
            await asyncio.sleep(0.05)
        return agent

    with serving(ray_server("dies-at-start", DiesAtStart)) as running:
        agent = run(until_failed(running.url))
        refused = run(post(running.url, envelope("worker", "work.run")))
    assert (agent["restarts"], agent["escalations"]) == (1, 1)
    assert agent["last_crash"]["type"] == "WorkerDied"
    assert refused["error"]["code"] == -41002


def test_a_process_killed_while_idle_is_noticed_and_replaced_without_a_request(ray_cluster):
    async def until_replaced(url: str) -> dict:
        deadline = time.monotonic() + 15
        while True:
            agent = (await Client(url).health())["agents"]["worker"]
            if agent["restarts"] == 1 and agent["status"] == "running":
                return agent
            assert time.monotonic() < deadline, agent
            await asyncio.sleep(0.05)

    with serving(ray_server("idle")) as running:
        before = run(post(running.url, envelope("worker", "work.run")))
        ray_cluster.kill(ray_cluster.get_actor("worker", namespace="arc_actors-idle"))
        agent = run(until_replaced(running.url))
        after = run(post(running.url, envelope("worker", "work.run")))
    assert agent["last_crash"]["type"] == "WorkerDied"
    assert after["result"]["pid"] != before["result"]["pid"]


def test_two_gateway_processes_reach_the_same_agent_actor(ray_cluster, stopper):
    address = ray_cluster.get_runtime_context().gcs_address
    ports = [free_port(), free_port()]
    for port in ports:
        gateway = start(
            "serve", "examples/scale_out.py", "--engine", "ray", "--ray-address", address, "--port", str(port)
        )
        stopper(gateway)
        wait_healthy(port, gateway, timeout_s=60)
    answers = [
        run(post(f"http://127.0.0.1:{ports[i % 2]}/arc", envelope("counter-agent", "count.next", id=i)))["result"]
        for i in range(6)
    ]
    assert [answer["count"] for answer in answers] == [1, 2, 3, 4, 5, 6]
    assert len({answer["pid"] for answer in answers}) == 1


class Asker(Agent):
    agent_id = "asker"

    @handles("ask.run")
    async def ask(self, params, context):
        try:
            await context.call("anyone", "any.method")
        except ARCError as exc:
            return {"code": exc.code, "details": exc.details}


def test_a_handler_whose_gateway_went_silent_gets_an_arc_error_instead_of_waiting_forever(ray_cluster):
    from ray import cloudpickle

    host_class = ray_cluster.remote(max_restarts=0)(AgentHost).options(max_concurrency=8)
    factory = cloudpickle.dumps(AgentSpec.of_class(Asker).factory)
    no_failures = FailureHistory([])
    host = host_class.remote(
        "asker", factory, list(sys.path), RestartPolicy(), 30.0, 1, 4, no_failures, gateway_silent_s=0.5
    )

    async def ask_and_vanish() -> tuple[Reply | None, list, float]:
        await host.ready.remote()
        context = Context("r-1", "ask.run", "me", "asker")
        started = time.monotonic()
        first = await host.call.remote("key-1", "ask.run", {}, context, Errand("gateway-that-dies"))
        batches = [await batch async for batch in host.follow.remote("key-1")]  # never answered nor polled
        return first, batches, time.monotonic() - started

    try:
        first, batches, elapsed = run(ask_and_vanish())
    finally:
        ray_cluster.kill(host)
    assert first is None  # the handler made an event: the rest comes through follow
    assert [type(event) for batch in batches for event in batch] == [Ask, Reply]
    assert batches[0][0].args == ("anyone", "any.method", {})
    reply = batches[-1][-1]
    assert reply.error is None
    assert msgspec.json.decode(reply.result) == {"code": -41003, "details": {"gateway": "gateway-that-dies"}}
    assert 0.5 <= elapsed < 5


def test_ray_engine_without_ray_installed_is_one_clear_line():
    blocked = "import sys; sys.modules['ray'] = None; from arc_actors.cli import main; sys.exit(main(sys.argv[1:]))"
    done = subprocess.run(
        [sys.executable, "-c", blocked, "serve", "--engine", "ray", "--port", str(free_port())],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == "arc_actors: the ray engine needs Ray: pip install 'arc-actors[ray]'"


class SlowToReplace(Worker):
    agent_id = "worker"
    mailbox_size = 2
    restart_policy = RestartPolicy(backoff_initial_s=2.0, backoff_jitter=0)


def test_while_its_process_is_replaced_an_agent_takes_mailbox_size_requests_and_no_more(ray_cluster):
    """The requests that wait for a new process wait in the gateway: the agent's one bound holds there."""

    async def scenario(url: str) -> tuple[dict, list]:
        exited = await post(url, envelope("worker", "work.run", {"exit": True}, id=0))
        waiting = [asyncio.ensure_future(post(url, envelope("worker", "work.run", id=i))) for i in (1, 2)]
        deadline = time.monotonic() + 5
        while (await Client(url).health())["agents"]["worker"]["mailbox"] != 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        refused = await post(url, envelope("worker", "work.run", id=3))
        answers = [*(await asyncio.gather(*waiting)), refused]
        return exited, [answer["error"]["code"] if answer["error"] else "ok" for answer in answers]

    with serving(ray_server("replaced", SlowToReplace)) as running:
        exited, codes = run(scenario(running.url))
    assert exited["error"]["code"] == -41002
    assert codes == ["ok", "ok", -44007]

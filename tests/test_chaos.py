"""Chaos runs against real servers: ours, and a foreign ARC server that drops, garbles and stalls."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web
from conftest import run

from arc_actors.chaos import ChaosReport, run_chaos, run_chaos_async
from arc_actors.demo import build_server
from arc_actors.testing import assert_all_answered, serving

ROOT = Path(__file__).resolve().parent.parent
DEMO_AGENTS = ["finance-agent", "hr-agent", "support-agent"]


def test_chaos_run_on_healthy_agents_answers_every_request_and_repeats_its_load_under_a_seed():
    with serving(build_server()) as running:
        first = run_chaos(running.url, requests=90, duration_s=60, concurrency=4, seed=1)
        again = run_chaos(running.url, requests=90, duration_s=60, concurrency=4, seed=1)
    assert (first.sent, first.answered, first.lost, first.errors) == (90, 90, 0, {})
    assert list(first.agents) == DEMO_AGENTS
    assert sum(agent.sent for agent in first.agents.values()) == 90
    assert all(agent.sent == agent.answered and agent.restarts == 0 for agent in first.agents.values())
    assert {agent_id: agent.sent for agent_id, agent in again.agents.items()} == {
        agent_id: agent.sent for agent_id, agent in first.agents.items()
    }
    latency = first.latency_ms
    assert 0 < latency.p50 <= latency.p95 <= latency.p99
    assert_all_answered(first)


def test_chaos_run_counts_error_answers_by_code_as_answered():
    server = build_server()
    server.faults.arm("support-agent:error=1:-42004")
    with serving(server) as running:
        report = run_chaos(running.url, agents=["support-agent", "hr-agent"], requests=40, duration_s=60, seed=5)
    support, hr = report.agents["support-agent"], report.agents["hr-agent"]
    assert list(report.agents) == ["support-agent", "hr-agent"]
    assert support.sent == support.answered == server.faults.injected["support-agent"]["error"]
    assert support.errors == {-42004: support.sent}
    assert (hr.errors, hr.sent + support.sent, report.lost) == ({}, 40, 0)
    assert report.errors == {-42004: support.sent}


def foreign_server() -> web.Application:
    """An ARC server that is not ours: one steady agent, one that drops the connection, one that
    answers HTML, one that stalls; its /health does not report restarts."""

    async def arc(request: web.Request) -> web.StreamResponse:
        envelope = await request.json()
        agent = envelope["targetAgent"]
        if agent == "dropping-agent":
            request.transport.close()
            return web.Response()
        if agent == "garbling-agent":
            return web.Response(status=502, text="<html>Bad gateway</html>", content_type="text/html")
        if agent == "stalling-agent":
            await asyncio.sleep(2)
        answer = {"arc": "1.0", "id": envelope["id"], "responseAgent": agent, "targetAgent": "x", "error": None}
        return web.json_response({**answer, "result": {"type": "chat", "chat": {"chatId": "c"}}})

    async def agent_info(_: web.Request) -> web.Response:
        agents = ["steady-agent", "dropping-agent", "garbling-agent", "stalling-agent"]
        registered = {agent: {"supportedMethods": ["chat.start"], "status": "active"} for agent in agents}
        registered["task-agent"] = {"supportedMethods": ["task.create"], "status": "active"}
        return web.json_response({"server": "foreign", "registeredAgents": registered})

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "server": "foreign", "agents": 5})

    app = web.Application()
    app.router.add_post("/arc", arc)
    app.router.add_get("/agent-info", agent_info)
    app.router.add_get("/health", health)
    return app


@asynccontextmanager
async def foreign_url() -> AsyncIterator[str]:
    runner = web.AppRunner(foreign_server(), access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/arc"
    finally:
        await runner.cleanup()


def test_chaos_run_counts_dropped_garbled_and_timed_out_requests_as_lost_on_any_arc_server():
    async def scenario() -> ChaosReport:
        async with foreign_url() as url:
            return await run_chaos_async(url, requests=60, duration_s=60, concurrency=6, timeout_s=0.3, seed=9)

    report = run(scenario())
    agents = report.agents
    assert list(agents) == ["steady-agent", "dropping-agent", "garbling-agent", "stalling-agent"]
    assert report.sent == 60
    assert (agents["steady-agent"].answered, agents["steady-agent"].lost) == (agents["steady-agent"].sent, 0)
    for lossy in ("dropping-agent", "garbling-agent", "stalling-agent"):
        assert agents[lossy].sent > 0
        assert (agents[lossy].lost, agents[lossy].answered, agents[lossy].latency_ms.p50) == (
            agents[lossy].sent,
            0,
            None,
        )
    assert report.lost == report.sent - agents["steady-agent"].sent
    assert all(agent.restarts is None for agent in agents.values())
    with pytest.raises(AssertionError, match=r"requests got no ARC answer: dropping-agent lost \d+ of \d+; garbling"):
        assert_all_answered(report)


def test_an_agent_that_holds_its_requests_takes_no_load_from_its_neighbour_and_the_run_ends_on_time():
    async def scenario() -> ChaosReport:
        async with foreign_url() as url:
            agents = ["steady-agent", "stalling-agent"]  # the stalling one answers after 2 s
            return await run_chaos_async(url, agents=agents, duration_s=1, concurrency=4, grace_s=0.2, seed=3)

    report = run(scenario())
    steady, stalling = report.agents["steady-agent"], report.agents["stalling-agent"]
    # Before: every caller drew the stalling agent sooner or later and waited 2 s on it, so the steady
    # one got a handful of requests and the run took over 2 s.
    assert steady.sent > 40 and steady.answered == steady.sent and steady.rps > 40
    assert (stalling.sent, stalling.answered, stalling.lost, stalling.unfinished) == (4, 0, 0, 4)
    assert (report.lost, report.unfinished) == (0, 4)
    assert report.elapsed_s < 1.2 + 1.0  # duration and grace, and a margin for a loaded machine
    assert "4 unfinished when the run ended" in report.render()


def test_an_open_loop_rate_sends_on_schedule_to_each_agent_whatever_comes_back():
    async def scenario() -> ChaosReport:
        async with foreign_url() as url:
            agents = ["steady-agent", "stalling-agent"]
            return await run_chaos_async(url, agents=agents, duration_s=1, rate=20, grace_s=0.2, seed=3)

    report = run(scenario())
    steady, stalling = report.agents["steady-agent"], report.agents["stalling-agent"]
    assert report.rate == 20
    assert (steady.sent, steady.answered) == (20, 20)
    assert (stalling.sent, stalling.answered, stalling.unfinished) == (20, 0, 20)


def chaos_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "arc_actors", "chaos", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_chaos_cli_prints_one_json_object_and_exits_0_when_nothing_is_lost():
    server = build_server()
    server.faults.arm("hr-agent:error=1:-41002")
    with serving(server) as running:
        done = chaos_cli(running.url, "--json", "--requests", "45", "--duration", "60", "--seed", "2")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["sent"], report["answered"], report["lost"]) == (45, 45, 0)
    assert list(report["agents"]) == DEMO_AGENTS
    hr = report["agents"]["hr-agent"]
    assert set(hr) == {"sent", "answered", "lost", "unfinished", "errors", "rps", "latency_ms", "restarts"}
    assert {"url", "seed", "concurrency", "elapsed_s", "sent", "answered", "lost", "errors", "agents"} <= set(report)
    assert (hr["sent"], hr["unfinished"]) == (15, 0)  # the 45 requests split evenly among the three agents
    assert hr["errors"] == {"-41002": hr["sent"]} == {"-41002": server.faults.injected["hr-agent"]["error"]}
    assert set(hr["latency_ms"]) == {"p50", "p95", "p99"}
    assert report["agents"]["finance-agent"]["errors"] == {}
    assert report["agents"]["finance-agent"]["restarts"] == 0
    assert done.stderr.strip().splitlines()[-1].endswith("sent 45  answered 45  lost 0  errors " + str(hr["sent"]))


def test_chaos_cli_prints_a_table_and_exits_1_when_requests_are_lost():
    async def scenario() -> subprocess.CompletedProcess:
        async with foreign_url() as url:
            args = [url, "--agents", "steady-agent,dropping-agent", "--requests", "20", "--timeout", "1"]
            return await asyncio.to_thread(chaos_cli, *args)

    done = run(scenario())
    assert done.returncode == 1, done.stderr
    lines = done.stdout.strip().splitlines()
    columns = ["agent", "sent", "answered", "lost", "unfinished", "req/s", "p50 ms", "p95 ms", "p99 ms"]
    columns += ["restarts", "errors"]
    assert re.split(r" {2,}", lines[1].strip()) == columns
    dropped = re.split(r" {2,}", lines[3].strip())
    assert dropped[0] == "dropping-agent"
    assert dropped[3] == dropped[1]  # lost == sent
    assert lines[-1].startswith(f"LOST {dropped[1]} of 20: ")


def test_chaos_cli_is_a_one_line_error_when_it_cannot_learn_the_agents():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    done = chaos_cli(f"http://127.0.0.1:{port}/arc", "--duration", "1")
    assert done.returncode == 2
    assert done.stderr.startswith(f"arc_actors: chaos: cannot read the agents from http://127.0.0.1:{port}/agent-info")
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr

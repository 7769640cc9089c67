"""``GET /metrics``: exact request counts, agent health at scrape time, and labels callers cannot grow."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
from conftest import envelope, post, post_raw, run
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from arc_actors import Agent, ARCError, Client, RestartPolicy, Server, handles

Series = dict[tuple[str, ...], float]


class Ledger(Agent):
    agent_id = "ledger-agent"

    @handles("ledger.add")
    def add(self, params, context):
        if "code" in params:
            raise ARCError(params["code"], "refused")
        return {"added": params["amount"]}


class Echo(Agent):
    agent_id = "echo-agent"

    @handles("echo.say")
    async def say(self, params, context):
        return params


class Crashy(Agent):
    agent_id = "crashy-agent"
    restart_policy = RestartPolicy(max_restarts=2, within_s=60, backoff_initial_s=0.001, backoff_max_s=0.01)

    @handles("crash.now")
    def crash(self, params, context):
        raise RuntimeError("boom")


class Gate(Agent):
    """Holds its first request until released, so the requests behind it wait in its mailbox."""

    agent_id = "gate-agent"

    def __init__(self, entered: threading.Event, release: threading.Event) -> None:
        self.entered, self.release = entered, release

    @handles("gate.pass")
    def pass_through(self, params, context):
        if params.get("hold"):
            self.entered.set()
            assert self.release.wait(10)
        return {}


def two_agents(server_id: str = "metrics-test", **options) -> Server:
    server = Server(server_id=server_id, **options)
    server.add_agent(Ledger)
    server.add_agent(Echo)
    return server


async def scrape(base_url: str) -> dict[str, Series]:
    """Every sample of ``/metrics``, parsed by prometheus-client's own parser: sample name → label values
    (in label-name order) → value."""
    async with aiohttp.ClientSession() as session, session.get(f"{base_url}/metrics") as reply:
        assert reply.status == 200
        assert reply.headers["Content-Type"].startswith("text/plain;")
        text = await reply.text()
    samples: dict[str, Series] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(value for _, value in sorted(sample.labels.items()))
            samples.setdefault(sample.name, {})[labels] = sample.value
    return samples


async def scrape_until(base_url: str, done: Callable[[dict[str, Series]], bool]) -> dict[str, Series]:
    """Scrape until ``done`` holds of the metrics, for at most 10 s; returns the last scrape."""
    deadline = time.monotonic() + 10
    metrics = await scrape(base_url)
    while not done(metrics) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
        metrics = await scrape(base_url)
    return metrics


def add(amount: int = 1, **params) -> dict:
    return {"amount": amount, **params}


def test_request_counters_and_latency_histograms_match_the_requests_sent_exactly(serve):
    running = serve(two_agents())

    async def scenario() -> tuple[list[dict], dict[str, Series]]:
        requests = (
            [envelope("ledger-agent", "ledger.add", add(i), id=i) for i in range(5)]
            + [envelope("echo-agent", "echo.say", {"text": "hi"}, id=10 + i) for i in range(2)]
            + [envelope("ledger-agent", "ledger.add", add(code=-42004), id=20 + i) for i in range(2)]
            + [envelope("ledger-agent", "ledger.remove", {}, id=30)]
        )
        answers = await asyncio.gather(*(post(running.url, request) for request in requests))
        async with aiohttp.ClientSession() as session, session.get(f"{running.base_url}/health") as reply:
            assert reply.status == 200
        return answers, await scrape(running.base_url)

    answers, metrics = run(scenario())

    assert sum(answer["error"] is None for answer in answers) == 7
    # label order: agent, code, method
    assert metrics["arc_requests_total"] == {
        ("ledger-agent", "ok", "ledger.add"): 5,
        ("echo-agent", "ok", "echo.say"): 2,
        ("ledger-agent", "-42004", "ledger.add"): 2,
        ("ledger-agent", "-32601", "unknown"): 1,
    }
    # label order: agent, method
    counts = {("ledger-agent", "ledger.add"): 7, ("echo-agent", "echo.say"): 2, ("ledger-agent", "unknown"): 1}
    assert metrics["arc_request_duration_seconds_count"] == counts
    buckets: dict[tuple[str, str], list[float]] = {}
    for (agent, _, method), value in metrics["arc_request_duration_seconds_bucket"].items():
        buckets.setdefault((agent, method), []).append(value)
    # 16 bounds from 0.5 ms to 60 s, then +Inf; cumulative, and every request here took well under 60 s
    assert {key: len(values) for key, values in buckets.items()} == dict.fromkeys(counts, 17)
    assert all(values == sorted(values) for values in buckets.values())
    assert {key: values[-2] for key, values in buckets.items()} == counts
    assert {key: values[-1] for key, values in buckets.items()} == counts
    assert all(value > 0 for value in metrics["arc_request_duration_seconds_sum"].values())
    assert metrics["arc_requests_in_flight"] == {(): 0}
    assert metrics["arc_agent_state"][("ledger-agent", "running")] == 1


def test_unknown_agents_methods_and_codes_never_become_label_values(serve):
    running = serve(two_agents())

    async def scenario() -> dict[str, Series]:
        hostile = [envelope(f"evil-agent-{i}", f"evil.method.{i}", id=i) for i in range(30)]
        hostile += [envelope("ledger-agent", f"ledger.evil.{i}", id=100 + i) for i in range(10)]
        hostile += [envelope("ledger-agent", "ledger.add", add(code=123_456 + i), id=200 + i) for i in range(2)]
        answers = await asyncio.gather(*(post(running.url, request) for request in hostile))
        assert [answer["error"]["code"] for answer in answers] == [-41001] * 30 + [-32601] * 10 + [123_456, 123_457]
        for body in ("{not json", "[1, 2]", '{"arc": "1.0", "targetAgent": "evil-agent-x"}'):
            await post_raw(running.url, body)
        async with aiohttp.ClientSession() as session, session.get(running.url) as reply:
            assert reply.status == 405
        return await scrape(running.base_url)

    metrics = run(scenario())

    assert metrics["arc_requests_total"] == {
        ("unknown", "-41001", "unknown"): 30,
        ("ledger-agent", "-32601", "unknown"): 10,
        ("ledger-agent", "other", "ledger.add"): 2,
        ("unknown", "-32700", "unknown"): 1,
        ("unknown", "-32600", "unknown"): 3,
    }
    labelled = [labels for series in metrics.values() for labels in series]
    assert not [labels for labels in labelled if any("evil" in value or "123456" in value for value in labels)]
    assert {agent for agent, *_ in metrics["arc_request_duration_seconds_count"]} == {"ledger-agent", "unknown"}


def test_mailbox_depth_and_in_flight_requests_are_read_while_an_agent_is_busy(serve):
    entered, release = threading.Event(), threading.Event()
    server = Server(server_id="busy")
    server.add_agent(Gate, entered, release)
    running = serve(server)

    async def scenario() -> tuple[dict[str, Series], list[dict], dict[str, Series]]:
        held = asyncio.create_task(post(running.url, envelope("gate-agent", "gate.pass", {"hold": True}, id=0)))
        assert await asyncio.to_thread(entered.wait, 10)
        queued = [
            asyncio.create_task(post(running.url, envelope("gate-agent", "gate.pass", id=i))) for i in range(1, 5)
        ]
        busy = await scrape_until(running.base_url, lambda m: m["arc_agent_mailbox"][("gate-agent",)] == 4)
        release.set()
        answers = await asyncio.gather(held, *queued)
        return busy, answers, await scrape(running.base_url)

    busy, answers, after = run(scenario())

    assert busy["arc_agent_mailbox"] == {("gate-agent",): 4}
    assert busy["arc_agent_in_flight"] == {("gate-agent",): 1}
    assert busy["arc_requests_in_flight"] == {(): 5}
    assert [answer["error"] for answer in answers] == [None] * 5
    assert after["arc_agent_mailbox"] == {("gate-agent",): 0}
    assert after["arc_agent_in_flight"] == {("gate-agent",): 0}
    assert after["arc_requests_in_flight"] == {(): 0}
    assert after["arc_requests_total"] == {("gate-agent", "ok", "gate.pass"): 5}


def test_restarts_state_and_escalation_of_a_crashing_agent_show_in_metrics(serve):
    server = two_agents()
    server.add_agent(Crashy)
    running = serve(server)

    def failed(metrics: dict[str, Series]) -> bool:
        return metrics["arc_agent_state"][("crashy-agent", "failed")] == 1

    async def scenario() -> tuple[list[int], dict[str, Series]]:
        codes = [
            (await post(running.url, envelope("crashy-agent", "crash.now", id=i)))["error"]["code"] for i in range(3)
        ]
        await scrape_until(running.base_url, failed)
        codes.append((await post(running.url, envelope("crashy-agent", "crash.now", id=3)))["error"]["code"])
        return codes, await scrape(running.base_url)

    codes, metrics = run(scenario())

    assert codes == [-32603, -32603, -32603, -41002]
    assert metrics["arc_agent_restarts_total"] == {("crashy-agent",): 2, ("ledger-agent",): 0, ("echo-agent",): 0}
    assert {state for (agent, state), value in metrics["arc_agent_state"].items() if value == 1} == {
        "failed",
        "running",
    }
    assert [key for key, value in metrics["arc_agent_state"].items() if value == 1 and key[0] == "crashy-agent"] == [
        ("crashy-agent", "failed")
    ]
    assert len(metrics["arc_agent_state"]) == 3 * 5
    assert metrics["arc_agents_failed"] == {(): 1}
    assert metrics["arc_agent_escalations_total"] == {("crashy-agent",): 1, ("ledger-agent",): 0, ("echo-agent",): 0}
    assert metrics["arc_requests_total"] == {
        ("crashy-agent", "-32603", "crash.now"): 3,
        ("crashy-agent", "-41002", "crash.now"): 1,
    }

    server.restart_agent("crashy-agent")
    back = run(scrape_until(running.base_url, lambda m: m["arc_agent_state"][("crashy-agent", "running")] == 1))
    assert back["arc_agents_failed"] == {(): 0}
    assert back["arc_agent_restarts_total"][("crashy-agent",)] == 2
    assert back["arc_agent_escalations_total"][("crashy-agent",)] == 1


def test_each_server_counts_only_its_own_requests_and_metrics_can_be_switched_off(serve):
    first, second = serve(two_agents("first")), serve(two_agents("second"))
    quiet = serve(two_agents("quiet", metrics=False))

    async def scenario() -> tuple[dict[str, Series], dict[str, Series], int, dict]:
        for url, count in ((first.url, 2), (second.url, 3)):
            await asyncio.gather(*(post(url, envelope("echo-agent", "echo.say", id=i)) for i in range(count)))
        answer = await post(quiet.url, envelope("echo-agent", "echo.say", {"x": 1}))
        async with aiohttp.ClientSession() as session, session.get(f"{quiet.base_url}/metrics") as reply:
            status = reply.status
        return await scrape(first.base_url), await scrape(second.base_url), status, answer

    metrics_first, metrics_second, quiet_status, quiet_answer = run(scenario())

    assert metrics_first["arc_requests_total"] == {("echo-agent", "ok", "echo.say"): 2}
    assert metrics_second["arc_requests_total"] == {("echo-agent", "ok", "echo.say"): 3}
    assert quiet_status == 404
    assert quiet_answer["result"] == {"x": 1}


def test_openmetrics_is_served_to_a_scraper_that_asks_for_it(serve):
    running = serve(two_agents())

    async def scenario() -> tuple[str, str]:
        await post(running.url, envelope("echo-agent", "echo.say"))
        accept = {"Accept": "application/openmetrics-text; version=1.0.0,text/plain;q=0.5"}
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{running.base_url}/metrics", headers=accept) as reply,
        ):
            return reply.headers["Content-Type"], await reply.text()

    content_type, text = run(scenario())

    assert content_type.startswith("application/openmetrics-text; version=1.0.0")
    families = {family.name: family for family in parse_openmetrics(text)}
    assert [(s.labels, s.value) for s in families["arc_requests"].samples] == [
        ({"agent": "echo-agent", "method": "echo.say", "code": "ok"}, 1)
    ]


def test_metrics_page_table_lists_exactly_the_metrics_served(serve):
    page = (Path(__file__).resolve().parent.parent / "docs" / "metrics.md").read_text()
    documented = set(re.findall(r"^\| `(arc_\w+)` \|", page, re.M))
    running = serve(two_agents())

    async def scenario() -> dict[str, Series]:
        await post(running.url, envelope("echo-agent", "echo.say"))
        return await scrape(running.base_url)

    metrics = run(scenario())

    served = {name.removesuffix("_count") for name in metrics if not name.endswith(("_bucket", "_sum"))}
    assert documented == served


class Holder(Agent):
    """Streams one delta, then holds its stream open until released."""

    agent_id = "holder-agent"

    def __init__(self, release: threading.Event) -> None:
        self.release = release

    async def chat_start(self, params, context):
        yield "first"
        while not self.release.is_set():
            await asyncio.sleep(0.01)
        yield " last"


def test_open_sse_streams_are_gauged_while_they_are_written_and_not_after(serve):
    release = threading.Event()
    server = Server(server_id="streams")
    server.add_agent(Holder, release, concurrency=2)
    running = serve(server)

    async def scenario() -> tuple[float, float, list[str]]:
        async with Client(running.url) as client:
            first = await client.chat.start("holder-agent", {"role": "user", "parts": []}, stream=True)
            second = await client.chat.start("holder-agent", {"role": "user", "parts": []}, stream=True)
            heads = [(await anext(first))["event"], (await anext(second))["event"]]
            opened = await scrape_until(running.base_url, lambda m: m["arc_sse_streams_open"][()] == 2)
            release.set()
            events = heads + [event["event"] async for event in first] + [event["event"] async for event in second]
            closed = await scrape_until(running.base_url, lambda m: m["arc_sse_streams_open"][()] == 0)
        return opened["arc_sse_streams_open"][()], closed["arc_sse_streams_open"][()], events

    opened, closed, events = run(scenario())
    assert (opened, closed) == (2, 0)
    assert events == ["stream", "stream", "stream", "done", "stream", "done"]

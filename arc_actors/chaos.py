"""Chaos runs: drive any ARC server with a bounded load of ``chat.start`` requests and report, per agent,
what came back.

Every request ends one of three ways. It is *answered* when an ARC response to it arrives, a result or
an error with a code; it is *lost* when none does: a dropped connection, a timeout, or a reply that is
not an ARC response to that request; it is *unfinished* when the run ended while it was in flight (it was
still unanswered a grace after the run's duration, and its own timeout had not passed). A resilient
server loses nothing, whatever its agents do.

Each agent is loaded on its own: ``concurrency`` callers of its own in a closed loop (each sends its next
request when its last one is answered), or an open loop of ``rate`` requests a second sent on schedule
whatever comes back. So a slow or failed agent never takes load away from its neighbours, and each
agent's throughput and latency in the report are what that agent got. The run ends at ``duration_s``
(and, optionally, once ``requests`` are sent, split evenly among the agents); what each request says is
drawn from ``random.Random`` seeded by ``seed`` and the agent. ``/health`` is read before and after the
run, so restarts are reported when the server counts them (arc_actors servers do).
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import aiohttp
import msgspec

from arc_actors.protocol import ARC_CONTENT_TYPE, ARC_VERSION, encoder

DEFAULT_DURATION_S = 10.0
DEFAULT_CONCURRENCY = 8
DEFAULT_TIMEOUT_S = 30.0
"""How long one request may go unanswered before it counts as lost."""
DEFAULT_GRACE_S = 5.0
"""How long the requests still in flight at the end of the run are waited for before they count as
unfinished."""

REQUEST_AGENT = "arc-actors-chaos"
QUESTIONS = (
    "Question about invoice INV-{n}",
    "When is my payment {n} due?",
    "What is my salary after the raise?",
    "Tell me about the benefits package",
    "My laptop will not start, ticket {n}",
    "hello",
)


class ChaosError(Exception):
    """The run cannot start: no agents were given and the server does not list any."""


class Percentiles(msgspec.Struct):
    """Latency percentiles in milliseconds (nearest rank); ``None`` when nothing was answered."""

    p50: float | None = None
    p95: float | None = None
    p99: float | None = None


class AgentReport(msgspec.Struct, kw_only=True):
    """What one agent did with the requests sent to it. ``errors`` counts error answers by code; ``rps``
    is its answers per second, from the run's start to its last answer; ``restarts`` is how many more
    restarts ``/health`` reported after the run than before (``None`` when the server does not report
    them)."""

    sent: int
    answered: int
    lost: int
    unfinished: int
    errors: dict[int, int]
    rps: float
    latency_ms: Percentiles
    restarts: int | None


class ChaosReport(msgspec.Struct, kw_only=True):
    """The outcome of a chaos run, in total and per agent."""

    url: str
    seed: int
    concurrency: int
    """Callers in flight per agent (closed loop); with ``rate`` set, unused."""
    rate: float | None
    """Requests a second sent to each agent (open loop), or None for a closed loop."""
    elapsed_s: float
    sent: int
    answered: int
    lost: int
    unfinished: int
    errors: dict[int, int]
    rps: float
    latency_ms: Percentiles
    agents: dict[str, AgentReport]

    def to_json(self) -> bytes:
        """One JSON object: top-level ``sent``, ``answered``, ``lost``, ``agents`` keyed by agent id, ..."""
        return msgspec.json.encode(self)

    def render(self) -> str:
        """The report as a text table, one line per agent and one for all of them."""
        header = (
            "agent",
            "sent",
            "answered",
            "lost",
            "unfinished",
            "req/s",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "restarts",
            "errors",
        )
        rows = [_row(agent_id, agent, agent.restarts) for agent_id, agent in self.agents.items()]
        restarts = [agent.restarts for agent in self.agents.values()]
        rows.append(_row("all", self, None if None in restarts else sum(restarts)))
        widths = [max(len(line[column]) for line in [header, *rows]) for column in range(len(header))]
        load = f"{self.rate:g} requests/s" if self.rate is not None else f"concurrency {self.concurrency}"
        lines = [
            f"chaos run against {self.url}: {self.sent} requests in {self.elapsed_s:.1f} s, "
            f"{load} per agent, seed {self.seed}",
        ]
        for line in [header, *rows]:
            numbers = [cell.rjust(width) for cell, width in zip(line[1:-1], widths[1:-1], strict=True)]
            lines.append("  ".join([line[0].ljust(widths[0]), *numbers, line[-1]]).rstrip())
        verdict = "nothing lost" if self.lost == 0 else f"LOST {self.lost} of {self.sent}"
        unfinished = f"; {self.unfinished} unfinished when the run ended" if self.unfinished else ""
        lines.append(f"{verdict}: {self.answered} of {self.sent} requests answered{unfinished}")
        return "\n".join(lines)


class ChaosProgress(msgspec.Struct):
    """Where a running chaos run stands, as its ``progress`` callback sees it."""

    elapsed_s: float
    duration_s: float
    sent: int
    answered: int
    lost: int
    errors: int

    def line(self) -> str:
        return (
            f"chaos {self.elapsed_s:5.1f}/{self.duration_s:g} s  sent {self.sent}  answered {self.answered}  "
            f"lost {self.lost}  errors {self.errors}"
        )


class _Error(msgspec.Struct):
    code: int


class _Answer(msgspec.Struct):
    id: Any = None
    result: Any = None
    error: _Error | None = None


_answer_decoder = msgspec.json.Decoder(_Answer)


class _Tally:
    """What happened to one agent's requests so far, and how many it may still be sent (None: no bound)."""

    __slots__ = ("answered", "budget", "errors", "last_at", "latencies_ms", "lost", "sent", "unfinished")

    def __init__(self, budget: int | None) -> None:
        self.sent = self.answered = self.lost = self.unfinished = 0
        self.budget = budget
        self.last_at: float | None = None
        """When its latest request ended (``time.monotonic()``): its answers per second are over its own
        run, which a budget of requests may end before the others'."""
        self.errors: Counter[int] = Counter()
        self.latencies_ms: list[float] = []

    def take(self) -> bool:
        """Whether one more request may be sent (counted against the budget)."""
        if self.budget is None:
            return True
        if self.budget == 0:
            return False
        self.budget -= 1
        return True


def run_chaos(url: str, **options: Any) -> ChaosReport:
    """Run a chaos run to its end and return its report; ``options`` are ``run_chaos_async``'s."""
    return asyncio.run(run_chaos_async(url, **options))


async def run_chaos_async(
    url: str,
    *,
    agents: Iterable[str] | None = None,
    duration_s: float = DEFAULT_DURATION_S,
    concurrency: int = DEFAULT_CONCURRENCY,
    rate: float | None = None,
    requests: int | None = None,
    seed: int = 0,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    grace_s: float = DEFAULT_GRACE_S,
    progress: Callable[[ChaosProgress], None] | None = None,
    progress_interval_s: float = 0.5,
) -> ChaosReport:
    """Send ``chat.start`` requests to each of ``agents`` (default: the ones ``/agent-info`` lists as
    answering it) from ``concurrency`` callers of its own, or at ``rate`` requests a second each, until
    ``duration_s`` has passed or ``requests`` were sent; wait up to ``grace_s`` for the answers still
    due (each at most ``timeout_s``), then report. ``url`` is the server's ``/arc`` endpoint or its base
    URL. ``progress`` is called every ``progress_interval_s`` and once at the end."""
    problems = [
        problem
        for problem, bad in (
            (f"duration_s must be > 0, got {duration_s!r}", duration_s <= 0),
            (f"concurrency must be >= 1, got {concurrency!r}", concurrency < 1),
            (f"rate must be > 0, got {rate!r}", rate is not None and not rate > 0),
            (f"requests must be >= 1, got {requests!r}", requests is not None and requests < 1),
            (f"timeout_s must be > 0, got {timeout_s!r}", timeout_s <= 0),
            (f"grace_s must be >= 0, got {grace_s!r}", grace_s < 0),
        )
        if bad
    ]
    if problems:
        raise ValueError("; ".join(problems))
    base = url.rstrip("/").removesuffix("/arc")
    endpoint = f"{base}/arc"
    # No pool bound: each agent's callers (or its rate) bound its own connections, so an agent that
    # holds its requests never holds a connection another agent's request waits for.
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, headers={"Content-Type": ARC_CONTENT_TYPE}) as session:
        targets = list(dict.fromkeys(agents)) if agents is not None else await _chat_agents(session, base, timeout_s)
        if not targets:
            raise ChaosError("no agents to drive")
        before = await _restarts(session, base, timeout_s)
        budgets = _split(requests, targets)
        tallies = {agent_id: _Tally(budget) for agent_id, budget in zip(targets, budgets, strict=True)}
        numbers = itertools.count(1)
        started = time.monotonic()
        deadline = started + duration_s
        request_timeout = aiohttp.ClientTimeout(total=timeout_s)

        def snapshot() -> ChaosProgress:
            return ChaosProgress(
                elapsed_s=time.monotonic() - started,
                duration_s=duration_s,
                sent=sum(tally.sent for tally in tallies.values()),
                answered=sum(tally.answered for tally in tallies.values()),
                lost=sum(tally.lost for tally in tallies.values()),
                errors=sum(tally.errors.total() for tally in tallies.values()),
            )

        async def one(agent_id: str, rng: random.Random) -> None:
            tally = tallies[agent_id]
            number = next(numbers)
            text = rng.choice(QUESTIONS).format(n=number)
            body = encoder.encode(
                {
                    "arc": ARC_VERSION,
                    "id": number,
                    "method": "chat.start",
                    "requestAgent": REQUEST_AGENT,
                    "targetAgent": agent_id,
                    "traceId": f"chaos-{seed}-{number}",
                    "params": {"initialMessage": {"role": "user", "parts": [{"type": "text", "content": text}]}},
                }
            )
            tally.sent += 1
            sent_at = time.perf_counter()
            try:
                async with session.post(endpoint, data=body, timeout=request_timeout) as reply:
                    raw = await reply.read()
            except asyncio.CancelledError:
                tally.unfinished += 1  # the run ended, its grace too, before this request's own timeout
                raise
            except Exception:  # noqa: BLE001 - a timeout, a dropped connection, anything else: no answer
                tally.lost += 1
                return
            answer = _decode_answer(raw, number)
            if answer is None:
                tally.lost += 1
                return
            tally.answered += 1
            tally.last_at = time.monotonic()
            tally.latencies_ms.append((time.perf_counter() - sent_at) * 1000)
            if answer.error is not None:
                tally.errors[answer.error.code] += 1

        async def caller(agent_id: str, rng: random.Random) -> None:
            tally = tallies[agent_id]
            while time.monotonic() < deadline and tally.take():
                await one(agent_id, rng)

        async def paced(agent_id: str, rng: random.Random, requests_per_s: float) -> None:
            tally = tallies[agent_id]
            flying: set[asyncio.Task[None]] = set()
            try:
                for n in itertools.count():
                    due = started + n / requests_per_s
                    if due >= deadline or not tally.take():
                        break
                    await asyncio.sleep(due - time.monotonic())
                    request = asyncio.create_task(one(agent_id, rng))
                    flying.add(request)
                    request.add_done_callback(flying.discard)
                await asyncio.gather(*flying)
            finally:
                for request in flying:
                    request.cancel()
                await asyncio.gather(*flying, return_exceptions=True)

        async def report_progress() -> None:
            while True:
                await asyncio.sleep(progress_interval_s)
                progress(snapshot())

        loads = []
        for agent_id in targets:
            rng = random.Random(f"{seed}:{agent_id}")
            if rate is not None:
                loads.append(asyncio.create_task(paced(agent_id, rng, rate)))
            else:
                loads += [asyncio.create_task(caller(agent_id, rng)) for _ in range(concurrency)]
        reporter = asyncio.create_task(report_progress()) if progress is not None else None
        _, left = await asyncio.wait(loads, timeout=max(0.0, deadline + grace_s - time.monotonic()))
        for load in left:
            load.cancel()
        await asyncio.gather(*loads, return_exceptions=True)
        elapsed_s = time.monotonic() - started
        if reporter is not None:
            reporter.cancel()
            progress(snapshot())
        after = await _restarts(session, base, timeout_s)  # the runtime counts a restart before answering
    return _report(endpoint, seed, concurrency, rate, started, elapsed_s, tallies, before, after)


def _split(requests: int | None, targets: list[str]) -> list[int | None]:
    """Each agent's share of ``requests`` (the first ones take what does not divide evenly)."""
    if requests is None:
        return [None] * len(targets)
    share, rest = divmod(requests, len(targets))
    return [share + (index < rest) for index in range(len(targets))]


def _decode_answer(raw: bytes, number: int) -> _Answer | None:
    """The ARC response to request ``number`` in ``raw``, or None when it is not one."""
    try:
        answer = _answer_decoder.decode(raw)
    except msgspec.DecodeError:
        return None
    if answer.id != number or (answer.result is None and answer.error is None):
        return None
    return answer


async def _get_json(session: aiohttp.ClientSession, url: str, timeout_s: float) -> Any:
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as reply:
        reply.raise_for_status()
        return msgspec.json.decode(await reply.read())


async def _chat_agents(session: aiohttp.ClientSession, base: str, timeout_s: float) -> list[str]:
    """The agents ``/agent-info`` lists as answering chat.start (all of them when it lists no methods)."""
    try:
        info = await _get_json(session, f"{base}/agent-info", timeout_s)
    except (TimeoutError, aiohttp.ClientError, msgspec.DecodeError) as exc:
        raise ChaosError(f"cannot read the agents from {base}/agent-info ({exc or type(exc).__name__})") from None
    registered = info.get("registeredAgents") if isinstance(info, dict) else None
    if not isinstance(registered, dict):
        raise ChaosError(f"{base}/agent-info lists no registeredAgents")
    agents = [
        agent_id
        for agent_id, about in registered.items()
        if not isinstance(about, dict) or "chat.start" in about.get("supportedMethods", ["chat.start"])
    ]
    if not agents:
        raise ChaosError(f"{base}/agent-info lists no agent that answers chat.start")
    return agents


async def _health(session: aiohttp.ClientSession, base: str, timeout_s: float) -> dict[str, dict[str, Any]]:
    """Each agent's ``/health`` entry, when the server reports agents that way (else nothing)."""
    try:
        health = await _get_json(session, f"{base}/health", timeout_s)
    except (TimeoutError, aiohttp.ClientError, msgspec.DecodeError):
        return {}
    agents = health.get("agents") if isinstance(health, dict) else None
    if not isinstance(agents, dict):
        return {}
    return {agent_id: about for agent_id, about in agents.items() if isinstance(about, dict)}


async def _restarts(session: aiohttp.ClientSession, base: str, timeout_s: float) -> dict[str, int]:
    return _restart_counts(await _health(session, base, timeout_s))


def _restart_counts(health: dict[str, dict[str, Any]]) -> dict[str, int]:
    return {
        agent_id: about["restarts"]
        for agent_id, about in health.items()
        if isinstance(about.get("restarts"), int) and not isinstance(about["restarts"], bool)
    }


def _percentiles(samples_ms: list[float]) -> Percentiles:
    if not samples_ms:
        return Percentiles()
    ordered = sorted(samples_ms)

    def rank(percent: float) -> float:
        return round(ordered[max(0, math.ceil(percent / 100 * len(ordered)) - 1)], 3)

    return Percentiles(p50=rank(50), p95=rank(95), p99=rank(99))


def _report(
    url: str,
    seed: int,
    concurrency: int,
    rate: float | None,
    started: float,
    elapsed_s: float,
    tallies: dict[str, _Tally],
    before: dict[str, int],
    after: dict[str, int],
) -> ChaosReport:
    def per_s(answered: int, over_s: float) -> float:
        return round(answered / over_s, 2) if over_s > 0 else 0.0

    agents = {
        agent_id: AgentReport(
            sent=tally.sent,
            answered=tally.answered,
            lost=tally.lost,
            unfinished=tally.unfinished,
            errors=dict(sorted(tally.errors.items())),
            rps=per_s(tally.answered, (tally.last_at or started) - started),
            latency_ms=_percentiles(tally.latencies_ms),
            restarts=after[agent_id] - before[agent_id] if agent_id in before and agent_id in after else None,
        )
        for agent_id, tally in tallies.items()
    }
    errors: Counter[int] = Counter()
    for tally in tallies.values():
        errors.update(tally.errors)
    answered = sum(agent.answered for agent in agents.values())
    return ChaosReport(
        url=url,
        seed=seed,
        concurrency=concurrency,
        rate=rate,
        elapsed_s=round(elapsed_s, 3),
        sent=sum(agent.sent for agent in agents.values()),
        answered=answered,
        lost=sum(agent.lost for agent in agents.values()),
        unfinished=sum(agent.unfinished for agent in agents.values()),
        errors=dict(sorted(errors.items())),
        rps=per_s(answered, elapsed_s),
        latency_ms=_percentiles([sample for tally in tallies.values() for sample in tally.latencies_ms]),
        agents=agents,
    )


def _row(name: str, counts: AgentReport | ChaosReport, restarts: int | None) -> tuple[str, ...]:
    def number(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    latency = counts.latency_ms
    return (
        name,
        str(counts.sent),
        str(counts.answered),
        str(counts.lost),
        str(counts.unfinished),
        number(counts.rps),
        number(latency.p50),
        number(latency.p95),
        number(latency.p99),
        "-" if restarts is None else str(restarts),
        ", ".join(f"{code}: {count}" for code, count in counts.errors.items()) or "-",
    )

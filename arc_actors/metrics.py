"""Prometheus metrics of one server, served at ``GET /metrics`` (prometheus-client).

Every server has a ``CollectorRegistry`` of its own, never the process-wide default one, so several
servers in one process (tests do this) keep separate counts. Label values come only from the server's
own vocabulary (its agent ids and their methods, the ARC error codes, ``unknown`` and ``other``):
nothing a caller sends becomes a label value, so no caller can grow the registry.

Requests are tallied as the gateway reports them (``ArcObserver``; an aiohttp middleware cost some
18 µs more per request), in plain ints under one lock, one series object per (agent, method) found
with one dict lookup: a fifth of the cost of prometheus-client's own Counter, Histogram and Gauge,
which take a lock per value (measured 1.7 µs against 8.7 µs per request). The scrape copies the
tallies under that lock and renders them off the event loop: rendering is slow (some 30 µs per line;
100 agents with 5 methods each make 11,000 lines) and must not stall requests.
Agent metrics are read at scrape time from the engine's statuses, which never wait on an actor; the
open SSE streams and the webhook deliveries likewise, from the gateway's and the webhooks' own counts.
"""

from __future__ import annotations

import asyncio
import threading
from bisect import bisect_left
from collections.abc import Iterator
from itertools import accumulate

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from arc_actors.engine import AgentState
from arc_actors.gateway import Gateway
from arc_actors.protocol import ARCRequest, ErrorCode, ErrorObject, Outcome
from arc_actors.router import Router
from arc_actors.webhooks import Webhooks

METRICS_PATH = "/metrics"

UNKNOWN = "unknown"
"""The agent label of requests to no known agent (or not decodable), and the method label of methods the
agent does not handle."""

OTHER_CODE = "other"
"""The code label of error codes outside the ARC table (a handler may raise any integer)."""

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
"""From a request answered by the gateway itself (well under a millisecond) to a slow LLM call."""

_BUCKET_LABELS = [*map(floatToGoString, LATENCY_BUCKETS_S), "+Inf"]
_CODE_LABELS = {int(code): str(int(code)) for code in ErrorCode}


class _Series:
    """The tallies of one (agent, method): answers per code, and the latency histogram (a count per
    bucket, not cumulative, the last +Inf; and the sum)."""

    __slots__ = ("buckets", "codes", "sum_s")

    def __init__(self) -> None:
        self.codes: dict[str, int] = {}
        self.buckets = [0] * len(_BUCKET_LABELS)
        self.sum_s = 0.0

    def cumulative_buckets(self) -> list[tuple[str, float]]:
        return list(zip(_BUCKET_LABELS, accumulate(self.buckets), strict=True))


class Metrics:
    """The metrics of one server's ``/arc`` requests, agents, SSE streams and webhook deliveries."""

    def __init__(self, router: Router, webhooks: Webhooks) -> None:
        self._router = router
        self._gateway: Gateway | None = None
        self._webhooks = webhooks
        self._methods = {agent_id: frozenset(router.methods_of(agent_id)) for agent_id in router.agent_ids}
        self._series: dict[tuple[str, str], _Series] = {}
        """By (agent, method) label values: only this server's agent ids and methods, and ``unknown``."""
        self._in_flight = 0  # written on the event loop only
        self._lock = threading.Lock()  # guards the tallies against a scrape in another thread
        self._registry = CollectorRegistry()
        self._registry.register(self)

    def install(self, app: web.Application, gateway: Gateway) -> None:
        """Serve the metrics at ``GET /metrics`` of ``app``, whose ``gateway`` tells them of every ``/arc``
        request (they are its ``ArcObserver``) and counts its open streams."""
        self._gateway = gateway
        app.router.add_get(METRICS_PATH, self.handle_scrape)

    def arrived(self) -> None:
        self._in_flight += 1

    def left(self, call: ARCRequest | None, outcome: Outcome | None, elapsed_s: float) -> None:
        """Tally one ``/arc`` request by its outcome (none: its client left before an answer, and it
        is not counted); ``call`` is None when it could not be decoded."""
        self._in_flight -= 1
        if outcome is None:
            return
        series = None if call is None else self._series.get((call.target_agent, call.method))
        if series is None:
            series = self._new_series(call)
        code = _CODE_LABELS.get(outcome.code, OTHER_CODE) if type(outcome) is ErrorObject else "ok"
        with self._lock:
            codes = series.codes
            codes[code] = codes.get(code, 0) + 1
            series.buckets[bisect_left(LATENCY_BUCKETS_S, elapsed_s)] += 1
            series.sum_s += elapsed_s

    async def handle_scrape(self, request: web.Request) -> web.Response:
        """The metrics in the format the scraper asks for: Prometheus text unless it prefers OpenMetrics.
        With auth on, to a valid token only: they name every agent and method, and their traffic."""
        refused = None if self._gateway is None else self._gateway.refusal(request)
        if refused is not None:
            return refused
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        body = await asyncio.get_running_loop().run_in_executor(None, encode, self._registry)
        return web.Response(body=body, headers={"Content-Type": content_type})

    def collect(self) -> Iterator[Metric]:
        """The registry's view of this server (prometheus-client's ``Collector`` protocol); any thread."""
        yield from self._collect_requests()
        yield from self._collect_agents()
        yield GaugeMetricFamily(
            "arc_sse_streams_open",
            "SSE (stream: true) answers being written now.",
            value=0 if self._gateway is None else self._gateway.streams_open,
        )
        deliveries = CounterMetricFamily(
            "arc_webhook_deliveries",
            "Webhook deliveries ended, by outcome: delivered (2xx), failed (retries exhausted), gone (410: "
            "subscription deactivated), dropped (queue full or server stopping).",
            labels=["outcome"],
        )
        for outcome, count in self._webhooks.counts().items():
            deliveries.add_metric([outcome], count)
        yield deliveries

    def _new_series(self, call: ARCRequest | None) -> _Series:
        """The series of the first request of its labels (made now), or of one whose agent or method is not
        this server's: the caller's own values never become a key."""
        if call is None or (methods := self._methods.get(call.target_agent)) is None:
            labels = (UNKNOWN, UNKNOWN)
        else:
            labels = (call.target_agent, call.method if call.method in methods else UNKNOWN)
        series = self._series.get(labels)
        if series is None:
            with self._lock:
                series = self._series[labels] = _Series()
        return series

    def _collect_requests(self) -> Iterator[Metric]:
        with self._lock:
            tallies = list(self._series.items())
            counts = [((*labels, code), count) for labels, each in tallies for code, count in each.codes.items()]
            series = [(labels, each.cumulative_buckets(), each.sum_s) for labels, each in tallies]
        requests = CounterMetricFamily(
            "arc_requests",
            "ARC requests answered, by agent, method and outcome (ok, or the ARC error code).",
            labels=["agent", "method", "code"],
        )
        for labels, count in counts:
            requests.add_metric(labels, count)
        latency = HistogramMetricFamily(
            "arc_request_duration_seconds",
            "Time from an /arc request's arrival to its answer, by agent and method.",
            labels=["agent", "method"],
        )
        for labels, buckets, sum_s in series:
            latency.add_metric(labels, buckets, sum_s)
        yield requests
        yield latency
        yield GaugeMetricFamily("arc_requests_in_flight", "ARC requests being served now.", value=self._in_flight)

    def _collect_agents(self) -> Iterator[Metric]:
        mailbox = GaugeMetricFamily(
            "arc_agent_mailbox",
            "Requests waiting in the agent's mailbox, not yet taken by an instance.",
            labels=["agent"],
        )
        in_flight = GaugeMetricFamily(
            "arc_agent_in_flight",
            "Requests an instance of the agent has taken and not yet answered (awaiting, or running).",
            labels=["agent"],
        )
        restarts = CounterMetricFamily(
            "arc_agent_restarts", "Restarts of the agent by its supervisor since the server started.", labels=["agent"]
        )
        escalations = CounterMetricFamily(
            "arc_agent_escalations",
            "Times the supervisor gave up on the agent (marked it failed) since the server started.",
            labels=["agent"],
        )
        state = GaugeMetricFamily(
            "arc_agent_state", "1 for the state the agent is in, 0 for the others.", labels=["agent", "state"]
        )
        failed = 0
        for agent_id in self._router.agent_ids:
            status = self._router.status(agent_id)
            mailbox.add_metric([agent_id], status.mailbox)
            in_flight.add_metric([agent_id], status.busy)
            restarts.add_metric([agent_id], status.restarts)
            escalations.add_metric([agent_id], status.escalations)
            for each in AgentState:
                state.add_metric([agent_id, each.value], 1 if status.state is each else 0)
            failed += status.state is AgentState.FAILED
        yield from (mailbox, in_flight, restarts, escalations, state)
        yield GaugeMetricFamily(
            "arc_agents_failed",
            "Agents given up on by their supervisor (escalated), awaiting a restart by hand.",
            value=failed,
        )

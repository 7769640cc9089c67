"""Agents that wait: one agent whose chat.start awaits L (an LLM call), under C callers at once.

Measured in one run: arc_actors (the agent's requests interleaved at their awaits), the same agent with
``max_in_flight = 1`` (one request at a time, as every agent was served before interleaving), and
arc-sdk 1.3.1's own server with the same handler, against the limit C / L. Cases: C=64 with L=100 ms,
C=1,000 with L=1 s (there also the server's resident memory per request in flight), and C=64 with a
handler that makes a real HTTP call to a local stand-in for an LLM API answering after 100 ms
(``llm_stub.py``, on the load tool's core), so the handler's own HTTP client counts. The reference runs
in its own virtualenv, as in ``reference.py`` (``--reference-python``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import harness
from apps import CHAT_RESULT, LATENCY_ENV, STUB_URL_ENV
from harness import BENCHMARKS, LOAD_CPU, LoadResult
from reference import reference_python

OURS = "arc_actors"
STRICT = "arc_actors, max_in_flight=1"
THEIRS = "arc-sdk 1.3.1"
AWAITS, CALLS_HTTP = "llm-agent", "http-llm-agent"
"""The agents measured: one awaits ``asyncio.sleep(L)``, one awaits an HTTP call answered after L."""
CASES = ((64, 0.1, AWAITS), (1000, 1.0, AWAITS), (64, 0.1, CALLS_HTTP))
"""(C, L, agent): callers at once, seconds each handler waits, the agent."""
SMOKE_CASES = ((64, 0.1, AWAITS), (64, 0.1, CALLS_HTTP))
RUN_LATENCIES = 30
"""Each run lasts at least this many handler latencies: the C requests cut off at its end are not
counted, so a run of 10 latencies could show at most 0.9x the limit."""
STRICT_MAX_C = 64
"""The one-at-a-time twin is measured only where it finishes a run: at C=1,000 and L=1 s it would serve
one request a second."""


def main(argv: list[str] | None = None) -> None:
    parser = harness.parser(__doc__.splitlines()[0])
    parser.add_argument("--reference-python", type=Path, help="a Python with arc-sdk 1.3.1")
    opts, args = harness.options(parser, argv)
    python = reference_python(args.reference_python, opts.smoke)
    results = {
        f"C={concurrency}, L={latency_s * 1000:g} ms{', HTTP call' if agent == CALLS_HTTP else ''}": measure_case(
            concurrency, latency_s, agent, python, opts
        )
        for concurrency, latency_s, agent in (SMOKE_CASES if opts.smoke else CASES)
    }
    rows = [
        [
            case,
            side,
            top["rps"],
            top["p50_ms"],
            top["p99_ms"],
            top["errors"],
            found["share_of_limit"],
            found["rps_ratio_to_arc_sdk"],
        ]
        for case, measured in results.items()
        for side, found in measured["sides"].items()
        for top in [found["best"]]
    ]
    headers = ["case", "server", "req/s", "p50 ms", "p99 ms", "errors", "÷ limit C/L", "÷ arc-sdk"]
    lines = [harness.table(headers, rows), ""]
    for case, measured in results.items():
        rss = measured["rss_mib"]
        lines.append(
            f"{case}: limit {measured['limit_rps']:,.0f} req/s; arc_actors resident {rss['idle']} MiB idle, "
            f"{rss['loaded']} MiB after the load: ~{measured['kib_per_request_in_flight']} KiB per request in flight"
        )
    if python is None:
        lines.append("arc-sdk is not installed here and a smoke run installs nothing: reference skipped")
    harness.report("io_bound", opts, "\n".join(lines), {"cases": results})


def measure_case(
    concurrency: int, latency_s: float, agent: str, python: Path | None, opts: harness.Options
) -> dict[str, Any]:
    """One case, its sides up at once and loaded in turn: each side's rounds, best, share of the limit."""
    env = {LATENCY_ENV: str(latency_s), "ARC_BENCH_RESULT": json.dumps(CHAT_RESULT)}
    stub_argv = [sys.executable, str(BENCHMARKS / "llm_stub.py"), harness.PORT]
    stub = harness.launch("LLM stand-in", stub_argv, env, LOAD_CPU)
    env[STUB_URL_ENV] = f"http://127.0.0.1:{stub.port}/complete"
    launches = [harness.launch(OURS, harness.arc_actors_serve("waiting_agents"), env)]
    if python is not None:
        reference = [str(python), str(BENCHMARKS / "io_reference_server.py"), harness.PORT]
        launches.append(harness.launch(THEIRS, reference, env))
    if agent == CALLS_HTTP:
        launches.append(stub)
    with harness.running(*launches) as started:
        servers = {launch.name: server for launch, server in zip(launches, started, strict=True)}
        targets = {OURS: (servers[OURS], agent)}
        if concurrency <= STRICT_MAX_C and agent == AWAITS:
            targets[STRICT] = (servers[OURS], "strict-llm-agent")
        if python is not None:
            targets[THEIRS] = (servers[THEIRS], agent)
        for server, target in targets.values():
            server.expect_result(harness.chat_start(target))
        idle_rss = rss_mib(servers[OURS].process.pid)

        # At least ten handler latencies a run, so that the requests cut off at its end weigh little.
        duration_s = opts.duration_s if opts.smoke else max(opts.duration_s, RUN_LATENCIES * latency_s)

        def run(side: str) -> LoadResult:
            server, target = targets[side]
            body = harness.chat_start(target)
            return harness.run_load(server.arc_url, [body], concurrency, duration_s, opts.tool, server)

        rounds = harness.alternate(opts.rounds, list(targets), run)
        loaded_rss = rss_mib(servers[OURS].process.pid)
    limit = concurrency / latency_s
    theirs = harness.best(rounds[THEIRS]) if THEIRS in rounds else None
    sides = {}
    for side, side_rounds in rounds.items():
        top = harness.best(side_rounds)
        sides[side] = {
            "best": top.as_json(),
            "share_of_limit": round(top.rps / limit, 3),
            "rps_ratio_to_arc_sdk": harness.ratio(top.rps, theirs.rps) if theirs else None,
            "rounds": [result.as_json() for result in side_rounds],
        }
    return {
        "limit_rps": limit,
        "sides": sides,
        "rss_mib": {"idle": idle_rss, "loaded": loaded_rss},
        "kib_per_request_in_flight": round((loaded_rss - idle_rss) * 1024 / concurrency, 1),
    }


def rss_mib(pid: int) -> float:
    """The resident memory of process ``pid`` now, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


if __name__ == "__main__":
    main(sys.argv[1:])

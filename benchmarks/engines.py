"""Engines: the same agents served by the pykka engine (in process) and by the ray engine (Ray actors).

Both servers are ``python -m arc_actors serve`` of ``apps.py:echo_agents``, the second with
``--engine ray`` (it starts a local Ray of its own, as a single-machine user would). Measured at c=1 and
c=64: requests per second, p50, p99 and their ratios to the pykka engine. The per-request cost of the
extra hop (gateway → Ray actor in another process → gateway) is the difference of the p50s at c=1.
The server CPU column counts the gateway process only: with Ray, the agent's work is in its actor's
process, not in it.
"""

from __future__ import annotations

from typing import Any

import harness
from harness import LoadResult

CONCURRENCIES = (1, 64)
PYKKA = "pykka engine"
RAY = "ray engine"
SIDES = (PYKKA, RAY)
AGENT = "echo-agent"


def main(argv: list[str] | None = None) -> None:
    parser = harness.parser(__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", help="default: 1 64 (smoke: 64)")
    opts, args = harness.options(parser, argv)
    pykka_server = harness.launch("pykka", harness.arc_actors_serve("echo_agents"))
    ray_server = harness.launch("ray", [*harness.arc_actors_serve("echo_agents"), "--engine", "ray"])
    body = harness.chat_start(AGENT)
    with harness.running(pykka_server, ray_server) as servers:
        targets = dict(zip(SIDES, servers, strict=True))
        for server in servers:
            server.warm_up(body, opts)

        def measure(concurrency: int) -> dict[str, list[LoadResult]]:
            def run(side: str) -> LoadResult:
                server = targets[side]
                return harness.run_load(server.arc_url, [body], concurrency, opts.duration_s, opts.tool, server)

            return harness.alternate(opts.rounds, SIDES, run)

        rounds = {concurrency: measure(concurrency) for concurrency in harness.concurrencies(args, CONCURRENCIES, opts)}
    text, payload = summarize(rounds)
    harness.report("engines", opts, text, payload)


def summarize(rounds: dict[int, dict[str, list[LoadResult]]]) -> tuple[str, dict[str, Any]]:
    rows, payload = [], {"results": {}}
    for concurrency, by_side in rounds.items():
        pykka = harness.best(by_side[PYKKA])
        payload["results"][f"c={concurrency}"] = {}
        for side, results in by_side.items():
            top = harness.best(results)
            rps_ratio, p99_ratio = harness.ratio(top.rps, pykka.rps), harness.ratio(top.p99_ms, pykka.p99_ms)
            rows.append([concurrency, side, top.rps, top.p50_ms, top.p99_ms, top.errors, rps_ratio, p99_ratio])
            payload["results"][f"c={concurrency}"][side] = {
                "best": top.as_json(),
                "rps_ratio_to_pykka": rps_ratio,
                "p99_ratio_to_pykka": p99_ratio,
                "rounds": [result.as_json() for result in results],
            }
    headers = ["c", "engine", "req/s", "p50 ms", "p99 ms", "errors", "req/s ÷ pykka", "p99 ÷ pykka"]
    lines = [harness.table(headers, rows)]
    c1 = payload["results"].get("c=1")
    if c1:
        hop_ms = round(c1[RAY]["best"]["p50_ms"] - c1[PYKKA]["best"]["p50_ms"], 3)
        payload["extra_hop_ms"] = hop_ms
        lines += ["", f"the extra hop to a Ray actor (p50 at c=1, ray - pykka): {hop_ms} ms per request"]
    return "\n".join(lines), payload


if __name__ == "__main__":
    main()

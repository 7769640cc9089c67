"""Gateway overhead: ``python -m arc_actors serve`` against a bare aiohttp + msgspec server.

Both answer the same chat.start with the same result on the same event loop kind; the bare server
decodes, answers and encodes in its handler, arc_actors adds its router and one actor hop. Measured at
c=1, c=64 and c=256: requests per second, p50, p99 and the ratios to the bare server. The arc_actors
agent is measured three times: with an ``async def`` handler (as the seed writes them), with a plain
``def`` one, both with the chat recorded by the runtime (managed chats, the default), and with a ``def``
one of an agent keeping its own chats (``managed_chats = False``), which leaves the gateway and the hop.

``--profile`` then samples the arc_actors server with py-spy (``pip install py-spy``) under c=64 load and
prints where the time goes.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import harness
from harness import BENCHMARKS, LoadResult

CONCURRENCIES = (1, 64, 256)
BARE = "bare aiohttp+msgspec"
ASYNC = "arc_actors, async def handler"
SYNC = "arc_actors, def handler"
OWN_CHATS = "arc_actors, def handler, managed_chats=False"
SIDES = (BARE, ASYNC, SYNC, OWN_CHATS)
TARGET_RPS_RATIO, TARGET_P99_RATIO = 0.85, 1.3
PROFILE_RATE_HZ = 250
PROFILE_TOP = 25
ENTRY_POINTS = ("<module> (arc_actors/", "main (arc_actors/cli.py", "Server.run (arc_actors/")
"""Frames under every sample of the server's main thread, left out of the arc_actors table."""


def main(argv: list[str] | None = None) -> None:
    parser = harness.parser(__doc__.splitlines()[0])
    parser.add_argument("--profile", action="store_true", help="then profile the server with py-spy")
    parser.add_argument("--concurrency", type=int, nargs="+", help="default: 1 64 256 (smoke: 64)")
    opts, args = harness.options(parser, argv)
    bare_server = harness.launch("bare", [sys.executable, str(BENCHMARKS / "bare_server.py"), harness.PORT])
    arc_server = harness.launch("arc_actors", harness.arc_actors_serve("echo_agents"))
    with harness.running(bare_server, arc_server) as (bare, arc):
        targets = {
            BARE: (bare, harness.chat_start("echo-agent")),
            ASYNC: (arc, harness.chat_start("echo-agent")),
            SYNC: (arc, harness.chat_start("sync-echo-agent")),
            OWN_CHATS: (arc, harness.chat_start("own-chats-echo-agent")),
        }
        for server, body in targets.values():
            server.warm_up(body, opts)

        def measure(concurrency: int) -> dict[str, list[LoadResult]]:
            def run(side: str) -> LoadResult:
                server, body = targets[side]
                return harness.run_load(server.arc_url, [body], concurrency, opts.duration_s, opts.tool, server)

            return harness.alternate(opts.rounds, SIDES, run)

        rounds = {concurrency: measure(concurrency) for concurrency in harness.concurrencies(args, CONCURRENCIES, opts)}
        profiles = [profile_server(side, *targets[side], opts) for side in (ASYNC, SYNC)] if args.profile else []

    text, payload = summarize(rounds)
    for profile in filter(None, profiles):
        text += "\n\n" + profile.pop("text")
        payload.setdefault("profiles", []).append(profile)
    harness.report("gateway_overhead", opts, text, payload)


def summarize(rounds: dict[int, dict[str, list[LoadResult]]]) -> tuple[str, dict[str, Any]]:
    rows, payload = [], {"results": {}, "targets": {}}
    for concurrency, by_side in rounds.items():
        bare = harness.best(by_side[BARE])
        payload["results"][f"c={concurrency}"] = {}
        for side, results in by_side.items():
            top = harness.best(results)
            rps_ratio, p99_ratio = harness.ratio(top.rps, bare.rps), harness.ratio(top.p99_ms, bare.p99_ms)
            rows.append(
                [
                    concurrency,
                    side,
                    top.rps,
                    top.p50_ms,
                    top.p99_ms,
                    top.errors,
                    rps_ratio,
                    p99_ratio,
                    top.cpu_us_per_request,
                ]
            )
            payload["results"][f"c={concurrency}"][side] = {
                "best": top.as_json(),
                "rps_ratio_to_bare": rps_ratio,
                "p99_ratio_to_bare": p99_ratio,
                "rounds": [result.as_json() for result in results],
            }
    headers = ["c", "server", "req/s", "p50 ms", "p99 ms", "errors", "req/s ÷ bare", "p99 ÷ bare", "server CPU µs/req"]
    lines = [harness.table(headers, rows), ""]
    c64 = payload["results"].get("c=64", {})
    for side in [side for side in c64 if side != BARE]:
        rps_ratio, p99_ratio = c64[side]["rps_ratio_to_bare"], c64[side]["p99_ratio_to_bare"]
        met = None not in (rps_ratio, p99_ratio) and rps_ratio >= TARGET_RPS_RATIO and p99_ratio <= TARGET_P99_RATIO
        payload["targets"][side] = {"rps_ratio": rps_ratio, "p99_ratio": p99_ratio, "met": met}
        lines.append(
            f"target at c=64, {side}: req/s ≥ {TARGET_RPS_RATIO}x bare and p99 ≤ {TARGET_P99_RATIO}x bare: "
            f"{rps_ratio}x and {p99_ratio}x, {harness.verdict(met)}"
        )
    return "\n".join(lines), payload


def profile_server(
    side: str, server: harness.ServerProcess, body: bytes, opts: harness.Options
) -> dict[str, Any] | None:
    """Sample the server with py-spy under c=64 load on ``side``'s agent, counting only the thread that
    holds the GIL (``--gil``): the share of samples per thread, per function (own time) and per
    arc_actors function (with callees). Time outside the GIL (syscalls) is not in it."""
    py_spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if py_spy is None:
        print("py-spy is not installed (pip install py-spy): no profile", file=sys.stderr)
        return None
    seconds = max(1, round(opts.duration_s))
    raw = opts.results / f"gateway_profile_{'async' if side == ASYNC else 'sync'}.txt"
    opts.results.mkdir(parents=True, exist_ok=True)
    argv = [py_spy, "record", "--gil", "--function", "-r", str(PROFILE_RATE_HZ), "-f", "raw", "-o", str(raw)]
    argv += ["-d", str(seconds), "-p", str(server.process.pid)]
    spy = subprocess.Popen(harness.pinned(argv, harness.LOAD_CPU), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    load = harness.run_load(server.arc_url, [body], 64, seconds + 1, opts.tool, server)
    _, err = spy.communicate(timeout=seconds + 30)
    if spy.returncode != 0:
        print(f"py-spy failed: {err.decode(errors='replace')}", file=sys.stderr)
        return None
    own, total, threads, samples = collapse(raw.read_text())

    def share(count: int) -> float:
        return round(100 * count / samples, 1)

    ours = sorted(
        (name for name in total if "arc_actors/" in name and not name.startswith(ENTRY_POINTS)),
        key=total.__getitem__,
        reverse=True,
    )
    tables = {
        "threads": [[name, share(count)] for name, count in threads.most_common()],
        "own": [[name, share(own[name]), share(total[name])] for name, _ in own.most_common(PROFILE_TOP)],
        "arc_actors": [[name, share(own[name]), share(total[name])] for name in ours[:PROFILE_TOP]],
    }
    text = "\n".join(
        [
            f"profile of {side} at c=64: py-spy --gil --function, {PROFILE_RATE_HZ} Hz for {seconds} s, "
            f"{samples:,} samples, {load.rps:,.0f} req/s and {load.cpu_us_per_request or 0:.0f} µs of server "
            f"CPU per request meanwhile; stacks in {raw}",
            harness.table(["thread", "% of samples"], tables["threads"]),
            "",
            harness.table(["top functions by own time", "own %", "with callees %"], tables["own"]),
            "",
            harness.table(["arc_actors functions", "own %", "with callees %"], tables["arc_actors"]),
        ]
    )
    return {"side": side, "samples": samples, "load": load.as_json(), **tables, "text": text}


def collapse(raw: str) -> tuple[Counter[str], Counter[str], Counter[str], int]:
    """Sample counts from py-spy's collapsed stacks (``frame;frame;...;leaf COUNT`` per line): per
    function on top of the stack (own), per function anywhere in it (with callees), and per thread
    (an agent's actor thread, or the gateway's event loop)."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    samples = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        samples += count
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count
        threads["agent actor thread" if "pykka" in stack else "gateway event loop (main thread)"] += count
    return own, total, threads, max(samples, 1)


if __name__ == "__main__":
    main()

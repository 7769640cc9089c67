"""The benchmarks keep working: each script runs in smoke mode (a fraction of a second of load per
figure, on loopback, bounded) and writes the JSON its README table comes from. No figure is asserted:
speed is the benchmarks' business, not a unit test's."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import harness  # noqa: E402 - lives in benchmarks/, which is not a package

SMOKE_TIMEOUT_S = 120


def run_smoke(name: str, results: Path) -> dict:
    """Run ``benchmarks/NAME.py --smoke`` with our own load generator (wrk may be missing) and return
    the JSON it wrote."""
    argv = [sys.executable, str(BENCHMARKS / f"{name}.py"), "--smoke", "--tool", "aiohttp", "--results", str(results)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=SMOKE_TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    assert "written:" in done.stdout
    document = json.loads((results / f"{name}.json").read_text())
    assert document["benchmark"] == name
    assert document["settings"] == {"duration_s": 0.3, "rounds": 1, "tool": "aiohttp", "smoke": True}
    return document


def test_gateway_overhead_compares_four_servers_at_c64_without_errors(tmp_path: Path) -> None:
    document = run_smoke("gateway_overhead", tmp_path)
    sides = document["results"]["c=64"]
    ours = ["arc_actors, async def handler", "arc_actors, def handler", "arc_actors, def handler, managed_chats=False"]
    assert list(sides) == ["bare aiohttp+msgspec", *ours]
    for side in sides.values():
        assert side["best"]["requests"] > 0
        assert side["best"]["errors"] == 0
        assert len(side["rounds"]) == 1
    assert sides["bare aiohttp+msgspec"]["rps_ratio_to_bare"] == 1.0
    assert set(document["targets"]) == set(ours)


def test_reference_runs_the_seed_on_both_servers_or_says_why_not(tmp_path: Path) -> None:
    document = run_smoke("reference", tmp_path)
    if "skipped" in document:
        pytest.skip(document["skipped"])
    sides = document["results"]["c=64"]
    assert list(sides) == ["arc_actors", "arc-sdk 1.3.1", "arc-sdk 1.3.1, no access log"]
    assert sides["arc_actors"]["best"]["requests"] > 0
    assert all(side["best"]["errors"] == 0 for side in sides.values())


def test_isolation_runs_every_scenario_and_the_crashing_neighbour_really_crashes(tmp_path: Path) -> None:
    document = run_smoke("isolation", tmp_path)
    results = document["results"]
    assert list(results) == [
        "alone",
        "busy neighbour",
        "crashing neighbour",
        "crashing neighbour, default policy",
        "blocked neighbour",
        "flooded neighbour",
        "CPU-bound neighbour",
    ]
    for scenario in results.values():
        assert scenario["healthy"]["requests"] > 0
        assert scenario["healthy"]["errors"] == 0
    assert results["alone"]["neighbour"] is None
    crashing = results["crashing neighbour"]
    assert crashing["health_after"]["crashing-agent"]["restarts"] > 0
    assert crashing["health_after"]["echo-agent"]["restarts"] == 0
    assert crashing["neighbour_answer_after"] == -32603
    giving_up = results["crashing neighbour, default policy"]["health_after"]["crashing-default-policy-agent"]
    assert giving_up["status"] in ("running", "restarting", "failed")
    assert set(document["targets"]) == {"crashing neighbour", "crashing neighbour, default policy", "blocked neighbour"}


def test_scale_measures_every_size_and_spreads_load_over_all_agents(tmp_path: Path) -> None:
    document = run_smoke("scale", tmp_path)
    results = document["results"]
    assert list(results) == ["10", "100"]
    for size, measured in results.items():
        assert measured["agents"] == int(size)
        assert measured["threads"] > int(size)  # one thread per agent, plus the server's own
        assert measured["start_s"] > 0
        assert measured["health"]["requests"] > 0
        assert measured["health"]["errors"] == 0
    throughput = results["10"]["throughput"]
    assert list(throughput) == ["one agent", "spread over all"]
    assert all(side["errors"] == 0 and side["requests"] > 0 for side in throughput.values())
    assert not list(tmp_path.glob(".scale-*"))


@pytest.mark.parametrize("tool", ["aiohttp", "wrk"])
def test_both_load_generators_count_the_answers_they_get(tool: str) -> None:
    if tool == "wrk" and shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (Debian package 'wrk'); the benchmarks fall back to aiohttp")
    bare = harness.launch("bare", [sys.executable, str(BENCHMARKS / "bare_server.py"), harness.PORT])
    with harness.running(bare) as (server,):
        body = harness.chat_start("echo-agent")
        assert server.expect_result(body)["responseAgent"] == "echo-agent"
        result = harness.run_load(server.arc_url, [body], 4, 1.0, tool, server)
    assert result.requests > 0
    assert result.errors == 0
    assert 0 < result.p50_ms <= result.p99_ms
    assert result.server_cpu_s is not None


def test_percentile_is_the_nearest_rank() -> None:
    values = list(range(1, 101))
    assert harness.percentile(values, 0.50) == 50
    assert harness.percentile(values, 0.99) == 99
    assert harness.percentile([7.0], 0.99) == 7.0
    assert harness.percentile([], 0.5) == 0.0


def test_sides_alternate_which_goes_first_each_round() -> None:
    order: list[str] = []
    results = harness.alternate(3, ["a", "b"], lambda side: order.append(side) or len(order))
    assert order == ["a", "b", "b", "a", "a", "b"]
    assert results == {"a": [1, 4, 5], "b": [2, 3, 6]}


@pytest.mark.ray
def test_engines_compares_the_pykka_and_ray_engines_at_c64_without_errors(tmp_path: Path) -> None:
    pytest.importorskip("ray", reason="the engines benchmark needs Ray: pip install '.[test,ray]'")
    document = run_smoke("engines", tmp_path)
    sides = document["results"]["c=64"]
    assert list(sides) == ["pykka engine", "ray engine"]
    for side in sides.values():
        assert side["best"]["requests"] > 0
        assert side["best"]["errors"] == 0
    assert sides["pykka engine"]["rps_ratio_to_pykka"] == 1.0


def test_io_bound_measures_the_waiting_agent_interleaved_one_at_a_time_and_calling_over_http(tmp_path: Path) -> None:
    document = run_smoke("io_bound", tmp_path)
    case = document["cases"]["C=64, L=100 ms"]
    assert case["limit_rps"] == 640
    sides = case["sides"]
    assert list(sides)[:2] == ["arc_actors", "arc_actors, max_in_flight=1"]
    assert all(side["best"]["requests"] > 0 and side["best"]["errors"] == 0 for side in sides.values())
    assert case["kib_per_request_in_flight"] is not None
    calling = document["cases"]["C=64, L=100 ms, HTTP call"]["sides"]
    assert calling["arc_actors"]["best"]["requests"] > 0
    assert all(side["best"]["errors"] == 0 for side in calling.values())

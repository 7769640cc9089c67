"""What every benchmark shares: server processes pinned to one core, load from another, results.

Load comes from a separate process on loopback, bounded in time: ``wrk`` when it is installed, else
the aiohttp load generator below (``python benchmarks/harness.py load CONFIG.json``). With two or more
cores, servers run on core 0 and load generators on core 1 (``taskset``), so they never share a core.
Every figure is the best of N rounds, and the sides compared alternate within each round.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

BENCHMARKS = Path(__file__).resolve().parent
ROOT = BENCHMARKS.parent
SERVER_CPU, LOAD_CPU = "0", "1"
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
REQUEST_TIMEOUT_S = 10.0
WARM_UP_S, WARM_UP_CONCURRENCY = 1.0, 64
DURATION_S, ROUNDS = 5.0, 3
SMOKE_DURATION_S, SMOKE_CONCURRENCY = 0.3, 64

PORT = "{port}"
"""Stands for the server's port in a command line given to :func:`launch`."""

ARC_HEADERS = {"Content-Type": "application/arc+json"}


def chat_start(target_agent: str, text: str = "hi") -> bytes:
    """A chat.start request envelope, as the load sends it."""
    message = {"role": "user", "parts": [{"type": "text", "content": text}]}
    envelope = {
        "arc": "1.0",
        "id": 1,
        "method": "chat.start",
        "requestAgent": "bench",
        "targetAgent": target_agent,
        "params": {"initialMessage": message},
    }
    return json.dumps(envelope, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Options:
    """The knobs every benchmark script takes from its command line."""

    duration_s: float
    rounds: int
    tool: str
    smoke: bool
    results: Path


def parser(description: str) -> argparse.ArgumentParser:
    """The command line every benchmark script takes; a script may add its own arguments."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--smoke", action="store_true", help="a quick run to check the script works (CI)")
    parser.add_argument(
        "--duration", type=float, help=f"seconds per load run (default {DURATION_S:g}; smoke {SMOKE_DURATION_S:g})"
    )
    parser.add_argument("--rounds", type=int, help="rounds per side, the best one kept (default 3; smoke 1)")
    parser.add_argument("--tool", choices=["auto", "wrk", "aiohttp"], default="auto", help="load generator")
    parser.add_argument("--results", type=Path, default=BENCHMARKS / "results", help="where the JSON goes")
    return parser


def options(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> tuple[Options, argparse.Namespace]:
    """The common options, resolved (``auto`` picks wrk when it is installed), and every parsed argument."""
    args = parser.parse_args(argv)
    tool = args.tool
    if tool == "auto":
        tool = "wrk" if shutil.which("wrk") else "aiohttp"
    elif tool == "wrk" and not shutil.which("wrk"):
        parser.error("wrk is not installed (Debian package 'wrk'); use --tool aiohttp")
    opts = Options(
        duration_s=args.duration or (SMOKE_DURATION_S if args.smoke else DURATION_S),
        rounds=args.rounds or (1 if args.smoke else ROUNDS),
        tool=tool,
        smoke=args.smoke,
        results=args.results,
    )
    return opts, args


def concurrencies(args: argparse.Namespace, default: Sequence[int], opts: Options) -> Sequence[int]:
    """The concurrency levels asked for with ``--concurrency``, else ``default`` (a smoke run: c=64 only)."""
    return args.concurrency or ((SMOKE_CONCURRENCY,) if opts.smoke else default)


def pinned(argv: Sequence[str], cpu: str) -> list[str]:
    """``argv`` run on ``cpu`` alone, when there are cores to spare and taskset to do it."""
    if (os.cpu_count() or 1) >= 2 and shutil.which("taskset"):
        return ["taskset", "-c", cpu, *argv]
    return list(argv)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_get(url: str, timeout_s: float = REQUEST_TIMEOUT_S) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=timeout_s) as reply:  # noqa: S310 - loopback URLs we built
        return reply.status, reply.read()


def http_post(url: str, body: bytes, timeout_s: float = REQUEST_TIMEOUT_S) -> dict[str, Any]:
    request = urllib.request.Request(url, data=body, headers=ARC_HEADERS, method="POST")  # noqa: S310
    with urllib.request.urlopen(request, timeout=timeout_s) as reply:  # noqa: S310
        return json.loads(reply.read())


def arc_actors_serve(app: str) -> list[str]:
    """``python -m arc_actors serve APP``, as a user runs it; APP is a file, or a factory in apps.py."""
    if not app.endswith(".py"):
        app = f"{BENCHMARKS / 'apps.py'}:{app}"
    return [sys.executable, "-m", "arc_actors", "serve", app, "--port", PORT]


@dataclass(frozen=True)
class Launch:
    """How to start one server process: a name for messages, its command line, the port it listens on."""

    name: str
    argv: Sequence[str]
    port: int
    env: Mapping[str, str] = field(default_factory=dict)
    cpu: str = SERVER_CPU
    """The core it runs on: a stand-in for a service elsewhere runs beside the load tool instead."""


def launch(name: str, argv: Sequence[str], env: Mapping[str, str] | None = None, cpu: str = SERVER_CPU) -> Launch:
    """A :class:`Launch` on a free port, put in ``argv`` wherever it says ``PORT``."""
    port = free_port()
    return Launch(name, [str(port) if arg == PORT else arg for arg in argv], port, dict(env or {}), cpu)


@dataclass
class ServerProcess:
    """A server started by :func:`running`: its base URL and its process."""

    name: str
    base_url: str
    process: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(cls, launch: Launch) -> ServerProcess:
        """Start the server on its core, its output going to a log file."""
        log = Path(tempfile.gettempdir()) / f"arc-bench-{launch.name.replace(' ', '_')}-{launch.port}.log"
        with log.open("wb") as log_file:
            process = subprocess.Popen(
                pinned(launch.argv, launch.cpu),
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env={**os.environ, **launch.env},
            )
        return cls(launch.name, f"http://127.0.0.1:{launch.port}", process, log)

    @property
    def arc_url(self) -> str:
        return f"{self.base_url}/arc"

    def expect_result(self, body: bytes) -> dict[str, Any]:
        """Send ``body`` once and insist on an ARC result, so no load run measures error answers."""
        answer = http_post(self.arc_url, body)
        if answer.get("result") is None:
            raise RuntimeError(f"{self.name} answered {answer} instead of a result")
        return answer

    def warm_up(self, body: bytes, opts: Options) -> None:
        """Check ``body`` gets a result, then (but in a smoke run) a second of load that is not measured."""
        self.expect_result(body)
        if not opts.smoke:
            run_load(self.arc_url, [body], WARM_UP_CONCURRENCY, WARM_UP_S, opts.tool)


@contextmanager
def running(*launches: Launch, grace_s: float = STOP_TIMEOUT_S) -> Iterator[list[ServerProcess]]:
    """Start every server at once, wait until each answers ``GET /health`` with 200, and always stop
    them all on the way out: SIGTERM, then SIGKILL after ``grace_s``."""
    servers: list[ServerProcess] = []
    try:
        servers += [ServerProcess.start(launch) for launch in launches]
        for server in servers:
            _wait_ready(server)
        yield servers
    finally:
        for server in servers:
            server.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for server in servers:
            try:
                server.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                server.process.kill()
                server.process.wait()


def _wait_ready(server: ServerProcess, path: str = "/health") -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} exited with {server.process.returncode}: {_tail(server.log)}")
        try:
            if http_get(server.base_url + path, timeout_s=2)[0] == 200:
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{server.name} not ready after {READY_TIMEOUT_S} s: {_tail(server.log)}")


def _tail(log: Path, lines: int = 5) -> str:
    return " | ".join(log.read_text(errors="replace").splitlines()[-lines:])


@dataclass(frozen=True)
class LoadResult:
    """One load run: requests answered (HTTP 200), failures of any kind, throughput and latency."""

    requests: int
    errors: int
    duration_s: float
    rps: float
    p50_ms: float
    p99_ms: float
    concurrency: int
    tool: str
    server_cpu_s: float | None = None
    """CPU time (user + system) the server process spent during the run, when measured."""

    @property
    def cpu_us_per_request(self) -> float | None:
        return self.server_cpu_s / self.requests * 1e6 if self.server_cpu_s is not None and self.requests else None

    def as_json(self) -> dict[str, Any]:
        fields = asdict(self) | {"cpu_us_per_request": self.cpu_us_per_request}
        return {key: round(value, 3) if isinstance(value, float) else value for key, value in fields.items()}


class Load:
    """A load generator running in its own process on the load core; :meth:`result` waits for it."""

    def __init__(
        self,
        url: str,
        bodies: Sequence[bytes] | None,
        concurrency: int,
        duration_s: float,
        tool: str,
    ) -> None:
        """``bodies`` are POSTed in turn, one per request; ``None`` sends GETs. Bounded: the generator
        is killed if it outlives its duration by far."""
        self._concurrency = concurrency
        self._tool = tool
        if tool == "wrk":
            self._script = _wrk_script(bodies)
            seconds = max(1, round(duration_s))  # wrk counts whole seconds
            argv = ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", f"--timeout={REQUEST_TIMEOUT_S:g}s"]
            argv += ["-s", str(self._script), url]
        else:
            config = {"url": url, "bodies": [b.decode() for b in bodies or []], "concurrency": concurrency}
            config["duration_s"] = duration_s
            self._script = _temporary(".json", json.dumps(config))
            argv = [sys.executable, str(Path(__file__)), "load", str(self._script)]
        self._process = subprocess.Popen(pinned(argv, LOAD_CPU), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._timeout_s = duration_s + REQUEST_TIMEOUT_S + 30

    def result(self) -> LoadResult:
        try:
            out, err = self._process.communicate(timeout=self._timeout_s)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
            raise
        finally:
            self._script.unlink(missing_ok=True)
        if self._process.returncode != 0:
            raise RuntimeError(f"{self._tool} failed ({self._process.returncode}): {err.decode(errors='replace')}")
        summary = json.loads(out.decode().strip().splitlines()[-1])
        return LoadResult(
            requests=summary["requests"],
            errors=summary["errors"],
            duration_s=summary["duration_s"],
            rps=summary["requests"] / summary["duration_s"],
            p50_ms=summary["p50_ms"],
            p99_ms=summary["p99_ms"],
            concurrency=self._concurrency,
            tool=self._tool,
        )


def run_load(
    url: str,
    bodies: Sequence[bytes] | None,
    concurrency: int,
    duration_s: float,
    tool: str,
    server: ServerProcess | None = None,
) -> LoadResult:
    """One load run; with ``server``, the CPU time that server process spent meanwhile comes with it,
    and the ARC error answers it counted for the agents the bodies target move from ``requests`` to
    ``errors``: they are HTTP 200 answers (the servers here answer errors with 200, the default), which a
    load generator counts as successes."""
    if server is None:
        return Load(url, bodies, concurrency, duration_s, tool).result()
    agents = {json.loads(body)["targetAgent"] for body in bodies or ()}
    errors_before, cpu_before = arc_error_answers(server, agents), cpu_seconds(server.process.pid)
    result = Load(url, bodies, concurrency, duration_s, tool).result()
    cpu_s = cpu_seconds(server.process.pid) - cpu_before
    error_answers = arc_error_answers(server, agents) - errors_before
    answered = result.requests - error_answers
    return replace(
        result,
        server_cpu_s=cpu_s,
        requests=answered,
        errors=result.errors + error_answers,
        rps=answered / result.duration_s,
    )


def arc_error_answers(server: ServerProcess, agents: set[str]) -> int:
    """How many ARC error answers ``server`` has given ``agents`` so far, by its ``/metrics``; 0 for a
    server without them (the bare and reference servers, whose answers are all results)."""
    if not agents:
        return 0
    try:
        _, text = http_get(f"{server.base_url}/metrics")
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return 0
        raise
    return sum(
        int(sample.value)
        for family in text_string_to_metric_families(text.decode())
        if family.name == "arc_requests"
        for sample in family.samples
        if sample.name == "arc_requests_total" and sample.labels["agent"] in agents and sample.labels["code"] != "ok"
    )


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of a process and all its threads so far (Linux; 0 elsewhere)."""
    fields = _read(f"/proc/{pid}/stat").rpartition(")")[2].split()
    if len(fields) < 13:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


_WRK_SCRIPT = """
local bodies = {%s}
local requests = {}
local n = 0
init = function(args)
  for i, body in ipairs(bodies) do
    requests[i] = wrk.format("POST", nil, {["Content-Type"] = "application/arc+json"}, body)
  end
end
request = function()
  if #requests == 0 then return wrk.format("GET") end
  n = n %% #requests + 1
  return requests[n]
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('{"requests":%%d,"errors":%%d,"duration_s":%%f,"p50_ms":%%f,"p99_ms":%%f}\\n',
    summary.requests - e.status, e.connect + e.read + e.write + e.status + e.timeout,
    summary.duration / 1e6, latency:percentile(50) / 1e3, latency:percentile(99) / 1e3))
end
"""


def _wrk_script(bodies: Sequence[bytes] | None) -> Path:
    """A wrk Lua script sending ``bodies`` in turn (GETs when there are none) and printing JSON at the end."""
    quoted = ",".join(json.dumps(body.decode()) for body in bodies or [])
    return _temporary(".lua", _WRK_SCRIPT % quoted)


def _temporary(suffix: str, text: str) -> Path:
    """A new temporary file holding ``text``; whoever asked for it deletes it."""
    handle, path = tempfile.mkstemp(prefix="arc-bench-", suffix=suffix)
    with os.fdopen(handle, "w") as file:
        file.write(text)
    return Path(path)


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of already sorted values (0 when there are none)."""
    if not sorted_values:
        return 0.0
    rank = max(1, int(fraction * len(sorted_values) + 0.999999))
    return sorted_values[min(rank, len(sorted_values)) - 1]


async def _generate_load(url: str, bodies: list[str], concurrency: int, duration_s: float) -> dict[str, Any]:
    """The aiohttp load generator: ``concurrency`` connections, each sending its next request as soon as
    the previous one is answered, until ``duration_s`` is up."""
    import aiohttp

    latencies: list[float] = []
    errors = 0
    encoded = [body.encode() for body in bodies]
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=ARC_HEADERS) as session:
        start = time.perf_counter()
        deadline = start + duration_s

        async def worker(offset: int) -> None:
            nonlocal errors
            n = offset
            while time.perf_counter() < deadline:
                sent = time.perf_counter()
                try:
                    if encoded:
                        reply = await session.post(url, data=encoded[n % len(encoded)])
                    else:
                        reply = await session.get(url)
                    async with reply:
                        await reply.read()
                        ok = reply.status == 200
                except (aiohttp.ClientError, TimeoutError):
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - sent)
                else:
                    errors += 1
                n += concurrency

        workers = [asyncio.ensure_future(worker(i)) for i in range(concurrency)]
        _, pending = await asyncio.wait(workers, timeout=duration_s)
        if pending and not latencies:  # so busy a machine that nothing was answered yet: let those in
            _, pending = await asyncio.wait(pending, timeout=REQUEST_TIMEOUT_S)  # flight finish, no more
        for task in pending:  # requests still unanswered at the deadline are not counted
            task.cancel()
        elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "requests": len(latencies),
        "errors": errors,
        "duration_s": elapsed,
        "p50_ms": percentile(latencies, 0.50) * 1e3,
        "p99_ms": percentile(latencies, 0.99) * 1e3,
    }


def alternate(rounds: int, sides: Sequence[str], run: Callable[[str], Any]) -> dict[str, list[Any]]:
    """Run every side once per round, in turn, reversing the order every other round so that neither
    side always runs first; returns each side's results in round order."""
    results: dict[str, list[Any]] = {side: [] for side in sides}
    for number in range(rounds):
        for side in sides if number % 2 == 0 else reversed(sides):
            results[side].append(run(side))
    return results


def ratio(numerator: float, denominator: float) -> float | None:
    """``numerator / denominator`` to 3 places, or None when the denominator is 0 (nothing answered)."""
    return round(numerator / denominator, 3) if denominator else None


def verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def best(results: Sequence[LoadResult], by: str = "rps") -> LoadResult:
    """The best round: the most requests per second, or (``by="p99"``) the lowest p99 latency."""
    if by == "p99":
        return min(results, key=lambda result: result.p99_ms if result.requests else float("inf"))
    return max(results, key=lambda result: result.rps)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table, numbers formatted for reading."""

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
        if isinstance(value, int):
            return f"{value:,}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    """What the figures came from."""
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in _read("/proc/cpuinfo").splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "pinned": pinned(["x"], SERVER_CPU) != ["x"],
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()}",
        "load_average": os.getloadavg(),
    }


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def report(name: str, opts: Options, text: str, payload: dict[str, Any]) -> Path:
    """Print the table and write the figures, with the machine and settings, as JSON."""
    print(text)
    opts.results.mkdir(parents=True, exist_ok=True)
    path = opts.results / f"{name}.json"
    settings = {"duration_s": opts.duration_s, "rounds": opts.rounds, "tool": opts.tool, "smoke": opts.smoke}
    document = {"benchmark": name, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine()}
    document |= {"settings": settings, **payload}
    path.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nwritten: {path}")
    return path


def _load_main(config_path: str) -> None:
    from arc_actors.server import new_event_loop  # uvloop where it is installed, as the servers use

    config = json.loads(Path(config_path).read_text())
    loop = new_event_loop()
    try:
        summary = loop.run_until_complete(
            _generate_load(config["url"], config["bodies"], config["concurrency"], config["duration_s"])
        )
    finally:
        loop.close()
    print(json.dumps(summary))


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "load":
        raise SystemExit("usage: python benchmarks/harness.py load CONFIG.json (the load generator of run_load)")
    _load_main(sys.argv[2])

"""Against the reference: the seed's agents served by arc_actors and by arc-sdk 1.3.1's own server.

Both run ``examples/seed_server.py`` (the reference with its import line put back to ``from arc import
Server``) and take the same chat.start load at c=1, c=64 and c=256. The reference runs as the seed runs
it (``server.run``: FastAPI on uvicorn, with uvicorn's access log) and once more with the access log
off, since arc_actors writes none.

arc-sdk runs in its own virtualenv: ``--reference-python``, else ``ARC_REFERENCE_PYTHON``, else
``benchmarks/.venv-reference`` (made on first use with arc-sdk==1.3.1, PyJWT, PyYAML and aiohttp, which
``io_bound.py``'s reference handler calls its LLM stand-in with). A smoke run
never installs anything: it uses the current Python when it has arc-sdk, and skips otherwise.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import harness
from harness import BENCHMARKS, ROOT, LoadResult

CONCURRENCIES = (1, 64, 256)
OURS = "arc_actors"
THEIRS = "arc-sdk 1.3.1"
THEIRS_QUIET = "arc-sdk 1.3.1, no access log"
SIDES = (OURS, THEIRS, THEIRS_QUIET)
TARGET_RATIO = 10.0
REFERENCE_VENV = BENCHMARKS / ".venv-reference"
REFERENCE_PACKAGES = ("arc-sdk==1.3.1", "PyJWT>=2", "PyYAML>=6", "aiohttp>=3.9")
REFERENCE_ENV = "ARC_REFERENCE_PYTHON"


def main(argv: list[str] | None = None) -> None:
    parser = harness.parser(__doc__.splitlines()[0])
    parser.add_argument("--reference-python", type=Path, help=f"a Python with arc-sdk 1.3.1 (or ${REFERENCE_ENV})")
    parser.add_argument("--concurrency", type=int, nargs="+", help="default: 1 64 256 (smoke: 64)")
    opts, args = harness.options(parser, argv)
    python = reference_python(args.reference_python, opts.smoke)
    if python is None:
        message = "arc-sdk is not installed here and a smoke run installs nothing: reference skipped"
        harness.report("reference", opts, message, {"skipped": message})
        return
    reference = [str(python), str(BENCHMARKS / "reference_server.py"), harness.PORT]
    launches = [
        harness.launch(OURS, harness.arc_actors_serve(str(ROOT / "examples" / "seed_server.py"))),
        harness.launch(THEIRS, reference),
        harness.launch(THEIRS_QUIET, [*reference, "--quiet"]),
    ]
    with harness.running(*launches) as started:
        servers = dict(zip(SIDES, started, strict=True))
        body = harness.chat_start("finance-agent")
        for server in servers.values():
            server.warm_up(body, opts)

        def measure(concurrency: int) -> dict[str, list[LoadResult]]:
            def run(side: str) -> LoadResult:
                return harness.run_load(servers[side].arc_url, [body], concurrency, opts.duration_s, opts.tool)

            return harness.alternate(opts.rounds, SIDES, run)

        rounds = {concurrency: measure(concurrency) for concurrency in harness.concurrencies(args, CONCURRENCIES, opts)}
    text, payload = summarize(rounds)
    payload["reference_python"] = str(python)
    harness.report("reference", opts, text, payload)


def reference_python(given: Path | None, smoke: bool) -> Path | None:
    """The Python to run arc-sdk with (see the module docstring); None when a smoke run has none."""
    if given is None and os.environ.get(REFERENCE_ENV):
        given = Path(os.environ[REFERENCE_ENV])
    if given is not None:
        return given
    venv_python = REFERENCE_VENV / "bin" / "python"
    if venv_python.exists() and _imports(venv_python, "arc", "aiohttp"):
        return venv_python
    if smoke:
        return Path(sys.executable) if _imports(Path(sys.executable), "arc", "uvicorn") else None
    print(f"making {REFERENCE_VENV} with {', '.join(REFERENCE_PACKAGES)}", file=sys.stderr)
    if not venv_python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(REFERENCE_VENV)], check=True)
    subprocess.run([str(venv_python), "-m", "pip", "install", "--quiet", *REFERENCE_PACKAGES], check=True)
    return venv_python


def _imports(python: Path, *modules: str) -> bool:
    """Whether ``python`` imports every one of ``modules`` (a virtualenv made before one was added)."""
    return subprocess.run([str(python), "-c", f"import {', '.join(modules)}"], capture_output=True).returncode == 0


def summarize(rounds: dict[int, dict[str, list[LoadResult]]]) -> tuple[str, dict[str, Any]]:
    rows, payload = [], {"results": {}}
    for concurrency, by_side in rounds.items():
        ours = harness.best(by_side[OURS])
        payload["results"][f"c={concurrency}"] = {}
        for side, results in by_side.items():
            top = harness.best(results)
            ratio = harness.ratio(ours.rps, top.rps)
            rows.append([concurrency, side, top.rps, top.p50_ms, top.p99_ms, top.errors, ratio])
            payload["results"][f"c={concurrency}"][side] = {
                "best": top.as_json(),
                "arc_actors_rps_ratio": ratio,
                "rounds": [result.as_json() for result in results],
            }
    headers = ["c", "server", "req/s", "p50 ms", "p99 ms", "errors", "arc_actors req/s ÷ this"]
    lines = [harness.table(headers, rows), ""]
    c64 = payload["results"].get("c=64", {})
    payload["targets"] = {}
    for side in [side for side in c64 if side != OURS]:
        ratio = c64[side]["arc_actors_rps_ratio"]
        met = ratio is not None and ratio >= TARGET_RATIO
        payload["targets"][side] = {"rps_ratio": ratio, "met": met}
        lines.append(f"target at c=64: arc_actors ≥ {TARGET_RATIO:g}x {side}'s req/s: {ratio}x, {harness.verdict(met)}")
    return "\n".join(lines), payload


if __name__ == "__main__":
    main()

"""The reference: arc-sdk 1.3.1's own server running the seed's agents (``examples/seed_server.py`` with its
import line put back to ``from arc import Server``), run the way the seed runs it: ``server.run``
(FastAPI on uvicorn).

``python benchmarks/reference_server.py PORT [--quiet]``, with a Python that has arc-sdk, PyJWT and
PyYAML. ``--quiet`` turns off uvicorn's per-request access log, which arc_actors does not write either.
"""

from __future__ import annotations

import argparse
import types
from pathlib import Path

SEED = Path(__file__).resolve().parent.parent / "examples" / "seed_server.py"
OURS, THEIRS = "from arc_actors import Server", "from arc import Server"


def load_seed() -> types.ModuleType:
    """The seed server module, importing the reference ``Server``; its ``__main__`` block is not run."""
    source = SEED.read_text()
    if OURS not in source:
        raise SystemExit(f"{SEED} no longer imports {OURS!r}")
    module = types.ModuleType("seed_server")
    module.__file__ = str(SEED)
    exec(compile(source.replace(OURS, THEIRS), str(SEED), "exec"), module.__dict__)  # noqa: S102 - our own file
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", type=int)
    parser.add_argument("--quiet", action="store_true", help="no uvicorn access log")
    args = parser.parse_args()
    quiet = {"access_log": False, "log_level": "warning"} if args.quiet else {}
    load_seed().server.run(host="127.0.0.1", port=args.port, **quiet)


if __name__ == "__main__":
    main()

"""A stand-in for an LLM API: ``POST /complete`` answers a small completion after ``ARC_BENCH_LATENCY_S``.

``python benchmarks/llm_stub.py PORT``. The I/O-bound benchmark's HTTP case calls it from the agents'
handlers, so the handler's own HTTP client (connection pool, request, response parsing) is measured too.
"""

from __future__ import annotations

import asyncio
import os
import sys

from aiohttp import web

LATENCY_S = float(os.environ.get("ARC_BENCH_LATENCY_S", "0.1"))
COMPLETION = {"id": "cmpl-1", "choices": [{"index": 0, "text": "hello", "finish_reason": "stop"}]}


async def complete(request: web.Request) -> web.Response:
    await request.read()
    await asyncio.sleep(LATENCY_S)
    return web.json_response(COMPLETION)


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def app() -> web.Application:
    application = web.Application()
    application.router.add_post("/complete", complete)
    application.router.add_get("/health", health)
    return application


if __name__ == "__main__":
    web.run_app(app(), host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)

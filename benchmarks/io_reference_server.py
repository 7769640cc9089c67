"""The I/O-bound reference: arc-sdk 1.3.1's own server with the agents of ``apps.py:waiting_agents``:
one whose chat.start awaits ``ARC_BENCH_LATENCY_S``, one that calls the LLM stand-in at
``ARC_BENCH_STUB_URL`` with aiohttp (as ours does, so the two differ only in the server); both answer
``ARC_BENCH_RESULT``.

``python benchmarks/io_reference_server.py PORT``, with a Python that has arc-sdk (see ``reference.py``).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

import aiohttp
from arc import Server

server = Server(server_id="bench-reference")
LATENCY_S = float(os.environ["ARC_BENCH_LATENCY_S"])
RESULT = json.loads(os.environ["ARC_BENCH_RESULT"])  # apps.CHAT_RESULT: this Python has no arc_actors
STUB_URL = os.environ.get("ARC_BENCH_STUB_URL", "")
session: aiohttp.ClientSession | None = None


@server.agent_handler("llm-agent", "chat.start")
async def chat_start(params: dict, context: dict) -> dict:
    await asyncio.sleep(LATENCY_S)
    return RESULT


@server.agent_handler("http-llm-agent", "chat.start")
async def chat_start_calling(params: dict, context: dict) -> dict:
    global session  # one session for the server's loop, made on it
    if session is None:
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    async with session.post(STUB_URL, json={"prompt": "hi"}) as reply:
        reply.raise_for_status()
        await reply.json()
    return RESULT


if __name__ == "__main__":
    server.run(host="127.0.0.1", port=int(sys.argv[1]), access_log=False, log_level="warning")

"""The I/O-bound reference: arc-sdk 1.3.1's own server with one agent whose chat.start awaits
``ARC_BENCH_LATENCY_S`` and answers ``ARC_BENCH_RESULT``, as ``apps.py:waiting_agents`` does.

``python benchmarks/io_reference_server.py PORT``, with a Python that has arc-sdk (see ``reference.py``).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

from arc import Server

server = Server(server_id="bench-reference")
LATENCY_S = float(os.environ["ARC_BENCH_LATENCY_S"])
RESULT = json.loads(os.environ["ARC_BENCH_RESULT"])  # apps.CHAT_RESULT: this Python has no arc_actors


@server.agent_handler("llm-agent", "chat.start")
async def chat_start(params: dict, context: dict) -> dict:
    await asyncio.sleep(LATENCY_S)
    return RESULT


if __name__ == "__main__":
    server.run(host="127.0.0.1", port=int(sys.argv[1]), access_log=False, log_level="warning")

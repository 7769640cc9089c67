"""An app for the scale-out recipe: a counter agent whose one instance every gateway reaches.

Served on the ray engine by several gateways (``python -m arc_actors serve examples/scale_out.py
--engine ray --ray-address auto --port 8001``, and again on 8002), each ``count.next`` increments the
same counter, in the same Ray actor, whichever gateway the request came through. ``os.getpid()`` in
the answer shows which worker process served it.

Run the whole demo (a local Ray head, two gateways, a killed worker):  python examples/scale_out_demo.py
"""

from __future__ import annotations

import os
from typing import Any

from arc_actors import Agent, Context, RestartPolicy, Server, handles


class CounterAgent(Agent):
    """Counts the requests it serves; a restart starts a new count."""

    agent_id = "counter-agent"
    restart_policy = RestartPolicy(max_restarts=5, within_s=60, backoff_initial_s=0.05)

    def on_start(self) -> None:
        self.count = 0

    @handles("count.next")
    def next(self, params: dict[str, Any], context: Context) -> dict[str, Any]:
        self.count += 1
        return {"count": self.count, "pid": os.getpid()}

    async def chat_start(self, params: dict[str, Any], context: Context) -> str:
        return f"counter at {self.count}"


server = Server(server_id="scale-out")
server.add_agent(CounterAgent)

"""The demo agents (finance-agent, hr-agent, support-agent), supervised for a chaos run.

The default policy gives an agent up after 10 failures in 60 s and backs off up to 5 s between
restarts; under 20% injected crashes that is the point within seconds. This one restarts at once,
however often, and cuts hangs at 1 s, so faults show up as errors and restarts, never as a failed agent.

Run:  python -m arc_actors serve examples/resilience_demo.py --fault finance-agent:crash=0.2,hang=0.05:3s
"""

from __future__ import annotations

from arc_actors import RestartPolicy
from arc_actors.demo import build_server

RESILIENT = RestartPolicy(max_restarts=1000, within_s=60, backoff_initial_s=0.01, backoff_max_s=0.05, hang_after_s=1)

server = build_server(restart_policy=RESILIENT)

"""Testing agents with arc_actors' pytest plugin: installing arc_actors is enough, no conftest needed.

Run:  python -m pytest examples/test_with_plugin.py
"""

from __future__ import annotations

import asyncio

import pytest

from arc_actors import ARCError, RestartPolicy
from arc_actors.demo import build_server
from arc_actors.testing import assert_all_answered

# Restart at once, however often: 20% of finance-agent's requests will crash. Hangs are cut at 0.5 s.
RESILIENT = RestartPolicy(max_restarts=1000, within_s=60, backoff_initial_s=0.01, backoff_max_s=0.05, hang_after_s=0.5)


@pytest.fixture
def arc_app():
    """The agents under test; arc_running, arc_client, arc_faults and arc_chaos serve them."""
    return build_server(restart_policy=RESILIENT)


def ask(text: str) -> dict:
    return {"role": "user", "parts": [{"type": "text", "content": text}]}


def test_hr_agent_answers_salary_questions(arc_client):
    response = asyncio.run(arc_client.chat.start("hr-agent", ask("A question about my salary")))
    reply = response.result["chat"]["message"]["parts"][0]["content"]
    assert reply == "I can help with salary inquiries. Please provide your employee ID."


def test_an_injected_error_reaches_the_client_with_its_code(arc_client, arc_faults):
    arc_faults("hr-agent.chat.start:error=1:-41002")
    with pytest.raises(ARCError) as raised:
        asyncio.run(arc_client.chat.start("hr-agent", ask("salary")))
    assert raised.value.code == -41002


def test_finance_agent_crashing_and_hanging_loses_nothing(arc_faults, arc_chaos):
    faults = arc_faults("finance-agent:crash=0.2,hang=0.05:2s", seed=7)
    report = arc_chaos(requests=150, duration_s=60, concurrency=6, seed=7)

    assert_all_answered(report)  # sent == answered, lost == 0
    finance, injected = report.agents["finance-agent"], faults.injected["finance-agent"]
    assert set(finance.errors) <= {-32603, -41006}  # crashed: internal error; hung: agent timeout
    assert finance.errors.get(-32603, 0) == injected["crash"]
    assert finance.errors.get(-41006, 0) == injected["hang"]
    assert finance.restarts == injected["crash"] + injected["hang"]
    assert report.agents["hr-agent"].errors == report.agents["support-agent"].errors == {}

"""The fault admin endpoint: off by default, on 127.0.0.1 only, lists, arms and clears faults."""

from __future__ import annotations

import json

import aiohttp
from conftest import envelope, post, run

from arc_actors.demo import build_server
from arc_actors.testing import serving

SALARY = {"initialMessage": {"role": "user", "parts": [{"type": "text", "content": "salary"}]}}


async def call(method: str, url: str, body: bytes | None = None) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session, session.request(method, url, data=body) as reply:
        return reply.status, json.loads(await reply.read())


async def status_of(url: str) -> int:
    async with aiohttp.ClientSession() as session, session.get(url) as reply:
        return reply.status


def test_admin_endpoint_is_off_by_default_and_never_on_the_public_port():
    with serving(build_server()) as running:
        assert (running.admin_port, running.admin_url) == (None, None)
        assert run(status_of(f"{running.base_url}/faults")) == 404
    with serving(build_server(), admin_port=0) as running:
        assert run(status_of(f"{running.base_url}/faults")) == 404
        assert running.admin_url == f"http://127.0.0.1:{running.admin_port}/faults"
        assert run(status_of(running.admin_url)) == 200


def test_admin_endpoint_lists_arms_and_clears_faults_of_the_running_server():
    server = build_server()
    with serving(server, admin_port=0) as running:
        initial = run(call("GET", running.admin_url))
        armed = run(call("PUT", running.admin_url, b'{"faults": ["hr-agent.chat.start:error=1:-41002"], "seed": 5}'))
        refused = run(post(running.url, envelope("hr-agent", "chat.start", SALARY)))
        counted = run(call("GET", running.admin_url))
        cleared = run(call("DELETE", running.admin_url))
        answered = run(post(running.url, envelope("hr-agent", "chat.start", SALARY)))
    zero = {"crash": 0, "hang": 0, "latency": 0, "error": 0}
    assert initial == (200, {"seed": 0, "faults": [], "injected": dict.fromkeys(server.agent_ids, zero)})
    assert armed[0] == 200
    assert armed[1]["faults"] == ["hr-agent.chat.start:error=1:-41002"]
    assert armed[1]["seed"] == 5
    assert refused["error"]["code"] == -41002
    assert counted[1]["injected"]["hr-agent"] == {**zero, "error": 1}
    assert cleared[0] == 200
    assert cleared[1]["faults"] == []
    assert cleared[1]["injected"]["hr-agent"]["error"] == 1
    assert answered["result"]["chat"]["message"]["parts"][0]["content"].startswith("I can help with salary")


def test_admin_endpoint_refuses_a_bad_body_in_one_line_and_keeps_the_armed_faults():
    server = build_server()
    with serving(server, admin_port=0) as running:
        run(call("PUT", running.admin_url, b'{"faults": ["finance-agent:crash=0.1"]}'))
        bad_spec = run(call("PUT", running.admin_url, b'{"faults": ["hr-agent:crsh=1"]}'))
        unknown_agent = run(call("PUT", running.admin_url, b'{"faults": ["payroll-agent:crash=1"]}'))
        not_json = run(call("PUT", running.admin_url, b"crash everything"))
        wrong_field = run(call("PUT", running.admin_url, b'{"fault": "hr-agent:crash=1"}'))
        kept = run(call("GET", running.admin_url))
    assert bad_spec == (
        400,
        {"error": "'hr-agent:crsh=1': unknown fault kind 'crsh' in 'crsh=1' (kinds: crash, hang, latency, error)"},
    )
    assert unknown_agent[0] == 400
    assert unknown_agent[1]["error"].startswith("'payroll-agent:crash=1': no agent 'payroll-agent' on this server")
    assert not_json[0] == wrong_field[0] == 400
    assert wrong_field[1]["error"] == (
        "Object contains unknown field `fault`; "
        'expected {"faults": ["AGENT[.METHOD]:KIND=P[:ARG],...", ...], "seed": 0}'
    )
    assert all("\n" not in answer[1]["error"] for answer in (bad_spec, unknown_agent, not_json, wrong_field))
    assert kept[1]["faults"] == ["finance-agent:crash=0.1"]

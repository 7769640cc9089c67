"""The seed document's server and test client run with only their import line changed."""

from __future__ import annotations

import contextlib
import io
import runpy
from pathlib import Path

import pytest
from conftest import envelope, post, run

from arc_actors import ARCError, ARCException, Client, Server
from arc_actors.exceptions import ARCException as ARCExceptionFromSeedPath
from arc_actors.testing import serving

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture
def seed_server() -> Server:
    return runpy.run_path(str(EXAMPLES / "seed_server.py"))["server"]


@pytest.mark.usefixtures("engine")
def test_seed_server_and_seed_client_produce_the_seed_replies(seed_server):
    source = (EXAMPLES / "seed_client.py").read_text()
    assert source.count("http://localhost:8000/arc") == 2
    with serving(seed_server) as running:
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(compile(source.replace("http://localhost:8000/arc", running.url), "seed_client.py", "exec"), {})
    assert printed.getvalue().splitlines() == [
        "Finance Agent: Finance agent ready",
        "Finance Agent: Processing finance request",
        "finance-agent: Finance agent ready",
        "hr-agent: HR agent ready",
        "support-agent: Support agent ready",
    ]


@pytest.mark.usefixtures("engine")
def test_seed_server_keeps_a_client_chosen_chat_id(seed_server):
    with serving(seed_server) as running:
        hello = {"role": "user", "parts": [{"type": "text", "content": "hello"}]}
        answer = run(
            post(running.url, envelope("hr-agent", "chat.start", {"chatId": "chat-mine", "initialMessage": hello}))
        )
    assert answer["result"]["chat"]["chatId"] == "chat-mine"


@pytest.mark.usefixtures("engine")
def test_seed_health_keys_are_kept(seed_server):
    with serving(seed_server) as running:
        health = run(Client(running.url).health())
    assert health["status"] == "healthy"
    assert health["server_id"] == "multi-agent-server"
    assert health["version"] == "1.0.0"
    assert set(health["agents"]) == {"finance-agent", "hr-agent", "support-agent"}


@pytest.mark.usefixtures("engine")
def test_arc_exception_from_a_seed_style_handler_is_answered_with_its_code_message_and_details():
    assert ARCException is ARCError is ARCExceptionFromSeedPath
    server = Server(server_id="errors")

    @server.agent_handler("finance-agent", "chat.start")
    async def finance_chat_start(params, context):
        raise ARCException(code=-42004, message="Task processing error", details={"step": 3})

    @server.agent_handler("finance-agent", "task.cancel")
    async def finance_task_cancel(params, context):
        raise ARCException(code=-42003, message="Task already canceled", details="not an object")

    with serving(server) as running:
        hello = {"role": "user", "parts": [{"type": "text", "content": "hello"}]}
        started = run(post(running.url, envelope("finance-agent", "chat.start", {"initialMessage": hello})))
        canceled = run(post(running.url, envelope("finance-agent", "task.cancel", {"taskId": "task-1"})))
    assert started["error"] == {"code": -42004, "message": "Task processing error", "details": {"step": 3}}
    assert started["responseAgent"] == "finance-agent"
    assert canceled["error"] == {
        "code": -42003,
        "message": "Task already canceled",
        "details": {"value": "not an object"},
    }

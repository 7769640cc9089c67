"""The real reference client (arc-sdk 1.3.1) against our server."""

from __future__ import annotations

import asyncio

import pytest
from conftest import run

from arc_actors import Agent, InputRequired, Server
from arc_actors.demo import build_server
from arc_actors.testing import serving

arc = pytest.importorskip("arc", reason="arc-sdk is a test dependency: pip install '.[test]'")


@pytest.fixture(scope="module")
def demo_url():
    with serving(build_server()) as running:
        yield running.url


def user_message(text: str) -> dict:
    return {"role": "user", "parts": [{"type": "TextPart", "content": text}]}


def test_reference_client_starts_a_chat_and_sends_a_message(demo_url):
    async def conversation() -> tuple[dict, dict]:
        async with arc.Client(demo_url, use_quantum_safe=False) as client:
            started = await client.chat.start(target_agent="finance-agent", initial_message=user_message("invoice?"))
            chat_id = started["result"]["chat"]["chatId"]
            replied = await client.chat.message(
                target_agent="finance-agent", chat_id=chat_id, message=user_message("INV-1")
            )
            return started, replied

    started, replied = run(conversation())
    assert started["result"]["chat"]["message"]["parts"][0]["content"].startswith("I can help with invoice")
    assert replied["result"]["chat"]["chatId"] == started["result"]["chat"]["chatId"]
    assert replied["result"]["chat"]["message"]["parts"][0]["content"] == "Processing your request: INV-1"


def test_reference_client_gets_agent_not_found_with_its_code(demo_url):
    async def unknown_agent() -> None:
        async with arc.Client(demo_url, use_quantum_safe=False) as client:
            await client.chat.start(target_agent="payroll-agent", initial_message=user_message("hi"))

    with pytest.raises(arc.exceptions.AgentNotFoundError) as raised:
        run(unknown_agent())
    assert raised.value.code == -41001
    assert raised.value.details["agent_id"] == "payroll-agent"


def test_reference_client_gets_method_not_found_with_its_code(demo_url):
    async def unknown_method() -> None:
        async with arc.Client(demo_url, use_quantum_safe=False) as client:
            await client.task.create(target_agent="hr-agent", initial_message=user_message("hi"))

    with pytest.raises(arc.exceptions.MethodNotFoundError) as raised:
        run(unknown_method())
    assert raised.value.code == -32601


def test_reference_client_drives_a_managed_chat_from_start_to_end(demo_url):
    async def conversation() -> tuple[dict, dict, dict]:
        async with arc.Client(demo_url, use_quantum_safe=False) as client:
            started = await client.chat.start(target_agent="support-agent", initial_message=user_message("help"))
            chat_id = started["result"]["chat"]["chatId"]
            replied = await client.chat.message(
                target_agent="support-agent", chat_id=chat_id, message=user_message("x")
            )
            ended = await client.chat.end(target_agent="support-agent", chat_id=chat_id, reason="solved")
            return started, replied, ended

    started, replied, ended = run(conversation())
    assert started["result"]["chat"]["status"] == "ACTIVE"
    assert (
        replied["result"]["chat"]["message"]["parts"][0]["content"] == "I understand your concern: x. Let me help you."
    )
    assert (ended["result"]["chat"]["status"], ended["result"]["chat"]["reason"]) == ("CLOSED", "solved")


def test_reference_client_gets_chat_not_found_and_already_closed_with_their_codes(demo_url):
    async def after_the_end() -> None:
        async with arc.Client(demo_url, use_quantum_safe=False) as client:
            started = await client.chat.start(target_agent="hr-agent", initial_message=user_message("hi"))
            chat_id = started["result"]["chat"]["chatId"]
            await client.chat.end(target_agent="hr-agent", chat_id=chat_id)
            await client.chat.message(target_agent="hr-agent", chat_id=chat_id, message=user_message("again"))

    async def unknown_chat() -> None:
        async with arc.Client(demo_url, use_quantum_safe=False) as client:
            await client.chat.message(target_agent="hr-agent", chat_id="chat-nope", message=user_message("?"))

    with pytest.raises(arc.exceptions.ARCChatError) as closed:
        run(after_the_end())
    with pytest.raises(arc.exceptions.ChatNotFoundError) as unknown:
        run(unknown_chat())
    assert closed.value.code == -43002
    assert (unknown.value.code, unknown.value.details["chat_id"]) == (-43001, "chat-nope")


class Planner(Agent):
    """A demo-style agent with managed tasks: it asks for a date, then completes with a plan."""

    agent_id = "planner-agent"

    def task_create(self, params, context):
        raise InputRequired("Which date?")

    def task_send(self, params, context):
        context.task.add_artifact({"name": "plan", "parts": [{"type": "TextPart", "content": "agenda"}]})
        return f"Planned for {params['message']['parts'][0]['content']}"


def test_reference_client_drives_managed_tasks(serve):
    server = Server(server_id="planner")
    server.add_agent(Planner)
    url = serve(server).url

    async def drive() -> tuple[dict, ...]:
        async with arc.Client(url, use_quantum_safe=False) as client:
            created = await client.task.create(
                target_agent="planner-agent", initial_message=user_message("plan a meeting"), priority="URGENT"
            )
            task_id = created["result"]["task"]["taskId"]
            asked = completed = None
            for _ in range(500):
                asked = await client.task.info(target_agent="planner-agent", task_id=task_id)
                if asked["result"]["task"]["status"] == "INPUT_REQUIRED":
                    break
                await asyncio.sleep(0.02)
            sent = await client.task.send(target_agent="planner-agent", task_id=task_id, message=user_message("Monday"))
            for _ in range(500):
                completed = await client.task.info(target_agent="planner-agent", task_id=task_id)
                if completed["result"]["task"]["status"] == "COMPLETED":
                    break
                await asyncio.sleep(0.02)
            second = await client.task.create(target_agent="planner-agent", initial_message=user_message("again"))
            canceled = await client.task.cancel(
                target_agent="planner-agent", task_id=second["result"]["task"]["taskId"], reason="not needed"
            )
            return created, asked, sent, completed, canceled

    created, asked, sent, completed, canceled = run(drive())
    assert created["result"]["task"]["priority"] == "URGENT"
    assert asked["result"]["task"]["status"] == "INPUT_REQUIRED"
    assert sent["result"] == {"success": True}
    task = completed["result"]["task"]
    assert task["status"] == "COMPLETED"
    assert task["messages"][-1]["parts"][0]["content"] == "Planned for Monday"
    assert [artifact["name"] for artifact in task["artifacts"]] == ["plan"]
    assert canceled["result"]["task"]["status"] == "CANCELED"

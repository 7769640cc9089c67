"""The real reference client (arc-sdk 1.3.1) against our server."""

from __future__ import annotations

import pytest
from conftest import run

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

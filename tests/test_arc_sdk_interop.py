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

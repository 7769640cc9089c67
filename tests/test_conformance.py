"""Conformance: the real arc-sdk 1.3.1 Client drives every method it has against the demo agents
(``python -m arc_actors serve``), without an exception. docs/conformance.md has one row per method."""

from __future__ import annotations

import asyncio
import inspect
import re
from pathlib import Path

import pytest
from conftest import Receiver, run

from arc_actors.demo import build_server
from arc_actors.testing import serving

arc = pytest.importorskip("arc", reason="arc-sdk is a test dependency: pip install '.[test]'")

DOCS = Path(__file__).resolve().parent.parent / "docs" / "conformance.md"
DRIVEN = {
    "ARCClient": ["send_request", "close"],
    "ChatMethods": ["start", "message", "end"],
    "TaskMethods": ["create", "send", "info", "cancel", "subscribe", "notification"],
    "ThreadManager": ["send_to_agent", "end_thread", "cleanup_all"],
}
"""Every public coroutine method of the reference client, by class: the test below fails when arc-sdk
has one this list (and so the scenario) does not cover."""


def said(text: str) -> dict:
    return {"role": "user", "parts": [{"type": "TextPart", "content": text}]}


def text_of(result: dict) -> str:
    return result["chat"]["message"]["parts"][0]["content"]


def streamed(frames: list[dict]) -> tuple[list[str], str]:
    """The events of an SSE answer and the text of its ``stream`` frames."""
    text = "".join(frame["data"]["message"]["parts"][0]["content"] for frame in frames if frame["event"] == "stream")
    return [frame["event"] for frame in frames], text


def coroutine_methods(cls: type) -> list[str]:
    return sorted(
        name
        for name, member in vars(cls).items()
        if inspect.iscoroutinefunction(member) and not name.startswith("_") and name not in ("__aenter__",)
    )


def test_every_coroutine_method_of_the_reference_client_is_driven_and_documented():
    from arc.client.arc_client import ARCClient, ChatMethods, TaskMethods

    classes = {"ARCClient": ARCClient, "ChatMethods": ChatMethods, "TaskMethods": TaskMethods}
    classes["ThreadManager"] = arc.ThreadManager
    assert {name: coroutine_methods(cls) for name, cls in classes.items()} == {
        name: sorted(methods) for name, methods in DRIVEN.items()
    }
    table = DOCS.read_text()
    documented = re.findall(r"^\| `([\w.]+)\(", table, re.M)
    prefixes = {"ARCClient": "client", "ChatMethods": "client.chat", "TaskMethods": "client.task"}
    expected = [f"{prefixes.get(cls, 'threads')}.{method}" for cls, methods in DRIVEN.items() for method in methods]
    assert sorted(documented) == sorted([*expected, "client.chat.start", "client.chat.message"])  # + streamed


async def wait_for_status(client, task_id: str, status: str) -> dict:
    for _ in range(500):
        task = (await client.task.info(target_agent="report-agent", task_id=task_id))["result"]["task"]
        if task["status"] == status:
            return task
        await asyncio.sleep(0.02)
    raise AssertionError(f"task {task_id} never {status}")


def test_the_reference_client_drives_every_method_against_the_demo_agents():
    results: dict[str, object] = {}

    async def drive(url: str) -> None:
        async with Receiver() as receiver:
            client = arc.Client(url, use_quantum_safe=False, request_agent="conformance")
            # chat.start, chat.message, chat.end
            started = await client.chat.start(target_agent="finance-agent", initial_message=said("an invoice"))
            chat_id = started["result"]["chat"]["chatId"]
            results["chat.start"] = text_of(started["result"])
            replied = await client.chat.message(target_agent="finance-agent", chat_id=chat_id, message=said("INV-9"))
            results["chat.message"] = text_of(replied["result"])
            ended = await client.chat.end(target_agent="finance-agent", chat_id=chat_id, reason="done")
            results["chat.end"] = ended["result"]["chat"]["status"]
            # chat.start and chat.message with stream=True (SSE)
            stream = await client.chat.start(target_agent="hr-agent", initial_message=said("salary"), stream=True)
            frames = [frame async for frame in stream]
            streamed_id = frames[-1]["data"]["chatId"]
            results["chat.start stream"] = streamed(frames)
            stream = await client.chat.message(
                target_agent="hr-agent", chat_id=streamed_id, message=said("e-7"), stream=True
            )
            frames = [frame async for frame in stream]
            results["chat.message stream"] = streamed(frames)
            # task.create (completes at once), task.info
            created = await client.task.create(
                target_agent="report-agent", initial_message=said("report 2026-Q2"), priority="HIGH"
            )
            done = await wait_for_status(client, created["result"]["task"]["taskId"], "COMPLETED")
            results["task.create"] = created["result"]["task"]["status"], created["result"]["task"]["priority"]
            results["task.info"] = done["artifacts"][0]["name"], done["progress"], done["messages"][-1]
            # task.subscribe, then task.send resumes the task and the webhook arrives
            asking = await client.task.create(target_agent="report-agent", initial_message=said("a report"))
            task_id = asking["result"]["task"]["taskId"]
            await wait_for_status(client, task_id, "INPUT_REQUIRED")
            subscribed = await client.task.subscribe(
                target_agent="report-agent", task_id=task_id, callback_url=receiver.url, events=["TASK_COMPLETED"]
            )
            results["task.subscribe"] = subscribed["result"]["type"], subscribed["result"]["subscription"]["active"]
            sent = await client.task.send(target_agent="report-agent", task_id=task_id, message=said("2026-Q3"))
            await wait_for_status(client, task_id, "COMPLETED")
            await receiver.wait_for(1)
            results["task.send"] = sent["result"], receiver.events
            # task.cancel
            waiting = await client.task.create(target_agent="report-agent", initial_message=said("another"))
            await wait_for_status(client, waiting["result"]["task"]["taskId"], "INPUT_REQUIRED")
            canceled = await client.task.cancel(
                target_agent="report-agent", task_id=waiting["result"]["task"]["taskId"], reason="not needed"
            )
            results["task.cancel"] = canceled["result"]["task"]["status"], canceled["result"]["task"]["reason"]
            # task.notification
            notified = await client.task.notification(
                target_agent="report-agent",
                task_id=task_id,
                event="TASK_COMPLETED",
                timestamp="2026-01-15T10:35:00Z",
                data={"status": "COMPLETED"},
            )
            results["task.notification"] = notified["result"]
            # send_request, the generic call every method above goes through
            raw = await client.send_request(
                method="chat.start", target_agent="support-agent", params={"initialMessage": said("hello")}
            )
            results["send_request"] = raw["responseAgent"], text_of(raw["result"])
            # ThreadManager: send_to_agent (start, then message), end_thread, cleanup_all
            threads = arc.ThreadManager(client)
            first = await threads.send_to_agent("support-agent", said("printer"))
            again = await threads.send_to_agent("support-agent", said("still broken"))
            await threads.send_to_agent("hr-agent", said("benefits"))
            ended_thread = await threads.end_thread("support-agent", reason="fixed")
            cleaned = await threads.cleanup_all(reason="bye")
            results["threads"] = (
                first["result"]["chat"]["chatId"] == again["result"]["chat"]["chatId"],
                text_of(again["result"]),
                ended_thread["result"]["chat"]["status"],
                cleaned,
            )
            await client.close()
            results["close"] = client.http_client.is_closed

    with serving(build_server()) as running:
        run(drive(running.url))

    assert results == {
        "chat.start": "I can help with invoice inquiries. Please provide invoice number.",
        "chat.message": "Processing your request: INV-9",
        "chat.end": "CLOSED",
        "chat.start stream": (
            ["stream", "done"],
            "I can help with salary inquiries. Please provide your employee ID.",
        ),
        "chat.message stream": (["stream", "done"], "Let me check that for you: e-7"),
        "task.create": ("SUBMITTED", "HIGH"),
        "task.info": (
            "report-2026-Q2",
            1.0,
            {"role": "agent", "parts": [{"type": "TextPart", "content": "Report for 2026-Q2 ready."}]},
        ),
        "task.subscribe": ("subscription", True),
        "task.send": ({"success": True}, ["TASK_COMPLETED"]),
        "task.cancel": ("CANCELED", "not needed"),
        "task.notification": {"success": True},
        "send_request": ("support-agent", "Hi! I'm here to help with general support. What do you need?"),
        "threads": (True, "I understand your concern: still broken. Let me help you.", "CLOSED", {"hr-agent": True}),
        "close": True,
    }

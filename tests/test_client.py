"""Our Client: the reference's call shapes, a response object, typed errors."""

from __future__ import annotations

import pytest
from conftest import run

from arc_actors import ARCError, Client, ErrorCode, Server
from arc_actors.agent import ARC_METHODS


def test_response_object_offers_attributes_and_wire_keys(echo_url):
    async def call() -> object:
        async with Client(echo_url, request_agent="me") as client:
            return await client.chat.start("echo-agent", {"role": "user", "parts": []}, chat_id="c-1", trace_id="tr")

    response = run(call())
    assert response.result["params"] == {"initialMessage": {"role": "user", "parts": []}, "chatId": "c-1"}
    assert response["result"] == response.result
    assert response.error is None
    assert response.trace_id == "tr" == response["traceId"]
    assert response.response_agent == "echo-agent"
    assert response["targetAgent"] == "me"


def test_every_task_and_chat_method_sends_the_reference_method_and_params(serve):
    server = Server(server_id="echo-all")
    for method in ARC_METHODS:
        if method != "task.create":  # an agent answering task.create has its tasks managed: tested below
            server.agent_handler("echo", method)(lambda params, context: {"method": context.method, "params": params})
    server.agent_handler("tasker", "task.create")(lambda params, context: None)
    url = serve(server).url
    message = {"role": "user", "parts": []}

    async def methods() -> tuple[dict, list[tuple[str, dict]]]:
        async with Client(url) as client:
            created = (await client.task.create("tasker", message, priority="HIGH", metadata={"k": 1})).result
            calls = [
                client.chat.start("echo", message, chat_id="c-1"),
                client.chat.message("echo", "c-1", message),
                client.chat.end("echo", "c-1", reason="done"),
                client.task.send("echo", "t-1", message),
                client.task.info("echo", "t-1", include_artifacts=False),
                client.task.cancel("echo", "t-1"),
                client.task.subscribe("echo", "t-1", "http://127.0.0.1:1/hook", events=["TASK_COMPLETED"]),
                client.task.notification("echo", "t-1", "TASK_COMPLETED", "2026-01-01T00:00:00Z", {"a": 1}),
            ]
            answers = []
            for call in calls:
                response = await call
                answers.append((response.result["method"], response.result["params"]))
            return created, answers

    created, answers = run(methods())
    assert (created["task"]["messages"], created["task"]["priority"], created["task"]["metadata"]) == (
        [message],
        "HIGH",
        {"k": 1},
    )
    assert answers == [
        ("chat.start", {"initialMessage": message, "chatId": "c-1"}),
        ("chat.message", {"chatId": "c-1", "message": message}),
        ("chat.end", {"chatId": "c-1", "reason": "done"}),
        ("task.send", {"taskId": "t-1", "message": message}),
        ("task.info", {"taskId": "t-1", "includeMessages": True, "includeArtifacts": False}),
        ("task.cancel", {"taskId": "t-1"}),
        ("task.subscribe", {"taskId": "t-1", "callbackUrl": "http://127.0.0.1:1/hook", "events": ["TASK_COMPLETED"]}),
        (
            "task.notification",
            {"taskId": "t-1", "event": "TASK_COMPLETED", "timestamp": "2026-01-01T00:00:00Z", "data": {"a": 1}},
        ),
    ]


def test_arc_error_is_raised_typed_unless_asked_not_to(echo_url):
    with pytest.raises(ARCError) as raised:
        run(Client(echo_url).call("chat.start", "nobody", {}))
    assert raised.value.code == ErrorCode.AGENT_NOT_FOUND
    assert raised.value.details["agentId"] == "nobody"
    response = run(Client(echo_url, raise_errors=False).call("chat.start", "nobody", {}))
    assert response.result is None
    assert response.error["code"] == -41001


def test_unreachable_server_is_a_typed_error():
    with pytest.raises(ARCError) as raised:
        run(Client("http://127.0.0.1:9/arc", timeout=5).chat.start("a", {}))
    assert raised.value.code == ErrorCode.AGENT_UNREACHABLE

"""The README's example agent runs as shown."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

from conftest import envelope, post, post_raw, run

from arc_actors import Client, Server
from arc_actors.testing import serving

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_starts_with_the_two_commands():
    first_block = re.search(r"```bash\n(.*?)```", README.read_text(), re.S).group(1).strip().splitlines()
    assert len(first_block) == 2
    assert first_block[0].endswith("pip install . && python -m arc_actors serve")
    assert first_block[1].endswith("pip install '.[test]' && python -m pytest")


def test_readme_example_agent_answers_and_raises_its_arc_error():
    source = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    namespace: dict = {"__name__": "readme_example"}
    exec(compile(source, "README.md", "exec"), namespace)

    def say(text: str) -> dict:
        return {"initialMessage": {"role": "user", "parts": [{"type": "text", "content": text}]}}

    with serving(namespace["server"]) as running:
        first = run(post(running.url, envelope("finance-agent", "chat.start", say("hi"))))
        empty = run(post(running.url, envelope("finance-agent", "chat.start", say(""))))
        second = run(post(running.url, envelope("finance-agent", "chat.start", say("again"))))
    assert first["result"]["chat"]["message"]["parts"][0]["content"] == "chat #1: hi"
    assert empty["error"]["code"] == -43005
    assert second["result"]["chat"]["message"]["parts"][0]["content"] == "chat #3: again"


def test_readme_supervision_example_declares_its_policies():
    source = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)[1]
    namespace: dict = {"__name__": "readme_supervision"}
    exec(compile(source, "README.md", "exec"), namespace)
    server, policy = namespace["server"], namespace["PaymentsAgent"].restart_policy
    assert server.agent_ids == ["hr-agent", "payments-agent"]
    assert (policy.max_restarts, policy.within_s, policy.hang_after_s) == (3, 60, 30)
    assert server.restart_policy.max_restarts == 10


def test_readme_auth_example_serves_its_token_and_refuses_others():
    import jwt

    source = next(
        block for block in re.findall(r"```python\n(.*?)```", README.read_text(), re.S) if "AuthConfig(" in block
    )
    namespace: dict = {"__name__": "readme_auth"}
    exec(compile(source, "README.md", "exec"), namespace)
    request = envelope("payments-agent", "chat.start", {"initialMessage": {"role": "user", "parts": []}})
    outsider = jwt.encode(
        {
            "sub": "bob",
            "aud": "shop",
            "iss": "https://login.example",
            "exp": 2**40,
            "scope": "arc.chat.controller arc.agent.caller",
        },
        "a-shared-secret-of-32-bytes-or-more",
        algorithm="HS256",
    )
    with serving(namespace["server"]) as running:
        ops = run(post_raw(running.url, json.dumps(request), {"Authorization": "Bearer s3cr3t-ops-token"}))
        anonymous = run(post_raw(running.url, json.dumps(request)))
        bob = run(post_raw(running.url, json.dumps(request), {"Authorization": f"Bearer {outsider}"}))
    assert ops == (200, {**ops[1], "result": {"caller": "ops", "scopes": ["arc.agent.caller", "arc.chat.controller"]}})
    assert [(status, answer["error"]["code"]) for status, answer in (anonymous, bob)] == [(401, -44001), (403, -44006)]


def test_readme_managed_chats_example_keeps_history_in_its_sqlite_file(tmp_path, monkeypatch):
    source = next(
        block for block in re.findall(r"```python\n(.*?)```", README.read_text(), re.S) if "context.chat" in block
    )
    monkeypatch.chdir(tmp_path)
    message = {"role": "user", "parts": [{"type": "text", "content": "milk"}]}
    answers = []
    for _ in range(2):  # the second server is a restart on the same file
        namespace: dict = {"__name__": "readme_chats"}
        exec(compile(source, "README.md", "exec"), namespace)
        with serving(namespace["server"]) as running:
            if not answers:
                answers.append(
                    run(
                        post(
                            running.url,
                            envelope("notes-agent", "chat.start", {"chatId": "n", "initialMessage": message}),
                        )
                    )
                )
            answers.append(
                run(post(running.url, envelope("notes-agent", "chat.message", {"chatId": "n", "message": message})))
            )
    assert answers[0]["result"]["chat"]["message"]["parts"][0]["content"] == "Tell me what to note."
    assert [answer["result"]["chat"]["message"]["parts"][0]["content"] for answer in answers[1:]] == [
        "2 notes: milk, milk",
        "3 notes: milk, milk, milk",
    ]
    assert (tmp_path / "notes.db").is_file()


def test_readme_managed_tasks_example_reports_asks_and_completes():
    source = next(
        block for block in re.findall(r"```python\n(.*?)```", README.read_text(), re.S) if "context.task" in block
    )
    namespace: dict = {"__name__": "readme_tasks"}
    exec(compile(source, "README.md", "exec"), namespace)
    message = {"role": "user", "parts": [{"type": "TextPart", "content": "Q3 report"}]}

    async def until(client: Client, task_id: str, status: str) -> dict:
        for _ in range(500):
            task = (await client.task.info("report-agent", task_id)).result["task"]
            if task["status"] == status:
                break
            await asyncio.sleep(0.02)
        return task

    async def life() -> tuple[dict, dict]:
        async with Client(running.url) as client:
            task_id = (await client.task.create("report-agent", message)).result["task"]["taskId"]
            asked = await until(client, task_id, "INPUT_REQUIRED")
            await client.task.send(
                "report-agent", task_id, {"role": "user", "parts": [{"type": "TextPart", "content": "the board"}]}
            )
            return asked, await until(client, task_id, "COMPLETED")

    with serving(namespace["server"]) as running:
        asked, done = run(life())
    assert (asked["progress"], asked["messages"][-1]["parts"][0]["content"]) == (1.0, "Report ready. Send it to whom?")
    assert [artifact["name"] for artifact in asked["artifacts"]] == ["report"]
    assert done["status"] == "COMPLETED"
    assert done["messages"][-1]["parts"] == [{"type": "TextPart", "content": "Sent to the board."}]


def test_readme_streaming_example_streams_its_words():
    source = re.search(r"```python\n(from arc_actors import Agent\n\n\nclass Writer.*?)```", README.read_text(), re.S)
    namespace: dict = {"__name__": "readme_streaming"}
    exec(compile(source.group(1), "README.md", "exec"), namespace)
    server = Server(server_id="readme-stream")
    server.add_agent(namespace["Writer"])
    message = {"role": "user", "parts": [{"type": "TextPart", "content": "a story"}]}

    async def read() -> list[dict]:
        async with Client(running.url) as client:
            events = await client.chat.start(target_agent="writer", initial_message=message, stream=True)
            return [event async for event in events]

    with serving(server) as running:
        events = run(read())
    assert [event["event"] for event in events] == ["stream", "stream", "stream", "done"]
    assert "".join(event["data"]["message"]["parts"][0]["content"] for event in events[:3]) == "Once upon a time"

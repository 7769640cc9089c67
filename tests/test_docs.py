"""The documentation runs as written: README.md and every page of docs/.

Every Python block of the docs is run (see snippets.py); the blocks that show a behaviour also have a
test here that serves them and checks that behaviour.
"""

from __future__ import annotations

import asyncio
import json
import re

import pytest
from conftest import envelope, post, post_raw, run
from snippets import ROOT, snippet, snippets

from arc_actors import Client, ErrorCode
from arc_actors.testing import serving

README = ROOT / "README.md"


def test_readme_starts_with_the_two_commands():
    first_block = re.search(r"```bash\n(.*?)```", README.read_text(), re.S).group(1).strip().splitlines()
    assert len(first_block) == 2
    assert first_block[0].endswith("pip install . && python -m arc_actors serve")
    assert first_block[1].endswith("pip install '.[test]' && python -m pytest")


def test_readme_example_agent_answers_and_raises_its_arc_error():
    namespace = snippet("README.md", "class FinanceAgent").run()

    def say(text: str) -> dict:
        return {"initialMessage": {"role": "user", "parts": [{"type": "text", "content": text}]}}

    with serving(namespace["server"]) as running:
        first = run(post(running.url, envelope("finance-agent", "chat.start", say("hi"))))
        empty = run(post(running.url, envelope("finance-agent", "chat.start", say(""))))
        second = run(post(running.url, envelope("finance-agent", "chat.start", say("again"))))
    assert first["result"]["chat"]["message"]["parts"][0]["content"] == "chat #1: hi"
    assert empty["error"]["code"] == -43005
    assert second["result"]["chat"]["message"]["parts"][0]["content"] == "chat #3: again"


def test_supervision_example_declares_its_policies():
    namespace = snippet("docs/concepts.md", "restart_policy = RestartPolicy(").run()
    server, policy = namespace["server"], namespace["PaymentsAgent"].restart_policy
    assert server.agent_ids == ["hr-agent", "payments-agent"]
    assert (policy.max_restarts, policy.within_s, policy.hang_after_s) == (3, 60, 30)
    assert server.restart_policy.max_restarts == 10


def test_auth_example_serves_its_token_and_refuses_others():
    import jwt

    namespace = snippet("docs/auth.md", "AuthConfig(").run()
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


def test_managed_chats_example_keeps_history_in_its_sqlite_file(tmp_path, monkeypatch):
    example = snippet("docs/chats.md", "context.chat")
    monkeypatch.chdir(tmp_path)
    message = {"role": "user", "parts": [{"type": "text", "content": "milk"}]}
    answers = []
    for _ in range(2):  # the second server is a restart on the same file
        namespace = example.run()
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


def test_managed_tasks_example_reports_asks_and_completes():
    namespace = snippet("docs/tasks.md", "context.task").run()
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


def test_streaming_example_streams_its_words_and_then_is_done():
    namespace = snippet("docs/streaming.md", "class Writer").run()
    assert [event["event"] for event in namespace["events"]] == ["stream", "stream", "stream", "done"]
    assert namespace["text"] == "Once upon a time"


@pytest.mark.parametrize("example", snippets(), ids=lambda example: example.name)
def test_every_python_block_of_the_docs_runs(example, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where a block's files (an SQLite store) are made
    example.run()


def test_the_protocol_page_lists_every_error_code_by_its_name():
    page = (ROOT / "docs" / "protocol.md").read_text().split("## Error codes\n", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^\| (-\d+) \| `(\w+)` \|", page, re.M)
    assert [(int(code), name) for code, name in listed] == [(code.value, code.name) for code in ErrorCode]

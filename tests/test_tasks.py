"""Managed tasks, on either engine: recorded at once, run in the agent's actor afterwards, answered from the store."""

from __future__ import annotations

import asyncio
import time

import msgspec
import pytest
from conftest import run, wait_for_health

from arc_actors import Agent, ARCError, Client, InputRequired, Server, handles

pytestmark = pytest.mark.usefixtures("engine")

WAIT_S = 10.0


def said(text: str) -> dict:
    return {"role": "user", "parts": [{"type": "TextPart", "content": text}]}


def texts(task: dict) -> list[str]:
    return [message["parts"][0]["content"] for message in task["messages"]]


class Reporter(Agent):
    """Reports progress, a message and an artifact, then waits for the caller's "go" to finish."""

    agent_id = "reporter"

    async def task_create(self, params, context):
        context.task.progress(0.5)
        context.task.add_message("halfway")
        context.task.add_artifact({"name": "report", "parts": [{"type": "TextPart", "content": "42"}]})
        deadline = time.monotonic() + WAIT_S
        while "go" not in texts(msgspec.to_builtins(context.task.get())) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return f"done: {params['initialMessage']['parts'][0]['content']}"


class Failing(Agent):
    agent_id = "failing"

    def task_create(self, params, context):
        if params["initialMessage"]["parts"][0]["content"] == "bad":
            raise ValueError("bad input")
        return "fine"


class Sleeper(Agent):
    """Runs until cancelled, async or sync as the message says; ``observed.get`` tells what it saw."""

    agent_id = "sleeper"

    def __init__(self) -> None:
        self.observed: list[str] = []

    async def task_create(self, params, context):
        if params["initialMessage"]["parts"][0]["content"] == "sync":
            deadline = time.monotonic() + WAIT_S
            while time.monotonic() < deadline:
                if context.task.cancelled:
                    self.observed.append("sync saw cancelled")
                context.task.check_cancelled()
                time.sleep(0.01)
            return "not cancelled"
        try:
            await asyncio.sleep(WAIT_S)
        except asyncio.CancelledError:
            self.observed.append("async cancelled")
            raise
        return "not cancelled"

    @handles("observed.get")
    def observed_get(self, params, context):
        return self.observed


async def observed(client: Client) -> list[str]:
    """What the sleeper saw, once it saw something (polled for at most WAIT_S)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        seen = (await client.call("observed.get", "sleeper", {})).result
        if seen or time.monotonic() > deadline:
            return seen
        await asyncio.sleep(0.02)


class Forecaster(Agent):
    """Asks for a city, then answers once it is sent."""

    agent_id = "forecaster"

    def task_create(self, params, context):
        raise InputRequired("Which city?")

    def task_send(self, params, context):
        return f"sunny in {params['message']['parts'][0]['content']}"


async def until(client: Client, agent_id: str, task_id: str, status: str) -> dict:
    """The task once it has ``status``, polled for at most WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    while True:
        task = (await client.task.info(agent_id, task_id)).result["task"]
        if task["status"] == status or time.monotonic() > deadline:
            return task
        await asyncio.sleep(0.02)


def test_a_task_is_submitted_at_once_answers_info_while_working_and_completes_with_messages_and_artifacts(serve):
    server = Server(server_id="tasks")
    server.add_agent(Reporter)
    url = serve(server).url

    async def life() -> tuple[dict, ...]:
        async with Client(url, request_agent="me") as client:
            created = (await client.task.create("reporter", said("sum"), priority="HIGH", metadata={"k": 1})).result
            task_id = created["task"]["taskId"]
            working = await until(client, "reporter", task_id, "WORKING")
            while working.get("artifacts") == [] or working.get("progress") is None:
                working = (await client.task.info("reporter", task_id)).result["task"]
            await wait_for_health(client, "reporter", "busy", 1)  # info answered while the agent works
            await client.task.send("reporter", task_id, said("go"))
            done = await until(client, "reporter", task_id, "COMPLETED")
            bare = (await client.task.info("reporter", task_id, include_messages=False, include_artifacts=False)).result
            got = (await client.call("task.get", "reporter", {"taskId": task_id})).result
            return created, working, done, bare, got

    created, working, done, bare, got = run(life())
    task = created["task"]
    assert created["type"] == "task"
    assert task["taskId"].startswith("task-")
    assert (task["status"], task["priority"], task["metadata"]) == ("SUBMITTED", "HIGH", {"k": 1})
    assert task["createdAt"].endswith("Z")
    assert texts(task) == ["sum"]
    assert task["artifacts"] == []
    assert (working["status"], working["progress"]) == ("WORKING", 0.5)
    assert texts(working) == ["sum", "halfway"]
    assert done["status"] == "COMPLETED"
    assert texts(done) == ["sum", "halfway", "go", "done: sum"]
    assert [message["role"] for message in done["messages"]] == ["user", "agent", "user", "agent"]
    assert len(done["artifacts"]) == 1
    assert done["artifacts"][0]["name"] == "report"
    assert done["artifacts"][0]["parts"] == [{"type": "TextPart", "content": "42"}]
    assert done["createdAt"] == task["createdAt"] <= done["completedAt"]
    assert "messages" not in bare["task"]
    assert "artifacts" not in bare["task"]
    assert bare["task"]["status"] == "COMPLETED"
    assert got == {"type": "task", "task": done}


def test_a_task_whose_handler_raises_is_failed_with_the_error_and_the_agent_goes_on(serve):
    server = Server(server_id="tasks")
    server.add_agent(Failing)
    url = serve(server).url

    async def fail_then_succeed() -> tuple[dict, dict, dict]:
        async with Client(url) as client:
            bad = (await client.task.create("failing", said("bad"))).result["task"]["taskId"]
            failed = await until(client, "failing", bad, "FAILED")
            good = (await client.task.create("failing", said("good"))).result["task"]["taskId"]
            completed = await until(client, "failing", good, "COMPLETED")
            return failed, completed, await client.health()

    failed, completed, health = run(fail_then_succeed())
    assert failed["status"] == "FAILED"
    assert failed["error"] == {"code": -42004, "message": "ValueError: bad input", "details": {}}
    assert texts(completed) == ["good", "fine"]
    assert health["agents"]["failing"]["restarts"] == 0


@pytest.mark.parametrize(
    "style",
    [
        pytest.param(
            "async", marks=pytest.mark.pykka_only("on ray, the queued-cancel and timeout tests cancel async runs")
        ),
        "sync",
    ],
)
def test_cancel_reaches_the_running_handler_and_the_task_stays_canceled(serve, style):
    server = Server(server_id="tasks")
    server.add_agent(Sleeper)
    url = serve(server).url

    async def cancel_running() -> tuple[dict, list[str], dict, dict]:
        async with Client(url) as client:
            task_id = (await client.task.create("sleeper", said(style))).result["task"]["taskId"]
            await until(client, "sleeper", task_id, "WORKING")
            await wait_for_health(client, "sleeper", "busy", 1)  # on ray a task is WORKING before it runs
            canceled = (await client.task.cancel("sleeper", task_id, reason="enough")).result
            seen = await observed(client)
            await asyncio.sleep(0.1)  # time for a handler that ignored the cancel to record its end
            after = (await client.task.info("sleeper", task_id)).result["task"]
            return canceled, seen, after, await client.health()

    canceled, seen, after, health = run(cancel_running())
    assert canceled["task"]["status"] == "CANCELED"
    assert canceled["task"]["reason"] == "enough"
    assert seen == ["async cancelled" if style == "async" else "sync saw cancelled"]
    assert after["status"] == "CANCELED"
    assert texts(after) == [style]
    assert health["agents"]["sleeper"]["busy"] == 0


class CountingSleeper(Sleeper):
    """A sleeper that counts the task runs it started, one at a time (its second run waits in the mailbox)."""

    max_in_flight = 1

    def __init__(self) -> None:
        super().__init__()
        self.started = 0

    async def task_create(self, params, context):
        self.started += 1
        return await super().task_create(params, context)

    @handles("started.get")
    def started_get(self, params, context):
        return self.started


def test_a_task_cancelled_while_waiting_for_the_agent_never_runs(serve):
    server = Server(server_id="tasks")
    server.add_agent(CountingSleeper)
    url = serve(server).url

    async def cancel_queued_then_running() -> tuple[list[str], int, dict]:
        async with Client(url) as client:
            running = (await client.task.create("sleeper", said("async"))).result["task"]["taskId"]
            queued = (await client.task.create("sleeper", said("async"))).result["task"]["taskId"]
            await until(client, "sleeper", running, "WORKING")
            await wait_for_health(client, "sleeper", "busy", 1)
            await client.task.cancel("sleeper", queued)
            await client.task.cancel("sleeper", running)
            seen = await observed(client)
            await asyncio.sleep(0.2)  # time for a queued run that was not withdrawn to start
            started = (await client.call("started.get", "sleeper", {})).result
            return seen, started, (await client.task.info("sleeper", queued)).result["task"]

    seen, started, queued = run(cancel_queued_then_running())
    assert seen == ["async cancelled"]
    assert started == 1  # the queued run never started
    assert queued["status"] == "CANCELED"
    assert texts(queued) == ["async"]


@pytest.mark.pykka_only("answered in front of the mailbox, from the store: the same code on either engine")
def test_invalid_transitions_and_unknown_tasks_answer_their_exact_codes(serve):
    server = Server(server_id="tasks")
    server.add_agent(Failing)
    server.add_agent(Sleeper)
    url = serve(server).url

    async def attempts() -> list[ARCError]:
        async with Client(url) as client:
            completed = (await client.task.create("failing", said("good"))).result["task"]["taskId"]
            failed = (await client.task.create("failing", said("bad"))).result["task"]["taskId"]
            await until(client, "failing", completed, "COMPLETED")
            await until(client, "failing", failed, "FAILED")
            canceled = (await client.task.create("sleeper", said("async"))).result["task"]["taskId"]
            await client.task.cancel("sleeper", canceled)
            errors = []
            for call in (
                client.task.cancel("failing", completed),
                client.task.cancel("sleeper", canceled),
                client.task.cancel("failing", failed),
                client.task.send("failing", completed, said("more?")),
                client.task.cancel("failing", "task-nope"),
                client.task.info("failing", "task-nope"),
                client.task.send("failing", "task-nope", said("?")),
                client.task.info("sleeper", completed),
            ):
                with pytest.raises(ARCError) as raised:
                    await call
                errors.append(raised.value)
            return errors

    errors = run(attempts())
    assert [error.code for error in errors] == [-42002, -42003, -42006, -42002, -42001, -42001, -42001, -42001]
    assert errors[4].details == {"taskId": "task-nope"}
    assert errors[0].details["status"] == "COMPLETED"


def test_a_task_asks_for_input_and_is_resumed_by_task_send(serve):
    server = Server(server_id="tasks")
    server.add_agent(Forecaster)
    url = serve(server).url

    async def ask_and_answer() -> tuple[dict, dict, dict]:
        async with Client(url) as client:
            task_id = (await client.task.create("forecaster", said("weather?"))).result["task"]["taskId"]
            waiting = await until(client, "forecaster", task_id, "INPUT_REQUIRED")
            sent = (await client.task.send("forecaster", task_id, said("Oslo"))).result
            return waiting, sent, await until(client, "forecaster", task_id, "COMPLETED")

    waiting, sent, done = run(ask_and_answer())
    assert texts(waiting) == ["weather?", "Which city?"]
    assert sent == {"success": True}
    assert done["status"] == "COMPLETED"
    assert texts(done) == ["weather?", "Which city?", "Oslo", "sunny in Oslo"]


def test_a_task_running_longer_than_the_request_timeout_is_failed_with_task_timeout(serve):
    server = Server(server_id="tasks", request_timeout_s=0.3)
    server.add_agent(Sleeper)
    url = serve(server).url

    async def overrun() -> tuple[dict, list[str]]:
        async with Client(url) as client:
            task_id = (await client.task.create("sleeper", said("async"))).result["task"]["taskId"]
            failed = await until(client, "sleeper", task_id, "FAILED")
            return failed, await observed(client)

    failed, seen = run(overrun())
    assert failed["status"] == "FAILED"
    assert failed["error"]["code"] == -42005
    assert seen == ["async cancelled"]


@pytest.mark.pykka_only("the state bound is the gateway's store: the same code on either engine")
def test_a_task_still_running_is_never_forgotten_by_the_state_bound_however_much_is_written_after_it(serve):
    server = Server(server_id="tasks", state_max_records=2)
    server.add_agent(Reporter)
    server.add_agent(Failing)
    url = serve(server).url

    async def life() -> tuple[list[str], dict]:
        async with Client(url, request_agent="me") as client:
            long_id = (await client.task.create("reporter", said("long"))).result["task"]["taskId"]
            await until(client, "reporter", long_id, "WORKING")
            ended = []
            for _ in range(6):  # each read while it is among the two most recently written
                task_id = (await client.task.create("failing", said("ok"))).result["task"]["taskId"]
                ended.append((await until(client, "failing", task_id, "COMPLETED"))["status"])
            await client.task.send("reporter", long_id, said("go"))  # -42001 if the long task were forgotten
            return ended, await until(client, "reporter", long_id, "COMPLETED")

    ended, long_task = run(life())
    assert ended == ["COMPLETED"] * 6
    assert long_task["status"] == "COMPLETED"
    assert texts(long_task)[-1] == "done: long"

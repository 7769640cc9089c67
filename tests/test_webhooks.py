"""Subscriptions and webhooks: task events POSTed to real receivers on loopback, signed, retried, and
never in the way of the agents."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
import threading
import time
import urllib.request
from pathlib import Path

import msgspec
import pytest
from aiohttp import web
from conftest import Receiver, arc_post, envelope, run, serving_process, wait_until

from arc_actors import Agent, ARCError, Client, InputRequired, MemoryStore, Server, handles
from arc_actors.webhooks import Subscription, WebhookConfig, sign

ROOT = Path(__file__).resolve().parent.parent
SECRET = "s3cret"
FAST_RETRIES = {"backoff_initial_s": 0.01, "backoff_max_s": 0.05}


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


receiver_example = load_example("webhook_receiver")


def said(text: str) -> dict:
    return {"role": "user", "parts": [{"type": "TextPart", "content": text}]}


class Stepper(Agent):
    """A task that adds one message per step, each once its event is set, then completes with "done"."""

    agent_id = "stepper"

    def __init__(self, steps: list[threading.Event]) -> None:
        self.steps = steps

    def task_create(self, params, context):
        for number, step in enumerate(self.steps, 1):
            assert step.wait(10)
            context.task.add_message(f"step {number}")
            if number == 1:
                context.task.add_artifact({"name": "report", "parts": [{"type": "TextPart", "content": "r"}]})
        return "done"

    @handles("stepper.ping")
    async def ping(self, params, context):
        return {"pong": True}


class Asker(Agent):
    """A task that waits for input, then completes."""

    agent_id = "asker"

    def task_create(self, params, context):
        raise InputRequired("which one?")

    def task_send(self, params, context):
        return "thanks"


def stepper_server(steps: list[threading.Event], **webhooks) -> Server:
    server = Server(server_id="hooks", webhooks=WebhookConfig(**webhooks))
    server.add_agent(Stepper, steps)
    return server


async def create_and_subscribe(client: Client, agent_id: str, url: str, events: list[str]) -> tuple[str, dict]:
    created = await client.task.create(agent_id, said("go"))
    task_id = created.result["task"]["taskId"]
    subscribed = await client.task.subscribe(agent_id, task_id, url, events=events)
    return task_id, subscribed.result


async def status_of(client: Client, agent_id: str, task_id: str) -> str:
    return (await client.task.info(agent_id, task_id)).result["task"]["status"]


def test_task_events_reach_a_receiver_whose_signature_check_passes(serve):
    steps = [threading.Event()]
    running = serve(stepper_server(steps, secret=SECRET))
    events = ["NEW_MESSAGE", "NEW_ARTIFACT", "TASK_COMPLETED"]

    async def scenario() -> tuple[dict, list[dict], list[dict]]:
        runner = web.AppRunner(receiver_example.make_app(SECRET))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/hooks"
        try:
            async with Client(running.url) as client:
                task_id, subscription = await create_and_subscribe(client, "stepper", url, events)
                steps[0].set()
                got = runner.app[receiver_example.NOTIFICATIONS]
                await wait_until(lambda: len(got) == 4, "4 verified notifications")
                task = (await client.task.info("stepper", task_id)).result["task"]
            return subscription, list(got), task
        finally:
            await runner.cleanup()

    subscription, notifications, task = run(scenario())
    assert subscription["type"] == "subscription"
    body = subscription["subscription"]
    assert (body["taskId"], body["callbackUrl"].endswith("/hooks"), body["events"], body["active"]) == (
        task["taskId"],
        True,
        events,
        True,
    )
    assert re.fullmatch(r"sub-[0-9a-f]{12}", body["subscriptionId"]) and body["createdAt"].endswith("Z")
    assert sorted(n["event"] for n in notifications) == ["NEW_ARTIFACT", "NEW_MESSAGE", "NEW_MESSAGE", "TASK_COMPLETED"]
    for notification in notifications:
        assert notification["method"] == "task.notification"
        assert (notification["taskId"], notification["subscriptionId"]) == (task["taskId"], body["subscriptionId"])
        assert notification["requestAgent"] == "stepper"
    completed = next(n for n in notifications if n["event"] == "TASK_COMPLETED")
    assert completed["data"]["status"] == "COMPLETED"
    assert completed["data"]["completedAt"] == task["completedAt"]
    texts = sorted(n["data"]["message"]["parts"][0]["content"] for n in notifications if n["event"] == "NEW_MESSAGE")
    assert texts == ["done", "step 1"]


def test_a_receiver_with_another_secret_refuses_every_delivery(serve):
    steps = [threading.Event()]
    running = serve(stepper_server(steps, secret="not-the-receiver-s", max_retries=1, **FAST_RETRIES))

    async def scenario() -> list:
        runner = web.AppRunner(receiver_example.make_app(SECRET))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/hooks"
        try:
            async with Client(running.url) as client:
                await create_and_subscribe(client, "stepper", url, ["TASK_COMPLETED"])
                steps[0].set()
                await wait_until(lambda: deliveries(running)["failed"] == 1, "the delivery failed")
            return list(runner.app[receiver_example.NOTIFICATIONS])
        finally:
            await runner.cleanup()

    assert run(scenario()) == []


def test_a_failed_delivery_is_retried_with_the_same_delivery_id_and_bytes_until_it_succeeds(serve):
    steps = [threading.Event()]
    running = serve(stepper_server(steps, secret=SECRET, max_retries=3, **FAST_RETRIES))

    async def scenario() -> Receiver:
        async with Receiver(statuses=(500, 503)) as receiver, Client(running.url) as client:
            await create_and_subscribe(client, "stepper", receiver.url, ["TASK_COMPLETED"])
            steps[0].set()
            await receiver.wait_for(3)
            return receiver

    receiver = run(scenario())
    assert receiver.events == ["TASK_COMPLETED"] * 3
    assert len({headers["X-ARC-Delivery"] for headers, _ in receiver.requests}) == 1
    assert len({body for _, body in receiver.requests}) == 1
    headers, body = receiver.requests[0]
    assert receiver_example.signature_ok(SECRET.encode(), body, headers["X-ARC-Signature"])
    assert headers["Content-Type"] == "application/json"
    assert deliveries(running) == {"delivered": 1, "failed": 0, "gone": 0, "dropped": 0}


def deliveries(running) -> dict[str, int]:
    """The webhook delivery counters of ``/metrics``, by outcome."""
    with urllib.request.urlopen(f"{running.base_url}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    found = re.findall(r'arc_webhook_deliveries_total\{outcome="(\w+)"\} (\S+)', text)
    return {outcome: int(float(value)) for outcome, value in found}


def test_a_410_deactivates_the_subscription_and_later_events_are_not_sent(serve):
    steps = [threading.Event(), threading.Event()]
    store = MemoryStore()
    server = stepper_server(steps, max_retries=3, **FAST_RETRIES)
    server.store = store
    running = serve(server)

    def stored() -> list[Subscription]:
        raw = store.load("subscriptions", f'["stepper","{task_id}"]')
        return msgspec.json.decode(raw, type=list[Subscription])

    async def scenario() -> tuple[Receiver, str]:
        nonlocal task_id
        async with Receiver(statuses=(410,)) as receiver, Client(running.url) as client:
            task_id, _ = await create_and_subscribe(client, "stepper", receiver.url, ["NEW_MESSAGE", "TASK_COMPLETED"])
            steps[0].set()
            await wait_until(lambda: not stored()[0].active, "the subscription deactivated")
            steps[1].set()
            await wait_until(lambda: deliveries(running)["gone"] == 1, "the 410 counted")
            deadline = time.monotonic() + 10
            while await status_of(client, "stepper", task_id) != "COMPLETED" and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.3)  # room for a delivery that should not happen
            return receiver, await status_of(client, "stepper", task_id)

    task_id = ""
    receiver, status = run(scenario())
    assert status == "COMPLETED"
    assert receiver.events == ["NEW_MESSAGE"]
    assert [subscription.active for subscription in stored()] == [False]
    assert deliveries(running) == {"delivered": 0, "failed": 0, "gone": 1, "dropped": 0}


def test_a_receiver_that_never_answers_delays_neither_the_agent_nor_other_requests(serve):
    steps = [threading.Event()]
    running = serve(stepper_server(steps, timeout_s=20, workers=1))

    async def scenario() -> tuple[str, float, dict, str, int]:
        async with Receiver(hold=True) as receiver, Client(running.url) as client:
            events = ["NEW_MESSAGE", "NEW_ARTIFACT", "TASK_COMPLETED"]
            first, _ = await create_and_subscribe(client, "stepper", receiver.url, events)
            steps[0].set()
            await receiver.wait_for(1)  # the one worker is now stuck on a receiver that does not answer
            deadline = time.monotonic() + 10
            while await status_of(client, "stepper", first) != "COMPLETED" and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            started = time.monotonic()
            pong = (await client.call("stepper.ping", "stepper", {})).result
            waited = time.monotonic() - started
            second, _ = await create_and_subscribe(client, "stepper", receiver.url, events)
            deadline = time.monotonic() + 10
            while await status_of(client, "stepper", second) != "COMPLETED" and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            return (
                await status_of(client, "stepper", first),
                waited,
                pong,
                await status_of(client, "stepper", second),
                len(receiver.requests),
            )

    first, waited, pong, second, received = run(scenario())
    assert first == second == "COMPLETED"  # each task's events were queued while the receiver hung
    assert pong == {"pong": True}
    assert waited < 5  # the held delivery has 20 s to go
    assert received == 1


def test_deliveries_beyond_a_full_queue_are_dropped_and_counted(serve):
    steps = [threading.Event(), threading.Event()]
    running = serve(stepper_server(steps, queue_size=1, workers=1, timeout_s=20))

    async def scenario() -> tuple[dict, str, int]:
        async with Receiver(hold=True) as receiver, Client(running.url) as client:
            events = ["NEW_MESSAGE", "NEW_ARTIFACT", "TASK_COMPLETED"]
            task_id, _ = await create_and_subscribe(client, "stepper", receiver.url, events)
            steps[0].set()  # two events: one goes to the worker, which the receiver then holds
            await receiver.wait_for(1)
            steps[1].set()  # three more: one place in the queue at most, the rest dropped
            await wait_until(lambda: deliveries(running)["dropped"] == 3, "3 deliveries dropped")
            return deliveries(running), await status_of(client, "stepper", task_id), len(receiver.requests)

    counted, status, received = run(scenario())
    assert counted == {"delivered": 0, "failed": 0, "gone": 0, "dropped": 3}
    assert (status, received) == ("COMPLETED", 1)


@pytest.mark.parametrize(
    ("url", "code", "complaint"),
    [
        ("ftp://127.0.0.1/hooks", -32602, "callbackUrl must be an http or https URL, got scheme 'ftp'"),
        ("file:///etc/passwd", -32602, "callbackUrl must be an http or https URL, got scheme 'file'"),
        ("http:///hooks", -32602, "callbackUrl has no host"),
        ("http://127.0.0.1:9/hooks", -44006, "callbackUrl host 127.0.0.1 is outside the webhook allow list"),
        ("http://192.168.1.5/hooks", -44006, "callbackUrl host 192.168.1.5 is outside the webhook allow list"),
        ("http://localhost:9/hooks", -44006, "callbackUrl host localhost (127.0.0.1"),
        ("http://no-such-host.invalid/hooks", -44006, "does not resolve"),
    ],
)
def test_a_callback_url_of_another_scheme_or_outside_the_allow_list_is_refused(serve, url, code, complaint):
    server = Server(server_id="strict", webhooks=WebhookConfig(allow=("10.0.0.0/8", "hooks.example.com")))
    server.add_agent(Asker)
    running = serve(server)

    async def subscribe() -> tuple[ARCError, dict, dict]:
        async with Client(running.url) as client:
            task_id = (await client.task.create("asker", said("go"))).result["task"]["taskId"]
            with pytest.raises(ARCError) as refused:
                await client.task.subscribe("asker", task_id, url)
            inside = await client.task.subscribe("asker", task_id, "http://10.1.2.3:8080/hooks")
            named = await client.task.subscribe("asker", task_id, "https://HOOKS.example.com/x")
            return refused.value, inside.result, named.result

    refused, inside, named = run(subscribe())
    assert (refused.code, refused.details) == (code, {"callbackUrl": url})
    assert complaint in refused.message
    assert inside["subscription"]["events"] == ["TASK_COMPLETED", "TASK_FAILED"]
    assert named["subscription"]["active"] is True


def test_subscribing_to_an_unknown_task_or_to_unknown_events_is_refused(serve):
    server = Server(server_id="subs")
    server.add_agent(Asker)
    running = serve(server)

    async def subscribe() -> tuple[ARCError, ARCError]:
        async with Client(running.url) as client:
            task_id = (await client.task.create("asker", said("go"))).result["task"]["taskId"]
            with pytest.raises(ARCError) as unknown_task:
                await client.task.subscribe("asker", "task-nope", "http://127.0.0.1:9/hooks")
            with pytest.raises(ARCError) as unknown_event:
                await client.task.subscribe("asker", task_id, "http://127.0.0.1:9/hooks", events=["TASK_EXPLODED"])
            return unknown_task.value, unknown_event.value

    unknown_task, unknown_event = run(subscribe())
    assert (unknown_task.code, unknown_task.details) == (-42001, {"taskId": "task-nope"})
    assert (unknown_event.code, unknown_event.details) == (-32602, {"events": ["TASK_EXPLODED"]})


def test_a_callback_outside_a_tightened_allow_list_is_not_contacted_at_delivery(serve):
    store = MemoryStore()
    loose = Server(server_id="loose", store=store)
    loose.add_agent(Asker)
    strict = Server(server_id="strict", store=store, webhooks=WebhookConfig(allow=("10.0.0.0/8",), max_retries=0))
    strict.add_agent(Asker)

    async def scenario() -> tuple[Receiver, str]:
        async with Receiver() as receiver:
            by_name = receiver.url.replace("127.0.0.1", "localhost")
            running = serve(loose)
            async with Client(running.url) as client:
                task_id = (await client.task.create("asker", said("go"))).result["task"]["taskId"]
                await wait_until_status(client, task_id, "INPUT_REQUIRED")
                for url in (receiver.url, by_name):
                    await client.task.subscribe("asker", task_id, url, events=["TASK_COMPLETED"])
            running = serve(strict)
            async with Client(running.url) as client:
                await client.task.send("asker", task_id, said("this one"))
                await wait_until_status(client, task_id, "COMPLETED")
            await wait_until(lambda: deliveries(running)["failed"] == 2, "both deliveries refused")
            return receiver

    assert run(scenario()).requests == []


async def wait_until_status(client: Client, task_id: str, status: str) -> None:
    deadline = time.monotonic() + 10
    while await status_of(client, "asker", task_id) != status:
        assert time.monotonic() < deadline, f"task never {status}"
        await asyncio.sleep(0.01)


def test_task_notification_is_accepted_checked_and_handed_to_the_agent_s_handler(serve):
    heard: list[tuple[str, str]] = []

    class Listener(Agent):
        agent_id = "listener"

        def task_notification(self, params, context):
            heard.append((params["taskId"], params["event"]))

    server = Server(server_id="notify")
    server.add_agent(Asker)
    server.add_agent(Listener)
    running = serve(server)

    async def notify() -> tuple[dict, dict, ARCError]:
        async with Client(running.url) as client:
            args = ("t-1", "TASK_COMPLETED", "2026-01-01T00:00:00Z", {"status": "COMPLETED"})
            to_listener = await client.task.notification("listener", *args)
            to_asker = await client.task.notification("asker", *args)
            with pytest.raises(ARCError) as unknown:
                await client.task.notification("asker", "t-1", "TASK_EXPLODED", "2026-01-01T00:00:00Z", {})
            return to_listener.result, to_asker.result, unknown.value

    to_listener, to_asker, unknown = run(notify())
    assert to_listener == to_asker == {"success": True}
    assert heard == [("t-1", "TASK_COMPLETED")]
    assert (unknown.code, unknown.details) == (-32602, {"event": "TASK_EXPLODED"})


def test_the_docs_quote_the_receiver_example_that_the_tests_run():
    page = (ROOT / "docs" / "webhooks.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", page, re.S)
    assert (ROOT / "examples" / "webhook_receiver.py").read_text() in blocks


def test_a_delivery_body_is_the_exact_json_that_is_signed():
    body = json.dumps({"event": "TASK_COMPLETED"}).encode()
    assert receiver_example.signature_ok(SECRET.encode(), body, sign(SECRET, body))
    assert not receiver_example.signature_ok(SECRET.encode(), body + b" ", sign(SECRET, body))


def test_a_task_and_its_subscription_survive_a_restart_of_the_server_process_on_the_same_sqlite_file(tmp_path, stopper):
    env = {"ARC_STATE_PATH": str(tmp_path / "state.db"), "ARC_WEBHOOK_SECRET": SECRET}
    events = ["TASK_RESUMED", "NEW_ARTIFACT", "TASK_COMPLETED"]

    def task_call(port: int, method: str, **params) -> dict:
        return arc_post(port, envelope("report-agent", method, params))

    def wait_for_status(port: int, task_id: str, status: str) -> dict:
        deadline = time.monotonic() + 10
        while (task := task_call(port, "task.info", taskId=task_id)["result"]["task"])["status"] != status:
            assert time.monotonic() < deadline, f"task never {status}"
            time.sleep(0.02)
        return task

    def first_life(url: str) -> tuple[dict, dict]:
        with serving_process(stopper, env) as port:
            created = task_call(port, "task.create", initialMessage=said("quarterly report"))["result"]["task"]
            asked = wait_for_status(port, created["taskId"], "INPUT_REQUIRED")
            subscribed = task_call(port, "task.subscribe", taskId=created["taskId"], callbackUrl=url, events=events)
        return asked, subscribed["result"]["subscription"]

    def second_life(task_id: str, receiver: Receiver) -> tuple[dict, dict]:
        with serving_process(stopper, env) as port:
            restored = task_call(port, "task.info", taskId=task_id)["result"]["task"]
            task_call(port, "task.send", taskId=task_id, message=said("2026-Q1"))
            completed = wait_for_status(port, task_id, "COMPLETED")
            deadline = time.monotonic() + 10
            while len(receiver.requests) < len(events):
                assert time.monotonic() < deadline, "deliveries never arrived"
                time.sleep(0.02)
        return restored, completed

    async def lives() -> tuple[dict, dict, dict, dict, Receiver]:
        async with Receiver() as receiver:
            asked, subscription = await asyncio.to_thread(first_life, receiver.url)
            restored, completed = await asyncio.to_thread(second_life, asked["taskId"], receiver)
        return asked, subscription, restored, completed, receiver

    asked, subscription, restored, completed, receiver = run(lives())
    assert restored == asked
    assert restored["messages"][-1]["parts"][0]["content"].startswith("Which quarter")
    assert (completed["createdAt"], completed["progress"]) == (asked["createdAt"], 1.0)
    assert [artifact["name"] for artifact in completed["artifacts"]] == ["report-2026-Q1"]
    assert completed["messages"][-1]["parts"][0]["content"] == "Report for 2026-Q1 ready."
    assert sorted(receiver.events) == sorted(events)
    for headers, body in receiver.requests:
        assert receiver_example.signature_ok(SECRET.encode(), body, headers["X-ARC-Signature"])
        assert json.loads(body)["subscriptionId"] == subscription["subscriptionId"]

"""Agents that wait: ``async def`` handlers interleave at their awaits on one agent instance, up to
``max_in_flight``; one conversation (chat or task) at a time; nothing lost or answered twice when a request
among those in flight crashes or hangs; a caller that gives up cancels its handler. On either engine."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter

import aiohttp
import pytest
from conftest import envelope, post, run

from arc_actors import Agent, Client, RestartPolicy, Server, handles

pytestmark = pytest.mark.usefixtures("engine")


class Waiter(Agent):
    """Awaits as an LLM call would, and keeps on ``self`` what a test needs to see of its requests."""

    agent_id = "waiter"
    restart_policy = RestartPolicy(hang_after_s=1.5, backoff_initial_s=0.01, backoff_jitter=0)

    def on_start(self):
        self.running = 0
        self.most = 0
        self.spans: list[tuple[str, float, float]] = []
        self.cancelled: list[str] = []

    @handles("work.wait")
    async def wait(self, params, context):
        self.running += 1
        self.most = max(self.most, self.running)
        started = time.monotonic()
        try:
            if params.get("crash"):
                raise RuntimeError("crashed among others")
            if params.get("block"):
                time.sleep(params["block"])  # holds the loop: every request awaiting on it waits too
            await asyncio.sleep(params.get("seconds", 0.1))
        except asyncio.CancelledError:
            self.cancelled.append(params.get("name", "?"))
            raise
        finally:
            self.running -= 1
        self.spans.append((params.get("chatId", ""), started, time.monotonic()))
        return {"name": params.get("name")}

    @handles("stats.get")
    def stats(self, params, context):
        return {"most": self.most, "spans": self.spans, "cancelled": self.cancelled}


def waiter_server(server_id: str, **options) -> Server:
    server = Server(server_id=server_id, request_timeout_s=options.pop("request_timeout_s", None))
    server.add_agent(Waiter, **options)
    return server


async def post_all(url: str, bodies: list[dict]) -> list[dict]:
    async with aiohttp.ClientSession() as session:

        async def one(body: dict) -> dict:
            async with session.post(url, json=body) as reply:
                return await reply.json(content_type=None)

        return await asyncio.gather(*(one(body) for body in bodies))


def stats(url: str) -> dict:
    return run(post(url, envelope("waiter", "stats.get")))["result"]


def test_sixty_four_waiting_requests_run_at_once_on_one_agent_instance(serve):
    url = serve(waiter_server("interleaved")).url
    bodies = [envelope("waiter", "work.wait", {"seconds": 0.2, "name": str(i)}, id=i) for i in range(64)]
    started = time.monotonic()
    answers = run(post_all(url, bodies))
    elapsed = time.monotonic() - started
    assert sorted(answer["result"]["name"] for answer in answers) == sorted(str(i) for i in range(64))
    assert stats(url)["most"] >= 32  # one at a time, they would take 12.8 s
    assert elapsed < 6.4, elapsed


def test_one_chat_at_a_time_while_two_chats_interleave(serve):
    url = serve(waiter_server("conversations")).url
    bodies = [
        envelope("waiter", "work.wait", {"chatId": chat, "seconds": 0.1, "name": f"{chat}-{n}"}, id=f"{chat}-{n}")
        for n in range(4)
        for chat in ("chat-a", "chat-b")
    ]
    answers = run(post_all(url, bodies))
    assert all(answer["error"] is None for answer in answers)
    spans = stats(url)["spans"]
    by_chat = {
        chat: sorted((start, end) for name, start, end in spans if name == chat) for chat in ("chat-a", "chat-b")
    }
    for chat, chat_spans in by_chat.items():
        assert len(chat_spans) == 4
        assert all(end <= next_start for (_, end), (next_start, _) in itertools.pairwise(chat_spans)), chat
    first_a, first_b = by_chat["chat-a"][0], by_chat["chat-b"][0]
    assert first_a[0] < first_b[1] and first_b[0] < first_a[1]  # the two chats overlapped


def test_max_in_flight_one_serves_one_request_at_a_time_awaits_included(serve):
    url = serve(waiter_server("strict", max_in_flight=1)).url
    answers = run(post_all(url, [envelope("waiter", "work.wait", {"seconds": 0.05}, id=i) for i in range(6)]))
    assert all(answer["error"] is None for answer in answers)
    assert stats(url)["most"] == 1


def test_a_crash_among_requests_in_flight_loses_none_and_answers_none_twice(serve):
    url = serve(waiter_server("crash-among")).url
    bodies = [envelope("waiter", "work.wait", {"seconds": 0.3, "name": str(i)}, id=i) for i in range(10)]
    crashing = envelope("waiter", "work.wait", {"crash": True, "name": "crash"}, id="crash")

    async def scenario() -> tuple[list[dict], dict]:
        waiting = asyncio.ensure_future(post_all(url, bodies))
        await asyncio.sleep(0.1)  # all ten await on the instance
        crashed = await post(url, crashing)
        return [*(await waiting), crashed], await Client(url).health()

    answers, health = run(scenario())
    codes = Counter(answer["error"]["code"] if answer["error"] else "ok" for answer in answers)
    assert sorted(str(answer["id"]) for answer in answers) == sorted([*map(str, range(10)), "crash"])
    assert codes == {"ok": 10, -32603: 1}  # the ten finished on the old instance
    assert health["agents"]["waiter"]["restarts"] == 1
    assert run(post(url, envelope("waiter", "work.wait", {"seconds": 0}, id="after")))["error"] is None


def test_a_request_awaiting_past_its_hang_threshold_is_answered_and_its_task_cancelled(serve):
    url = serve(waiter_server("cut")).url
    bodies = [
        envelope("waiter", "work.wait", {"seconds": 30, "name": "stuck"}, id="stuck"),
        *(envelope("waiter", "work.wait", {"seconds": 0.2, "name": str(i)}, id=i) for i in range(5)),
    ]
    answers = {str(answer["id"]): answer for answer in run(post_all(url, bodies))}
    assert answers["stuck"]["error"]["code"] == -41006
    assert all(answers[str(i)]["error"] is None for i in range(5))
    assert stats(url)["cancelled"] == ["stuck"]


def test_a_blocked_loop_answers_what_ran_on_it_and_the_next_instance_serves_the_rest(serve):
    url = serve(waiter_server("blocked")).url

    async def scenario() -> tuple[list[dict], dict]:
        waiting = asyncio.ensure_future(
            post_all(url, [envelope("waiter", "work.wait", {"seconds": 5, "name": str(i)}, id=i) for i in range(3)])
        )
        await asyncio.sleep(0.2)
        blocking = await post(url, envelope("waiter", "work.wait", {"block": 3, "name": "block"}, id="block"))
        after = await post(url, envelope("waiter", "work.wait", {"seconds": 0}, id="after"))
        return [*(await waiting), blocking, after], await Client(url).health()

    answers, health = run(scenario())
    codes = {str(answer["id"]): answer["error"]["code"] if answer["error"] else "ok" for answer in answers}
    assert codes == {"0": -41006, "1": -41006, "2": -41006, "block": -41006, "after": "ok"}
    assert health["agents"]["waiter"]["restarts"] == 1


def test_a_caller_that_gives_up_cancels_the_handler_it_was_waiting_for(serve):
    url = serve(waiter_server("gives-up", request_timeout_s=0.3)).url
    answer = run(post(url, envelope("waiter", "work.wait", {"seconds": 5, "name": "abandoned"})))
    assert answer["error"]["code"] == -41006
    deadline = time.monotonic() + 5
    while stats(url)["cancelled"] != ["abandoned"]:
        assert time.monotonic() < deadline, stats(url)
        time.sleep(0.05)


class Holder(Agent):
    """Blocks its loop (a sync sleep inside ``async def``): requests handed to it meanwhile wait behind it."""

    agent_id = "holder"

    def on_start(self):
        self.ran: list[str] = []

    @handles("work.hold")
    async def hold(self, params, context):
        return self.hold_sync(params, context)

    @handles("work.hold_sync")
    def hold_sync(self, params, context):  # a def handler: its end hands the instance its chat's next one
        self.ran.append(params["name"])
        time.sleep(params.get("seconds", 0))
        return params["name"]

    @handles("ran.get")
    def ran_get(self, params, context):
        return self.ran


def test_a_request_answered_by_its_timeout_before_its_turn_never_runs(serve):
    server = Server(server_id="never-runs", request_timeout_s=0.5)
    server.add_agent(Holder)
    url = serve(server).url

    async def scenario() -> tuple[dict, dict, list]:
        hold = {"name": "a", "seconds": 1.0}  # past its own timeout: answered -41006, its thread held on
        holding = asyncio.ensure_future(post(url, envelope("holder", "work.hold", hold, id=1)))
        await asyncio.sleep(0.1)
        late = await post(url, envelope("holder", "work.hold", {"name": "b"}, id=2))  # handed, then timed out
        await asyncio.sleep(0.6)  # the thread is free again: b reaches it, answered already
        return await holding, late, (await post(url, envelope("holder", "ran.get")))["result"]

    held, late, ran = run(scenario())
    assert held["error"]["code"] == -41006
    assert late["error"]["code"] == -41006
    assert ran == ["a"]


def test_a_loop_blocked_after_it_went_idle_is_still_caught_by_the_watchdog(serve):
    url = serve(waiter_server("idle-then-blocked")).url

    async def scenario() -> tuple[dict, dict, dict]:
        await post(url, envelope("waiter", "work.wait", {"seconds": 0.05}, id="warm"))
        await asyncio.sleep(0.3)  # the instance's loop has gone idle
        blocked = await post(url, envelope("waiter", "work.wait", {"block": 3}, id="block"))
        after = await post(url, envelope("waiter", "work.wait", {"seconds": 0}, id="after"))
        return blocked, after, await Client(url).health()

    blocked, after, health = run(scenario())
    assert blocked["error"]["code"] == -41006
    assert after["error"] is None
    assert health["agents"]["waiter"]["restarts"] == 1


def test_requests_in_flight_when_a_failed_agent_is_restarted_by_hand_are_answered(serve):
    server = waiter_server("restarted", policy=RestartPolicy(max_restarts=0))
    url = serve(server).url

    async def scenario() -> tuple[dict, dict, dict]:
        waiting = asyncio.ensure_future(post(url, envelope("waiter", "work.wait", {"seconds": 3}, id="long")))
        await asyncio.sleep(0.2)
        crashed = await post(url, envelope("waiter", "work.wait", {"crash": True}, id="crash"))
        await asyncio.to_thread(server.restart_agent, "waiter")
        return crashed, await asyncio.wait_for(waiting, 2), await post(url, envelope("waiter", "stats.get"))

    crashed, long, after = run(scenario())
    assert crashed["error"]["code"] == -32603
    assert long["error"]["code"] == -41002  # answered at the restart, not lost with the old instance
    assert after["error"] is None


def test_hundreds_of_queued_messages_of_one_chat_are_all_served_one_after_the_other(serve):
    server = Server(server_id="one-chat-flood")
    server.add_agent(Holder)
    url = serve(server).url
    count = 600
    bodies = [envelope("holder", "work.hold_sync", {"name": str(i), "chatId": "one-chat"}, id=i) for i in range(count)]

    async def scenario() -> tuple[list[dict], list]:
        first = asyncio.ensure_future(post(url, {**bodies[0], "params": {**bodies[0]["params"], "seconds": 2}}))
        await asyncio.sleep(0.1)  # the rest queue behind it, one conversation
        rest = await post_all(url, bodies[1:])
        return [await first, *rest], (await post(url, envelope("holder", "ran.get")))["result"]

    answers, ran = run(scenario())
    assert [answer["result"] for answer in answers] == [str(i) for i in range(count)]
    assert ran[0] == "0" and sorted(ran, key=int) == [str(i) for i in range(count)]  # each once, in arrival order


class Asyncio(Agent):
    """Uses what any asyncio code may: its task, timeouts, and an async generator it leaves half read."""

    agent_id = "asyncio-agent"

    @handles("asyncio.check")
    async def check(self, params, context):
        async def ticks():
            while True:
                await asyncio.sleep(0.001)
                yield "tick"

        first = await anext(ticks())  # left half read: its loop closes it
        try:
            async with asyncio.timeout(0.05):
                await asyncio.sleep(5)
            timed_out = False
        except TimeoutError:
            timed_out = True
        return {"task": asyncio.current_task() is not None, "timedOut": timed_out, "first": first}


def test_an_async_handler_runs_as_a_task_with_timeouts_and_async_generators_working(serve):
    server = Server(server_id="asyncio")
    server.add_agent(Asyncio)
    url = serve(server).url
    answers = run(post_all(url, [envelope("asyncio-agent", "asyncio.check", id=i) for i in range(3)]))
    assert [answer["result"] for answer in answers] == [{"task": True, "timedOut": True, "first": "tick"}] * 3


class Quick(Agent):
    """Awaits 50 ms: with a latency fault of 200 ms in its thread before each request, as
    ``--fault quick:latency=1:200ms`` strikes it."""

    agent_id = "quick"
    restart_policy = RestartPolicy(hang_after_s=1)

    @handles("work.wait")
    async def wait(self, params, context):
        await asyncio.sleep(0.05)
        return {"n": params["n"]}


def test_requests_that_each_hold_the_thread_briefly_are_not_a_hang_however_many_arrive_at_once(serve):
    # Eight at once hold the thread 1.6 s in all, each 0.2 s: the awaits already under way end between
    # two of them, so no request runs past 1 s (before: the later ones were answered -41006, and the
    # agent was restarted for a thread that was never stuck).
    server = Server(server_id="held")
    server.add_agent(Quick)
    server.faults.arm("quick:latency=1:200ms")
    url = serve(server).url
    answers = run(post_all(url, [envelope("quick", "work.wait", {"n": n}, id=n) for n in range(8)]))
    health = run(Client(url).health())
    assert [answer.get("result") for answer in answers] == [{"n": n} for n in range(8)]
    assert health["agents"]["quick"]["restarts"] == 0

"""SSE streaming: chat.start/chat.message with ``stream: true``, from async generator handlers, on either engine."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import aiohttp
import pytest
from conftest import envelope, post, run

from arc_actors import Agent, Client, RestartPolicy, Server, handles

pytestmark = pytest.mark.usefixtures("engine")
GATEWAY_ONLY = "the gateway's framing of a stream, the same code whatever runs the agent"


def said(text: str) -> dict:
    return {"role": "user", "parts": [{"type": "TextPart", "content": text}]}


def delta(chat_id: str, text: str) -> str:
    message = {"role": "agent", "parts": [{"type": "TextPart", "content": text}]}
    return "event: stream\ndata: " + json.dumps({"chatId": chat_id, "message": message}, separators=(",", ":")) + "\n\n"


def done(chat_id: str, status: str = "ACTIVE", request_id: str = "req-1") -> str:
    data = {"chatId": chat_id, "status": status, "done": True, "requestId": request_id}
    return "event: done\ndata: " + json.dumps(data, separators=(",", ":")) + "\n\n"


def stream_request(method: str, params: dict) -> str:
    return json.dumps(envelope("streamer", method, {**params, "stream": True}))


async def stream_raw(url: str, method: str, params: dict) -> tuple[int, dict, str]:
    async with aiohttp.ClientSession() as session, session.post(url, data=stream_request(method, params)) as reply:
        return reply.status, dict(reply.headers), (await reply.read()).decode()


class Streamer(Agent):
    """Streams its reply word by word; chat.message (not a generator) tells what the history holds."""

    agent_id = "streamer"
    finished = threading.Event()
    yielded: list[str] = []

    async def chat_start(self, params, context):
        text = context.chat.messages[-1]["parts"][0]["content"]
        if text == "crash":
            yield "partial"
            raise RuntimeError("broke mid-stream")
        if text == "slow":
            yield "a"
            await asyncio.sleep(1.0)
            yield "b"
            return
        if text == "hang":
            yield "stuck"
            time.sleep(3.0)  # blocks the agent's thread: only the watchdog gets the caller an answer
            yield "never sent"
            return
        if text == "endless":
            try:
                for _ in range(200):
                    Streamer.yielded.append(".")
                    yield "."
                    await asyncio.sleep(0.05)
            finally:
                Streamer.finished.set()
            return
        for word in ("Hel", "lo", " world"):
            yield word

    def chat_message(self, params, context):
        return " | ".join(message["parts"][0]["content"] for message in context.chat.messages)

    @handles("stream.seen")
    def seen(self, params, context):
        """What the endless generator did, read where it ran."""
        return {"yielded": len(Streamer.yielded), "finished": Streamer.finished.is_set()}


@pytest.fixture
def streamer_url(serve):
    Streamer.finished.clear()
    Streamer.yielded.clear()
    server = Server(server_id="streams", stream_keepalive_s=0.2)
    server.add_agent(Streamer)
    return serve(server).url


def test_a_streamed_chat_start_answers_exact_sse_frames_and_the_chat_records_the_whole_reply(streamer_url):
    async def exchange() -> tuple[int, dict, str, dict]:
        answer = await stream_raw(streamer_url, "chat.start", {"chatId": "chat-s1", "initialMessage": said("hi")})
        history = await post(
            streamer_url, envelope("streamer", "chat.message", {"chatId": "chat-s1", "message": said("next")})
        )
        return (*answer, history)

    status, headers, body, history = run(exchange())
    assert status == 200
    assert headers["Content-Type"] == "text/event-stream"
    assert headers["Cache-Control"] == "no-cache"
    assert body == delta("chat-s1", "Hel") + delta("chat-s1", "lo") + delta("chat-s1", " world") + done("chat-s1")
    assert history["result"]["chat"]["message"]["parts"][0]["content"] == "hi | Hello world | next"


@pytest.mark.pykka_only(GATEWAY_ONLY)
def test_a_streamed_chat_start_without_chat_id_names_the_generated_one_in_every_frame(streamer_url):
    status, _, body = run(stream_raw(streamer_url, "chat.start", {"initialMessage": said("hi")}))
    frames = [frame for frame in body.split("\n\n") if frame]
    chat_ids = {json.loads(frame.split("data: ", 1)[1])["chatId"] for frame in frames}
    assert status == 200
    assert len(frames) == 4
    assert len(chat_ids) == 1
    assert chat_ids.pop().startswith("chat-")


def test_a_silent_stream_sends_keep_alive_comments_between_its_frames(streamer_url):
    _, _, body = run(stream_raw(streamer_url, "chat.start", {"chatId": "chat-slow", "initialMessage": said("slow")}))
    frames = [frame for frame in body.split("\n\n") if frame]
    keepalives = frames[1:-2]
    assert frames[0] + "\n\n" == delta("chat-slow", "a")
    assert frames[-2:] == [delta("chat-slow", "b").strip("\n"), done("chat-slow").strip("\n")]
    assert len(keepalives) >= 2
    assert set(keepalives) == {": keep-alive"}


def test_a_crash_mid_stream_ends_it_with_an_error_then_done_and_the_agent_is_restarted(streamer_url):
    async def crash_then_serve() -> tuple[str, dict, str]:
        _, _, crashed = await stream_raw(
            streamer_url, "chat.start", {"chatId": "chat-c", "initialMessage": said("crash")}
        )
        health = await Client(streamer_url).health()
        _, _, after = await stream_raw(streamer_url, "chat.start", {"chatId": "chat-d", "initialMessage": said("hi")})
        return crashed, health, after

    crashed, health, after = run(crash_then_serve())
    frames = [frame for frame in crashed.split("\n\n") if frame]
    assert len(frames) == 3
    assert frames[0] + "\n\n" == delta("chat-c", "partial")
    error = frames[1].split("\n")
    assert error[0] == "event: error"
    assert json.loads(error[1].removeprefix("data: ")) == {
        "chatId": "chat-c",
        "error": {"code": -32603, "message": "Internal error"},  # the crash's details stay in the log
    }
    assert frames[2] + "\n\n" == done("chat-c", "ERROR")
    assert health["agents"]["streamer"]["restarts"] == 1
    assert after.endswith(done("chat-d"))
    assert after.count("event: stream") == 3


def test_a_hang_mid_stream_is_answered_by_the_watchdog_with_an_error_then_done(serve):
    server = Server(server_id="hangs", restart_policy=RestartPolicy(hang_after_s=0.5, backoff_initial_s=0.0))
    server.add_agent(Streamer)
    url = serve(server).url

    async def hang_then_serve() -> tuple[str, dict, str]:
        _, _, hung = await stream_raw(url, "chat.start", {"chatId": "chat-h", "initialMessage": said("hang")})
        health = await Client(url).health()
        _, _, after = await stream_raw(url, "chat.start", {"chatId": "chat-i", "initialMessage": said("hi")})
        return hung, health, after

    hung, health, after = run(hang_then_serve())
    frames = [frame for frame in hung.split("\n\n") if frame]
    assert len(frames) == 3
    assert frames[0] + "\n\n" == delta("chat-h", "stuck")
    assert json.loads(frames[1].split("data: ", 1)[1])["error"]["code"] == -41006
    assert frames[2] + "\n\n" == done("chat-h", "ERROR")
    assert health["agents"]["streamer"]["restarts"] == 1
    assert after.count("event: stream") == 3
    assert after.endswith(done("chat-i"))


def test_a_client_that_disconnects_cancels_the_generator_and_frees_the_agent(streamer_url):
    async def read_one_frame_and_leave() -> tuple[dict, dict]:
        async with aiohttp.ClientSession() as session:
            body = stream_request("chat.start", {"chatId": "chat-e", "initialMessage": said("endless")})
            async with session.post(streamer_url, data=body) as reply:
                await reply.content.readuntil(b"\n\n")
                reply.close()
        deadline = time.monotonic() + 10
        while not (seen := (await post(streamer_url, envelope("streamer", "stream.seen")))["result"])["finished"]:
            assert time.monotonic() < deadline, seen
            await asyncio.sleep(0.02)
        answer = await post(
            streamer_url, envelope("streamer", "chat.message", {"chatId": "chat-x", "message": said("?")})
        )
        return seen, answer

    seen, answer = run(read_one_frame_and_leave())
    assert 1 <= seen["yielded"] < 200
    assert answer["error"]["code"] == -43001  # the agent answered: the cancelled chat.start recorded nothing


@pytest.mark.pykka_only(GATEWAY_ONLY)
def test_a_handler_that_does_not_stream_answers_one_stream_frame_of_its_whole_reply(streamer_url):
    async def exchange() -> list[dict]:
        async with Client(streamer_url) as client:
            await client.chat.start("streamer", said("hi"), chat_id="chat-n")
            events = await client.chat.message("streamer", "chat-n", said("more"), stream=True)
            return [event async for event in events]

    events = run(exchange())
    assert [event["event"] for event in events] == ["stream", "done"]
    assert events[0]["data"]["message"]["parts"][0]["content"] == "hi | Hello world | more"
    assert events[1]["data"]["status"] == "ACTIVE"


@pytest.mark.pykka_only(GATEWAY_ONLY)
def test_our_client_reads_a_stream_as_an_async_iterator_of_events(streamer_url):
    async def exchange() -> list[dict]:
        async with Client(streamer_url) as client:
            events = await client.chat.start("streamer", said("hi"), chat_id="chat-o", stream=True)
            return [event async for event in events]

    events = run(exchange())
    assert [event["event"] for event in events] == ["stream", "stream", "stream", "done"]
    assert "".join(event["data"]["message"]["parts"][0]["content"] for event in events[:3]) == "Hello world"
    assert events[3]["data"]["chatId"] == "chat-o"
    assert events[3]["data"]["done"] is True


@pytest.mark.pykka_only(GATEWAY_ONLY)
def test_our_client_reads_an_unknown_chat_as_an_error_event_then_done(streamer_url):
    async def exchange() -> list[dict]:
        async with Client(streamer_url) as client:
            events = await client.chat.message("streamer", "chat-none", said("?"), stream=True)
            return [event async for event in events]

    events = run(exchange())
    assert [event["event"] for event in events] == ["error", "done"]
    assert events[0]["data"]["error"]["code"] == -43001
    assert events[1]["data"] == {
        "chatId": "chat-none",
        "status": "ERROR",
        "done": True,
        "requestId": events[1]["data"]["requestId"],
    }


@pytest.mark.pykka_only(GATEWAY_ONLY)
def test_the_reference_client_reads_our_stream(streamer_url):
    arc = pytest.importorskip("arc", reason="arc-sdk is a test dependency: pip install '.[test]'")

    async def exchange() -> list[dict]:
        async with arc.Client(streamer_url, use_quantum_safe=False) as client:
            events = await client.chat.start(target_agent="streamer", initial_message=said("hi"), stream=True)
            return [event async for event in events]

    events = run(exchange())
    assert [event["event"] for event in events] == ["stream", "stream", "stream", "done"]
    assert "".join(event["data"]["message"]["parts"][0]["content"] for event in events[:3]) == "Hello world"
    assert events[3]["data"]["status"] == "ACTIVE"


@pytest.mark.pykka_only("a server that is made, not served: no engine runs")
def test_a_keep_alive_interval_that_is_not_positive_is_refused_when_the_server_is_made():
    with pytest.raises(ValueError, match="stream_keepalive_s must be > 0, got 0"):
        Server(stream_keepalive_s=0)


class OwnChats(Agent):
    """Keeps its own chats: names its chat itself and answers the full result."""

    agent_id = "streamer"
    managed_chats = False

    def chat_start(self, params, context):
        message = {"role": "agent", "parts": [{"type": "TextPart", "content": f"given {params.get('chatId')}"}]}
        return {"type": "chat", "chat": {"chatId": "own-7", "status": "ACTIVE", "message": message}}


@pytest.mark.pykka_only(GATEWAY_ONLY)
def test_a_streamed_chat_start_of_an_agent_keeping_its_own_chats_names_the_chat_its_result_names(serve):
    server = Server(server_id="own")
    server.add_agent(OwnChats)
    url = serve(server).url

    status, _, body = run(stream_raw(url, "chat.start", {"initialMessage": said("hi")}))
    assert status == 200
    assert body == delta("own-7", "given None") + done("own-7")  # no chatId made up for it, none given to it


class OwnChatsStreamer(Agent):
    """Keeps its own chats: its async generators reach no chat layer, only the agent's cell."""

    agent_id = "streamer"
    managed_chats = False

    async def chat_start(self, params, context):
        for word in ("a", "b"):
            await asyncio.sleep(0)
            yield word

    @handles("words.join")
    async def words(self, params, context):
        yield "x"
        yield "y"


def test_an_async_generator_of_an_agent_keeping_its_own_chats_is_streamed_or_joined_not_a_crash(serve):
    server = Server(server_id="own-streams")
    server.add_agent(OwnChatsStreamer)
    url = serve(server).url

    async def exchange() -> tuple[dict, dict, str, dict]:
        joined = await post(url, envelope("streamer", "chat.start", {"chatId": "own-1", "initialMessage": said("hi")}))
        custom = await post(url, envelope("streamer", "words.join"))
        _, _, body = await stream_raw(url, "chat.start", {"chatId": "own-2", "initialMessage": said("hi")})
        return joined, custom, body, await Client(url).health()

    joined, custom, body, health = run(exchange())
    assert (joined["error"], joined["result"]) == (None, "ab")
    assert (custom["error"], custom["result"]) == (None, "xy")
    assert body == delta("own-2", "a") + delta("own-2", "b") + done("own-2")
    assert health["agents"]["streamer"]["restarts"] == 0

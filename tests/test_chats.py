"""Managed chats: the runtime owns ids, status, timestamps and history, kept in a store."""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
import sqlite3
import threading
import time
from datetime import UTC, datetime, timedelta
from functools import partial

import msgspec
import pytest
from conftest import arc_post, envelope, post, run, serving_process

from arc_actors import Agent, ARCError, Client, Server
from arc_actors.chats import Chat
from arc_actors.config import ConfigError, load_settings
from arc_actors.store import MemoryStore, ServingStore, SQLiteStore, utc_now


def said(text: str) -> dict:
    return {"role": "user", "parts": [{"type": "TextPart", "content": text}]}


def texts(chat: Chat) -> list[str]:
    return [message["parts"][0]["content"] for message in chat.messages]


class Counter(Agent):
    """Replies with just a string, telling what it saw of the chat's history."""

    agent_id = "counter"

    def on_start(self) -> None:
        self.prefix = "seen"

    def chat_start(self, params, context):
        return f"{self.prefix} {len(context.chat.messages)}: {texts(context.chat)[-1]}"

    async def chat_message(self, params, context):
        return f"{self.prefix} {len(context.chat.messages)}: {' | '.join(texts(context.chat))}"


def test_a_chat_lives_from_start_through_messages_to_end_and_is_then_closed(serve):
    server = Server(server_id="chats")
    server.add_agent(Counter)
    url = serve(server).url

    async def life() -> tuple[list, ARCError, ARCError, ARCError]:
        async with Client(url, request_agent="me") as client:
            started = (await client.chat.start("counter", said("hi"))).result
            chat_id = started["chat"]["chatId"]
            first = (await client.chat.message("counter", chat_id, said("one"))).result
            second = (await client.chat.message("counter", chat_id, said("two"))).result
            ended = (await client.chat.end("counter", chat_id, reason="done")).result
            errors = []
            for call in (
                client.chat.message("counter", chat_id, said("late")),
                client.chat.end("counter", chat_id),
                client.chat.message("counter", "chat-nope", said("?")),
            ):
                with pytest.raises(ARCError) as raised:
                    await call
                errors.append(raised.value)
            return [started, first, second, ended], *errors

    (started, first, second, ended), late, ended_twice, unknown = run(life())
    chat_id = started["chat"]["chatId"]
    assert chat_id.startswith("chat-")
    assert started["type"] == "chat"
    assert started["chat"]["status"] == "ACTIVE"
    assert started["chat"]["message"] == {"role": "agent", "parts": [{"type": "TextPart", "content": "seen 1: hi"}]}
    assert started["chat"]["participants"] == ["me", "counter"]
    assert started["chat"]["createdAt"].endswith("Z")
    assert first["chat"]["message"]["parts"][0]["content"] == "seen 3: hi | seen 1: hi | one"
    assert (
        second["chat"]["message"]["parts"][0]["content"]
        == "seen 5: hi | seen 1: hi | one | seen 3: hi | seen 1: hi | one | two"
    )
    assert second["chat"]["createdAt"] == started["chat"]["createdAt"] <= second["chat"]["updatedAt"]
    assert ended["chat"]["chatId"] == chat_id
    assert (ended["chat"]["status"], ended["chat"]["reason"]) == ("CLOSED", "done")
    assert ended["chat"]["closedAt"] == ended["chat"]["updatedAt"]
    assert "message" not in ended["chat"]
    assert (late.code, late.details) == (-43002, {"chatId": chat_id, "closedAt": ended["chat"]["closedAt"]})
    assert (ended_twice.code, ended_twice.details["chatId"]) == (-43002, chat_id)
    assert (unknown.code, unknown.message, unknown.details) == (
        -43001,
        "Chat not found: chat-nope",
        {"chatId": "chat-nope"},
    )


def test_chat_end_is_answered_by_the_runtime_and_listed_for_an_agent_with_chat_start(serve):
    server = Server(server_id="chats")
    server.add_agent(Counter)
    running = serve(server)

    async def info() -> dict:
        async with Client(running.url) as client:
            return await client.agent_info()

    assert run(info())["registeredAgents"]["counter"]["supportedMethods"] == ["chat.end", "chat.message", "chat.start"]


def test_a_handler_may_reply_with_a_message_a_list_of_parts_or_nothing(serve):
    replies = iter(
        [
            {"parts": [{"type": "DataPart", "content": {"n": 1}}]},
            ["plain", {"type": "DataPart", "content": {"n": 2}}],
            None,
        ]
    )
    server = Server(server_id="forms")
    server.agent_handler("forms", "chat.start")(lambda params, context: "hello")
    server.agent_handler("forms", "chat.message")(lambda params, context: next(replies))
    url = serve(server).url

    async def talk() -> list[dict]:
        async with Client(url) as client:
            chat_id = (await client.chat.start("forms", said("hi"), chat_id="mine")).result["chat"]["chatId"]
            return [(await client.chat.message("forms", chat_id, said(str(n)))).result["chat"] for n in range(3)]

    message, parts, nothing = run(talk())
    assert message["chatId"] == "mine"
    assert message["message"] == {"role": "agent", "parts": [{"type": "DataPart", "content": {"n": 1}}]}
    assert parts["message"]["parts"] == [
        {"type": "TextPart", "content": "plain"},
        {"type": "DataPart", "content": {"n": 2}},
    ]
    assert "message" not in nothing and nothing["status"] == "ACTIVE"


def test_a_seed_style_full_result_is_passed_through_and_the_chat_recorded_under_its_chat_id(serve):
    full = {
        "type": "chat",
        "chat": {
            "chatId": "seed-7",
            "status": "ACTIVE",
            "message": {"role": "agent", "parts": [{"type": "text", "content": "ready"}]},
        },
    }
    server = Server(server_id="seed", store=(store := MemoryStore()))
    server.agent_handler("seed", "chat.start")(lambda params, context: full)
    server.agent_handler("seed", "chat.message")(lambda params, context: {"echo": params["message"]})
    url = serve(server).url

    started = run(post(url, envelope("seed", "chat.start", {"initialMessage": said("hi")})))
    replied = run(post(url, envelope("seed", "chat.message", {"chatId": "seed-7", "message": said("again")})))
    ended = run(post(url, envelope("seed", "chat.end", {"chatId": "seed-7"})))
    assert started["result"] == full
    assert replied["result"] == {"echo": said("again")}
    assert ended["result"]["chat"]["status"] == "CLOSED"
    chat = msgspec.json.decode(store.load("chat", '["seed","seed-7"]'), type=Chat)
    assert texts(chat) == ["hi", "ready", "again"]
    assert chat.status == "CLOSED"


def test_a_full_result_naming_the_callers_chat_id_again_starts_it_afresh_but_never_takes_over_anothers(serve):
    full = {"type": "chat", "chat": {"chatId": "fixed", "status": "ACTIVE"}}
    server = Server(server_id="fixed", store=(store := MemoryStore()))
    server.agent_handler("fixed", "chat.start")(lambda params, context: full)
    url = serve(server).url

    answers = [run(post(url, envelope("fixed", "chat.start", {"initialMessage": said(text)}))) for text in "ab"]
    other = run(post(url, envelope("fixed", "chat.start", {"initialMessage": said("c")}, requestAgent="intruder")))
    assert [answer["result"] for answer in answers] == [full, full]
    assert (other["error"]["code"], other["error"]["details"]) == (-32602, {"chatId": "fixed"})
    chat = msgspec.json.decode(store.load("chat", '["fixed","fixed"]'), type=Chat)
    assert (texts(chat), chat.status, chat.participants) == (["b"], "ACTIVE", ["test-client", "fixed"])


class OwnBook(Agent):
    """Keeps its own chats (as the seed's agents do) and says so: the runtime records nothing of them."""

    agent_id = "own-book"
    managed_chats = False

    def chat_start(self, params, context):
        return {"type": "chat", "chat": {"chatId": "own-1"}, "params": params, "hasChat": context.chat is not None}

    def chat_message(self, params, context):
        return {"type": "chat", "chat": {"chatId": params["chatId"], "status": "ACTIVE"}, "params": params}


def test_an_agent_with_managed_chats_off_gets_chat_requests_as_they_came_and_nothing_is_recorded(serve):
    server = Server(server_id="own", store=(store := MemoryStore()))
    server.add_agent(OwnBook)
    server.agent_handler("plain", "chat.start", managed_chats=False)(lambda params, context: "just text")
    url = serve(server).url

    started = run(post(url, envelope("own-book", "chat.start", {"initialMessage": said("hi")})))
    unknown_chat = run(post(url, envelope("own-book", "chat.message", {"chatId": "nobody", "message": said("x")})))
    end = run(post(url, envelope("own-book", "chat.end", {"chatId": "own-1"})))
    text = run(post(url, envelope("plain", "chat.start", {"initialMessage": said("hi")})))
    assert started["result"] == {
        "type": "chat",
        "chat": {"chatId": "own-1"},
        "params": {"initialMessage": said("hi")},  # no chatId given to it
        "hasChat": False,
    }
    assert unknown_chat["result"]["params"] == {"chatId": "nobody", "message": said("x")}  # no -43001
    assert end["error"]["code"] == -32601  # no chat.end of its own, and none added
    assert text["result"] == "just text"  # no reply-only answers: what the handler returns is the result
    assert store.load("chat", '["own-book","own-1"]') is None


def test_managed_chats_is_an_agent_option_in_code_and_in_config(tmp_path):
    server = Server(server_id="options")
    server.add_agent(Counter)
    server.add_agent(OwnBook, agent_id="own-book-managed", managed_chats=True)
    server.agent_handler("plain", "chat.start")(lambda params, context: "text")
    config = tmp_path / "arc_actors.toml"
    config.write_text("[agents.counter]\nmanaged_chats = false\n")
    server.configure(load_settings(config, environ={}))
    assert {spec.agent_id: spec.managed_chats for spec in server._specs()} == {
        "plain": True,
        "counter": False,
        "own-book-managed": True,
    }
    with pytest.raises(ValueError, match="managed_chats is True or False"):
        server.add_agent(OwnBook, agent_id="x", managed_chats="no")
    config.write_text("[agents.counter]\nmanaged_chats = 'no'\n")
    with pytest.raises(ConfigError, match="managed_chats"):
        server.configure(load_settings(config, environ={}))


def test_what_a_handler_does_to_context_chat_is_not_recorded(serve):
    def meddle(params, context):
        context.chat.messages[0]["parts"][0]["content"] = "MUTATED"
        context.chat.metadata["k"]["x"] = 1
        return "ok"

    server = Server(server_id="meddler", store=(store := MemoryStore()))
    server.agent_handler("meddler", "chat.start")(meddle)
    url = serve(server).url

    start = {"chatId": "m-1", "initialMessage": said("hi"), "metadata": {"k": {}}}
    assert run(post(url, envelope("meddler", "chat.start", start)))["error"] is None
    chat = msgspec.json.decode(store.load("chat", '["meddler","m-1"]'), type=Chat)
    assert (texts(chat)[0], chat.metadata) == ("hi", {"k": {}})


def test_context_chat_first_read_after_the_handler_is_the_chat_it_was_given(serve):
    kept = []

    def keep(params, context):
        kept.append(context)  # context.chat not read until after the reply is recorded
        return "the reply"

    server = Server(server_id="keeper", store=(store := MemoryStore()))
    server.agent_handler("keeper", "chat.start")(keep)
    url = serve(server).url

    assert (
        run(post(url, envelope("keeper", "chat.start", {"chatId": "k-1", "initialMessage": said("hi")})))["error"]
        is None
    )
    recorded = msgspec.json.decode(store.load("chat", '["keeper","k-1"]'), type=Chat)
    assert texts(recorded) == ["hi", "the reply"]
    assert (texts(kept[0].chat), kept[0].chat.chat_id, kept[0]["chat"] is kept[0].chat) == (["hi"], "k-1", True)


def test_chat_end_closes_the_chat_of_an_agent_without_its_own_chat_end_handler(serve, engine):
    server = Server(server_id="ender")
    server.add_agent(Counter)
    url = serve(server).url

    start = envelope("counter", "chat.start", {"chatId": "c-1", "initialMessage": said("hi")})
    assert run(post(url, start))["error"] is None
    ended = run(post(url, envelope("counter", "chat.end", {"chatId": "c-1", "reason": "done"})))
    assert ended["error"] is None, ended
    assert (ended["result"]["chat"]["status"], ended["result"]["chat"]["reason"]) == ("CLOSED", "done")


def test_what_a_handler_does_to_its_params_is_neither_in_context_chat_nor_recorded(serve):
    seen = []

    def meddle(params, context):
        params["initialMessage"]["parts"].append({"type": "text", "content": "ADDED"})
        params["metadata"]["k"] = "mutated"
        seen.append((texts(context.chat), dict(context.chat.metadata)))
        return "ok"

    server = Server(server_id="meddler", store=(store := MemoryStore()))
    server.agent_handler("meddler", "chat.start")(meddle)
    url = serve(server).url

    start = {"chatId": "m-1", "initialMessage": said("hi"), "metadata": {"k": "v"}}
    assert run(post(url, envelope("meddler", "chat.start", start)))["error"] is None
    chat = msgspec.json.decode(store.load("chat", '["meddler","m-1"]'), type=Chat)
    assert seen == [(["hi"], {"k": "v"})]
    assert (texts(chat), chat.metadata) == (["hi", "ok"], {"k": "v"})


def test_starting_a_chat_with_an_id_in_use_is_refused_and_changes_nothing(serve):
    server = Server(server_id="chats")
    server.add_agent(Counter)
    url = serve(server).url
    start_mine = envelope("counter", "chat.start", {"chatId": "c-1", "initialMessage": said("hi")})

    first = run(post(url, start_mine))
    second = run(post(url, start_mine))
    following = run(post(url, envelope("counter", "chat.message", {"chatId": "c-1", "message": said("x")})))
    assert first["result"]["chat"]["chatId"] == "c-1"
    assert second["error"] == {
        "code": -32602,
        "message": "Invalid params: chatId c-1 is already in use",
        "details": {"chatId": "c-1"},
    }
    assert following["result"]["chat"]["message"]["parts"][0]["content"] == "seen 3: hi | seen 1: hi | x"


def test_a_handler_that_raises_records_no_chat(serve):
    def refuse(params, context):
        raise ARCError(-43005, "Say something", {"chatId": params["chatId"]})

    server = Server(server_id="refuser")
    server.agent_handler("refuser", "chat.start")(refuse)
    url = serve(server).url

    refused = run(post(url, envelope("refuser", "chat.start", {"chatId": "c-9", "initialMessage": said("")})))
    after = run(post(url, envelope("refuser", "chat.end", {"chatId": "c-9"})))
    assert refused["error"]["code"] == -43005
    assert (after["error"]["code"], after["error"]["details"]) == (-43001, {"chatId": "c-9"})


def test_concurrent_messages_to_one_chat_are_all_kept(serve):
    class Slow(Agent):
        agent_id = "slow"
        concurrency = 4

        def chat_start(self, params, context):
            return "ok"

        def chat_message(self, params, context):
            time.sleep(0.01)
            return "ok"

    store = MemoryStore()
    server = Server(server_id="slow", store=store)
    server.add_agent(Slow)
    url = serve(server).url

    async def flood() -> list:
        async with Client(url) as client:
            await client.chat.start("slow", said("hi"), chat_id="c")
            return await asyncio.gather(*(client.chat.message("slow", "c", said(str(n))) for n in range(20)))

    assert len(run(flood())) == 20
    chat = msgspec.json.decode(store.load("chat", '["slow","c"]'), type=Chat)
    assert len(chat.messages) == 2 + 2 * 20
    assert sorted(text for text in texts(chat) if text.isdigit()) == sorted(str(n) for n in range(20))


def test_chat_survives_a_restart_of_the_server_process_on_the_same_sqlite_file(tmp_path, stopper):
    state = tmp_path / "state.db"
    with serving_process(stopper, {"ARC_STATE_PATH": str(state)}) as port:
        started = arc_post(
            port, envelope("hr-agent", "chat.start", {"chatId": "c-1", "initialMessage": said("salary")})
        )
    with serving_process(stopper, {"ARC_STATE_PATH": str(state)}) as port:
        replied = arc_post(port, envelope("hr-agent", "chat.message", {"chatId": "c-1", "message": said("e-7")}))
        twice = arc_post(port, envelope("hr-agent", "chat.start", {"chatId": "c-1", "initialMessage": said("x")}))
        ended = arc_post(port, envelope("hr-agent", "chat.end", {"chatId": "c-1"}))
    assert replied["result"]["chat"]["message"]["parts"][0]["content"] == "Let me check that for you: e-7"
    assert twice["error"]["code"] == -32602
    assert ended["result"]["chat"]["status"] == "CLOSED"
    assert ended["result"]["chat"]["createdAt"] == started["result"]["chat"]["createdAt"]
    store = SQLiteStore(state)
    try:
        chat = msgspec.json.decode(store.load("chat", '["hr-agent","c-1"]'), type=Chat)
    finally:
        store.close()
    assert texts(chat) == [
        "salary",
        "I can help with salary inquiries. Please provide your employee ID.",
        "e-7",
        "Let me check that for you: e-7",
    ]


def test_two_server_processes_sharing_one_sqlite_file_lose_no_message_of_one_chat(tmp_path, stopper):
    count = 300  # enough that two processes' read-modify-writes of the chat do overlap (55 lost with locks)
    state = {"ARC_STATE_PATH": str(tmp_path / "shared.db")}
    with serving_process(stopper, state) as first, serving_process(stopper, state) as second:
        arc_post(first, envelope("hr-agent", "chat.start", {"chatId": "c-1", "initialMessage": said("start")}))

        def message(n: int) -> dict:
            port = first if n % 2 else second  # every other message through the other gateway
            return arc_post(port, envelope("hr-agent", "chat.message", {"chatId": "c-1", "message": said(f"m{n}")}))

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(message, range(count)))
    assert [answer["error"] for answer in answers] == [None] * count
    store = SQLiteStore(state["ARC_STATE_PATH"])
    try:
        chat = msgspec.json.decode(store.load("chat", '["hr-agent","c-1"]'), type=Chat)
    finally:
        store.close()
    said_by_user = [text for text in texts(chat) if re.fullmatch(r"m\d+", text)]
    assert sorted(said_by_user) == sorted(f"m{n}" for n in range(count))  # each kept, once
    assert len(chat.messages) == 2 + 2 * count  # the start and its reply, then each message and its reply


@pytest.mark.parametrize("make_store", [MemoryStore, lambda path: SQLiteStore(path)], ids=["memory", "sqlite"])
def test_store_saves_replaces_and_loads_by_kind_and_key_from_many_threads(tmp_path, make_store):
    store = make_store() if make_store is MemoryStore else make_store(tmp_path / "s.db")

    def writer(n: int) -> None:
        for i in range(50):
            store.save("chat", f"{n}-{i}", b"first")
            store.save("chat", f"{n}-{i}", f"{n}-{i}".encode())

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    try:
        loaded = [store.load("chat", f"{n}-{i}") for n in range(4) for i in range(50)]
        assert loaded == [f"{n}-{i}".encode() for n in range(4) for i in range(50)]
        assert store.load("task", "0-0") is None
        assert store.load("chat", "missing") is None
    finally:
        store.close()


@pytest.mark.parametrize("kind_of_store", ["memory", "sqlite"])
def test_a_bounded_store_forgets_the_least_recently_written_records_of_a_kind(tmp_path, kind_of_store):
    path = tmp_path / "bounded.db"
    store = MemoryStore(max_records=3) if kind_of_store == "memory" else SQLiteStore(path, max_records=3)
    for key in "abc":
        store.save("chat", key, key.encode())
    store.save("chat", "a", b"a again")  # written again: now the most recent
    store.save("chat", "d", b"d")
    store.save("task", "t", b"t")  # another kind, bounded on its own
    assert [store.load("chat", key) for key in "abcd"] == [b"a again", None, b"c", b"d"]
    assert store.load("task", "t") == b"t"
    if kind_of_store == "sqlite":  # the order of writes survives a reopening
        store.close()
        store = SQLiteStore(path, max_records=3)
        store.save("chat", "e", b"e")
        assert [store.load("chat", key) for key in "acde"] == [b"a again", None, b"d", b"e"]
    store.close()


@pytest.mark.parametrize("kind_of_store", ["memory", "sqlite"])
def test_a_bounded_store_never_forgets_a_record_it_is_told_to_keep(tmp_path, kind_of_store):
    def running(kind: str, value: bytes) -> bool:
        return value.startswith(b"running")

    path = tmp_path / "kept.db"
    make = MemoryStore if kind_of_store == "memory" else partial(SQLiteStore, path)
    store = make(max_records=2, keep=running)
    store.save("task", "long", b"running")
    for key in "abcd":
        store.save("task", key, b"done")
    kept = [store.load("task", key) for key in ("long", "a", "b", "c", "d")]
    assert kept == [b"running", None, None, None, b"done"]  # the kept one still counts towards the bound
    store.save("task", "long", b"done at last")  # ended: from now on as forgettable as any
    store.save("task", "e", b"done")
    store.save("task", "f", b"done")
    assert [store.load("task", key) for key in ("long", "e", "f")] == [None, b"done", b"done"]
    store.close()


def test_a_serving_store_transaction_needs_the_store_open_and_locks_a_store_without_its_own():
    class Plain:  # a Store of one's own: load, save, close, and no transaction()
        def __init__(self) -> None:
            self.records: dict = {}

        def load(self, kind, key):
            return self.records.get((kind, key))

        def save(self, kind, key, value):
            self.records[kind, key] = value

        def close(self):
            pass

    serving = ServingStore(Plain())
    with pytest.raises(RuntimeError, match="not open"):
        serving.transaction()
    serving.open()
    taken_meanwhile: list[bool] = []

    def take() -> None:
        lock = serving.transaction()
        taken_meanwhile.append(lock.acquire(blocking=False))

    with serving.transaction():  # the process lock: no other thread's block runs meanwhile
        thread = threading.Thread(target=take)
        thread.start()
        thread.join()
    assert taken_meanwhile == [False]
    serving.close()
    with pytest.raises(RuntimeError, match="not open"):
        serving.transaction()


def test_a_sqlite_transaction_keeps_all_or_nothing_and_a_nested_one_joins_it(tmp_path):
    store = SQLiteStore(tmp_path / "t.db")
    with pytest.raises(RuntimeError), store.transaction():
        store.save("chat", "lost", b"x")
        with store.transaction():
            store.save("chat", "lost too", b"y")
        raise RuntimeError("changed my mind")
    with store.transaction(), store.transaction():
        store.save("chat", "kept", b"z")
    assert [store.load("chat", key) for key in ("lost", "lost too", "kept")] == [None, None, b"z"]
    store.close()


def test_a_failed_commit_leaves_no_transaction_open(tmp_path):
    store = SQLiteStore(tmp_path / "t.db")
    real = store._connection

    class FailingCommit:  # the connection, but its next COMMIT fails as a busy file would make it
        def __getattr__(self, name):
            return getattr(real, name)

        def execute(self, sql, *args):
            if sql == "COMMIT":
                store._connection = real
                raise sqlite3.OperationalError("database is locked")
            return real.execute(sql, *args)

    store._connection = FailingCommit()
    with pytest.raises(sqlite3.OperationalError), store.transaction():
        store.save("chat", "lost", b"x")
    assert not real.in_transaction
    with store.transaction():
        store.save("chat", "kept", b"y")
    assert (store.load("chat", "lost"), store.load("chat", "kept")) == (None, b"y")
    store.close()


def test_a_state_file_from_before_the_bound_opens_and_keeps_its_records(tmp_path):
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as old:
        old.execute(
            "CREATE TABLE records (kind TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL, PRIMARY KEY (kind, key))"
        )
        old.execute("INSERT INTO records VALUES ('chat', 'old', X'6f6c64')")
    old.close()
    store = SQLiteStore(path, max_records=2)
    store.save("chat", "new", b"new")
    assert (store.load("chat", "old"), store.load("chat", "new")) == (b"old", b"new")
    store.save("chat", "newer", b"newer")
    assert [store.load("chat", key) for key in ("old", "new", "newer")] == [None, b"new", b"newer"]
    store.close()


def test_a_server_keeps_at_most_state_max_records_chats_and_says_so_for_a_forgotten_one(serve):
    server = Server(server_id="bounded", state_max_records=2)
    server.add_agent(Counter)
    url = serve(server).url

    for chat_id in ("c-1", "c-2", "c-3"):
        start = envelope("counter", "chat.start", {"chatId": chat_id, "initialMessage": said("hi")})
        assert run(post(url, start))["error"] is None
    forgotten = run(post(url, envelope("counter", "chat.message", {"chatId": "c-1", "message": said("x")})))
    kept = run(post(url, envelope("counter", "chat.message", {"chatId": "c-3", "message": said("x")})))
    assert forgotten["error"]["code"] == -43001
    assert kept["error"] is None


def test_state_max_records_is_checked_in_code_and_in_config(tmp_path):
    with pytest.raises(ValueError, match="state_max_records must be >= 0"):
        Server(server_id="s", state_max_records=-1)
    config = tmp_path / "arc_actors.toml"
    config.write_text("[server]\nstate_max_records = -5\n")
    server = Server(server_id="s")
    with pytest.raises(ConfigError, match="state_max_records"):
        server.configure(load_settings(config, environ={}))
    config.write_text("[server]\nstate_max_records = 0\n")
    server.configure(load_settings(config, environ={"ARC_STATE_MAX_RECORDS": "7"}))
    assert server.state_max_records == 7


def test_record_timestamps_are_utc_iso_8601_to_the_millisecond():
    for _ in range(3):
        before = datetime.now(UTC) - timedelta(milliseconds=1)  # a stamp is cut to the millisecond
        stamp = utc_now()
        after = datetime.now(UTC)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", stamp)
        assert before <= datetime.fromisoformat(stamp.replace("Z", "+00:00")) <= after
        time.sleep(0.4)

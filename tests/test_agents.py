"""Writing agents: actor subclasses and decorator-style handlers, on one server."""

from __future__ import annotations

import uuid

import pytest
from conftest import envelope, post, run

from arc_actors import Agent, ARCError, Client, Context, RestartPolicy, Server, handles
from arc_actors.testing import serving


class Accountant(Agent):
    agent_id = "accountant"

    def __init__(self, currency: str, *, rounding: int = 2) -> None:
        self.currency = currency
        self.rounding = rounding

    def on_start(self) -> None:
        self.ledger: list[float] = []

    def chat_start(self, params: dict, context: Context) -> dict:
        self.ledger.append(params["initialMessage"]["parts"][0]["content"]["amount"])
        return {"total": round(sum(self.ledger), self.rounding), "currency": self.currency}

    @handles("ledger.show")
    async def show(self, params: dict, context: Context) -> dict:
        return {
            "entries": self.ledger,
            "context": {
                "agent_id": context.agent_id,
                "method": context.method,
                "request_agent": context["request_agent"],
                "trace_id": context.get("trace_id"),
                "request_id": context.request_id,
            },
        }

    def helper_not_exposed(self, params: dict, context: Context) -> None:
        raise AssertionError("never routed")


class BrokenAtStart(Agent):
    agent_id = "broken"
    restart_policy = RestartPolicy(max_restarts=2, backoff_initial_s=0.01)

    def on_start(self) -> None:
        raise RuntimeError("database unreachable")

    @handles("test.echo")
    def echo(self, params: dict, context: Context) -> dict:
        return {}


def booking(amount: float) -> dict:
    return {"initialMessage": {"role": "user", "parts": [{"type": "DataPart", "content": {"amount": amount}}]}}


def test_method_names_map_to_arc_methods_and_handles_adds_custom_ones():
    assert Accountant.arc_methods() == ("chat.start", "ledger.show")


@pytest.mark.usefixtures("engine")
def test_actor_subclass_and_decorator_agents_serve_side_by_side():
    server = Server(server_id="mixed")
    server.add_agent(Accountant, "EUR", rounding=1)
    server.add_agent(Accountant, "USD", agent_id="us-accountant")

    @server.agent_handler("greeter", "greet.me")
    def greet(params, context):
        return {"hello": params["name"]}

    with serving(server) as running:
        url = running.url
        assert run(post(url, envelope("greeter", "greet.me", {"name": "Ada"})))["result"] == {"hello": "Ada"}
        run(post(url, envelope("accountant", "chat.start", booking(1.04))))
        total = run(post(url, envelope("accountant", "chat.start", booking(2.04))))["result"]
        assert total == {"total": 3.1, "currency": "EUR"}
        us = run(post(url, envelope("us-accountant", "chat.start", booking(5))))["result"]
        assert us == {"total": 5, "currency": "USD"}
        shown = run(post(url, envelope("accountant", method="ledger.show", id=9, traceId="t-1")))["result"]
        assert shown == {
            "entries": [1.04, 2.04],
            "context": {
                "agent_id": "accountant",
                "method": "ledger.show",
                "request_agent": "test-client",
                "trace_id": "t-1",
                "request_id": 9,
            },
        }
        assert run(post(url, envelope("accountant", method="helper_not_exposed")))["error"]["code"] == -32601
        info = run(Client(url).agent_info())
    assert info["registeredAgents"]["accountant"]["supportedMethods"] == ["chat.end", "chat.start", "ledger.show"]
    assert info["registeredAgents"]["greeter"]["supportedMethods"] == ["greet.me"]
    assert info["totalAgents"] == 3


@pytest.mark.usefixtures("engine")
def test_agent_that_keeps_failing_to_start_is_retried_then_answers_not_available():
    server = Server(server_id="broken")
    server.add_agent(BrokenAtStart)
    server.agent_handler("fine", "test.echo")(lambda params, context: "fine")
    with serving(server) as running:
        answer = run(post(running.url, envelope("broken")))
        health = run(Client(running.url).health())
        assert run(post(running.url, envelope("fine")))["result"] == "fine"
    assert answer["error"]["code"] == -41002
    assert answer["error"]["details"]["agentId"] == "broken"
    assert health["status"] == "degraded"
    broken = health["agents"]["broken"]
    assert (broken["status"], broken["restarts"]) == ("failed", 2)
    assert broken["last_crash"]["type"] == "RuntimeError"
    assert broken["last_crash"]["message"] == "database unreachable"
    assert health["agents"]["fine"]["status"] == "running"


@pytest.mark.usefixtures("engine")
def test_results_that_are_not_json_are_internal_errors_and_none_is_a_null_result():
    server = Server(server_id="results")
    server.agent_handler("odd", "test.echo")(lambda params, context: object())
    server.agent_handler("odd", "test.none")(lambda params, context: None)
    with serving(server) as running:
        unserializable = run(post(running.url, envelope("odd")))
        nothing = run(post(running.url, envelope("odd", "test.none")))
    assert unserializable["error"]["code"] == -32603
    assert "result" in nothing and nothing["result"] is None and nothing["error"] is None


def test_declaration_mistakes_are_clear_errors_at_declaration_time():
    server = Server(server_id="mistakes")
    server.agent_handler("a", "chat.start")(lambda params, context: 1)
    with pytest.raises(ValueError, match=r"already has a handler for 'chat\.start'"):
        server.agent_handler("a", "chat.start")(lambda params, context: 2)
    with pytest.raises(ValueError, match="already declared"):
        server.add_agent(Accountant, "EUR", agent_id="a")

    class Nameless(Agent):
        def chat_start(self, params, context):
            return 1

    class Mute(Agent):
        agent_id = "mute"

    with pytest.raises(ValueError, match="has no agent_id"):
        server.add_agent(Nameless)
    with pytest.raises(ValueError, match="answers no ARC method"):
        server.add_agent(Mute)
    with pytest.raises(TypeError, match="expected an Agent subclass"):
        server.add_agent(object)
    with pytest.raises(ValueError, match="has no agents"):
        Server(server_id="empty").create_app()


@pytest.mark.usefixtures("engine")
def test_arc_error_raised_by_an_actor_subclass_reaches_the_client_typed():
    class Strict(Agent):
        agent_id = "strict"

        async def chat_message(self, params, context):
            raise ARCError(-43001, "Chat not found", {"chatId": params["chatId"]})

    server = Server(server_id="strict")
    server.add_agent(Strict)
    with serving(server) as running, pytest.raises(ARCError) as raised:
        run(Client(running.url).chat.message("strict", "chat-x", {"role": "user", "parts": []}))
    assert (raised.value.code, raised.value.message, raised.value.details) == (
        -43001,
        "Chat not found",
        {"chatId": "chat-x"},
    )


class Storm(Agent):
    """Crashes on every request: with a RuntimeError from one line, or a KeyError from another."""

    agent_id = "storm"
    restart_policy = RestartPolicy(max_restarts=100, within_s=60, backoff_initial_s=0)

    @handles("crash.now")
    def crash_now(self, params, context):
        if params.get("other"):
            raise KeyError("other")
        if params.get("via") == 1:
            uuid.UUID("not a uuid")  # the same library line as below, reached from another line
        if params.get("via") == 2:
            uuid.UUID("not a uuid")
        raise RuntimeError("again")


@pytest.mark.parametrize("line_interval_s", [0.0, 3600.0])
def test_a_crash_storm_logs_one_traceback_and_its_repeats_name_the_error_id_that_has_it(monkeypatch, line_interval_s):
    from loguru import logger

    from arc_actors import exceptions

    monkeypatch.setattr(exceptions, "REPEAT_LINE_INTERVAL_S", line_interval_s)
    monkeypatch.setattr(exceptions, "_repeats", exceptions._Repeats())  # no crash remembered from other tests
    lines: list[str] = []
    sink = logger.add(lines.append, level="DEBUG", format="{level}|{message}|{exception}")
    try:
        server = Server(server_id="storm")
        server.add_agent(Storm)
        with serving(server) as running:

            def crash(params: dict) -> str:
                return run(post(running.url, envelope("storm", "crash.now", params)))["error"]["details"]["errorId"]

            ids = [crash({}) for _ in range(4)]
            others = [crash({"other": True}), crash({"via": 1}), crash({"via": 2})]
    finally:
        logger.remove(sink)
    assert ids[1:] == [f"{ids[0]}-1", f"{ids[0]}-2", f"{ids[0]}-3"]  # each repeat names the traceback's errorId
    crashes = [line for line in lines if "raised in crash.now" in line and line.startswith("ERROR|")]
    with_traceback = [line for line in crashes if "Traceback" in line]
    assert len(with_traceback) == 4
    assert [error_id in line for error_id, line in zip([ids[0], *others], with_traceback, strict=True)] == [True] * 4
    repeat_lines = [line for line in crashes if "Traceback" not in line]
    if line_interval_s == 0:  # every repeat a line of its own
        assert len(repeat_lines) == 3
        for repeat, line in enumerate(repeat_lines, start=1):
            assert f"(errorId {ids[0]}-{repeat}): again; traceback under errorId {ids[0]} (repeat {repeat}" in line
    else:  # a storm logs an error line a second, not a line a crash; the others are at DEBUG
        [line] = repeat_lines
        assert f"(errorId {ids[0]}-1): again; traceback under errorId {ids[0]} (repeat 1 within 10 s; 0 more" in line
        debug = [line for line in lines if line.startswith("DEBUG|") and "raised in crash.now" in line]
        assert [f"(errorId {ids[0]}-{n}): again" in line for n, line in enumerate(debug, start=2)] == [True, True]

"""Every malformed input gets its exact ARC error code, in the protocol's order, and the server
keeps serving afterwards."""

from __future__ import annotations

import json

import pytest
from conftest import envelope, post, post_raw, run

from arc_actors import Server
from arc_actors.testing import serving

VALID = envelope(params={"x": 1})


def without(field: str) -> dict:
    request = dict(VALID)
    del request[field]
    return request


CASES = [
    ("not json", b"{not json", -32700),
    ("empty body", b"", -32700),
    ("invalid utf-8", b"\xff\xfe{}", -32700),
    ("array body", b"[]", -32600),
    ("string body", b'"hello"', -32600),
    ("null body", b"null", -32600),
    *[
        (f"missing {field}", json.dumps(without(field)).encode(), -32600)
        for field in ("arc", "id", "method", "requestAgent", "targetAgent", "params")
    ],
    ("params not an object", json.dumps(envelope(params=[1, 2])).encode(), -32600),
    ("id of wrong type", json.dumps(envelope(id={"a": 1})).encode(), -32600),
    ("id is a bool", json.dumps(envelope(id=True)).encode(), -32600),
    ("method not a string", json.dumps(envelope(method=7)).encode(), -32600),
    (
        "deeply nested params",
        b'{"arc":"1.0","id":1,"method":"chat.start","requestAgent":"a","targetAgent":"b",'
        b'"params":{"x":' + b"[" * 50000 + b"]" * 50000 + b"}}",
        -32602,  # refused from its bytes, before decoding: too many arrays for params
    ),
    ("wrong version", json.dumps(envelope(arc="2.0")).encode(), -45001),
    ("version as a number", json.dumps(envelope(arc=1.0)).encode(), -45001),
    ("wrong version and unknown agent", json.dumps(envelope(arc="0.9", targetAgent="nobody")).encode(), -45001),
    ("unknown agent", json.dumps(envelope(target_agent="nobody")).encode(), -41001),
    ("unknown agent and method", json.dumps(envelope(target_agent="nobody", method="x.y")).encode(), -41001),
    ("unknown method", json.dumps(envelope(method="task.create")).encode(), -32601),
    ("chat.start without initialMessage", json.dumps(envelope(method="chat.start")).encode(), -32602),
    (
        "message without parts",
        json.dumps(envelope(method="chat.start", params={"initialMessage": {"role": "user"}})).encode(),
        -32602,
    ),
]


@pytest.mark.parametrize(("case", "body", "code"), CASES, ids=[case[0] for case in CASES])
def test_malformed_request_gets_its_exact_code_and_the_server_still_serves(echo_url, case, body, code):
    status, answer = run(post_raw(echo_url, body))
    assert status == 200
    assert answer["error"]["code"] == code
    assert answer["result"] is None
    assert isinstance(answer["error"]["details"], dict)
    assert "Traceback" not in json.dumps(answer)
    assert run(post(echo_url, VALID))["result"]["params"] == {"x": 1}


def test_missing_field_is_named_in_the_message(echo_url):
    answer = run(post(echo_url, without("targetAgent")))
    assert answer["error"]["message"] == "Missing required field: targetAgent"


def test_invalid_request_echoes_the_request_id_when_it_can(echo_url):
    answer = run(post(echo_url, envelope(id="req-77", params="oops")))
    assert answer["error"]["code"] == -32600
    assert answer["id"] == "req-77"
    assert answer["targetAgent"] == "test-client"
    assert "$.params" in answer["error"]["message"]


def test_invalid_params_of_an_arc_method_name_the_field(echo_url):
    answer = run(post(echo_url, envelope(method="chat.start", params={"initialMessage": {"role": "user", "parts": 3}})))
    assert answer["error"]["code"] == -32602
    assert "$.params.initialMessage.parts" in answer["error"]["message"]
    assert answer["error"]["details"] == {"method": "chat.start"}


def test_wrong_version_says_which_is_supported(echo_url):
    answer = run(post(echo_url, envelope(arc="2.0")))
    assert answer["error"]["details"] == {"supportedVersion": "1.0"}


def test_unknown_agent_details_name_it_and_list_the_available_ones(echo_url):
    answer = run(post(echo_url, envelope(target_agent="ghost")))
    assert answer["error"]["details"]["agentId"] == "ghost"
    assert answer["error"]["details"]["availableAgents"] == ["echo-agent"]


def test_unknown_method_lists_supported_methods(echo_url):
    answer = run(post(echo_url, envelope(method="task.create")))
    assert answer["error"]["details"]["supportedMethods"] == ["chat.end", "chat.start", "test.echo"]
    assert answer["responseAgent"] == "echo-agent"


def test_any_content_type_is_parsed_as_json(echo_url):
    for content_type in ("application/arc+json", "text/event-stream", "text/plain", "application/json"):
        status, answer = run(post_raw(echo_url, json.dumps(VALID), {"Content-Type": content_type}))
        assert (status, answer["result"]["params"]) == (200, {"x": 1})


def test_trace_id_is_echoed_and_omitted_when_absent(echo_url):
    traced = run(post(echo_url, envelope(traceId="trace-9")))
    assert traced["traceId"] == "trace-9"
    assert traced["result"]["traceId"] == "trace-9"
    assert "traceId" not in run(post(echo_url, VALID))


def test_response_envelope_has_result_and_error_keys_and_routing_fields(echo_url):
    answer = run(post(echo_url, envelope(id=42)))
    assert answer["arc"] == "1.0"
    assert answer["id"] == 42
    assert answer["responseAgent"] == "echo-agent"
    assert answer["targetAgent"] == "test-client"
    assert answer["error"] is None
    assert answer["result"]["requestId"] == 42


def test_body_over_the_limit_is_refused_with_413_without_reading_it_all():
    import asyncio

    server = Server(server_id="small", max_body_bytes=1024)
    server.agent_handler("echo-agent", "test.echo")(lambda params, context: params)

    async def oversized_declared_length(url: str) -> tuple[int, dict]:
        host, port = url.split("//")[1].split("/")[0].split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        head = f"POST /arc HTTP/1.1\r\nHost: x\r\nContent-Length: {10**9}\r\n\r\n".encode()
        writer.write(head + b"{" * 4096)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 5)
        headers = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers["content-length"]))
        writer.close()
        return int(status_line.split()[1]), json.loads(body)

    with serving(server) as running:
        status, answer = run(post_raw(running.url, b"x" * 5000))
        assert (status, answer["error"]["code"]) == (413, -45004)
        status, answer = run(oversized_declared_length(running.url))
        assert (status, answer["error"]["code"]) == (413, -45004)
        assert answer["error"]["details"] == {"maxBytes": 1024}
        assert run(post(running.url, VALID))["result"] == {"x": 1}


def test_wrong_http_method_is_405_with_an_arc_error(echo_url):
    import aiohttp

    async def get() -> tuple[int, str, dict]:
        async with aiohttp.ClientSession() as session, session.get(echo_url) as reply:
            return reply.status, reply.headers["Allow"], json.loads(await reply.read())

    status, allow, answer = run(get())
    assert (status, allow, answer["error"]["code"]) == (405, "POST", -32600)


def test_reference_statuses_option_uses_the_reference_http_statuses():
    server = Server(server_id="ref", reference_statuses=True)
    server.agent_handler("echo-agent", "test.echo")(lambda params, context: 1 / 0)
    with serving(server) as running:
        expectations = [
            (b"{", 400, -32700),
            (json.dumps(envelope(arc="9")).encode(), 400, -45001),
            (json.dumps(envelope(target_agent="ghost")).encode(), 404, -41001),
            (json.dumps(envelope(method="x.y")).encode(), 404, -32601),
            (json.dumps(VALID).encode(), 500, -32603),
        ]
        for body, http_status, code in expectations:
            status, answer = run(post_raw(running.url, body))
            assert (status, answer["error"]["code"]) == (http_status, code)

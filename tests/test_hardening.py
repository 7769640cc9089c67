"""Production hardening: backpressure, per-agent concurrency, graceful drain on SIGTERM."""

from __future__ import annotations

import asyncio
import gzip
import json
import signal
import textwrap
import threading
import time
from collections import Counter

import aiohttp
import pytest
from conftest import echo_server, envelope, free_port, post, post_raw, run, start, wait_for_health, wait_healthy

from arc_actors import Agent, Client, Server, handles
from arc_actors.config import load_settings
from arc_actors.protocol import json_shape
from arc_actors.testing import serving


class Slow(Agent):
    agent_id = "slow"
    mailbox_size = 5

    @handles("work.run")
    def work(self, params, context):
        time.sleep(params.get("sleep", 1.0))
        return {"instance": id(self)}


class Quick(Agent):
    agent_id = "quick"

    @handles("work.run")
    async def work(self, params, context):
        return {"ok": True}


def flood_scenario(url: str) -> tuple[list[dict], list[dict], list[dict]]:
    async def scenario() -> tuple[list[dict], list[dict], list[dict]]:
        client = Client(url)
        first = [asyncio.ensure_future(post(url, envelope("slow", "work.run", id=i))) for i in range(2)]
        await wait_for_health(client, "slow", "mailbox", 1)  # one running, one waiting
        flood = await asyncio.gather(*(post(url, envelope("slow", "work.run", id=i)) for i in range(2, 30)))
        others = await asyncio.gather(*(post(url, envelope("quick", "work.run", id=i)) for i in range(20)))
        return [await request for request in first], flood, others

    return run(scenario())


def test_flooded_agent_refuses_the_overflow_at_once_while_another_agent_serves_everything():
    server = Server(server_id="flood")
    server.add_agent(Slow)
    server.add_agent(Quick)
    with serving(server) as running:
        first, flood, others = flood_scenario(running.url)
    refused = [answer for answer in flood if answer["error"]]
    served = [answer for answer in flood if not answer["error"]]
    assert all(answer["error"] is None for answer in first)
    assert (len(served), len(refused)) == (4, 24)
    assert {answer["error"]["code"] for answer in refused} == {-44007}
    assert refused[0]["error"]["details"] == {"agentId": "slow", "mailboxSize": 5, "retryAfter": 1}
    assert all(answer["result"] == {"ok": True} for answer in others)


def test_reference_statuses_answer_backpressure_with_429_and_retry_after():
    server = Server(server_id="flood-ref", reference_statuses=True)
    server.add_agent(Slow, mailbox_size=1)

    async def scenario(url: str) -> tuple[int, str, dict]:
        client = Client(url)
        first = [asyncio.ensure_future(post_raw(url, json.dumps(envelope("slow", "work.run"))))]
        await wait_for_health(client, "slow", "busy", 1)
        first.append(asyncio.ensure_future(post_raw(url, json.dumps(envelope("slow", "work.run")))))
        await wait_for_health(client, "slow", "mailbox", 1)
        async with aiohttp.ClientSession() as session, session.post(url, json=envelope("slow", "work.run")) as reply:
            status, retry_after, answer = reply.status, reply.headers.get("Retry-After"), await reply.json()
        await asyncio.gather(*first)
        return status, retry_after, answer

    with serving(server) as running:
        status, retry_after, answer = run(scenario(running.url))
    assert (status, retry_after, answer["error"]["code"]) == (429, "1", -44007)


class Parallel(Agent):
    agent_id = "parallel"
    concurrency = 4

    def on_start(self):
        self.served = 0

    @handles("work.run")
    def work(self, params, context):
        self.served += 1
        time.sleep(1.0)
        return {"instance": id(self), "served_by_this_instance": self.served}


def test_concurrency_four_serves_four_blocking_requests_at_once_each_instance_with_its_own_state():
    server = Server(server_id="parallel")
    server.add_agent(Parallel)

    async def scenario(url: str) -> tuple[list[dict], float]:
        started = time.monotonic()
        answers = await asyncio.gather(*(post(url, envelope("parallel", "work.run", id=i)) for i in range(4)))
        return answers, time.monotonic() - started

    with serving(server) as running:
        answers, elapsed = run(scenario(running.url))
    assert len({answer["result"]["instance"] for answer in answers}) == 4
    assert {answer["result"]["served_by_this_instance"] for answer in answers} == {1}
    assert elapsed < 3.0, f"4 one-second requests took {elapsed:.2f} s: they were not served in parallel"


def test_decorated_agent_takes_concurrency_and_mailbox_size_from_any_of_its_handlers():
    server = Server(server_id="options")
    server.agent_handler("a", "work.run", concurrency=2)(lambda params, context: 1)
    server.agent_handler("a", "work.other", mailbox_size=3)(lambda params, context: 2)
    try:
        server.agent_handler("a", "work.third", concurrency=3)
    except ValueError as exc:
        assert "two different concurrency values: 2 and 3" in str(exc)
    else:
        raise AssertionError("conflicting concurrency accepted")
    with serving(server) as running:
        assert run(post(running.url, envelope("a", "work.other")))["result"] == 2


DRAIN_APP = textwrap.dedent(
    """
    import time
    from arc_actors import Agent, Server, handles

    class Slow(Agent):
        agent_id = "slow"
        concurrency = 2

        @handles("work.run")
        def work(self, params, context):
            time.sleep(0.3)
            return {"done": True}

    server = Server(server_id="drain", drain_timeout_s=DRAIN)
    server.add_agent(Slow)
    """
)


def sigterm_during_load(tmp_path, drain_timeout_s: float) -> tuple[Counter, int, str]:
    app = tmp_path / "drain_app.py"
    app.write_text(DRAIN_APP.replace("DRAIN", str(drain_timeout_s)))
    port = free_port()
    process = start("serve", str(app), "--port", str(port))
    try:
        wait_healthy(port, process)
        url = f"http://127.0.0.1:{port}/arc"

        async def load() -> Counter:
            async with aiohttp.ClientSession() as session:

                async def one(i: int) -> str:
                    async with session.post(url, json=envelope("slow", "work.run", id=i)) as reply:
                        answer = await reply.json(content_type=None)
                        return "ok" if answer["error"] is None else answer["error"]["code"]

                requests = [asyncio.ensure_future(one(i)) for i in range(20)]
                deadline = time.monotonic() + 10
                while (await Client(url).health())["agents"]["slow"]["mailbox"] < 15:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.01)
                process.send_signal(signal.SIGTERM)
                return Counter(await asyncio.gather(*requests, return_exceptions=True))

        outcomes = run(load())
        exit_code = process.wait(timeout=30)
        return outcomes, exit_code, process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def test_sigterm_during_load_answers_every_request_already_sent_and_exits_zero(tmp_path):
    outcomes, exit_code, stderr = sigterm_during_load(tmp_path, drain_timeout_s=10)
    assert outcomes == Counter(ok=20), outcomes
    assert exit_code == 0
    assert "draining" in stderr


def test_requests_left_at_the_drain_deadline_are_answered_not_available(tmp_path):
    outcomes, exit_code, stderr = sigterm_during_load(tmp_path, drain_timeout_s=0.5)
    assert sum(outcomes.values()) == 20
    assert set(outcomes) == {"ok", -41002}, outcomes
    assert outcomes[-41002] >= 5
    assert exit_code == 0
    assert "answered -41002 at the drain deadline" in stderr


async def exchange(
    connection: tuple[asyncio.StreamReader, asyncio.StreamWriter], request: bytes
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request on an open connection: status, headers (lower-case names), body."""
    reader, writer = connection
    writer.write(request)
    await writer.drain()
    return await read_answer(reader)


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """The status, headers (lower-case names) and body of the HTTP/1.1 answer ``reader`` gets next."""
    status = int((await reader.readline()).split()[1])
    headers = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, value = line.decode().split(":", 1)
        headers[name.strip().lower()] = value.strip()
    return status, headers, await reader.readexactly(int(headers.get("content-length", 0)))


def test_requests_on_keep_alive_connections_open_at_sigterm_are_answered_until_the_drain_ends(tmp_path):
    app = tmp_path / "drain_app.py"
    app.write_text(DRAIN_APP.replace("DRAIN", "10"))
    port = free_port()
    process = start("serve", str(app), "--port", str(port))
    health = f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    body = json.dumps(envelope("slow", "work.run")).encode()
    arc = (
        f"POST /arc HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/arc+json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body

    async def scenario() -> tuple[list, list]:
        connections = [await asyncio.open_connection("127.0.0.1", port) for _ in range(25)]
        for connection in connections:  # each one open and idle, kept alive
            assert (await exchange(connection, health))[0] == 200
        async with aiohttp.ClientSession() as session:  # ten slow requests keep the drain going ~1.5 s
            url = f"http://127.0.0.1:{port}/arc"
            slow = [asyncio.ensure_future(session.post(url, json=envelope("slow", "work.run"))) for _ in range(10)]
            deadline = time.monotonic() + 10
            while (await Client(url).health())["agents"]["slow"]["mailbox"] < 6:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            answers = await asyncio.gather(*(exchange(connection, arc) for connection in connections))
            finished = [await (await reply).json(content_type=None) for reply in slow]
        for _, writer in connections:
            writer.close()
        return answers, finished

    try:
        wait_healthy(port, process)
        answers, finished = run(scenario())
        exit_code = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    # Before: aiohttp closed the idle connections at the signal, and these requests met a reset.
    assert [(status, headers.get("connection")) for status, headers, _ in answers] == [(200, "close")] * 25
    assert {json.loads(answer)["error"]["code"] for _, _, answer in answers} == {-41002}
    assert [answer["result"] for answer in finished] == [{"done": True}] * 10
    assert exit_code == 0


def nested(levels: int) -> dict:
    value: dict = {}
    for _ in range(levels - 1):
        value = {"n": value}
    return value


def test_params_nested_deeper_than_the_limit_are_refused_before_reaching_the_agent(echo_url):
    deep = run(post(echo_url, envelope(params=nested(33))))
    assert deep["error"]["code"] == -32602
    assert deep["error"]["details"] == {"maxDepth": 32}
    assert deep["id"] == "req-1"
    assert run(post(echo_url, envelope(params=nested(32))))["error"] is None
    arrays: list = []
    for _ in range(31):
        arrays = [arrays]
    assert run(post(echo_url, envelope(params={"a": [arrays]})))["error"]["details"] == {"maxDepth": 32}
    brackets_in_text = {"text": "{[" * 100}
    assert run(post(echo_url, envelope(params=brackets_in_text)))["error"] is None


def test_params_wider_than_the_bound_are_refused_from_their_bytes_before_decoding(echo_url):
    wide = json.dumps(envelope(params={"d": [[]] * 340_000}), separators=(",", ":"))  # 1 MB: under every limit

    status, answer = run(post_raw(echo_url, wide))
    # Before: decoded (0.17 s) and walked (0.54 s) on the event loop, then served.
    assert status == 200
    assert answer["error"]["code"] == -32602
    assert answer["error"]["details"] == {"maxContainers": 10_000}
    at_the_bound = {"d": [[]] * 9_998}  # with the object and its list: 10,000
    assert run(post(echo_url, envelope(params=at_the_bound)))["error"] is None
    assert run(post(echo_url, envelope(params={"d": [[]] * 9_999})))["error"]["code"] == -32602
    in_text = {"text": "[" * 50_000}  # brackets in strings are text, not structure
    assert run(post(echo_url, envelope(params=in_text)))["error"] is None


class Recording(Agent):
    agent_id = "recording"
    request_timeout_s = 1.0
    started: list[int] = []

    @handles("work.run")
    def work(self, params, context):
        self.started.append(context.request_id)
        time.sleep(0.6)
        return {"done": context.request_id}


def test_request_timeout_answers_a_caller_stuck_in_the_queue_and_the_agent_skips_that_request():
    Recording.started = []
    server = Server(server_id="timeouts")
    server.add_agent(Recording)

    async def scenario(url: str) -> list[dict]:
        first = asyncio.ensure_future(post(url, envelope("recording", "work.run", id=0)))
        while not Recording.started:
            await asyncio.sleep(0.01)
        rest = await asyncio.gather(*(post(url, envelope("recording", "work.run", id=i)) for i in range(1, 4)))
        await asyncio.sleep(1.0)  # time enough for skipped requests to show up in `started` if they ran
        assert (await Client(url).health())["agents"]["recording"]["mailbox"] == 0
        return [await first, *rest]

    with serving(server) as running:
        answers = run(scenario(running.url))
    codes = [answer["error"]["code"] if answer["error"] else "ok" for answer in answers]
    assert codes == ["ok", -41006, -41006, -41006], codes
    assert answers[1]["error"]["details"] == {"agentId": "recording", "requestTimeoutS": 1.0}
    # One queued request ran past its deadline; the other two expired in the queue and never started.
    assert Recording.started[0] == 0
    assert len(Recording.started) == 2


def test_params_over_their_size_limit_are_refused_without_being_decoded():
    server = Server(server_id="params-size", max_params_bytes=100)
    server.agent_handler("echo-agent", "test.echo")(lambda params, context: params)
    with serving(server) as running:
        big = run(post(running.url, envelope(params={"text": "x" * 200})))
        small = run(post(running.url, envelope(params={"text": "x" * 50})))
    assert big["error"]["code"] == -45004
    assert big["error"]["details"] == {"maxParamsBytes": 100}
    assert big["id"] == "req-1"
    assert small["result"] == {"text": "x" * 50}


def test_header_over_its_size_limit_is_refused_and_the_server_keeps_serving():
    server = Server(server_id="headers", max_header_bytes=1024)
    server.agent_handler("echo-agent", "test.echo")(lambda params, context: "fine")

    async def scenario(url: str) -> tuple[int, dict]:
        async with aiohttp.ClientSession() as session:
            async with session.post(url, json=envelope(), headers={"X-Big": "y" * 4096}) as refused:
                status = refused.status
            return status, await post(url, envelope())

    with serving(server) as running:
        status, answer = run(scenario(running.url))
    assert status == 400
    assert answer["result"] == "fine"


def test_a_compressed_body_is_refused_unread_and_never_unpacked(echo_url):
    bomb = gzip.compress(bytes(64 * 1024 * 1024), compresslevel=9)  # 64 MiB of zeros in ~64 KB

    status, answer = run(post_raw(echo_url, bomb, {"Content-Encoding": "gzip"}))
    # Before: unpacked on the event loop as it arrived (1 GiB stalled /health 2 s), then answered 413.
    assert status == 415
    assert answer["error"]["code"] == -32600
    assert answer["error"]["details"] == {"contentEncoding": "gzip"}
    assert run(post(echo_url, envelope()))["error"] is None


def test_a_body_that_stops_arriving_is_answered_408_and_its_connection_closed(serve):
    server = echo_server()
    server.configure(load_settings(None, environ={"ARC_BODY_TIMEOUT_S": "0.5"}))
    port = int(serve(server).url.rsplit(":", 1)[1].split("/")[0])
    head = b"POST /arc HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"

    async def half_a_body() -> tuple[int, dict[str, str], bytes, float]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = time.monotonic()
        writer.write(head + b"{")
        await writer.drain()
        status, headers, body = await asyncio.wait_for(read_answer(reader), 10)
        writer.close()
        return status, headers, body, time.monotonic() - started

    status, headers, body, elapsed = run(half_a_body())
    # Before: the connection was held for ever (0 of 20 closed after 130 s).
    assert (status, headers["connection"]) == (408, "close")
    assert json.loads(body)["error"]["details"] == {"bodyTimeoutS": 0.5}
    assert elapsed < 5


def test_malformed_http_is_one_log_line_a_second_and_never_its_token(tmp_path):
    port = free_port()
    process = start("serve", "--port", str(port))
    bad_header = (
        b"POST /arc HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cr3t-ops-token\x01\r\nContent-Length: 2\r\n\r\n{}"
    )

    async def flood() -> None:
        for _ in range(200):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(bad_header)
            await asyncio.wait_for(reader.read(), 5)  # the parser's 400, then the close
            writer.close()

    try:
        wait_healthy(port, process)
        run(flood())
        process.send_signal(signal.SIGTERM)
        stderr = process.communicate(timeout=30)[1]
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    lines = [line for line in stderr.splitlines() if "malformed HTTP request" in line]
    # Before: an 11-line traceback quoting the header, token and all, for each of the 200.
    assert "s3cr3t" not in stderr and "Traceback" not in stderr
    assert 1 <= len(lines) <= 3
    assert lines[0].endswith("refused by the HTTP parser: BadHttpMessage")


@pytest.mark.parametrize(
    "hostile",
    [
        b"{" * 33 + b'"' + b'\\"' * 500_000,  # a string that never closes: each quote a match to the end
        b"[" * 40 + b"]" * 4_000_000,  # closing brackets past the bound
    ],
    ids=["unterminated string", "closing brackets"],
)
def test_measuring_a_hostile_body_is_linear(hostile):
    measured: list[tuple[int, int]] = []
    worker = threading.Thread(target=lambda: measured.append(json_shape(hostile, 10_001)), daemon=True)
    worker.start()
    worker.join(10)  # linear: milliseconds; the first pattern took hours on a megabyte
    assert measured, "json_shape did not finish"
    assert measured[0][0] > 10_001 or measured[0][1] > 32

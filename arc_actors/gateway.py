"""The HTTP face of the runtime: ``POST /arc``, ``GET /health``, ``GET /agent-info`` (aiohttp).

``POST /arc`` is parse, authenticate (when auth is on), route, await, encode, in that order, and nothing
else. Errors come back as ARC error envelopes in the protocol's order (-32700, -32600, -440xx, -45001,
-41001, -32601, the handler's own, -32603): never a traceback, never a 5xx unless reference statuses
are asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from time import perf_counter
from typing import Any, Protocol

import msgspec
from aiohttp import web

from arc_actors.auth import Authenticator, AuthFailure, Identity
from arc_actors.chats import new_chat_id
from arc_actors.engine import AgentState
from arc_actors.exceptions import internal_error
from arc_actors.protocol import (
    ARC_CONTENT_TYPE,
    ARC_VERSION,
    ARCRequest,
    ARCResponse,
    ErrorCode,
    ErrorObject,
    Outcome,
    ParamsTooLarge,
    decode_request,
    encoder,
    error,
    json_shape,
)
from arc_actors.router import Router
from arc_actors.streaming import DEFAULT_KEEPALIVE_S, DeltaSink

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_PARAMS_DEPTH = 32
DEFAULT_MAX_PARAMS_CONTAINERS = 10_000
"""Objects and arrays one request's params may hold: decoding costs time per container, on the event
loop, so this bounds what one request can cost there, whatever its size in bytes."""
DEFAULT_MAX_PARAMS_BYTES = 1024 * 1024
DEFAULT_MAX_HEADER_BYTES = 8190
DEFAULT_BODY_TIMEOUT_S = 30.0
"""How long the body of one request may take to arrive, once its headers have."""

ARC_PATH = "/arc"
STREAMED_METHODS = frozenset(("chat.start", "chat.message"))
"""The methods answered as SSE when their params say ``stream: true``."""
DISCONNECT_POLL_S = 0.25
"""How often a silent stream checks whether its client is still there."""

_REFERENCE_STATUSES = {
    ErrorCode.PARSE_ERROR: 400,
    ErrorCode.INVALID_REQUEST: 400,
    ErrorCode.INVALID_ARC_VERSION: 400,
    ErrorCode.AGENT_NOT_FOUND: 404,
    ErrorCode.METHOD_NOT_FOUND: 404,
    ErrorCode.INTERNAL_ERROR: 500,
    ErrorCode.AGENT_NOT_AVAILABLE: 503,
    ErrorCode.RATE_LIMIT_EXCEEDED: 429,
}


@dataclass(frozen=True)
class GatewayConfig:
    """How the gateway presents itself and what it accepts.

    ``reference_statuses`` answers ARC errors with the reference server's HTTP statuses (400, 404,
    500; and 429 with ``Retry-After`` for backpressure, 503 for an unavailable agent) instead of 200;
    the real arc-sdk Client then loses the precise error code, which is why it is off by default."""

    server_id: str
    version: str
    description: str = ""
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_params_depth: int = DEFAULT_MAX_PARAMS_DEPTH
    max_params_containers: int = DEFAULT_MAX_PARAMS_CONTAINERS
    max_params_bytes: int = DEFAULT_MAX_PARAMS_BYTES
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    reference_statuses: bool = False
    stream_keepalive_s: float = DEFAULT_KEEPALIVE_S
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S


class ArcObserver(Protocol):
    """Told of every ``/arc`` request as it comes and goes (metrics). Called by the gateway itself
    rather than from an aiohttp middleware, which costs a coroutine and a URL parse per request."""

    def arrived(self) -> None:
        """A request came in."""

    def left(self, call: ARCRequest | None, outcome: Outcome | None, elapsed_s: float) -> None:
        """A request was answered with ``outcome`` (None: it was not, its client went away) after
        ``elapsed_s`` seconds; ``call`` is its envelope, None when it could not be decoded."""


class _Answer:
    """What an ``/arc`` answer answered, for the observer: the decoded envelope (None when the request
    could not be decoded) and the outcome. Plain attributes: aiohttp's mapping interface on requests and
    responses costs a Python call per read and write."""

    call: ARCRequest | None = None
    outcome: Outcome | None = None


class _ArcResponse(_Answer, web.Response):
    """An ``/arc`` answer in one body."""


class _ArcStream(_Answer, web.StreamResponse):
    """An ``/arc`` answer as SSE."""


ArcServe = Callable[[web.Request], Awaitable[_ArcResponse | _ArcStream]]


class _EnvelopeIds(msgspec.Struct, rename="camel"):
    """The parts of an invalid request still worth echoing in its error response, left undecoded: a
    hostile body may put a megabyte of arrays in any of them (see ``_salvaged``)."""

    id: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)
    request_agent: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)
    trace_id: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)


_salvage_decoder = msgspec.json.Decoder(_EnvelopeIds)
SALVAGED_MAX_BYTES = 512
"""An envelope field longer than this is not echoed: no id, agent id or trace id is that long."""


def _salvaged(raw: msgspec.Raw) -> Any:
    """The value of one salvaged field (None when absent), when it is short enough to be worth decoding."""
    return None if not raw or len(raw) > SALVAGED_MAX_BYTES else msgspec.json.decode(raw)


class Gateway:
    """The aiohttp handlers, bound to one router and one configuration; with an ``authenticator``,
    ``/arc`` and ``/agent-info`` need a valid token and ``/health`` lists its agents only to one."""

    def __init__(
        self,
        router: Router,
        config: GatewayConfig,
        authenticator: Authenticator | None = None,
        observer: ArcObserver | None = None,
    ) -> None:
        self._router = router
        self._config = config
        self._authenticator = authenticator
        self._observer = observer
        self.streams_open = 0
        """SSE responses being written now (read by the metrics)."""
        self.draining = False
        """Set as the server drains: every answer then closes its connection (``Connection: close``)."""

    def application(self) -> web.Application:
        """A new aiohttp application serving this gateway's routes."""
        app = web.Application(client_max_size=self._config.max_body_bytes)
        # The observed handlers are partials of one coroutine function: no coroutine of their own per request.
        app.router.add_post(ARC_PATH, partial(self._observed, serve=self._serve_arc))
        app.router.add_route("*", ARC_PATH, partial(self._observed, serve=self._refuse_http_method))
        app.router.add_get("/health", self.handle_health)
        app.router.add_get("/agent-info", self.handle_agent_info)
        return app

    async def _observed(self, http_request: web.Request, serve: ArcServe) -> web.StreamResponse:
        """``serve(http_request)``, with the observer told of it."""
        observer = self._observer
        if observer is None:
            response = await serve(http_request)
        else:
            started = perf_counter()
            observer.arrived()
            response = None
            try:
                response = await serve(http_request)
            finally:
                if response is None:
                    observer.left(None, None, perf_counter() - started)
                else:
                    observer.left(response.call, response.outcome, perf_counter() - started)
        if self.draining:  # the caller's next request goes elsewhere, on a connection of its own
            response.force_close()
        return response

    async def _serve_arc(self, http_request: web.Request) -> _ArcResponse | _ArcStream:
        body = await self._read_body(http_request)
        if type(body) is not bytes:
            return body
        config = self._config
        if body.count(b"{") + body.count(b"[") > min(config.max_params_depth, config.max_params_containers):
            refused = self._misshapen(body, *json_shape(body, config.max_params_containers + 1))
            if refused is not None:
                return refused
        try:
            request = decode_request(body, self._config.max_params_bytes)
        except ParamsTooLarge as exc:
            limit = self._config.max_params_bytes
            return self._reject(
                body,
                ErrorCode.MESSAGE_TOO_LARGE,
                f"params of {exc.args[0]} bytes, over the limit of {limit}",
                {"maxParamsBytes": limit},
            )
        except msgspec.ValidationError as exc:
            return self._reject(body, ErrorCode.INVALID_REQUEST, _invalid_request_message(exc))
        except msgspec.DecodeError as exc:
            return self._reject(b"", ErrorCode.PARSE_ERROR, f"Parse error: {exc}")
        except RecursionError:
            return self._reject(b"", ErrorCode.INVALID_REQUEST, "Invalid request: JSON nested too deeply")
        identity = None
        if self._authenticator is not None:
            try:
                checked = self._authenticator.authenticate(http_request.headers.get("Authorization"), request)
            except Exception as exc:  # noqa: BLE001 - fail closed, and with an ARC error
                checked = AuthFailure(internal_error(exc, request.target_agent, request.trace_id, "authentication"))
            if isinstance(checked, AuthFailure):
                return self._refuse(
                    checked,
                    call=request,
                    request_id=request.id,
                    target_agent=request.request_agent,
                    trace_id=request.trace_id,
                )
            identity = checked
        if request.arc != ARC_VERSION:
            return self._reject(
                body,
                ErrorCode.INVALID_ARC_VERSION,
                f"Invalid ARC version: {request.arc!r}",
                {"supportedVersion": ARC_VERSION},
                call=request,
            )
        # Each level of nesting opens a bracket: a body with few of them needs no walk of its params.
        if request.method in STREAMED_METHODS and request.params.get("stream") is True:
            return await self._stream(http_request, request, identity)
        try:
            outcome = await self._router.dispatch(request, identity)
        except Exception as exc:  # noqa: BLE001 - the wire never sees a traceback
            outcome = internal_error(exc, request.target_agent, request.trace_id, "the gateway")
        responder = request.target_agent if self._router.has_agent(request.target_agent) else None
        return self._respond(
            outcome,
            call=request,
            request_id=request.id,
            response_agent=responder or self._config.server_id,
            target_agent=request.request_agent,
            trace_id=request.trace_id,
        )

    async def _stream(self, http_request: web.Request, request: ARCRequest, identity: Identity | None) -> _ArcStream:
        """Answer a ``stream: true`` chat request as SSE: a ``stream`` frame per delta as the agent makes
        it (or one of the whole reply, for a handler that does not stream), ``: keep-alive`` comments
        while it is silent, an ``error`` frame for an ARC error, and ``done`` last. A ``chat.start``
        without a ``chatId`` gets one here, so that every frame can name it, unless its agent keeps its own
        chats: its frames, all written after its answer, name the chat its result names."""
        managed = self._router.manages_chats(request.target_agent)
        if managed and request.method == "chat.start" and not isinstance(request.params.get("chatId"), str):
            request = msgspec.structs.replace(request, params={**request.params, "chatId": new_chat_id()})
        chat_id = request.params.get("chatId")
        response = _ArcStream(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        response.call = request
        await response.prepare(http_request)
        self.streams_open += 1
        try:
            return await self._write_stream(http_request, response, request, identity, chat_id)
        finally:
            self.streams_open -= 1

    async def _write_stream(
        self,
        http_request: web.Request,
        response: _ArcStream,
        request: ARCRequest,
        identity: Identity | None,
        chat_id: Any,
    ) -> _ArcStream:
        sink = DeltaSink()
        answer = asyncio.ensure_future(_settled(lambda: self._router.dispatch(request, identity, stream=sink)))
        answer.add_done_callback(lambda _: sink.deltas.put_nowait(None))
        try:
            streamed = await self._relay_deltas(http_request, response, sink, chat_id)
            outcome = answer.result()
        except ConnectionError:
            sink.cancel()
            answer.cancel()
            return response
        except Exception as exc:  # noqa: BLE001 - the wire never sees a traceback
            outcome, streamed = internal_error(exc, request.target_agent, request.trace_id, "the gateway"), True
        response.outcome = outcome
        failed = type(outcome) is ErrorObject
        reply = None if failed or (streamed and chat_id is not None) else _reply_chat(outcome)
        if chat_id is None and reply is not None:
            chat_id = reply.get("chatId")
        frames = []
        if failed:
            frames.append(
                _frame("error", {"chatId": chat_id, "error": {"code": outcome.code, "message": outcome.message}})
            )
        elif not streamed and reply is not None and isinstance(message := reply.get("message"), dict):
            frames.append(_frame("stream", {"chatId": chat_id, "message": message}))
        done = {"chatId": chat_id, "status": "ERROR" if failed else "ACTIVE", "done": True, "requestId": request.id}
        frames.append(_frame("done", done))
        with contextlib.suppress(ConnectionError):  # a client gone at the very end misses only the end
            await response.write(b"".join(frames))
        return response

    async def _relay_deltas(
        self, http_request: web.Request, response: web.StreamResponse, sink: DeltaSink, chat_id: Any
    ) -> bool:
        """Write the deltas as ``stream`` frames until the answer is in; returns whether any was
        written. A client found gone raises ``ConnectionError``."""
        keepalive_s = self._config.stream_keepalive_s
        loop = asyncio.get_running_loop()
        last_write, streamed = loop.time(), False
        getter = asyncio.ensure_future(sink.deltas.get())
        try:
            while True:
                await asyncio.wait({getter}, timeout=min(keepalive_s, DISCONNECT_POLL_S))
                if not getter.done():
                    transport = http_request.transport
                    if transport is None or transport.is_closing():
                        raise ConnectionResetError("the client of a stream disconnected")
                    if loop.time() - last_write >= keepalive_s:
                        await response.write(b": keep-alive\n\n")
                        last_write = loop.time()
                    continue
                delta = getter.result()
                if delta is None:
                    return streamed
                getter = asyncio.ensure_future(sink.deltas.get())
                message = {"role": "agent", "parts": [{"type": "TextPart", "content": delta}]}
                await response.write(_frame("stream", {"chatId": chat_id, "message": message}))
                last_write, streamed = loop.time(), True
        finally:
            getter.cancel()

    async def _refuse_http_method(self, http_request: web.Request) -> _ArcResponse:
        outcome = error(ErrorCode.INVALID_REQUEST, f"Use POST for /arc, not {http_request.method}")
        response = self._respond(outcome, http_status=405)
        response.headers["Allow"] = "POST"
        return response

    async def handle_health(self, http_request: web.Request) -> web.Response:
        agents = {agent_id: self._router.status(agent_id) for agent_id in self._router.agent_ids}
        healthy = all(status.state is AgentState.RUNNING for status in agents.values())
        health = {
            "status": "healthy" if healthy else "degraded",
            "server_id": self._config.server_id,
            "version": self._config.version,
            "agents": agents,
        }
        if self._authenticator is not None and not self._shows_agents(http_request):
            del health["agents"]
        return _json(health)

    async def handle_agent_info(self, http_request: web.Request) -> web.Response:
        refused = self.refusal(http_request)
        if refused is not None:
            return refused
        agents = {
            agent_id: {
                "supportedMethods": self._router.methods_of(agent_id),
                "status": self._router.status(agent_id).state.value,
            }
            for agent_id in self._router.agent_ids
        }
        return _json(
            {
                "server": self._config.server_id,
                "description": self._config.description,
                "version": self._config.version,
                "status": "active",
                "endpoints": {"arc": "/arc", "health": "/health"},
                "registeredAgents": agents,
                "totalAgents": len(agents),
            }
        )

    async def _read_body(self, http_request: web.Request) -> bytes | _ArcResponse:
        """The body, or the answer that refuses it, its connection then closed: 413 when it is over the
        limit (a large body is never read whole), 415 when it is compressed (a small body may unpack to
        gigabytes: the server never unpacks one), 408 when it takes longer than ``body_timeout_s``
        to arrive (a client that sends half a body holds no connection for ever)."""
        encoding = http_request.headers.get("Content-Encoding")
        if encoding is not None and encoding.strip().lower() not in ("", "identity"):
            return self._closing(
                error(
                    ErrorCode.INVALID_REQUEST,
                    f"Invalid request: Content-Encoding {encoding.strip()!r} is not accepted, send the body as it is",
                    {"contentEncoding": encoding.strip()},
                ),
                415,
            )
        limit, length = self._config.max_body_bytes, http_request.content_length
        if length is None or length <= limit:
            try:
                if http_request.content.is_eof():  # all here already, as almost every body is
                    return await http_request.read()
                async with asyncio.timeout(self._config.body_timeout_s):
                    return await http_request.read()
            except web.HTTPRequestEntityTooLarge:
                pass
            except TimeoutError:
                timeout_s = self._config.body_timeout_s
                outcome = error(
                    ErrorCode.INVALID_REQUEST,
                    f"Invalid request: the body did not arrive within {timeout_s} s",
                    {"bodyTimeoutS": timeout_s},
                )
                return self._closing(outcome, 408)
        outcome = error(ErrorCode.MESSAGE_TOO_LARGE, f"Request body over {limit} bytes", {"maxBytes": limit})
        return self._closing(outcome, 413)

    def _closing(self, outcome: Outcome, http_status: int) -> _ArcResponse:
        """An answer to a request whose body was not read (whole): its connection is closed after it."""
        response = self._respond(outcome, http_status=http_status)
        response.force_close()
        return response

    def refusal(self, http_request: web.Request) -> web.Response | None:
        """The answer refusing a GET of the server's insides (``/agent-info``, ``/metrics``) to a caller
        without a valid token, when auth is on; None to serve it."""
        checked = self._identify(http_request)
        return self._refuse(checked) if isinstance(checked, AuthFailure) else None

    def _identify(self, http_request: web.Request) -> Identity | AuthFailure | None:
        """The caller of a GET endpoint, by its token alone; None when auth is off."""
        if self._authenticator is None:
            return None
        return self._authenticator.authenticate(http_request.headers.get("Authorization"))

    def _shows_agents(self, http_request: web.Request) -> bool:
        """Whether ``/health`` may list the agents: to a valid token only. A probe without one is no
        refusal, and not logged as one."""
        return "Authorization" in http_request.headers and isinstance(self._identify(http_request), Identity)

    def _refuse(self, failure: AuthFailure, **envelope: Any) -> _ArcResponse:
        """The answer to a request its token does not allow; it names the server, never an agent."""
        response = self._respond(failure.error, http_status=failure.http_status, **envelope)
        if failure.www_authenticate is not None:
            response.headers["WWW-Authenticate"] = failure.www_authenticate
        return response

    def _misshapen(self, body: bytes, containers: int, depth: int) -> _ArcResponse | None:
        """-32602 for a body whose params hold too many objects and arrays or nest them too deeply
        (the envelope's own object is one of them, and one level), else None."""
        config = self._config
        if containers - 1 > config.max_params_containers:
            limit = config.max_params_containers
            message, details = f"more than {limit} objects and arrays", {"maxContainers": limit}
        elif depth - 1 > config.max_params_depth:
            limit = config.max_params_depth
            message, details = f"nested deeper than {limit} levels", {"maxDepth": limit}
        else:
            return None
        return self._reject(body, ErrorCode.INVALID_PARAMS, f"Invalid params: {message}", details)

    def _reject(
        self,
        body: bytes,
        code: ErrorCode,
        message: str,
        details: dict[str, Any] | None = None,
        call: ARCRequest | None = None,
    ) -> _ArcResponse:
        """An error answer to a request that did not make it to routing (``call``: decoded, but refused),
        echoing what it can."""
        try:
            ids = _salvage_decoder.decode(body) if body else _EnvelopeIds()
        except (msgspec.DecodeError, RecursionError):
            ids = _EnvelopeIds()
        request_id, request_agent, trace_id = _salvaged(ids.id), _salvaged(ids.request_agent), _salvaged(ids.trace_id)
        return self._respond(
            error(code, message, details),
            call=call,
            request_id=request_id if isinstance(request_id, (str, int)) and not isinstance(request_id, bool) else None,
            target_agent=request_agent if isinstance(request_agent, str) else "unknown",
            trace_id=trace_id if isinstance(trace_id, str) else msgspec.UNSET,
        )

    def _respond(
        self,
        outcome: Outcome,
        *,
        call: ARCRequest | None = None,
        request_id: str | int | None = None,
        response_agent: str | None = None,
        target_agent: str = "unknown",
        trace_id: str | msgspec.UnsetType | None = msgspec.UNSET,
        http_status: int | None = None,
    ) -> _ArcResponse:
        failed = type(outcome) is ErrorObject
        envelope = ARCResponse(
            id=request_id,
            response_agent=response_agent or self._config.server_id,
            target_agent=target_agent,
            result=None if failed else outcome,
            error=outcome if failed else None,
            trace_id=msgspec.UNSET if trace_id is None else trace_id,
        )
        if http_status is None:
            http_status = self._http_status(outcome.code) if failed else 200
        response = _ArcResponse(body=encoder.encode(envelope), status=http_status, content_type=ARC_CONTENT_TYPE)
        if http_status in (429, 503) and "retryAfter" in outcome.details:
            response.headers["Retry-After"] = str(outcome.details["retryAfter"])
        response.call, response.outcome = call, outcome
        return response

    def _http_status(self, code: int) -> int:
        if not self._config.reference_statuses:
            return 200
        return _REFERENCE_STATUSES.get(code, 400)


async def _settled(dispatch: Callable[[], Awaitable[Outcome]]) -> Outcome:
    """``dispatch()`` awaited in a task of its own, so that whatever it raises, even before it returns
    its awaitable, is raised where the task's result is read."""
    return await dispatch()


def _invalid_request_message(exc: msgspec.ValidationError) -> str:
    text = str(exc)
    prefix = "Object missing required field `"
    if text.startswith(prefix) and text.endswith("`"):
        return f"Missing required field: {text[len(prefix) : -1]}"
    return f"Invalid request: {text}"


def _frame(event: str, data: dict[str, Any]) -> bytes:
    """One SSE frame: ``event: NAME``, one line of JSON data, a blank line."""
    return b"event: " + event.encode() + b"\ndata: " + encoder.encode(data) + b"\n\n"


def _reply_chat(outcome: Outcome) -> dict[str, Any] | None:
    """The ``chat`` of a chat result (its id and message), from the whole reply of a handler that did
    not stream; None when the result is no such thing."""
    result = msgspec.json.decode(outcome)
    chat = result.get("chat") if isinstance(result, dict) else None
    return chat if isinstance(chat, dict) else None


def _json(payload: dict[str, Any]) -> web.Response:
    return web.Response(body=encoder.encode(payload), content_type="application/json")

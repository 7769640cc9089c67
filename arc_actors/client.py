"""An ARC client on aiohttp, call-compatible with the reference SDK's ``Client``.

``await client.chat.start(target_agent=..., initial_message=...)`` returns a ``Response``
(``.result``, ``.error``, ``.trace_id``, and ``response["result"]`` too); an ARC error raises
``ARCError`` with its code, message and details.

With ``stream=True``, ``chat.start`` and ``chat.message`` return an async iterator of the SSE events
instead, each ``{"event": "stream" | "error" | "done", "data": {...}}``, as the reference's do.

Used as ``async with Client(url) as client:`` it keeps one connection pool; used bare, as the seed
document does, each call opens and closes its own, so nothing is left unclosed.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any

import aiohttp
import msgspec

from arc_actors.exceptions import ARCError
from arc_actors.protocol import ARC_CONTENT_TYPE, ARC_VERSION, ErrorCode, encoder


class Response:
    """One ARC response: attribute access in Python names, item access in wire names."""

    __slots__ = ("_payload",)

    def __init__(self, payload: dict[str, Any]) -> None:
        self._payload = payload

    @property
    def result(self) -> Any:
        return self._payload.get("result")

    @property
    def error(self) -> dict[str, Any] | None:
        return self._payload.get("error")

    @property
    def trace_id(self) -> str | None:
        return self._payload.get("traceId")

    @property
    def id(self) -> str | int | None:
        return self._payload.get("id")

    @property
    def response_agent(self) -> str | None:
        return self._payload.get("responseAgent")

    def __getitem__(self, key: str) -> Any:
        return self._payload[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self._payload.get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self._payload

    def to_dict(self) -> dict[str, Any]:
        """The response envelope as received."""
        return dict(self._payload)

    def __repr__(self) -> str:
        return f"Response({self._payload!r})"


class Client:
    """Talks ARC to one endpoint (``http://host:port/arc``).

    ``raise_errors=False`` returns error responses (``response.error``) instead of raising."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        request_agent: str | None = None,
        timeout: float = 60.0,
        raise_errors: bool = True,
    ) -> None:
        self.url = url
        self.base_url = url.rstrip("/").removesuffix("/arc")
        self.request_agent = request_agent or f"arc-actors-client-{uuid.uuid4().hex[:8]}"
        self.timeout = timeout
        self.raise_errors = raise_errors
        self._headers = {"Content-Type": ARC_CONTENT_TYPE, "Accept": ARC_CONTENT_TYPE}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._session: aiohttp.ClientSession | None = None
        self.chat = ChatMethods(self)
        self.task = TaskMethods(self)

    async def __aenter__(self) -> Client:
        self._session = aiohttp.ClientSession(headers=self._headers)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection pool of an ``async with`` client."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def call(
        self,
        method: str,
        target_agent: str,
        params: dict[str, Any],
        *,
        trace_id: str | None = None,
        timeout: float | None = None,
    ) -> Response:
        """Send any ARC method to ``target_agent`` and return its response."""
        payload = await self._post(self._envelope(method, target_agent, params, trace_id), timeout or self.timeout)
        response = Response(payload)
        if self.raise_errors and response.error:
            _raise(response.error)
        return response

    async def stream(
        self,
        method: str,
        target_agent: str,
        params: dict[str, Any],
        *,
        trace_id: str | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """Send ``method`` with ``stream: true`` and yield its SSE events, ``{"event", "data"}``, as they
        arrive (keep-alive comments are skipped); the stream ends after ``done``. An ``error`` event is
        yielded, not raised; a server that answers with an ARC envelope instead raises its error.
        ``timeout`` bounds the silence between two frames, not the whole stream."""
        body = self._envelope(method, target_agent, {**params, "stream": True}, trace_id)
        read_timeout = aiohttp.ClientTimeout(total=None, sock_read=timeout or self.timeout)
        headers = {"Accept": "text/event-stream"}
        async with self._session_for_call() as session:
            try:
                async with session.post(self.url, data=body, headers=headers, timeout=read_timeout) as reply:
                    if reply.content_type != "text/event-stream":
                        payload = msgspec.json.decode(await reply.read())
                        _raise(payload.get("error") or {"message": f"HTTP {reply.status} without a stream"})
                    async for event in _sse_events(reply.content):
                        yield event
            except TimeoutError as exc:
                raise ARCError(ErrorCode.AGENT_TIMEOUT, f"{self.url} stream silent for {timeout} s") from exc
            except aiohttp.ClientError as exc:
                raise ARCError(ErrorCode.AGENT_UNREACHABLE, f"Cannot reach {self.url}: {exc}") from exc

    def _envelope(self, method: str, target_agent: str, params: dict[str, Any], trace_id: str | None) -> bytes:
        envelope: dict[str, Any] = {
            "arc": ARC_VERSION,
            "id": uuid.uuid4().hex,
            "method": method,
            "requestAgent": self.request_agent,
            "targetAgent": target_agent,
            "params": params,
        }
        if trace_id is not None:
            envelope["traceId"] = trace_id
        return encoder.encode(envelope)

    async def health(self) -> dict[str, Any]:
        """The server's ``GET /health`` document."""
        return await self._get_json("/health")

    async def agent_info(self) -> dict[str, Any]:
        """The server's ``GET /agent-info`` document."""
        return await self._get_json("/agent-info")

    async def _post(self, body: bytes, timeout: float) -> dict[str, Any]:
        async with self._session_for_call() as session:
            try:
                async with session.post(self.url, data=body, timeout=aiohttp.ClientTimeout(total=timeout)) as reply:
                    raw = await reply.read()
                    status = reply.status
            except TimeoutError as exc:
                raise ARCError(ErrorCode.AGENT_TIMEOUT, f"No answer from {self.url} in {timeout} s") from exc
            except aiohttp.ClientError as exc:
                raise ARCError(ErrorCode.AGENT_UNREACHABLE, f"Cannot reach {self.url}: {exc}") from exc
        try:
            payload = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            payload = None
        if not isinstance(payload, dict) or not ("result" in payload or "error" in payload):
            raise ARCError(
                ErrorCode.AGENT_UNREACHABLE,
                f"{self.url} answered HTTP {status} without an ARC response",
                {"httpStatus": status, "body": raw[:200].decode("utf-8", "replace")},
            )
        return payload

    async def _get_json(self, path: str) -> dict[str, Any]:
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        async with self._session_for_call() as session, session.get(self.base_url + path, timeout=timeout) as reply:
            reply.raise_for_status()
            return msgspec.json.decode(await reply.read())

    @asynccontextmanager
    async def _session_for_call(self) -> AsyncIterator[aiohttp.ClientSession]:
        if self._session is not None:
            yield self._session
            return
        async with aiohttp.ClientSession(headers=self._headers) as session:
            yield session


def _raise(error: dict[str, Any]) -> None:
    raise ARCError(error.get("code", ErrorCode.INTERNAL_ERROR), error.get("message", ""), error.get("details"))


async def _sse_events(content: aiohttp.StreamReader) -> AsyncIterator[dict[str, Any]]:
    """The events of an SSE body: frames end at a blank line; comment lines are skipped."""
    event: str | None = None
    data: list[str] = []
    async for raw in content:
        line = raw.decode().rstrip("\r\n")
        if line.startswith("event:"):
            event = line[len("event:") :].strip()
        elif line.startswith("data:"):
            data.append(line[len("data:") :].strip())
        elif not line and event is not None and data:
            yield {"event": event, "data": msgspec.json.decode("\n".join(data))}
            if event == "done":
                return
            event, data = None, []


def _params(**fields: Any) -> dict[str, Any]:
    """Wire params from keyword arguments, leaving out the ones not given."""
    return {name: value for name, value in fields.items() if value is not None}


class ChatMethods:
    """``client.chat``: chat.start, chat.message and chat.end, with the reference's keyword names."""

    def __init__(self, client: Client) -> None:
        self._client = client

    async def start(
        self,
        target_agent: str,
        initial_message: dict[str, Any],
        chat_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        trace_id: str | None = None,
        timeout: float | None = None,
        stream: bool = False,
    ) -> Response | AsyncIterator[dict[str, Any]]:
        """Start a chat; with ``stream=True``, an async iterator of its reply's SSE events."""
        params = _params(initialMessage=initial_message, chatId=chat_id, metadata=metadata)
        return await self._send("chat.start", target_agent, params, trace_id, timeout, stream)

    async def message(
        self,
        target_agent: str,
        chat_id: str,
        message: dict[str, Any],
        trace_id: str | None = None,
        timeout: float | None = None,
        stream: bool = False,
    ) -> Response | AsyncIterator[dict[str, Any]]:
        """Send a message in a chat; with ``stream=True``, an async iterator of its reply's SSE events."""
        params = _params(chatId=chat_id, message=message)
        return await self._send("chat.message", target_agent, params, trace_id, timeout, stream)

    async def _send(
        self,
        method: str,
        target_agent: str,
        params: dict[str, Any],
        trace_id: str | None,
        timeout: float | None,
        stream: bool,
    ) -> Response | AsyncIterator[dict[str, Any]]:
        if stream:
            return self._client.stream(method, target_agent, params, trace_id=trace_id, timeout=timeout)
        return await self._client.call(method, target_agent, params, trace_id=trace_id, timeout=timeout)

    async def end(
        self,
        target_agent: str,
        chat_id: str,
        reason: str | None = None,
        trace_id: str | None = None,
        timeout: float | None = None,
    ) -> Response:
        params = _params(chatId=chat_id, reason=reason)
        return await self._client.call("chat.end", target_agent, params, trace_id=trace_id, timeout=timeout)


class TaskMethods:
    """``client.task``: task.create, send, info, cancel, subscribe and notification."""

    def __init__(self, client: Client) -> None:
        self._client = client

    async def create(
        self,
        target_agent: str,
        initial_message: dict[str, Any],
        priority: str | None = None,
        metadata: dict[str, Any] | None = None,
        trace_id: str | None = None,
        timeout: float | None = None,
    ) -> Response:
        params = _params(initialMessage=initial_message, priority=priority, metadata=metadata)
        return await self._client.call("task.create", target_agent, params, trace_id=trace_id, timeout=timeout)

    async def send(
        self,
        target_agent: str,
        task_id: str,
        message: dict[str, Any],
        trace_id: str | None = None,
        timeout: float | None = None,
    ) -> Response:
        params = _params(taskId=task_id, message=message)
        return await self._client.call("task.send", target_agent, params, trace_id=trace_id, timeout=timeout)

    async def info(
        self,
        target_agent: str,
        task_id: str,
        include_messages: bool = True,
        include_artifacts: bool = True,
        trace_id: str | None = None,
        timeout: float | None = None,
    ) -> Response:
        params = _params(taskId=task_id, includeMessages=include_messages, includeArtifacts=include_artifacts)
        return await self._client.call("task.info", target_agent, params, trace_id=trace_id, timeout=timeout)

    async def cancel(
        self,
        target_agent: str,
        task_id: str,
        reason: str | None = None,
        trace_id: str | None = None,
        timeout: float | None = None,
    ) -> Response:
        params = _params(taskId=task_id, reason=reason)
        return await self._client.call("task.cancel", target_agent, params, trace_id=trace_id, timeout=timeout)

    async def subscribe(
        self,
        target_agent: str,
        task_id: str,
        callback_url: str,
        events: list[str] | None = None,
        trace_id: str | None = None,
        timeout: float | None = None,
    ) -> Response:
        params = _params(taskId=task_id, callbackUrl=callback_url, events=events)
        return await self._client.call("task.subscribe", target_agent, params, trace_id=trace_id, timeout=timeout)

    async def notification(
        self,
        target_agent: str,
        task_id: str,
        event: str,
        timestamp: str,
        data: dict[str, Any],
        trace_id: str | None = None,
        timeout: float | None = None,
    ) -> Response:
        params = _params(taskId=task_id, event=event, timestamp=timestamp, data=data)
        return await self._client.call("task.notification", target_agent, params, trace_id=trace_id, timeout=timeout)

"""Managed chats: the runtime owns a chat's id, status, timestamps and history, so an agent writes only
what it says.

For every agent that answers ``chat.start`` (unless it says ``managed_chats = False``), the handlers of
``chat.start``, ``chat.message`` and ``chat.end`` are wrapped (``map_handlers``) so that, in the agent's
own thread, around its code:

* ``chat.start`` creates the chat: its id is ``params.chatId`` or a generated one (passed to the
  handler in ``params["chatId"]``); an id the agent already has is refused -32602 with ``chatId``.
* ``chat.message`` appends the message and the reply; an unknown chat is -43001, a closed one -43002,
  both with ``chatId`` in details, and the handler is not called.
* ``chat.end`` closes the chat, with or without a ``chat_end`` handler of the agent's own.

The handler sees the chat, history included, as ``context.chat``. It may return just its reply (a
string, a Message dict ``{role, parts}``, a list of parts, or None for no message) and gets the ARC
chat result built for it; any other dict (such as the seed's full ``{"type": "chat", ...}`` results)
is answered unchanged, and the chat is still recorded, under the ``chatId`` of that result's ``chat``
when it has one (an id of the handler's own choice that names a chat this caller started starts that
record afresh; another caller's chat is refused -32602). A handler that raises records nothing.

A handler may also be an async generator of ``str`` deltas (``arc_actors.streaming``): its deltas
joined are its reply, streamed as they come when the request asked for ``stream: true``.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Generator
from functools import partial
from typing import Any

import msgspec
from loguru import logger

from arc_actors.agent import PLAIN_RESULTS, AgentSpec, Context, Handler
from arc_actors.exceptions import ARCError
from arc_actors.protocol import ErrorCode
from arc_actors.store import ServingStore, Store, new_id, record_key, utc_now
from arc_actors.streaming import streamed

ACTIVE = "ACTIVE"
CLOSED = "CLOSED"
CHAT_KIND = "chat"
"""The store ``kind`` of chat records."""


class Chat(msgspec.Struct, rename="camel", kw_only=True):
    """One managed chat, as it is stored and as a handler reads it in ``context.chat``.

    ``messages`` is the whole history in order, user messages and the agent's replies, as Message
    dicts; in ``chat.message`` it already ends with the message being answered."""

    chat_id: str
    agent_id: str
    status: str
    created_at: str
    updated_at: str
    closed_at: str | None = None
    reason: str | None = None
    participants: list[str] = msgspec.field(default_factory=list)
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    messages: list[dict[str, Any]] = msgspec.field(default_factory=list)

    def result(self, message: dict[str, Any] | None) -> dict[str, Any]:
        """The ARC result ``{"type": "chat", "chat": {...}}`` with ``message`` as the latest message."""
        chat: dict[str, Any] = {
            "chatId": self.chat_id,
            "status": self.status,
            "participants": self.participants,
            "createdAt": self.created_at,
            "updatedAt": self.updated_at,
        }
        optional = {"message": message, "closedAt": self.closed_at, "reason": self.reason}
        chat.update({key: value for key, value in optional.items() if value is not None})
        if self.metadata:
            chat["metadata"] = self.metadata
        return {"type": "chat", "chat": chat}


class _Participants(msgspec.Struct):
    """What ``chat.start`` reads of a chat it may replace: who started it (the rest is not decoded)."""

    participants: list[str] = msgspec.field(default_factory=list)


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Chat)
_participants_decoder = msgspec.json.Decoder(_Participants)


def new_chat_id() -> str:
    """A fresh chat id, for a ``chat.start`` that names none."""
    return new_id("chat")


class ChatBook:
    """The managed chats of one serving server, kept in its one ``ServingStore``;
    every method runs in an agent's thread."""

    def __init__(self, store: ServingStore) -> None:
        self._serving = store

    def manage(self, spec: AgentSpec) -> AgentSpec:
        """``spec`` with managed chats when it answers ``chat.start`` (and then ``chat.end`` too), unless
        it says ``managed_chats=False``; other agents are left as they are."""
        if "chat.start" not in spec.methods or not spec.managed_chats:
            return spec
        return spec.map_handlers(self._wrap, tuple(dict.fromkeys((*spec.methods, "chat.end"))))

    def get(self, agent_id: str, chat_id: str) -> Chat | None:
        """The chat ``chat_id`` of ``agent_id`` as stored, or None."""
        raw = self._store_in_use().load(CHAT_KIND, record_key(agent_id, chat_id))
        return None if raw is None else _decoder.decode(raw)

    def _exists(self, agent_id: str, chat_id: str) -> bool:
        return self._store_in_use().load(CHAT_KIND, record_key(agent_id, chat_id)) is not None

    def _wrap(self, method: str, handler: Handler | None) -> Handler:
        lifecycle = {"chat.start": self._start, "chat.message": self._message, "chat.end": self._end}.get(method)
        if lifecycle is None:
            return handler

        def managed(params: dict[str, Any], context: Context) -> Any:
            return _drive(lifecycle(params, context), handler, context)

        return managed

    # Each lifecycle is a generator: it yields the params and chat the handler is to see, is sent the
    # handler's answer, and returns the ARC result. _drive runs the handler in between, without an event
    # loop when the handler is a plain function (most of them; a loop costs some 30 µs per request).

    def _start(self, params: dict[str, Any], context: Context) -> _Lifecycle:
        agent_id, requested = context.target_agent, params.get("chatId")
        if requested is not None and self._exists(agent_id, requested):
            raise _in_use(requested)
        now = utc_now()
        chat = Chat(
            chat_id=requested or new_chat_id(),
            agent_id=agent_id,
            status=ACTIVE,
            created_at=now,
            updated_at=now,
            participants=[context.request_agent, agent_id],
            metadata=_copied(metadata) if (metadata := params.get("metadata")) else {},
            messages=[_copied(params["initialMessage"])],
        )
        result, reply, chat_id = yield {**params, "chatId": chat.chat_id}, chat
        store, key = self._store_in_use(), record_key(agent_id, chat_id)
        with self._serving.transaction():
            started_by = _started_by(store.load(CHAT_KIND, key))
            if started_by is not None and (chat_id == chat.chat_id or started_by != context.request_agent):
                # this id started meanwhile by another worker, or another caller's chat named by a full
                # result (never taken over); this caller's own chat named again starts afresh
                raise _in_use(chat_id)
            # a new record: the chat the handler was given stays as it was (its copy may not be made yet)
            chat = msgspec.structs.replace(chat, chat_id=chat_id, messages=[*chat.messages])
            _add_reply(chat, reply)
            store.save(CHAT_KIND, key, _encoder.encode(chat))
        return chat.result(reply) if result is None else result

    def _message(self, params: dict[str, Any], context: Context) -> _Lifecycle:
        message = _copied(params["message"])  # as it came: what the handler does to its params is not recorded
        chat = self._open_chat(context.target_agent, params["chatId"])
        chat.messages.append(message)
        result, reply, _ = yield params, chat
        with self._serving.transaction():
            chat = self._open_chat(context.target_agent, params["chatId"], closed_ok=True)
            chat.messages.append(message)
            _add_reply(chat, reply)
            self._save(chat)
        return chat.result(reply) if result is None else result

    def _end(self, params: dict[str, Any], context: Context) -> _Lifecycle:
        chat = self._open_chat(context.target_agent, params["chatId"])
        result, reply, _ = yield params, chat
        with self._serving.transaction():
            chat = self._open_chat(context.target_agent, params["chatId"])
            _add_reply(chat, reply)
            chat.status, chat.closed_at, chat.reason = CLOSED, chat.updated_at, params.get("reason")
            self._save(chat)
        logger.bind(agent_id=chat.agent_id, trace_id=context.trace_id).debug("chat {} closed", chat.chat_id)
        return chat.result(reply) if result is None else result

    def _open_chat(self, agent_id: str, chat_id: str, *, closed_ok: bool = False) -> Chat:
        """The stored chat; -43001 when there is none, -43002 when it is closed (unless ``closed_ok``:
        a message accepted before the chat closed is still recorded)."""
        chat = self.get(agent_id, chat_id)
        if chat is None:
            raise ARCError(ErrorCode.CHAT_NOT_FOUND, f"Chat not found: {chat_id}", {"chatId": chat_id})
        if chat.status == CLOSED and not closed_ok:
            raise ARCError(
                ErrorCode.CHAT_ALREADY_CLOSED,
                f"Chat already closed: {chat_id}",
                {"chatId": chat_id, "closedAt": chat.closed_at},
            )
        return chat

    def _save(self, chat: Chat) -> None:
        self._store_in_use().save(CHAT_KIND, record_key(chat.agent_id, chat.chat_id), _encoder.encode(chat))

    def _store_in_use(self) -> Store:
        return self._serving.store


_Answer = tuple[Any, dict[str, Any] | None, str]
"""What a lifecycle is sent: the result to pass through unchanged (None when the runtime builds it),
the reply message to record, and the chat id the answer names."""
_Lifecycle = Generator[tuple[dict[str, Any], Chat], _Answer, Any]


def _drive(lifecycle: _Lifecycle, handler: Handler | None, context: Context) -> Any:
    """Run one lifecycle around ``handler`` (None: a ``chat.end`` the agent does not handle), with a
    copy of the chat as ``context.chat``. Returns the result, or an awaitable of it when the handler's
    answer has to be awaited or iterated."""
    params, chat = next(lifecycle)
    context.copy_chat_when_read(partial(_deep_copy, chat))  # what the handler does to it is not recorded
    answer = None if handler is None else handler(params, context)
    if type(answer) in PLAIN_RESULTS:
        return _finish(lifecycle, chat, answer)
    if inspect.isasyncgen(answer):
        return _finish_later(lifecycle, chat, streamed(answer, context.stream))
    if inspect.isawaitable(answer):
        return _finish_later(lifecycle, chat, answer)
    return _finish(lifecycle, chat, answer)


async def _finish_later(lifecycle: _Lifecycle, chat: Chat, answer: Awaitable[Any]) -> Any:
    return _finish(lifecycle, chat, await answer)


def _started_by(record: bytes | None) -> str | None:
    """Who started the chat stored as ``record`` (None: there is no such chat)."""
    if record is None:
        return None
    participants = _participants_decoder.decode(record).participants
    return participants[0] if participants else ""


def _copied(value: Any) -> Any:
    """A deep copy of JSON data from a request, so the chat keeps it as it came, whatever the handler
    does to its params."""
    return msgspec.json.decode(_encoder.encode(value))


def _deep_copy(chat: Chat) -> Chat:
    return _decoder.decode(_encoder.encode(chat))


def _finish(lifecycle: _Lifecycle, chat: Chat, answer: Any) -> Any:
    try:
        lifecycle.send(_interpret(answer, chat))
    except StopIteration as done:
        return done.value
    raise RuntimeError("a chat lifecycle must end after the handler's answer")


def _interpret(answer: Any, chat: Chat) -> _Answer:
    """What ``answer`` means for ``chat``: a reply the runtime builds the result around, or a full
    result passed through, recorded under the ``chatId`` of its ``chat`` when it names one."""
    reply = as_message(answer)
    if reply is not NOT_A_REPLY:
        return None, reply, chat.chat_id
    body = answer.get("chat") if isinstance(answer, dict) else None
    body = body if isinstance(body, dict) else {}
    chat_id = body.get("chatId") if isinstance(body.get("chatId"), str) else chat.chat_id
    message = body.get("message")
    return answer, message if isinstance(message, dict) else None, chat_id


NOT_A_REPLY: Any = object()


def as_message(answer: Any) -> dict[str, Any] | None:
    """The Message a reply-only answer stands for: a string is one text part, a list its parts, a dict
    with ``parts`` a Message (role ``agent`` unless it says), None no message. Anything else is a full
    result: ``NOT_A_REPLY``."""
    if answer is None:
        return None
    if isinstance(answer, str):
        return {"role": "agent", "parts": [_text(answer)]}
    if isinstance(answer, dict) and "parts" in answer and "type" not in answer:
        return {"role": "agent", **answer}
    if isinstance(answer, list):
        if not all(isinstance(part, str | dict) for part in answer):
            raise TypeError(f"a chat handler's list of parts holds strings or part dicts, got {answer!r}")
        return {"role": "agent", "parts": [_text(part) if isinstance(part, str) else part for part in answer]}
    return NOT_A_REPLY


def _text(content: str) -> dict[str, Any]:
    return {"type": "TextPart", "content": content}


def _add_reply(chat: Chat, reply: dict[str, Any] | None) -> None:
    if reply is not None:
        chat.messages.append(reply)
    chat.updated_at = utc_now()


def _in_use(chat_id: str) -> ARCError:
    return ARCError(
        ErrorCode.INVALID_PARAMS, f"Invalid params: chatId {chat_id} is already in use", {"chatId": chat_id}
    )

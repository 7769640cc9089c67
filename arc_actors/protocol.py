"""The ARC wire format, declared once as msgspec types.

Decoding a request *is* its validation: a body that decodes into ``ARCRequest`` has every
required field with the right type, and msgspec's error names the offending field path. Nothing
else in the package re-checks envelope fields by hand.
"""

from __future__ import annotations

import re
from enum import IntEnum
from typing import Any

import msgspec

ARC_VERSION = "1.0"
ARC_CONTENT_TYPE = "application/arc+json"


class ErrorCode(IntEnum):
    """Every error code of the ARC protocol (see docs/ARC_PROTOCOL.md)."""

    PARSE_ERROR = -32700
    INVALID_REQUEST = -32600
    METHOD_NOT_FOUND = -32601
    INVALID_PARAMS = -32602
    INTERNAL_ERROR = -32603

    AGENT_NOT_FOUND = -41001
    AGENT_NOT_AVAILABLE = -41002
    AGENT_UNREACHABLE = -41003
    INVALID_AGENT_ID = -41004
    AGENT_AUTH_FAILED = -41005
    AGENT_TIMEOUT = -41006

    TASK_NOT_FOUND = -42001
    TASK_ALREADY_COMPLETED = -42002
    TASK_ALREADY_CANCELED = -42003
    TASK_EXECUTION_FAILED = -42004
    TASK_TIMEOUT = -42005
    INVALID_TASK_STATUS_TRANSITION = -42006

    CHAT_NOT_FOUND = -43001
    CHAT_ALREADY_CLOSED = -43002
    CHAT_TIMEOUT = -43003
    CHAT_PARTICIPANT_LIMIT = -43004
    INVALID_CHAT_MESSAGE = -43005

    AUTHENTICATION_FAILED = -44001
    AUTHORIZATION_FAILED = -44002
    INSUFFICIENT_SCOPE = -44003
    TOKEN_EXPIRED = -44004
    TOKEN_INVALID = -44005
    PERMISSION_DENIED = -44006
    RATE_LIMIT_EXCEEDED = -44007

    INVALID_ARC_VERSION = -45001
    MISSING_REQUIRED_FIELD = -45002
    INVALID_FIELD_FORMAT = -45003
    MESSAGE_TOO_LARGE = -45004
    WORKFLOW_TRACE_INVALID = -45005


class ARCRequest(msgspec.Struct, rename="camel"):
    """A request envelope. ``arc`` is typed loosely so a wrong version is -45001, not -32600."""

    arc: Any
    id: str | int
    method: str
    request_agent: str
    target_agent: str
    params: dict[str, Any]
    trace_id: str | None = None


class ErrorObject(msgspec.Struct):
    """The ``error`` member of a response; ``details`` is always an object on the wire."""

    code: int
    message: str
    details: dict[str, Any] = msgspec.field(default_factory=dict)


class ARCResponse(msgspec.Struct, rename="camel", kw_only=True):
    """A response envelope. ``result`` and ``error`` are both always present, one of them null,
    as the reference server emits them; ``traceId`` only when the request carried one."""

    arc: str = ARC_VERSION
    id: str | int | None
    response_agent: str
    target_agent: str
    result: Any = None
    error: ErrorObject | None = None
    trace_id: str | msgspec.UnsetType | None = msgspec.UNSET


class Part(msgspec.Struct):
    """A message part: ``TextPart``, ``DataPart``, ... (or the short ``text``, ``data``, ...)."""

    type: str
    content: Any = None


class Message(msgspec.Struct):
    role: str
    parts: list[Part]


class ChatStartParams(msgspec.Struct, rename="camel"):
    initial_message: Message
    chat_id: str | None = None
    stream: bool = False
    metadata: dict[str, Any] | None = None


class ChatMessageParams(msgspec.Struct, rename="camel"):
    chat_id: str
    message: Message
    stream: bool = False


class ChatEndParams(msgspec.Struct, rename="camel"):
    chat_id: str
    reason: str | None = None


class TaskCreateParams(msgspec.Struct, rename="camel"):
    initial_message: Message
    priority: str | None = None
    metadata: dict[str, Any] | None = None


class TaskSendParams(msgspec.Struct, rename="camel"):
    task_id: str
    message: Message


class TaskInfoParams(msgspec.Struct, rename="camel"):
    task_id: str
    include_messages: bool = True
    include_artifacts: bool = True


class TaskCancelParams(msgspec.Struct, rename="camel"):
    task_id: str
    reason: str | None = None


class TaskSubscribeParams(msgspec.Struct, rename="camel"):
    task_id: str
    callback_url: str
    events: list[str] | None = None


class TaskNotificationParams(msgspec.Struct, rename="camel"):
    task_id: str
    event: str
    timestamp: str
    data: dict[str, Any]


TASK_EVENTS: tuple[str, ...] = (
    "TASK_CREATED",
    "TASK_STARTED",
    "TASK_PAUSED",
    "TASK_RESUMED",
    "TASK_COMPLETED",
    "TASK_FAILED",
    "TASK_CANCELED",
    "NEW_MESSAGE",
    "NEW_ARTIFACT",
    "STATUS_CHANGE",
)
"""The task events a ``task.subscribe`` may name and a ``task.notification`` may carry (arc-sdk's list)."""


PARAMS_BY_METHOD: dict[str, type[msgspec.Struct]] = {
    "chat.start": ChatStartParams,
    "chat.message": ChatMessageParams,
    "chat.end": ChatEndParams,
    "task.create": TaskCreateParams,
    "task.send": TaskSendParams,
    "task.info": TaskInfoParams,
    "task.get": TaskInfoParams,
    "task.cancel": TaskCancelParams,
    "task.subscribe": TaskSubscribeParams,
    "task.notification": TaskNotificationParams,
}
"""The params each method of the ARC method set requires; unknown extra fields are allowed."""

ARC_METHODS: tuple[str, ...] = tuple(PARAMS_BY_METHOD)
"""The ARC method set."""


def params_error(method: str, params: dict[str, Any]) -> ErrorObject | None:
    """-32602 when ``params`` lack what ``method`` requires (methods outside the ARC set: never)."""
    params_type = PARAMS_BY_METHOD.get(method)
    if params_type is None:
        return None
    try:
        msgspec.convert(params, params_type)
    except msgspec.ValidationError as exc:
        text = str(exc).replace("`$", "`$.params")
        return error(ErrorCode.INVALID_PARAMS, f"Invalid params for {method}: {text}", {"method": method})
    return None


_JSON_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"?', re.S)
"""A JSON string, or an unterminated one to the end (possessive: linear on any input, where a string
that never closes made a backtracking pattern quadratic)."""
_BRACKET = re.compile(rb"[\[\]{}]")


def json_shape(document: bytes, max_containers: int) -> tuple[int, int]:
    """How many objects and arrays a JSON document holds, and how deep they nest (the document's own
    object is level 1; not measured, 0, past ``max_containers``), read from its bytes with strings
    skipped, without decoding it: in C but for one step per bracket, where decoding (and walking) a
    megabyte of empty arrays stalls the event loop for most of a second. Meaningful for valid JSON;
    any other is refused when decoded."""
    bare = _JSON_STRING.sub(b"", document)
    containers = max(bare.count(b"{") + bare.count(b"["), bare.count(b"}") + bare.count(b"]"))
    if containers > max_containers:
        return containers, 0
    depth = deepest = 0
    for bracket in _BRACKET.findall(bare):
        if bracket in b"{[":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return containers, deepest


Outcome = msgspec.Raw | ErrorObject
"""What an agent answers a request with: its result, already encoded as JSON, or an error."""


class _WireRequest(ARCRequest):
    """A request as it arrives: ``params`` kept as raw bytes until its size is checked."""

    params: msgspec.Raw


class ParamsTooLarge(Exception):
    """``params`` is over the configured size; it was measured, not decoded."""


_wire_decoder = msgspec.json.Decoder(_WireRequest)
_request_decoder = msgspec.json.Decoder(ARCRequest)
_params_decoder = msgspec.json.Decoder(dict[str, Any])


def decode_request(body: bytes, max_params_bytes: int) -> ARCRequest:
    """Decode and validate a request envelope; ``params`` over ``max_params_bytes`` raises
    ``ParamsTooLarge`` before it is decoded. Invalid input raises msgspec's errors, whose message
    names the field path."""
    if len(body) <= max_params_bytes:  # params cannot be over the limit: decode it all in one pass
        return _request_decoder.decode(body)
    wire = _wire_decoder.decode(body)
    if len(wire.params) > max_params_bytes:
        raise ParamsTooLarge(len(wire.params))
    try:
        params = _params_decoder.decode(wire.params)
    except msgspec.ValidationError as exc:
        raise msgspec.ValidationError(f"{exc} - at `$.params`") from None
    return ARCRequest(wire.arc, wire.id, wire.method, wire.request_agent, wire.target_agent, params, wire.trace_id)


response_decoder = msgspec.json.Decoder(ARCResponse)
encoder = msgspec.json.Encoder()


def error(code: int, message: str, details: dict[str, Any] | None = None) -> ErrorObject:
    """Build an error object, keeping ``details`` an object whatever the caller passed."""
    return ErrorObject(code=int(code), message=message, details=as_details(details))


def as_details(details: Any) -> dict[str, Any]:
    """The real arc-sdk Client reads ``details.agentId`` etc., so a non-object is wrapped."""
    if details is None:
        return {}
    if isinstance(details, dict):
        return details
    return {"value": details}

"""The one exception type of ARC errors, raised by handlers and by the client alike.

A handler raises ``ARCError(code, message, details)`` and the caller is answered with exactly that
error; the client raises the same type when a server answers with an error. ``ARCException`` is the
name the reference SDK and the seed document use, kept as an alias so their code runs unchanged.
"""

from __future__ import annotations

import uuid
from typing import Any

from loguru import logger

from arc_actors.protocol import ErrorCode, ErrorObject, as_details


class ARCError(Exception):
    """An ARC protocol error: an int ``code`` (see ``ErrorCode``), a ``message`` and ``details``."""

    def __init__(self, code: int, message: str = "", details: dict[str, Any] | None = None) -> None:
        self.code = int(code)
        self.message = message or _default_message(self.code)
        self.details = as_details(details)
        super().__init__(f"[{self.code}] {self.message}")

    def to_error_object(self) -> ErrorObject:
        """The wire form of this error."""
        return ErrorObject(code=self.code, message=self.message, details=self.details)


ARCException = ARCError


def _default_message(code: int) -> str:
    try:
        return ErrorCode(code).name.replace("_", " ").capitalize()
    except ValueError:
        return "ARC error"


def internal_error(exc: BaseException, agent_id: str, trace_id: str | None, where: str) -> ErrorObject:
    """Answer an unexpected exception: the log gets the traceback under a fresh ``errorId``, the
    wire gets the id only."""
    error_id = uuid.uuid4().hex
    logger.bind(agent_id=agent_id, trace_id=trace_id or "-").opt(exception=exc).error(
        "{} raised in {} (errorId {})", type(exc).__name__, where, error_id
    )
    return ErrorObject(code=ErrorCode.INTERNAL_ERROR, message="Internal error", details={"errorId": error_id})

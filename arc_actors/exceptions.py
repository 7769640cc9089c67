"""The one exception type of ARC errors, raised by handlers and by the client alike.

A handler raises ``ARCError(code, message, details)`` and the caller is answered with exactly that
error; the client raises the same type when a server answers with an error. ``ARCException`` is the
name the reference SDK and the seed document use, kept as an alias so their code runs unchanged.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

from loguru import logger

from arc_actors.logs import LineRate
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

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled with its code, message and details (an engine ships it between processes)."""
        return type(self), (self.code, self.message, self.details), self.__dict__


ARCException = ARCError


def _default_message(code: int) -> str:
    try:
        return ErrorCode(code).name.replace("_", " ").capitalize()
    except ValueError:
        return "ARC error"


REPEAT_WINDOW_S = 10.0
"""The same crash (agent, exception type, where, the lines of its traceback) logs its traceback once per
this many seconds; its repeats are answered errorIds ``FIRST-N`` (the Nth repeat of the crash whose
traceback is under errorId ``FIRST``) and log one line a second."""
REPEAT_LINE_INTERVAL_S = 1.0
_MAX_REMEMBERED = 1024


class _Repeats:
    """The crashes whose traceback was logged lately. A crash storm (an agent failing on every request,
    a chaos run) would otherwise format and write a traceback, or a line, per request on the core the
    healthy agents share: the first one says all the others would, and a repeat's errorId names it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._logged: dict[tuple[str, ...], tuple[str, float, int]] = {}
        self._lines = LineRate(REPEAT_LINE_INTERVAL_S)

    def first_of(self, key: tuple[str, ...], error_id: str) -> tuple[str, int, int | None] | None:
        """None when this crash is to log its traceback under ``error_id``; else the errorId that logged
        it, this repeat's number, and, when it is to log its error line (the first in a second), how many
        repeats since the last such line did not (None: this one does not)."""
        now = time.monotonic()
        with self._lock:
            logged = self._logged.get(key)
            if logged is None or now - logged[1] > REPEAT_WINDOW_S:
                if len(self._logged) >= _MAX_REMEMBERED:
                    self._logged.clear()
                    self._lines.forget()
                self._logged[key] = (error_id, now, 0)
                return None
            first_id, since, repeats = logged
            self._logged[key] = (first_id, since, repeats + 1)
        return first_id, repeats + 1, self._lines.fold(key, now)


_repeats = _Repeats()


def internal_error(exc: BaseException, agent_id: str, trace_id: str | None, where: str) -> ErrorObject:
    """Answer an unexpected exception: the log gets the traceback under a fresh ``errorId``, the wire
    gets the id only. A repeat of the same crash within ``REPEAT_WINDOW_S`` is answered ``FIRST-N``
    (``FIRST`` the errorId with the traceback) and logs one error line a second, counting the repeats in
    between, which log at DEBUG level (errorId, message and trace id, as the error line)."""
    error_id = uuid.uuid4().hex
    repeat = _repeats.first_of((agent_id, type(exc).__qualname__, where, *_raised_from(exc)), error_id)
    if repeat is None:
        log = logger.bind(agent_id=agent_id, trace_id=trace_id or "-")
        log.opt(exception=exc).error("{} raised in {} (errorId {})", type(exc).__name__, where, error_id)
        return _internal(error_id)
    first_id, repeats, unlogged = repeat
    error_id = f"{first_id}-{repeats}"
    log = logger.bind(agent_id=agent_id, trace_id=trace_id or "-")
    if unlogged is None:
        log.debug("{} raised in {} (errorId {}): {}", type(exc).__name__, where, error_id, exc)
        return _internal(error_id)
    log.error(
        "{} raised in {} (errorId {}): {}; traceback under errorId {} (repeat {} within {:g} s; {} more "
        "since the last line, each answered errorId {}-N, logged at DEBUG)",
        type(exc).__name__,
        where,
        error_id,
        exc,
        first_id,
        repeats,
        REPEAT_WINDOW_S,
        unlogged,
        first_id,
    )
    return _internal(error_id)


def _internal(error_id: str) -> ErrorObject:
    return ErrorObject(code=ErrorCode.INTERNAL_ERROR, message="Internal error", details={"errorId": error_id})


def _raised_from(exc: BaseException) -> tuple[str, ...]:
    """Every ``file:line`` of ``exc``'s traceback (its message when it has none), so that two crashes
    share a traceback only when they took the same path, not merely ended in the same library line."""
    tb = exc.__traceback__
    if tb is None:
        return (str(exc),)
    lines = []
    while tb is not None:
        lines.append(f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}")
        tb = tb.tb_next
    return tuple(lines)

"""Log set-up for processes that serve: every line shows the agent id and trace id it is bound to.

The library only ever logs through loguru's ``logger.bind(agent_id=..., trace_id=...)``; configuring
sinks is the application's choice, made here for ``Server.run`` and the CLI.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Hashable

from aiohttp.http_exceptions import HttpProcessingError
from loguru import logger

LINE_FORMAT = (
    "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> | <level>{level: <7}</level> | "
    "<cyan>{extra[agent_id]}</cyan> | {extra[trace_id]} | <level>{message}</level>"
)


def configure_logging(level: str = "INFO", *, json_lines: bool = False) -> None:
    """Send logs to stderr at ``level``, one line each, with agent and trace ids ("-" when unbound);
    ``json_lines`` writes each record as one JSON object instead (loguru's ``serialize``)."""
    logger.remove()
    logger.enable("arc_actors")
    logger.configure(extra={"agent_id": "-", "trace_id": "-"})
    logger.add(
        sys.stderr, level=level.upper(), format=LINE_FORMAT, backtrace=False, diagnose=False, serialize=json_lines
    )
    server_log = logging.getLogger("aiohttp.server")
    server_log.handlers = [_MalformedRequests()]
    server_log.setLevel(logging.INFO)  # what aiohttp logs at DEBUG (a port scanner's junk) stays out
    server_log.propagate = False


MALFORMED_LINE_INTERVAL_S = 1.0


class _MalformedRequests(logging.Handler):
    """aiohttp's server log into ours. A malformed HTTP request (a bad header, an unknown method, a line
    too long) becomes one line naming its kind and sender, at most one a second per kind: its text
    quotes the request, which may carry a token, and a flood of them must not flood the log. Anything
    else aiohttp reports goes on as it is, traceback included."""

    def __init__(self) -> None:
        super().__init__()
        self._rate = LineRate(MALFORMED_LINE_INTERVAL_S)

    def emit(self, record: logging.LogRecord) -> None:
        problem = record.exc_info[1] if record.exc_info else None
        if not isinstance(problem, HttpProcessingError):
            logger.opt(exception=record.exc_info).log(record.levelname, record.getMessage())
            return
        kind = type(problem).__name__
        left_out = self._rate.fold(kind, time.monotonic())
        if left_out is not None:
            sender = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            more = f" ({left_out} more since the last such line)" if left_out else ""
            logger.info("malformed HTTP request from {} refused by the HTTP parser: {}{}", sender, kind, more)


class LineRate:
    """At most one log line per key and interval, the next one telling how many were left out: a storm
    (an agent restarted or crashing hundreds of times a second) must not spend the shared core on lines."""

    def __init__(self, interval_s: float) -> None:
        self._interval_s = interval_s
        self._last: dict[Hashable, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def fold(self, key: Hashable, now: float) -> int | None:
        """None: leave this line out; else log it, with this many left out since the last one."""
        with self._lock:
            logged_at, left_out = self._last.get(key, (-self._interval_s, 0))
            if now - logged_at < self._interval_s:
                self._last[key] = (logged_at, left_out + 1)
                return None
            self._last[key] = (now, 0)
            return left_out

    def forget(self) -> None:
        """Start afresh for every key (a caller bounding how many keys it remembers)."""
        with self._lock:
            self._last.clear()

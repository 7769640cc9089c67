"""Log set-up for processes that serve: every line shows the agent id and trace id it is bound to.

The library only ever logs through loguru's ``logger.bind(agent_id=..., trace_id=...)``; configuring
sinks is the application's choice, made here for ``Server.run`` and the CLI.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Hashable

from loguru import logger

LINE_FORMAT = (
    "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> | <level>{level: <7}</level> | "
    "<cyan>{extra[agent_id]}</cyan> | {extra[trace_id]} | <level>{message}</level>"
)


def configure_logging(level: str = "INFO", *, json_lines: bool = False) -> None:
    """Send logs to stderr at ``level``, one line each, with agent and trace ids ("-" when unbound);
    ``json_lines`` writes each record as one JSON object instead (loguru's ``serialize``)."""
    logger.remove()
    logger.configure(extra={"agent_id": "-", "trace_id": "-"})
    logger.add(
        sys.stderr, level=level.upper(), format=LINE_FORMAT, backtrace=False, diagnose=False, serialize=json_lines
    )


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

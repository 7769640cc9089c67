"""Log set-up for processes that serve: every line shows the agent id and trace id it is bound to.

The library only ever logs through loguru's ``logger.bind(agent_id=..., trace_id=...)``; configuring
sinks is the application's choice, made here for ``Server.run`` and the CLI.
"""

from __future__ import annotations

import sys

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

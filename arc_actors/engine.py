"""The one small interface through which agents are reached: spawn, ask, stop, status.

Everything above it (router, gateway) speaks only this interface, so the in-process pykka engine can
be replaced by a distributed one without touching them.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from arc_actors.agent import AgentSpec, Context
from arc_actors.protocol import Outcome


class AgentState(StrEnum):
    """Where an agent's actor is in its life, as ``/health`` reports it."""

    RUNNING = "running"
    RESTARTING = "restarting"
    FAILED = "failed"
    STOPPED = "stopped"


@dataclass(frozen=True)
class AgentStatus:
    """A snapshot of one agent, read without waiting on its actor."""

    state: AgentState
    restarts: int
    mailbox: int
    uptime_s: float
    last_error: str | None = None

    def as_json(self) -> dict[str, Any]:
        """The ``/health`` form of this status."""
        return {
            "status": self.state.value,
            "restarts": self.restarts,
            "mailbox": self.mailbox,
            "uptime_s": round(self.uptime_s, 3),
            "last_error": self.last_error,
        }


class Engine(Protocol):
    """Runs agents as actors. Every method but ``ask`` is called from the gateway's event loop
    thread and must return without waiting on an actor."""

    def spawn(self, spec: AgentSpec) -> None:
        """Start the actor of a new agent."""

    def ask(self, agent_id: str, method: str, params: dict[str, Any], context: Context) -> Awaitable[Outcome]:
        """Put one request in the agent's mailbox; the awaitable resolves with its outcome.

        Must be called on a running asyncio loop; the outcome is delivered on that loop."""

    def stop(self, agent_id: str, timeout_s: float) -> None:
        """Stop an agent after the messages already in its mailbox, waiting at most ``timeout_s``."""

    def status(self, agent_id: str) -> AgentStatus:
        """The agent's current status."""

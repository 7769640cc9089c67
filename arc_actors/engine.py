"""The one small interface through which agents are reached: spawn, ask, stop, status.

Everything above it (router, gateway) speaks only this interface, so the in-process pykka engine can
be replaced by a distributed one without touching them.
"""

from __future__ import annotations

from collections.abc import Awaitable
from enum import StrEnum
from typing import Any, Protocol

import msgspec

from arc_actors.agent import AgentSpec, Context
from arc_actors.protocol import Outcome


class AgentState(StrEnum):
    """Where an agent's actor is in its life, as ``/health`` reports it: ``starting`` until its first
    instance is up, ``restarting`` through a backoff and restart, ``failed`` once given up on."""

    STARTING = "starting"
    RUNNING = "running"
    RESTARTING = "restarting"
    FAILED = "failed"
    STOPPED = "stopped"


class AgentStatus(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot of one agent, read without waiting on its actor; encoded as is into ``/health``
    (``state`` under the key ``status``)."""

    state: AgentState = msgspec.field(name="status")
    restarts: int
    escalations: int
    mailbox: int
    busy: int
    uptime_s: float
    last_crash: dict[str, str] | None = None


class Engine(Protocol):
    """Runs agents as actors, supervised. Only ``stop`` may wait on an actor; everything else
    returns at once, so the gateway's event loop never blocks."""

    def spawn(self, spec: AgentSpec) -> None:
        """Start the actor of a new agent."""

    def ask(self, agent_id: str, method: str, params: dict[str, Any], context: Context) -> Awaitable[Outcome]:
        """Put one request in the agent's mailbox; the awaitable resolves with its outcome.

        Must be called on a running asyncio loop; the outcome is delivered on that loop."""

    async def drain(self, timeout_s: float) -> dict[str, int]:
        """Refuse new requests, let queued and running ones finish for up to ``timeout_s``, then answer
        the rest -41002; returns how many were answered so, per agent."""

    def stop(self, timeout_s: float) -> list[str]:
        """Stop every agent after the messages already in its mailbox, waiting at most ``timeout_s``
        in all; returns the ids of the agents still busy then. Blocks: call it off the event loop."""

    def restart(self, agent_id: str) -> None:
        """Bring a failed agent back with fresh instances and a forgotten failure history."""

    def status(self, agent_id: str) -> AgentStatus:
        """The agent's current status."""

    async def watch_for_hangs(self) -> None:
        """Until cancelled: answer -41006 for every handler running past its hang threshold, and
        restart its agent as the supervisor decides."""

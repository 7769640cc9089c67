"""The one small interface through which agents are reached: spawn, ask, stop, status.

Everything above it (router, gateway) speaks only this interface, so the in-process pykka engine can
be replaced by a distributed one without touching them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

import msgspec

from arc_actors.agent import AgentSpec, Context
from arc_actors.protocol import ErrorCode, ErrorObject, Outcome, error

RETRY_AFTER_S = 1
"""What a refused request is told to wait before trying again (``details.retryAfter``)."""


class EngineUnavailable(RuntimeError):
    """The selected engine cannot run here (its optional dependency is not installed); the message says
    what to install."""


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
    backoff_s: float = 0.0
    """The delay of its latest restart, while it has served no request since (0 once it has)."""


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


def answer_in_time(future: asyncio.Future[Outcome], timeout_s: float | None, expire: Callable[[], Outcome]) -> None:
    """Answer ``future`` with ``expire()`` once ``timeout_s`` has passed, unless it is answered before: a
    request's timeout, queue included (``expire`` also withdraws the request where it waits)."""
    if timeout_s is None or future.done():
        return
    timer = future.get_loop().call_later(timeout_s, _expire, future, expire)
    future.add_done_callback(lambda _: timer.cancel())


def _expire(future: asyncio.Future[Outcome], expire: Callable[[], Outcome]) -> None:
    if not future.done():
        future.set_result(expire())


def resolve(future: asyncio.Future[Outcome], outcome: Outcome) -> None:
    """Answer ``future`` unless it is answered already (on its loop)."""
    if not future.done():
        future.set_result(outcome)


def crash_record(kind: str, message: str) -> dict[str, str]:
    """An agent's ``last_crash``, as ``/health`` and a -41002's ``details.lastCrash`` show it."""
    return {"time": datetime.now(UTC).isoformat(timespec="milliseconds"), "type": kind, "message": message}


def not_available(agent_id: str, why: str, last_crash: dict[str, str] | None) -> ErrorObject:
    """-41002: the agent cannot take the request (failed, stopping, its process gone)."""
    return error(
        ErrorCode.AGENT_NOT_AVAILABLE,
        f"Agent not available: {agent_id} {why}",
        {"agentId": agent_id, "lastCrash": last_crash},
    )


def mailbox_full(agent_id: str, mailbox_size: int) -> ErrorObject:
    """-44007: the agent's mailbox holds its bound already (backpressure)."""
    return error(
        ErrorCode.RATE_LIMIT_EXCEEDED,
        f"Rate limit exceeded: {agent_id} has {mailbox_size} requests waiting already",
        {"agentId": agent_id, "mailboxSize": mailbox_size, "retryAfter": RETRY_AFTER_S},
    )


def busy_conversation(agent_id: str, call_chain: tuple[str, ...], key: str) -> ErrorObject:
    """-41003 for a call back into an agent (``call_chain`` leads there) in a conversation with a request
    queued or running: that request may be the one awaiting this call, which would then wait forever."""
    return error(
        ErrorCode.AGENT_UNREACHABLE,
        f"Agent unreachable: a call back into {agent_id} from {' -> '.join(call_chain)} joins its conversation"
        f" {key}, which is busy with a request this call may come from",
        {"agentId": agent_id, "callChain": [*call_chain, agent_id], "conversation": key},
    )


def hung(agent_id: str, hang_after_s: float) -> ErrorObject:
    """-41006 for the request whose handler ran past the hang threshold."""
    return error(
        ErrorCode.AGENT_TIMEOUT,
        f"Agent timeout: {agent_id} did not answer within {hang_after_s} s",
        {"agentId": agent_id, "hangAfterS": hang_after_s},
    )


def timed_out(agent_id: str, request_timeout_s: float) -> ErrorObject:
    """-41006 for a caller that waited ``request_timeout_s``, queue included."""
    return error(
        ErrorCode.AGENT_TIMEOUT,
        f"Agent timeout: no answer from {agent_id} within {request_timeout_s} s",
        {"agentId": agent_id, "requestTimeoutS": request_timeout_s},
    )

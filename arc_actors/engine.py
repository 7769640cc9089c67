"""The one small interface through which agents are reached: spawn, ask, stop, status.

Everything above it (router, gateway) speaks only this interface, so the in-process pykka engine can
be replaced by a distributed one without touching them.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from enum import StrEnum
from types import CoroutineType
from typing import Any, Protocol

import msgspec

from arc_actors.agent import AgentSpec, Context, Handler
from arc_actors.exceptions import ARCError, internal_error
from arc_actors.protocol import ErrorCode, ErrorObject, Outcome, encoder, error

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


def run_to_completion(loop: asyncio.AbstractEventLoop, awaitable: Awaitable[Any]) -> Any:
    """Run ``awaitable`` to its end on ``loop``, an agent thread's own loop, which is not running.

    Most handlers finish without waiting on anything, and ``run_until_complete`` costs some 30 µs of
    event-loop bookkeeping each time, more than the rest of a request in an agent. So the loop's oldest
    ready callback (the new task's first step, when the loop was idle) is run at once, with the loop
    marked running as ``run_forever`` marks it (running loop, thread, async-generator hooks), as the loop
    itself would run it first: the task steps as a task (``current_task()``, ``asyncio.timeout()``, async
    generators' clean-up work), and only a task still waiting then runs the loop. What a finished
    handler left to the loop (a timer, a callback) gets one turn of it, as under ``run_until_complete``.
    Python 3.12's eager tasks do this on a running loop, which an agent's is not between messages."""
    if type(awaitable) is CoroutineType and loop.get_task_factory() is None:
        task = asyncio.Task(awaitable, loop=loop)  # what create_task makes, without its checks
    else:
        task = asyncio.ensure_future(awaitable, loop=loop)
    ready = getattr(loop, "_ready", None)  # asyncio's own loops keep their ready callbacks in this deque
    if ready and hasattr(loop, "_asyncgen_firstiter_hook") and not loop.is_running():
        if asyncio._get_running_loop() is None:
            _run_first_callback(loop, ready.popleft())
        if task.done():
            if ready or getattr(loop, "_scheduled", None):
                loop.call_soon(loop.stop)
                loop.run_forever()
            return task.result()
    return loop.run_until_complete(task)


def _run_first_callback(loop: Any, first: asyncio.Handle) -> None:
    if first.cancelled():
        return
    hooks = sys.get_asyncgen_hooks()
    sys.set_asyncgen_hooks(firstiter=loop._asyncgen_firstiter_hook, finalizer=loop._asyncgen_finalizer_hook)
    loop._thread_id = threading.get_ident()  # is_running(), as within run_forever
    asyncio._set_running_loop(loop)
    try:
        first._run()
    finally:
        asyncio._set_running_loop(None)
        loop._thread_id = None
        sys.set_asyncgen_hooks(*hooks)


# What every engine does with one request and one failure, whatever runs the agent.


def serve_request(
    handler: Handler, params: dict[str, Any], context: Context, complete: Callable[[Any], Any]
) -> tuple[Outcome, BaseException | None]:
    """Run ``handler`` (``complete`` runs what it returns to its end, awaiting an awaitable) and encode its
    result. Returns the outcome and, when the handler crashed (anything but an ``ARCError``), the crash."""
    try:
        result = complete(handler(params, context))
        return msgspec.Raw(encoder.encode(result)), None
    except ARCError as exc:
        return exc.to_error_object(), None
    except BaseException as exc:  # noqa: BLE001 - SystemExit and KeyboardInterrupt stay in this agent
        return internal_error(exc, context.target_agent, context.trace_id, context.method), exc


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

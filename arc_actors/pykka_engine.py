"""The in-process engine: each agent is a pykka ``ThreadingActor`` with its own thread and mailbox.

A request crosses threads twice. The gateway's loop ``tell``s the actor a :class:`_Call` (a plain
queue put); the actor runs the handler and hands the outcome back with
``loop.call_soon_threadsafe``. Nothing on the event loop ever blocks on an actor, and nothing raised
by a handler, not even ``SystemExit``, leaves the actor that raised it.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import msgspec
import pykka
from loguru import logger

from arc_actors.agent import Agent, AgentSpec, Context, Handler
from arc_actors.engine import AgentState, AgentStatus
from arc_actors.exceptions import ARCError, internal_error
from arc_actors.protocol import ErrorCode, ErrorObject, Outcome, encoder, error


class _Cell:
    """The engine's record of one agent: its current actor and what ``/health`` reports of it.

    Written by the agent's thread, read by the event loop; single attribute reads and writes are
    atomic in CPython, so no lock is needed for a snapshot."""

    __slots__ = ("last_error", "ref", "restarts", "spec", "started_at", "state")

    def __init__(self, spec: AgentSpec) -> None:
        self.spec = spec
        self.ref: pykka.ActorRef[AgentActor] | None = None
        self.state = AgentState.RUNNING
        self.restarts = 0
        self.started_at = time.monotonic()
        self.last_error: str | None = None


class _Call:
    """One request on its way through an agent's mailbox."""

    __slots__ = ("context", "method", "params", "reply")

    def __init__(self, method: str, params: dict[str, Any], context: Context, reply: Callable[[Outcome], None]) -> None:
        self.method = method
        self.params = params
        self.context = context
        self.reply = reply


class AgentActor(pykka.ThreadingActor):
    """Runs one agent instance: one message at a time, in its own thread.

    The thread is a daemon so a handler that never returns cannot keep the process alive. The asyncio
    loop for ``async def`` handlers is made on first use, so an agent with only sync handlers costs
    no file descriptors."""

    use_daemon_thread = True

    def __init__(self, cell: _Cell) -> None:
        super().__init__()
        self._cell = cell
        self._agent: Agent | None = None
        self._handlers: dict[str, Handler] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._unavailable: ErrorObject | None = None

    def on_start(self) -> None:
        try:
            agent = self._cell.spec.factory()
            self._run_to_completion(agent.on_start())
            self._handlers = agent.handlers()
            self._agent = agent
        except BaseException as exc:  # noqa: BLE001 - a failed start must not take pykka down with it
            agent_id = self._cell.spec.agent_id
            logger.bind(agent_id=agent_id).opt(exception=exc).error("agent {} failed to start", agent_id)
            self._cell.state = AgentState.FAILED
            self._cell.last_error = _describe(exc)
            self._unavailable = error(
                ErrorCode.AGENT_NOT_AVAILABLE,
                f"Agent not available: {agent_id} failed to start",
                {"agentId": agent_id, "reason": _describe(exc)},
            )

    def on_receive(self, message: Any) -> None:
        message.reply(self._serve(message))

    def on_stop(self) -> None:
        try:
            if self._agent is not None:
                self._run_to_completion(self._agent.on_stop())
        except Exception as exc:  # noqa: BLE001 - a failing on_stop is logged, the stop goes on
            logger.bind(agent_id=self._cell.spec.agent_id).opt(exception=exc).error("on_stop raised")
        finally:
            if self._loop is not None:
                self._loop.close()
            self._cell.state = AgentState.STOPPED

    def _serve(self, call: _Call) -> Outcome:
        if self._unavailable is not None:
            return self._unavailable
        try:
            result = self._run_to_completion(self._handlers[call.method](call.params, call.context))
            return msgspec.Raw(encoder.encode(result))
        except ARCError as exc:
            return exc.to_error_object()
        except BaseException as exc:  # noqa: BLE001 - SystemExit and KeyboardInterrupt stay in this agent
            return internal_error(exc, call.context.target_agent, call.context.trace_id, call.method)

    def _run_to_completion(self, value: Any) -> Any:
        if not inspect.isawaitable(value):
            return value
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(value)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _resolve(future: asyncio.Future[Outcome], outcome: Outcome) -> None:
    if not future.done():
        future.set_result(outcome)


class PykkaEngine:
    """The :class:`~arc_actors.engine.Engine` of one process: a pykka actor per agent."""

    def __init__(self) -> None:
        self._cells: dict[str, _Cell] = {}

    def spawn(self, spec: AgentSpec) -> None:
        if spec.agent_id in self._cells:
            raise ValueError(f"agent {spec.agent_id!r} is already running")
        cell = _Cell(spec)
        cell.ref = AgentActor.start(cell)
        self._cells[spec.agent_id] = cell

    def ask(self, agent_id: str, method: str, params: dict[str, Any], context: Context) -> Awaitable[Outcome]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()
        cell = self._cells[agent_id]
        try:
            cell.ref.tell(_Call(method, params, context, partial(loop.call_soon_threadsafe, _resolve, future)))
        except pykka.ActorDeadError:
            future.set_result(
                error(ErrorCode.AGENT_NOT_AVAILABLE, f"Agent not available: {agent_id}", {"agentId": agent_id})
            )
        return future

    def stop(self, agent_id: str, timeout_s: float) -> bool:
        cell = self._cells[agent_id]
        cell.ref.stop(block=False)
        return cell.ref.actor_stopped.wait(timeout_s)

    def shutdown(self, timeout_s: float) -> list[str]:
        """Stop every agent after its queued messages; returns the ids still busy at the deadline.

        Those are left on their daemon threads: a hung handler cannot be killed, only abandoned."""
        deadline = time.monotonic() + timeout_s
        for cell in self._cells.values():
            if cell.ref.is_alive():
                cell.ref.stop(block=False)
        return [
            agent_id
            for agent_id, cell in self._cells.items()
            if not cell.ref.actor_stopped.wait(max(0.0, deadline - time.monotonic()))
        ]

    def status(self, agent_id: str) -> AgentStatus:
        cell = self._cells[agent_id]
        return AgentStatus(
            state=cell.state,
            restarts=cell.restarts,
            mailbox=cell.ref.actor_inbox.qsize(),
            uptime_s=time.monotonic() - cell.started_at,
            last_error=cell.last_error,
        )

"""The in-process engine: each agent is a pykka ``ThreadingActor`` with its own thread and mailbox.

A request crosses threads twice. The gateway's loop ``tell``s the actor a :class:`_Call` (a plain
queue put); the actor runs the handler and hands the outcome back with
``loop.call_soon_threadsafe``. Nothing on the event loop ever blocks on an actor, and nothing raised
by a handler, not even ``SystemExit``, leaves the actor that raised it.

Supervision, executed here as the :class:`~arc_actors.supervisor.Supervisor` decides:

* **crash**: the crashing request is answered -32603, then the actor swaps in a fresh agent instance
  in its own thread, before it takes the next message, so the mailbox and everything queued in it carry
  over (Akka's restart).
* **hang**: the watchdog answers the stuck request -41006, abandons the stuck thread (Python cannot kill
  it), and starts a new actor that takes over the queued messages; whatever the old thread returns
  later is discarded.
* **escalation**: the agent is marked failed and every queued and new request answered -41002 at once.

Each agent's :class:`_Cell` has a lock that orders these transitions against the requests put in its
mailbox, so no request is ever put in a mailbox that nobody will read.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any

import msgspec
import pykka
from loguru import logger

from arc_actors.agent import Agent, AgentSpec, Context, Handler
from arc_actors.engine import AgentState, AgentStatus
from arc_actors.exceptions import ARCError, internal_error
from arc_actors.protocol import ErrorCode, ErrorObject, Outcome, encoder, error
from arc_actors.supervisor import Supervisor

WATCHDOG_TICKS_PER_THRESHOLD = 10
"""The watchdog looks this many times per hang threshold, so a hang is caught within 10% of it."""


class _Call:
    """One request on its way through an agent's mailbox."""

    __slots__ = ("context", "method", "params", "reply")

    def __init__(self, method: str, params: dict[str, Any], context: Context, reply: Callable[[Outcome], None]) -> None:
        self.method = method
        self.params = params
        self.context = context
        self.reply = reply


class _Cell:
    """The engine's record of one agent: its current actor and what ``/health`` reports of it.

    ``generation`` counts actors: an actor whose generation is no longer the cell's has been abandoned
    and must neither answer nor take messages. ``lock`` guards ``ref``, ``generation``, ``state`` and
    the busy marker against each other."""

    __slots__ = (
        "busy_since",
        "current",
        "generation",
        "last_crash",
        "lock",
        "ref",
        "restarts",
        "spec",
        "started_at",
        "state",
    )

    def __init__(self, spec: AgentSpec) -> None:
        self.spec = spec
        self.lock = threading.Lock()
        self.ref: pykka.ActorRef[AgentActor] | None = None
        self.generation = 0
        self.state = AgentState.STARTING
        self.restarts = 0
        self.started_at = time.monotonic()
        self.last_crash: dict[str, str] | None = None
        self.busy_since: float | None = None
        self.current: _Call | None = None

    def not_available(self) -> ErrorObject:
        agent_id = self.spec.agent_id
        return error(
            ErrorCode.AGENT_NOT_AVAILABLE,
            f"Agent not available: {agent_id} has failed and awaits a restart",
            {"agentId": agent_id, "lastCrash": self.last_crash},
        )

    def record_crash(self, kind: str, message: str) -> None:
        self.last_crash = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "type": kind,
            "message": message,
        }


class AgentActor(pykka.ThreadingActor):
    """Runs one agent instance at a time: one message at a time, in its own thread.

    The thread is a daemon so a handler that never returns cannot keep the process alive. The asyncio
    loop for ``async def`` handlers is made on first use, so an agent with only sync handlers costs no
    file descriptors."""

    use_daemon_thread = True

    def __init__(self, cell: _Cell, supervisor: Supervisor, delay_s: float = 0.0) -> None:
        super().__init__()
        self._cell = cell
        self._supervisor = supervisor
        self._generation = cell.generation
        self._delay_s = delay_s
        self._agent: Agent | None = None
        self._handlers: dict[str, Handler] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._failed = False

    @property
    def _abandoned(self) -> bool:
        return self._generation != self._cell.generation

    def on_start(self) -> None:
        self._start_with_retries(self._delay_s)

    def _start_with_retries(self, delay_s: float) -> None:
        """Make a fresh agent instance after ``delay_s``; a failing start is a crash like any other."""
        while not self._abandoned:
            time.sleep(delay_s)
            try:
                self._start_agent()
                return
            except BaseException as exc:  # noqa: BLE001 - whatever on_start raises stays in this agent
                logger.bind(agent_id=self._cell.spec.agent_id).opt(exception=exc).error("agent failed to start")
                next_delay_s = self._after_crash(exc)
                if next_delay_s is None:
                    return
                delay_s = next_delay_s

    def _start_agent(self) -> None:
        cell = self._cell
        with cell.lock:
            cell.busy_since = time.monotonic()
        agent = cell.spec.factory()
        self._run_to_completion(agent.on_start())
        self._handlers = agent.handlers()
        self._agent = agent
        with cell.lock:
            if not self._abandoned:
                cell.busy_since = None
                cell.state = AgentState.RUNNING
                cell.started_at = time.monotonic()

    def on_receive(self, message: Any) -> None:
        cell = self._cell
        with cell.lock:
            if self._abandoned:
                # Taken from the inbox just before it was handed over: pass it on to the new actor.
                cell.ref.tell(message)
                return
            if self._failed:
                message.reply(cell.not_available())
                return
            cell.busy_since = time.monotonic()
            cell.current = message
        outcome, crash = self._serve(message)
        with cell.lock:
            if self._abandoned:
                # The watchdog answered this request already; this thread is no longer the agent's.
                self.stop()
                return
            cell.busy_since = None
            cell.current = None
        message.reply(outcome)
        if crash is not None:
            delay_s = self._after_crash(crash)
            if delay_s is not None:
                self._start_with_retries(delay_s)

    def on_stop(self) -> None:
        self._stop_agent()
        if self._loop is not None:
            self._loop.close()
        with self._cell.lock:
            if not self._abandoned and self._cell.state is not AgentState.FAILED:
                self._cell.state = AgentState.STOPPED

    def _serve(self, call: _Call) -> tuple[Outcome, BaseException | None]:
        try:
            result = self._run_to_completion(self._handlers[call.method](call.params, call.context))
            return msgspec.Raw(encoder.encode(result)), None
        except ARCError as exc:
            return exc.to_error_object(), None
        except BaseException as exc:  # noqa: BLE001 - SystemExit and KeyboardInterrupt stay in this agent
            return internal_error(exc, call.context.target_agent, call.context.trace_id, call.method), exc

    def _after_crash(self, exc: BaseException) -> float | None:
        """Ask the supervisor; returns the restart delay, or None once the agent is marked failed."""
        cell = self._cell
        cell.record_crash(type(exc).__name__, str(exc))
        self._stop_agent()
        decision = self._supervisor.on_failure(cell.spec.agent_id, f"{type(exc).__name__}: {exc}")
        with cell.lock:
            if self._abandoned:
                return None
            if not decision.restart:
                self._fail()
                return None
            cell.state = AgentState.RESTARTING
            cell.restarts += 1
        return decision.delay_s

    def _fail(self) -> None:
        """Mark the agent failed (the cell lock is held): no request reaches this mailbox any more, the
        ones already in it are answered -41002, then the actor stops."""
        self._failed = True
        self._cell.state = AgentState.FAILED
        self.stop()

    def _stop_agent(self) -> None:
        agent, self._agent, self._handlers = self._agent, None, {}
        if agent is None:
            return
        try:
            self._run_to_completion(agent.on_stop())
        except Exception as exc:  # noqa: BLE001 - a failing on_stop is logged, the stop goes on
            logger.bind(agent_id=self._cell.spec.agent_id).opt(exception=exc).error("on_stop raised")

    def _run_to_completion(self, value: Any) -> Any:
        if not inspect.isawaitable(value):
            return value
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(value)


def _resolve(future: asyncio.Future[Outcome], outcome: Outcome) -> None:
    if not future.done():
        future.set_result(outcome)


def _take_inbox(ref: pykka.ActorRef[AgentActor]) -> list[_Call]:
    """Empty an actor's mailbox, keeping the requests in their order."""
    calls = []
    while True:
        try:
            envelope = ref.actor_inbox.get_nowait()
        except Exception:  # noqa: BLE001 - queue.Empty: the inbox protocol does not name it
            return calls
        if isinstance(envelope.message, _Call):
            calls.append(envelope.message)


class PykkaEngine:
    """The :class:`~arc_actors.engine.Engine` of one process: a pykka actor per agent, supervised."""

    def __init__(self, supervisor: Supervisor) -> None:
        self._supervisor = supervisor
        self._cells: dict[str, _Cell] = {}

    def spawn(self, spec: AgentSpec) -> None:
        if spec.agent_id in self._cells:
            raise ValueError(f"agent {spec.agent_id!r} is already running")
        cell = _Cell(spec)
        with cell.lock:
            cell.ref = AgentActor.start(cell, self._supervisor)
        self._cells[spec.agent_id] = cell

    def ask(self, agent_id: str, method: str, params: dict[str, Any], context: Context) -> Awaitable[Outcome]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()
        cell = self._cells[agent_id]
        with cell.lock:
            if cell.state is AgentState.FAILED:
                future.set_result(cell.not_available())
                return future
            try:
                cell.ref.tell(_Call(method, params, context, partial(loop.call_soon_threadsafe, _resolve, future)))
            except pykka.ActorDeadError:
                future.set_result(
                    error(
                        ErrorCode.AGENT_NOT_AVAILABLE,
                        f"Agent not available: {agent_id} is stopped",
                        {"agentId": agent_id},
                    )
                )
        return future

    def restart(self, agent_id: str) -> None:
        """Replace the agent's actor with a fresh one now, whatever its state; queued requests carry
        over, a request being handled at that moment is answered -41002."""
        cell = self._cells[agent_id]
        self._supervisor.forget(agent_id)
        with cell.lock:
            interrupted = self._replace(cell, delay_s=0.0)
        if interrupted is not None:
            interrupted.reply(
                error(ErrorCode.AGENT_NOT_AVAILABLE, f"Agent {agent_id} was restarted by hand", {"agentId": agent_id})
            )
        logger.bind(agent_id=agent_id).warning("{} restarted by hand", agent_id)

    def _replace(self, cell: _Cell, delay_s: float) -> _Call | None:
        """With the cell lock held: abandon the cell's actor for a new one (started after ``delay_s``)
        that takes over its queued requests. Returns the request the old actor was serving."""
        old, interrupted = cell.ref, cell.current
        cell.generation += 1
        cell.busy_since = cell.current = None
        cell.state = AgentState.RESTARTING
        cell.ref = AgentActor.start(cell, self._supervisor, delay_s)
        for call in _take_inbox(old):
            cell.ref.tell(call)
        if old.is_alive():
            old.stop(block=False)
        return interrupted

    async def watch_for_hangs(self) -> None:
        """Run until cancelled: abandon and replace every actor whose handler outlives its hang threshold."""
        thresholds = {agent_id: self._supervisor.hang_after_s(agent_id) for agent_id in self._cells}
        interval_s = min(1.0, max(0.01, min(thresholds.values(), default=1.0) / WATCHDOG_TICKS_PER_THRESHOLD))
        while True:
            await asyncio.sleep(interval_s)
            now = time.monotonic()
            for agent_id, cell in self._cells.items():
                busy_since = cell.busy_since
                if busy_since is not None and now - busy_since > thresholds[agent_id]:
                    self._abandon_hung(cell, busy_since, thresholds[agent_id])

    def _abandon_hung(self, cell: _Cell, busy_since: float, hang_after_s: float) -> None:
        agent_id = cell.spec.agent_id
        queued: list[_Call] = []
        with cell.lock:
            if cell.busy_since != busy_since:
                return  # it finished after all, and moved on
            method = cell.current.method if cell.current is not None else "on_start"
            reason = f"{method} hung for more than {hang_after_s} s"
            logger.bind(agent_id=agent_id).error("watchdog: {} {}; abandoning its thread", agent_id, reason)
            cell.record_crash("Hang", reason)
            decision = self._supervisor.on_failure(agent_id, reason)
            if decision.restart:
                interrupted = self._replace(cell, decision.delay_s)
                cell.restarts += 1
            else:
                interrupted = cell.current
                cell.generation += 1
                cell.busy_since = cell.current = None
                cell.state = AgentState.FAILED
                queued = _take_inbox(cell.ref)
        for call in queued:
            call.reply(cell.not_available())
        if interrupted is not None:
            interrupted.reply(
                error(
                    ErrorCode.AGENT_TIMEOUT,
                    f"Agent timeout: {agent_id} did not answer within {hang_after_s} s",
                    {"agentId": agent_id, "hangAfterS": hang_after_s},
                )
            )

    def stop(self, timeout_s: float) -> list[str]:
        """Stop every agent after its queued messages; returns the ids still busy at the deadline.

        Those are left on their daemon threads: a hung handler cannot be killed, only abandoned."""
        deadline = time.monotonic() + timeout_s
        for cell in self._cells.values():
            with cell.lock:
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
            last_crash=cell.last_crash,
        )

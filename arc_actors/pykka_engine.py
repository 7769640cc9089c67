"""The in-process engine: each agent is one mailbox read by pykka ``ThreadingActor`` workers.

A request crosses threads twice. The gateway's loop puts a :class:`_Call` in the agent's mailbox (a
plain queue put); a worker actor runs the handler in its own thread and hands the outcome back with
``loop.call_soon_threadsafe``. Nothing on the event loop ever blocks on an actor, and nothing raised by
a handler, not even ``SystemExit``, leaves the agent that raised it.

The mailbox belongs to the agent, not to an actor: an agent declared with ``concurrency=N`` has N
workers (each with its own agent instance, so per-instance state stays single-threaded) reading one
mailbox, and a worker that is replaced leaves the mailbox, and everything queued in it, to its successor.

Supervision, carried out here as the :class:`~arc_actors.supervisor.Supervisor` decides:

* **crash**: the crashing request is answered -32603; the worker then makes a fresh agent instance in
  its own thread, after the backoff, before it takes another message (Akka's restart).
* **hang**: the watchdog answers the stuck request -41006 and abandons the stuck thread (Python cannot
  kill it) for a new worker; whatever the old thread returns later is discarded.
* **escalation**: the agent is marked failed; every queued and new request is answered -41002 at once.

Each agent's :class:`_Cell` has a lock that orders these transitions against the requests put in its
mailbox, so no request is ever left in a mailbox that nobody will read.
"""

from __future__ import annotations

import asyncio
import inspect
import queue
import threading
import time
from collections.abc import Awaitable
from typing import Any

import pykka
from loguru import logger

from arc_actors.agent import PLAIN_RESULTS, Agent, AgentSpec, Context, Handler
from arc_actors.engine import (
    AgentState,
    AgentStatus,
    crash_record,
    hung,
    mailbox_full,
    not_available,
    run_to_completion,
    serve_request,
    timed_out,
)
from arc_actors.protocol import ErrorObject, Outcome
from arc_actors.supervisor import Supervisor

WATCHDOG_TICKS_PER_THRESHOLD = 10
"""The watchdog looks this many times per hang threshold, so a hang is caught within 10% of it."""

DRAIN_POLL_S = 0.02


class _Call:
    """One request on its way through an agent's mailbox, answered on its caller's loop from any
    thread. ``expired``: its caller was answered already (request timeout), so a worker that has not
    started it skips it."""

    __slots__ = ("context", "expired", "future", "method", "params")

    def __init__(self, method: str, params: dict[str, Any], context: Context, future: asyncio.Future[Outcome]) -> None:
        self.method = method
        self.params = params
        self.context = context
        self.future = future
        self.expired = False

    def reply(self, outcome: Outcome) -> None:
        self.future.get_loop().call_soon_threadsafe(_resolve, self.future, outcome)


class _Worker:
    """One slot of an agent's workers. ``generation`` counts the actors that filled it: an actor whose
    generation is no longer its slot's has been abandoned and must neither answer nor read the mailbox."""

    __slots__ = ("busy_since", "current", "generation", "ref", "state")

    def __init__(self) -> None:
        self.ref: pykka.ActorRef[AgentActor] | None = None
        self.generation = 0
        self.state = AgentState.STARTING
        self.busy_since: float | None = None
        self.current: _Call | None = None


class _Cell:
    """The engine's record of one agent: its mailbox, its workers, and what ``/health`` reports.

    ``lock`` guards every field against the agent's threads and the event loop."""

    __slots__ = (
        "escalations",
        "failed",
        "last_crash",
        "lock",
        "mailbox",
        "mailbox_size",
        "request_timeout_s",
        "restarts",
        "spec",
        "started_at",
        "stopping",
        "workers",
    )

    def __init__(self, spec: AgentSpec, mailbox_size: int, request_timeout_s: float | None) -> None:
        self.spec = spec
        self.lock = threading.Lock()
        # SimpleQueue: put and get in C, with no Python-level Condition (measured ~10% less server CPU
        # per chat.start than queue.Queue).
        self.mailbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.mailbox_size = mailbox_size
        self.request_timeout_s = request_timeout_s
        self.workers: list[_Worker] = []
        self.failed = False
        self.escalations = 0
        self.stopping = False
        self.restarts = 0
        self.started_at = time.monotonic()
        self.last_crash: dict[str, str] | None = None

    @property
    def state(self) -> AgentState:
        if self.failed:
            return AgentState.FAILED
        if len(self.workers) == 1:
            return self.workers[0].state
        states = {worker.state for worker in self.workers}
        for state in (AgentState.STOPPED, AgentState.STARTING, AgentState.RESTARTING):
            if state in states:
                return state
        return AgentState.RUNNING

    def not_available(self, why: str) -> ErrorObject:
        return not_available(self.spec.agent_id, why, self.last_crash)

    def record_crash(self, kind: str, message: str) -> None:
        self.last_crash = crash_record(kind, message)

    def take_calls(self) -> list[_Call]:
        """Empty the mailbox, keeping the requests in their order (and dropping stop messages)."""
        calls = []
        while True:
            try:
                envelope = self.mailbox.get_nowait()
            except queue.Empty:
                return calls
            if isinstance(envelope.message, _Call):
                calls.append(envelope.message)

    def fail(self) -> None:
        """Give up on the agent (the lock is held): refuse new requests, stop the workers behind the
        queued ones, which are answered -41002."""
        self.failed = True
        self.escalations += 1
        self.stop_workers()

    def stop_workers(self) -> None:
        """Queue one stop per live worker, behind every request already queued."""
        for worker in self.workers:
            if worker.ref.is_alive():
                worker.ref.stop(block=False)


class AgentActor(pykka.ThreadingActor):
    """A worker: runs one agent instance, one message at a time, in its own thread.

    The thread is a daemon so a handler that never returns cannot keep the process alive. The asyncio
    loop for ``async def`` handlers is made on first use, so an agent with only sync handlers costs no
    file descriptors."""

    use_daemon_thread = True

    def __init__(self, cell: _Cell, worker: _Worker, supervisor: Supervisor, delay_s: float = 0.0) -> None:
        super().__init__()
        # Every worker of the agent, and every successor, reads the agent's one mailbox.
        self.actor_inbox = cell.mailbox
        self.actor_ref.actor_inbox = cell.mailbox
        self._cell = cell
        self._worker = worker
        self._generation = worker.generation
        self._supervisor = supervisor
        self._delay_s = delay_s
        self._agent: Agent | None = None
        self._handlers: dict[str, Handler] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def _actor_loop_teardown(self) -> None:
        """The last thing this worker's thread does. pykka would drain the inbox here, dropping what it
        holds; the mailbox is the agent's, shared with other workers and successors, so it is left as it
        is, and only this worker's agent instance is released."""
        self._release()

    @property
    def _abandoned(self) -> bool:
        return self._generation != self._worker.generation

    def on_start(self) -> None:
        self._start_with_retries(self._delay_s)

    def on_receive(self, message: Any) -> None:
        cell, worker = self._cell, self._worker
        with cell.lock:
            if self._abandoned:
                worker.ref.tell(message)  # read just before the hand-over: it is the successor's
                self._leave()
                return
            if cell.failed:
                message.reply(cell.not_available("has failed and awaits a restart"))
                return
            if message.expired:
                return
            worker.busy_since = time.monotonic()
            worker.current = message
        outcome, crash = self._serve(message)
        with cell.lock:
            if self._abandoned:
                self._leave()  # the watchdog answered this request already
                return
            worker.busy_since = worker.current = None
        # Decide and count the restart before answering, so /health agrees with what the caller saw.
        delay_s = self._supervise(crash) if crash is not None else None
        message.reply(outcome)
        if crash is not None:
            self._release_agent()
            if delay_s is not None:
                self._start_with_retries(delay_s)

    def on_stop(self) -> None:
        with self._cell.lock:
            if not self._abandoned:
                self._worker.state = AgentState.STOPPED

    def _start_with_retries(self, delay_s: float) -> None:
        """Make a fresh agent instance after ``delay_s``; a failing start is a crash like any other."""
        while True:
            if delay_s > 0:  # sleep(0) is still a system call and a hand-over of the GIL
                time.sleep(delay_s)
            try:
                self._start_agent()
                return
            except BaseException as exc:  # noqa: BLE001 - whatever on_start raises stays in this agent
                logger.bind(agent_id=self._cell.spec.agent_id).opt(exception=exc).error("agent failed to start")
                next_delay_s = self._supervise(exc)
                if next_delay_s is None:
                    return
                delay_s = next_delay_s

    def _start_agent(self) -> None:
        cell, worker = self._cell, self._worker
        with cell.lock:
            if self._abandoned:
                self._leave()
                return
            worker.busy_since = time.monotonic()
        agent = cell.spec.make()
        self._run_to_completion(agent.on_start())
        self._handlers = agent.handlers()
        self._agent = agent
        with cell.lock:
            if self._abandoned:
                self._leave()
                return
            worker.busy_since = None
            worker.state = AgentState.RUNNING
            cell.started_at = time.monotonic()

    def _serve(self, call: _Call) -> tuple[Outcome, BaseException | None]:
        return serve_request(self._handlers[call.method], call.params, call.context, self._run_to_completion)

    def _supervise(self, exc: BaseException) -> float | None:
        """``_after_crash``, but a failure of the supervision itself marks the agent failed rather than
        leaving a dead worker that ``/health`` would still call running."""
        try:
            return self._after_crash(exc)
        except Exception as bug:  # noqa: BLE001 - reported, and the agent is given up on visibly
            logger.bind(agent_id=self._cell.spec.agent_id).opt(exception=bug).critical("supervision failed")
            with self._cell.lock:
                if not self._cell.failed:
                    self._cell.fail()
            return None

    def _after_crash(self, exc: BaseException) -> float | None:
        """Ask the supervisor; returns the restart delay, or None when this worker is done for."""
        cell = self._cell
        cell.record_crash(type(exc).__name__, str(exc))
        decision = self._supervisor.on_failure(cell.spec.agent_id, f"{type(exc).__name__}: {exc}")
        with cell.lock:
            if self._abandoned:
                self._leave()
                return None
            if not decision.restart:
                cell.fail()
                return None
            self._worker.state = AgentState.RESTARTING
            cell.restarts += 1
        return decision.delay_s

    def _leave(self) -> None:
        """Stop this abandoned worker without reading the mailbox again: pykka's loop ends as soon as
        the current hook returns, and the teardown releases the agent instance."""
        pykka.ActorRegistry.unregister(self.actor_ref)
        self.actor_stopped.set()

    def _release(self) -> None:
        self._release_agent()
        if self._loop is not None:
            self._loop.close()
            self._loop = None

    def _release_agent(self) -> None:
        agent, self._agent, self._handlers = self._agent, None, {}
        if agent is None:
            return
        try:
            self._run_to_completion(agent.on_stop())
        except Exception as exc:  # noqa: BLE001 - a failing on_stop is logged, the stop goes on
            logger.bind(agent_id=self._cell.spec.agent_id).opt(exception=exc).error("on_stop raised")

    def _run_to_completion(self, value: Any) -> Any:
        if type(value) in PLAIN_RESULTS or not inspect.isawaitable(value):
            return value
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return run_to_completion(self._loop, value)


def _resolve(future: asyncio.Future[Outcome], outcome: Outcome) -> None:
    if not future.done():
        future.set_result(outcome)


def _expire(future: asyncio.Future[Outcome], call: _Call, cell: _Cell) -> None:
    """The request timeout: answer the caller now; a worker that has not started the call skips it."""
    call.expired = True
    _resolve(future, timed_out(cell.spec.agent_id, cell.request_timeout_s))


class PykkaEngine:
    """The :class:`~arc_actors.engine.Engine` of one process: pykka workers per agent, supervised."""

    def __init__(self, supervisor: Supervisor, mailbox_size: int, request_timeout_s: float | None = None) -> None:
        self._supervisor = supervisor
        self._default_mailbox_size = mailbox_size
        self._default_request_timeout_s = request_timeout_s
        self._cells: dict[str, _Cell] = {}

    def spawn(self, spec: AgentSpec) -> None:
        if spec.agent_id in self._cells:
            raise ValueError(f"agent {spec.agent_id!r} is already running")
        cell = _Cell(
            spec,
            spec.mailbox_size or self._default_mailbox_size,
            spec.request_timeout_s or self._default_request_timeout_s,
        )
        with cell.lock:
            for _ in range(spec.concurrency):
                worker = _Worker()
                worker.ref = AgentActor.start(cell, worker, self._supervisor)
                cell.workers.append(worker)
        self._cells[spec.agent_id] = cell

    def ask(self, agent_id: str, method: str, params: dict[str, Any], context: Context) -> Awaitable[Outcome]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()
        cell = self._cells[agent_id]
        with cell.lock:
            refused = self._refusal(cell)
            if refused is not None:
                future.set_result(refused)
            else:
                call = _Call(method, params, context, future)
                try:
                    cell.workers[0].ref.tell(call)
                except pykka.ActorDeadError:
                    future.set_result(cell.not_available("is stopped"))
        if cell.request_timeout_s is not None and not future.done():
            timer = loop.call_later(cell.request_timeout_s, _expire, future, call, cell)
            future.add_done_callback(lambda _: timer.cancel())
        return future

    def _refusal(self, cell: _Cell) -> ErrorObject | None:
        if cell.failed:
            return cell.not_available("has failed and awaits a restart")
        if cell.stopping:
            return cell.not_available("is stopping: the server is shutting down")
        if cell.mailbox.qsize() >= cell.mailbox_size:
            return mailbox_full(cell.spec.agent_id, cell.mailbox_size)
        return None

    def restart(self, agent_id: str) -> None:
        """Bring a failed agent back with fresh workers and a forgotten failure history."""
        cell = self._cells[agent_id]
        with cell.lock:
            if not cell.failed:
                raise ValueError(f"agent {agent_id!r} is {cell.state.value}: only a failed agent is restarted by hand")
            cell.take_calls()  # only stop messages are left in a failed agent's mailbox
            self._supervisor.forget(agent_id)
            cell.failed = False
            for worker in cell.workers:
                self._replace_worker(cell, worker, delay_s=0.0)
        logger.bind(agent_id=agent_id).warning("{} restarted by hand", agent_id)

    def _replace_worker(self, cell: _Cell, worker: _Worker, delay_s: float) -> None:
        """With the cell lock held: abandon the slot's actor for a new one, started after ``delay_s``."""
        worker.generation += 1
        worker.busy_since = worker.current = None
        worker.state = AgentState.RESTARTING
        worker.ref = AgentActor.start(cell, worker, self._supervisor, delay_s)

    async def watch_for_hangs(self) -> None:
        thresholds = {agent_id: self._supervisor.hang_after_s(agent_id) for agent_id in self._cells}
        interval_s = min(1.0, max(0.01, min(thresholds.values(), default=1.0) / WATCHDOG_TICKS_PER_THRESHOLD))
        while True:
            await asyncio.sleep(interval_s)
            now = time.monotonic()
            for agent_id, cell in self._cells.items():
                for worker in cell.workers:
                    busy_since = worker.busy_since
                    if busy_since is not None and now - busy_since > thresholds[agent_id]:
                        self._abandon_hung(cell, worker, busy_since, thresholds[agent_id])

    def _abandon_hung(self, cell: _Cell, worker: _Worker, busy_since: float, hang_after_s: float) -> None:
        agent_id = cell.spec.agent_id
        queued: list[_Call] = []
        with cell.lock:
            if worker.busy_since != busy_since:
                return  # it finished after all, and moved on
            interrupted = worker.current
            reason = f"{interrupted.method if interrupted else 'on_start'} hung for more than {hang_after_s} s"
            logger.bind(agent_id=agent_id).error("watchdog: {} {}; abandoning its thread", agent_id, reason)
            cell.record_crash("Hang", reason)
            decision = self._supervisor.on_failure(agent_id, reason)
            if decision.restart and not cell.failed:
                self._replace_worker(cell, worker, decision.delay_s)
                cell.restarts += 1
            else:
                worker.generation += 1
                worker.busy_since = worker.current = None
                queued = cell.take_calls()
                cell.fail()
        for call in queued:
            call.reply(cell.not_available("has failed and awaits a restart"))
        if interrupted is not None:
            interrupted.reply(hung(agent_id, hang_after_s))

    async def drain(self, timeout_s: float) -> dict[str, int]:
        """Refuse new requests, let the queued and running ones finish for up to ``timeout_s``, then
        answer what is left -41002. Returns, per agent, how many requests were answered so."""
        for cell in self._cells.values():
            with cell.lock:
                cell.stopping = True
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and any(self._has_work(cell) for cell in self._cells.values()):
            await asyncio.sleep(DRAIN_POLL_S)
        unserved: dict[str, int] = {}
        for agent_id, cell in self._cells.items():
            with cell.lock:
                calls = cell.take_calls() + [worker.current for worker in cell.workers if worker.current]
            for call in calls:
                call.reply(cell.not_available("stopped before serving this request: the server shut down"))
            if calls:
                unserved[agent_id] = len(calls)
        return unserved

    @staticmethod
    def _has_work(cell: _Cell) -> bool:
        return not cell.mailbox.empty() or any(worker.current is not None for worker in cell.workers)

    def stop(self, timeout_s: float) -> list[str]:
        deadline = time.monotonic() + timeout_s
        for cell in self._cells.values():
            with cell.lock:
                cell.stopping = True
                cell.stop_workers()
        return [
            agent_id
            for agent_id, cell in self._cells.items()
            if not all(worker.ref.actor_stopped.wait(max(0.0, deadline - time.monotonic())) for worker in cell.workers)
        ]

    def status(self, agent_id: str) -> AgentStatus:
        # No lock, and nothing costly (round() alone took a third of the time): /health reads 10,000
        # of these at once.
        cell = self._cells[agent_id]
        busy = 0
        for worker in cell.workers:
            if worker.current is not None:
                busy += 1
        return AgentStatus(
            state=cell.state,
            restarts=cell.restarts,
            escalations=cell.escalations,
            mailbox=cell.mailbox.qsize(),
            busy=busy,
            uptime_s=int((time.monotonic() - cell.started_at) * 1000) / 1000,
            last_crash=cell.last_crash,
        )

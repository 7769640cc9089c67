"""One agent between its mailbox and its handlers: the cell both engines run.

An :class:`AgentCell` is everything that happens to one agent: its mailbox (at most ``mailbox_size``
requests wait for a free instance; one more is refused -44007), its ``concurrency`` instances (each in a
pykka ``ThreadingActor`` of its own, so per-instance state stays single-threaded), the watchdog's hang
check, supervision as the :class:`~arc_actors.supervisor.Supervisor` decides it, ``on_start`` and
``on_stop``, drain, stop and the status ``/health`` shows. The in-process engine runs one cell per
agent in the gateway's process; the Ray engine runs the same cell inside the agent's Ray actor.

A request is a :class:`Call`. The cell hands it to an idle instance at once (one ``tell``), or queues
it; an instance that finishes takes the next queued call itself, without a message. Every transition
is made under the cell's ``lock``, so no request is ever left queued with nobody to serve it.

* **crash**: the crashing request is answered -32603 once the restart is decided and counted (so
  ``/health`` agrees with what the caller saw); the instance's thread makes a fresh instance after the
  backoff, before it takes another request (Akka's restart). The mailbox is kept.
* **hang**: :meth:`AgentCell.check_hangs` answers the stuck request -41006 and gives its slot a new
  actor; the stuck thread is abandoned (Python cannot kill it) and whatever it returns is discarded.
* **escalation**: the agent is failed: every queued and new request is answered -41002 at once, until
  :meth:`AgentCell.restart` by hand.
"""

from __future__ import annotations

import asyncio
import inspect
import queue
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import msgspec
import pykka
from loguru import logger

from arc_actors.agent import PLAIN_RESULTS, Agent, Context, Handler
from arc_actors.engine import AgentState, AgentStatus, crash_record, hung, mailbox_full, not_available
from arc_actors.exceptions import ARCError, internal_error
from arc_actors.protocol import ErrorObject, Outcome, encoder
from arc_actors.streaming import streamed
from arc_actors.supervisor import Supervisor

WATCHDOG_TICKS_PER_THRESHOLD = 10
"""The watchdog looks this many times per hang threshold, so a hang is caught within 10% of it."""
FAILED = "has failed and awaits a restart"


class Call:
    """One request on its way through a cell. ``reply`` answers it, from whichever thread; it may be
    called again after the caller was answered (a drain, the watchdog), and must then do nothing."""

    __slots__ = ("context", "method", "params", "reply")

    def __init__(
        self, method: str, params: dict[str, Any], context: Context, reply: Callable[[Outcome], object]
    ) -> None:
        self.method = method
        self.params = params
        self.context = context
        self.reply = reply

    def run(self, handler: Handler, complete: Callable[[Any, Context | None], Any]) -> Any:
        """In the instance's thread: call ``handler`` and ``complete`` what it returns. An engine whose
        requests carry more (a channel back to their gateway) overrides it."""
        return complete(handler(self.params, self.context), self.context)


class _Slot:
    """One of an agent's instances. ``generation`` counts the actors that filled it: an actor whose
    generation is no longer its slot's has been abandoned and must neither answer nor take work."""

    __slots__ = ("busy_since", "current", "generation", "ref", "state")

    def __init__(self) -> None:
        self.ref: pykka.ActorRef[_Instance] | None = None
        self.generation = 0
        self.state = AgentState.STARTING
        self.busy_since: float | None = None
        self.current: Call | None = None


class AgentCell:
    """One agent's mailbox, instances and supervision (see the module docstring). Thread-safe."""

    def __init__(
        self,
        agent_id: str,
        factory: Callable[[], Agent],
        supervisor: Supervisor,
        *,
        concurrency: int,
        mailbox_size: int,
    ) -> None:
        self.agent_id = agent_id
        self.factory = factory
        self.supervisor = supervisor
        self.hang_after_s = supervisor.hang_after_s(agent_id)
        self.mailbox_size = mailbox_size
        self.lock = threading.Lock()
        self._queue: deque[Call] = deque()
        self._idle: list[_Slot] = []
        self._slots = [_Slot() for _ in range(concurrency)]
        self._stops: list[pykka.Future[Any]] = []
        self.failed = False
        self.stopping = False
        self.restarts = 0
        self.escalations = 0
        self.started_at = time.monotonic()
        self.last_crash: dict[str, str] | None = None

    # -- from the engine --

    def start(self) -> None:
        """Start every instance (each makes its agent instance in its own thread)."""
        with self.lock:
            for slot in self._slots:
                slot.ref = _Instance.start(self, slot, 0.0)

    def submit(self, call: Call) -> ErrorObject | None:
        """Hand ``call`` to an idle instance or queue it; returns the refusal to answer instead, if any
        (failed -41002, stopping -41002, mailbox full -44007)."""
        with self.lock:
            if self.failed:
                return self.not_available(FAILED)
            if self.stopping:
                return self.not_available("is stopping: the server is shutting down")
            if not self._idle:
                if len(self._queue) >= self.mailbox_size:
                    return mailbox_full(self.agent_id, self.mailbox_size)
                self._queue.append(call)
                return None
            slot = self._idle.pop()
            slot.current, slot.busy_since = call, time.monotonic()
            try:
                slot.ref.tell(call)
            except pykka.ActorDeadError:
                slot.current = slot.busy_since = None
                return self.not_available("is stopped")
        return None

    def withdraw(self, call: Call) -> bool:
        """Take ``call`` out of the mailbox if no instance has started it; returns whether it was."""
        with self.lock:
            try:
                self._queue.remove(call)
            except ValueError:
                return False
            return True

    def check_hangs(self, now: float) -> None:
        """The watchdog's look at this agent: a request or an ``on_start`` running past the hang threshold
        is answered -41006 and its instance abandoned, as the supervisor decides."""
        for slot in self._slots:
            since = slot.busy_since
            if since is not None and now - since > self.hang_after_s:
                self._abandon(slot, since)

    def restart(self) -> None:
        """Bring a failed agent back with fresh instances and a forgotten failure history."""
        with self.lock:
            if not self.failed:
                raise ValueError(
                    f"agent {self.agent_id!r} is {self.state.value}: only a failed agent is restarted by hand"
                )
            self.supervisor.forget(self.agent_id)
            self.failed = False
            for slot in self._slots:
                self._replace(slot, 0.0)
        logger.bind(agent_id=self.agent_id).warning("{} restarted by hand", self.agent_id)

    def refuse_new(self) -> None:
        """Refuse every request from now on (-41002); the queued and running ones go on."""
        with self.lock:
            self.stopping = True

    @property
    def has_work(self) -> bool:
        """Whether a request is queued or running."""
        return bool(self._queue) or any(slot.current is not None for slot in self._slots)

    def answer_unserved(self, why: str) -> int:
        """Answer every queued and running request -41002 (``why``), as a drain's deadline does; returns
        how many there were. A running one's own answer, should it come, is then discarded."""
        with self.lock:
            calls = [*self._queue, *(slot.current for slot in self._slots if slot.current is not None)]
            self._queue.clear()
        for call in calls:
            call.reply(self.not_available(why))
        return len(calls)

    def stop(self) -> None:
        """Stop every instance after what it is serving (``on_stop`` in its thread); refuse new requests."""
        with self.lock:
            self.stopping = True
            self._stops = [slot.ref.stop(block=False) for slot in self._slots if slot.ref is not None]

    def wait_stopped(self, deadline: float) -> bool:
        """Wait, until ``deadline`` (``time.monotonic()``), for the instances :meth:`stop` stopped; returns
        whether all did (a hung one never does)."""
        try:
            for stopping in self._stops:
                stopping.get(timeout=max(0.0, deadline - time.monotonic()))
        except pykka.Timeout:
            return False
        return True

    @property
    def state(self) -> AgentState:
        if self.failed:
            return AgentState.FAILED
        if len(self._slots) == 1:
            return self._slots[0].state
        states = {slot.state for slot in self._slots}
        for state in (AgentState.STOPPED, AgentState.STARTING, AgentState.RESTARTING):
            if state in states:
                return state
        return AgentState.RUNNING

    def status(self) -> AgentStatus:
        # No lock, and nothing costly (round() alone took a third of the time): /health reads 10,000
        # of these at once.
        busy = 0
        for slot in self._slots:
            if slot.current is not None:
                busy += 1
        return AgentStatus(
            state=self.state,
            restarts=self.restarts,
            escalations=self.escalations,
            mailbox=len(self._queue),
            busy=busy,
            uptime_s=int((time.monotonic() - self.started_at) * 1000) / 1000,
            last_crash=self.last_crash,
        )

    def not_available(self, why: str) -> ErrorObject:
        return not_available(self.agent_id, why, self.last_crash)

    # -- from the instances' threads and the watchdog (the lock held where it says so) --

    def _next(self, slot: _Slot, generation: int) -> Call | None:
        """The next queued call for an instance that is free, or None: it waits for a ``tell``."""
        with self.lock:
            if generation != slot.generation or self.failed:
                return None
            if self._queue:
                call = slot.current = self._queue.popleft()
                slot.busy_since = time.monotonic()
                return call
            self._idle.append(slot)
            return None

    def _fail(self) -> list[Call]:
        """With the lock held: give up on the agent. Returns the queued calls, for the caller to answer
        -41002 once the lock is released."""
        self.failed = True
        self.escalations += 1
        self._idle.clear()
        for slot in self._slots:
            if slot.ref is not None and slot.ref.is_alive():
                slot.ref.stop(block=False)
        queued = list(self._queue)
        self._queue.clear()
        return queued

    def _refuse(self, calls: Iterable[Call]) -> None:
        for call in calls:
            call.reply(self.not_available(FAILED))

    def _supervise(self, slot: _Slot, generation: int, exc: BaseException) -> float | None:
        """Record a crash (or a failed start) and carry out the supervisor's decision: the restart
        delay, or None when this instance is done for (the agent failed, or the slot moved on)."""
        self.last_crash = crash_record(type(exc).__name__, str(exc))
        queued: list[Call] = []
        try:
            decision = self.supervisor.on_failure(self.agent_id, f"{type(exc).__name__}: {exc}")
        except Exception as bug:  # noqa: BLE001 - reported, and the agent is given up on visibly
            logger.bind(agent_id=self.agent_id).opt(exception=bug).critical("supervision failed")
            decision = None
        with self.lock:
            if generation != slot.generation:
                return None
            if decision is None or not decision.restart:
                if not self.failed:
                    queued = self._fail()
            else:
                slot.state = AgentState.RESTARTING
                self.restarts += 1
        self._refuse(queued)
        return None if self.failed or decision is None else decision.delay_s

    def _abandon(self, slot: _Slot, since: float) -> None:
        queued: list[Call] = []
        with self.lock:
            if slot.busy_since != since:
                return  # it finished after all, and moved on
            interrupted = slot.current
            reason = f"{interrupted.method if interrupted else 'on_start'} hung for more than {self.hang_after_s} s"
            logger.bind(agent_id=self.agent_id).error("watchdog: {} {}; abandoning its thread", self.agent_id, reason)
            self.last_crash = crash_record("Hang", reason)
            decision = self.supervisor.on_failure(self.agent_id, reason)
            if decision.restart and not self.failed:
                self._replace(slot, decision.delay_s)
                self.restarts += 1
            else:
                slot.generation += 1
                slot.busy_since = slot.current = None
                queued = self._fail()
        self._refuse(queued)
        if interrupted is not None:
            interrupted.reply(hung(self.agent_id, self.hang_after_s))

    def _replace(self, slot: _Slot, delay_s: float) -> None:
        """With the lock held: abandon the slot's actor for a new one, started after ``delay_s``."""
        slot.generation += 1
        slot.busy_since = slot.current = None
        slot.state = AgentState.RESTARTING
        slot.ref = _Instance.start(self, slot, delay_s)


class _Instance(pykka.ThreadingActor):
    """One instance of an agent in a thread of its own: it makes the agent instance, serves the calls
    its cell hands it, one at a time, and is replaced when it hangs.

    The thread is a daemon, so a handler that never returns cannot keep the process alive. Its event
    loop, for ``async def`` handlers, is made on first use: an agent with only ``def`` handlers costs no
    file descriptors."""

    use_daemon_thread = True

    @staticmethod
    def _create_actor_inbox() -> queue.SimpleQueue[Any]:
        """The one place arc_actors builds on pykka's seam for actor types (``Actor._create_actor_inbox``,
        "for implementors of new actor types", as ``ThreadingActor`` itself does): a ``SimpleQueue``, whose
        put and get run in C, for ``ThreadingActor``'s ``queue.Queue`` and its Python-level Condition, on
        the path of every request handed to an idle instance."""
        return queue.SimpleQueue()

    def __init__(self, cell: AgentCell, slot: _Slot, delay_s: float) -> None:
        super().__init__()
        self._cell = cell
        self._slot = slot
        self._generation = slot.generation
        self._delay_s = delay_s
        self._agent: Agent | None = None
        self._handlers: dict[str, Handler] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def _abandoned(self) -> bool:
        return self._generation != self._slot.generation

    def on_start(self) -> None:
        try:
            if self._start(self._delay_s):
                self._take_next()
            elif self._abandoned:
                self.stop()
        except Exception as bug:  # noqa: BLE001 - pykka would stop this actor silently
            self.on_failure(type(bug), bug, bug.__traceback__)

    def on_receive(self, message: Any) -> None:
        call: Call | None = message
        while call is not None and self._serve(call):
            call = self._cell._next(self._slot, self._generation)
        if self._abandoned:
            self.stop()

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        """A failure of the runtime's own code in this thread: the agent is given up on visibly rather
        than left with an instance ``/health`` would still call running."""
        cell = self._cell
        logger.bind(agent_id=cell.agent_id).opt(exception=exception_value).critical("agent instance failed")
        with cell.lock:
            current = None if self._abandoned else self._slot.current
            queued = [] if cell.failed else cell._fail()
        cell._refuse([*queued, *([current] if current is not None else [])])
        self._release()

    def on_stop(self) -> None:
        with self._cell.lock:
            if not self._abandoned:
                self._slot.state = AgentState.STOPPED
        self._release()
        if self._loop is not None:
            self._loop.close()
            self._loop = None

    def _take_next(self) -> None:
        call = self._cell._next(self._slot, self._generation)
        if call is not None:
            self.actor_ref.tell(call)

    def _serve(self, call: Call) -> bool:
        """Serve ``call``; returns whether this instance goes on taking calls."""
        cell, slot = self._cell, self._slot
        outcome, crash = _serve_request(call, self._handlers[call.method], self._complete)
        with cell.lock:
            if self._abandoned:
                return False  # the watchdog answered this request already
            slot.busy_since = slot.current = None
        if crash is None:
            call.reply(outcome)
            return True
        # Decide and count the restart before answering, so /health agrees with what the caller saw.
        delay_s = cell._supervise(slot, self._generation, crash)
        call.reply(outcome)
        self._release()
        return delay_s is not None and self._start(delay_s)

    def _start(self, delay_s: float) -> bool:
        """Make a fresh agent instance after ``delay_s``; a failing start is a crash like any other.
        Returns whether this instance has one and is still in charge of its slot."""
        cell, slot = self._cell, self._slot
        while True:
            if delay_s > 0:  # sleep(0) is still a system call and a hand-over of the GIL
                time.sleep(delay_s)
            with cell.lock:
                if self._abandoned or cell.failed:
                    return False
                slot.busy_since = time.monotonic()
            try:
                self._agent = cell.factory()
                self._complete(self._agent.on_start(), None)
                self._handlers = self._agent.handlers()
            except BaseException as exc:  # noqa: BLE001 - whatever on_start raises stays in this agent
                logger.bind(agent_id=cell.agent_id).opt(exception=exc).error("agent failed to start")
                self._agent, self._handlers = None, {}
                next_delay_s = cell._supervise(slot, self._generation, exc)
                if next_delay_s is None:
                    return False
                delay_s = next_delay_s
                continue
            with cell.lock:
                if self._abandoned:
                    return False
                slot.busy_since = None
                slot.state = AgentState.RUNNING
                cell.started_at = time.monotonic()
            return True

    def _release(self) -> None:
        agent, self._agent, self._handlers = self._agent, None, {}
        if agent is None:
            return
        try:
            self._complete(agent.on_stop(), None)
        except BaseException as exc:  # noqa: BLE001 - logged, and even SystemExit stops only this instance
            logger.bind(agent_id=self._cell.agent_id).opt(exception=exc).error("on_stop raised")

    def _complete(self, value: Any, context: Context | None) -> Any:
        """What a handler (or hook) returned, run to its end: an async generator streamed to the
        request's ``context.stream`` (or joined), an awaitable awaited on this thread's own loop."""
        if type(value) in PLAIN_RESULTS:
            return value
        if inspect.isasyncgen(value):
            value = streamed(value, None if context is None else context.stream)
        if not inspect.isawaitable(value):
            return value
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return run_to_completion(self._loop, value)


def _serve_request(
    call: Call, handler: Handler, complete: Callable[[Any, Context | None], Any]
) -> tuple[Outcome, BaseException | None]:
    """Run ``call`` with ``handler`` and encode its result. Returns the outcome and, when the handler
    crashed (anything but an ``ARCError``), the crash."""
    try:
        return msgspec.Raw(encoder.encode(call.run(handler, complete))), None
    except ARCError as exc:
        return exc.to_error_object(), None
    except BaseException as exc:  # noqa: BLE001 - SystemExit and KeyboardInterrupt stay in this agent
        context = call.context
        return internal_error(exc, context.target_agent, context.trace_id, context.method), exc


def run_to_completion(loop: asyncio.AbstractEventLoop, awaitable: Awaitable[Any]) -> Any:
    """Run ``awaitable`` to its end as a task on ``loop``, an agent thread's own loop, not running.

    Most handlers finish without waiting on anything: one turn of the loop runs the task's first step,
    and only a task still waiting then runs the loop until it is done (``run_until_complete`` alone costs
    some 10 µs of bookkeeping more, per request). What a finished handler left to the loop (a timer, a
    callback) runs with the loop's next turn."""
    task = asyncio.ensure_future(awaitable, loop=loop)
    loop.call_soon(loop.stop)
    loop.run_forever()
    if task.done():
        return task.result()
    return loop.run_until_complete(task)


async def watch_for_hangs(cells: Iterable[AgentCell]) -> None:
    """Until cancelled: every tenth of the shortest hang threshold (at most a second), each cell's
    :meth:`AgentCell.check_hangs`."""
    cells = list(cells)
    shortest = min((cell.hang_after_s for cell in cells), default=1.0)
    interval_s = min(1.0, max(0.01, shortest / WATCHDOG_TICKS_PER_THRESHOLD))
    while True:
        await asyncio.sleep(interval_s)
        now = time.monotonic()
        for cell in cells:
            cell.check_hangs(now)

"""One agent between its mailbox and its handlers: the cell both engines run.

An :class:`AgentCell` is everything that happens to one agent: its mailbox (at most ``mailbox_size``
requests wait; one more is refused -44007), its ``concurrency`` instances (each a pykka actor with a
thread and an event loop of its own), the watchdog's hang checks, supervision as the
:class:`~arc_actors.supervisor.Supervisor` decides it, ``on_start`` and ``on_stop``, drain, stop and the
status ``/health`` shows. The in-process engine runs one cell per agent in the gateway's process; the
Ray engine runs the same cell inside the agent's Ray actor.

A request is a :class:`Call`. **Interleaving**: an instance serves up to ``max_in_flight`` calls at once on
its one agent instance. A ``def`` handler runs on the instance's thread and holds it until it returns; an
``async def`` handler runs as a task on the instance's loop, and while it awaits, the instance takes its
next call. Code between two awaits never runs beside the agent's other code, as in any asyncio program.
**Order per conversation**: calls of one chat (``chatId``) or task (``taskId``) run one after the other,
in arrival order; different conversations interleave. The cell hands a call to an instance with room at
once (one ``tell``), or queues it; an instance with room takes the next queued call itself. Every
transition is made under the cell's ``lock``, so no call is ever left queued with nobody to serve it,
and every call is answered exactly once.

* **crash**: the crashing call is answered -32603 once the restart is decided and counted (so ``/health``
  agrees with what the caller saw). The calls in flight beside it finish on the old agent instance (its
  ``on_stop`` runs after the last of them); new calls wait for a fresh instance, made after the backoff.
* **hang**: a call running past the hang threshold is answered -41006 and its task cancelled. A thread
  that stops turning its loop (a ``def`` handler, or a blocking call inside an ``async def`` one) is
  abandoned (Python cannot kill it) for a new actor, as the supervisor decides, and every call in flight
  on it answered -41006.
* **escalation**: the agent is failed: every queued and new call is answered -41002 at once, until
  :meth:`AgentCell.restart` by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import queue
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from typing import Any

import msgspec
import pykka
from loguru import logger

from arc_actors.agent import PLAIN_RESULTS, Agent, Context, Handler
from arc_actors.engine import (
    AgentState,
    AgentStatus,
    busy_conversation,
    crash_record,
    hung,
    mailbox_full,
    not_available,
)
from arc_actors.exceptions import ARCError, internal_error
from arc_actors.protocol import ErrorObject, Outcome, encoder
from arc_actors.streaming import streamed
from arc_actors.supervisor import Decision, Supervisor

WATCHDOG_TICKS_PER_THRESHOLD = 10
"""The watchdog looks this many times per hang threshold, so a hang is caught within 10% of it."""
FAILED = "has failed and awaits a restart"
HELD_A_WHILE_S = 0.001
FAIR_TURNS = 3
"""After calls that held an instance's thread longer than ``HELD_A_WHILE_S`` (a ``def`` handler, a latency
fault), the handlers awaiting on its loop get this many turns before the next call is taken: enough for
an await that came due meanwhile to end and be answered (its timer fires, its task steps, its answer goes
out). Else a burst of such calls would hold up every await already under way, past its hang threshold."""


class Call:
    """One request on its way through a cell. ``reply`` answers it, from whichever thread; the cell calls
    it once. ``key`` is its conversation (``chatId`` or ``taskId``), whose calls run one at a time."""

    __slots__ = (
        "context",
        "done",
        "key",
        "method",
        "params",
        "reentrant",
        "reply",
        "running",
        "started_at",
        "task",
    )

    def __init__(
        self, method: str, params: dict[str, Any], context: Context, reply: Callable[[Outcome], object]
    ) -> None:
        self.method = method
        self.params = params
        self.context = context
        self.reply = reply
        key = params.get("chatId") or params.get("taskId")
        self.key: str | None = key if isinstance(key, str) else None
        self.reentrant = context.target_agent in context.call_chain
        """Whether it is a call back into its agent (a -> b -> a): part of a request the agent carries."""
        self.started_at: float | None = None
        """When an instance took it (``tell``, or from the queue)."""
        self.running = False
        """Whether its handler's code is under way (a ``def`` one called, an ``async def`` one's task
        stepped): a call handed to an instance that got stuck before that is served by the next one."""
        self.task: asyncio.Future[Any] | None = None
        self.done = False

    def run(self, handler: Handler) -> Any:
        """In the instance's thread: what ``handler`` answers this request with, a value or an awaitable
        (run as a task on the instance's loop). An engine whose requests carry more overrides it."""
        return handler(self.params, self.context)

    def cancel(self) -> None:
        """Cancel its handler's task, if it awaits (from any thread)."""
        task = self.task
        if task is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: the task is over
                task.get_loop().call_soon_threadsafe(task.cancel)


class _Marks:
    """What an instance's actor shows the watchdog: ``busy_since``, when its thread began something that
    holds it (a ``def`` handler, making the agent instance); ``turned_at``, the last beat of its loop
    while calls await on it."""

    __slots__ = ("busy_since", "turned_at")

    def __init__(self) -> None:
        self.busy_since: float | None = None
        self.turned_at: float | None = None


class _Slot:
    """One of an agent's instances. ``generation`` counts the actors that filled it: an actor whose
    generation is no longer its slot's has been abandoned and must neither answer nor take work.
    ``marks``: what the watchdog reads of its current actor (a new object with each actor, so that an
    abandoned one writes only to its own)."""

    __slots__ = ("calls", "generation", "listed", "marks", "ref", "state")

    def __init__(self) -> None:
        self.ref: pykka.ActorRef[_Instance] | None = None
        self.generation = 0
        self.state = AgentState.STARTING
        self.marks = _Marks()
        self.calls: set[Call] = set()
        self.listed = False


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
        max_in_flight: int = 1,
    ) -> None:
        self.agent_id = agent_id
        self.factory = factory
        self.supervisor = supervisor
        self.hang_after_s = supervisor.hang_after_s(agent_id)
        self.mailbox_size = mailbox_size
        self.max_in_flight = max_in_flight
        self.lock = threading.Lock()
        self._queue: deque[Call] = deque()
        self._after: dict[str, deque[Call]] = {}
        """The conversations with a call queued or running: their later calls, in order."""
        self._waiting = 0
        self._available: list[_Slot] = []
        self._slots = [_Slot() for _ in range(concurrency)]
        self._stops: list[pykka.Future[Any]] = []
        self.failed = False
        self.stopping = False
        self.failing = supervisor.in_streak(agent_id)
        """Whether it failed and has served no request since: the next one served resets its backoff."""
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
        """Hand ``call`` to an instance with room or queue it; returns the refusal to answer instead, if
        any (failed -41002, stopping -41002, mailbox full -44007)."""
        with self.lock:
            if self.failed:
                return self.not_available(FAILED)
            if self.stopping:
                return self.not_available("is stopping: the server is shutting down")
            key = call.key
            later = key is not None and key in self._after
            if later and call.reentrant:
                return busy_conversation(self.agent_id, call.context.call_chain, key)
            taker = None if later else self._taker(call.reentrant)
            if taker is None:
                if self._waiting >= self.mailbox_size:
                    return mailbox_full(self.agent_id, self.mailbox_size)
                self._waiting += 1
                if later:
                    self._after[key].append(call)
                    return None
                if key is not None:
                    self._after[key] = deque()
                if call.reentrant:
                    self._queue.appendleft(call)
                else:
                    self._queue.append(call)
                return None
            if key is not None:
                self._after[key] = deque()
            if self._hand(taker, call):
                return None
            self._release(key)
            return self.not_available("is stopped")

    def withdraw(self, call: Call) -> bool:
        """Its caller was answered already (a request timeout): a call still waiting is taken out of the
        mailbox (returns True); a running one's task is cancelled, if it awaits."""
        with self.lock:
            call.done = True
            waiting = call.started_at is None and self._unqueue(call)
        if not waiting:
            call.cancel()
        return waiting

    def check_hangs(self, now: float) -> None:
        """The watchdog's look at this agent: a call running past the hang threshold is answered -41006
        and its task cancelled; a thread held that long (or a loop that stopped turning) is abandoned."""
        threshold = self.hang_after_s
        for slot in self._slots:
            marks = slot.marks
            since, turned = marks.busy_since, marks.turned_at
            if (since is not None and now - since > threshold) or (turned is not None and now - turned > threshold):
                self._abandon(slot, marks)
            for call in tuple(slot.calls):
                started = call.started_at
                if call.task is not None and started is not None and now - started > threshold:
                    self._cut(call)

    def restart(self) -> None:
        """Bring a failed agent back with fresh instances and a forgotten failure history."""
        with self.lock:
            if not self.failed:
                raise ValueError(
                    f"agent {self.agent_id!r} is {self.state.value}: only a failed agent is restarted by hand"
                )
            self.supervisor.forget(self.agent_id)
            self.failed = False
            leftovers = [call for slot in self._slots for call in slot.calls if not call.done]
            for call in leftovers:
                call.done = True
            for slot in self._slots:
                self._replace(slot, 0.0)
        for call in leftovers:  # still in flight on the instances of the failed agent
            call.cancel()
            call.reply(self.not_available("was restarted by hand before answering this request"))
        logger.bind(agent_id=self.agent_id).warning("{} restarted by hand", self.agent_id)

    def refuse_new(self) -> None:
        """Refuse every request from now on (-41002); the queued and running ones go on."""
        with self.lock:
            self.stopping = True

    @property
    def has_work(self) -> bool:
        """Whether a request is queued or running."""
        return bool(self._waiting) or any(slot.calls for slot in self._slots)

    def answer_unserved(self, why: str) -> int:
        """Answer every queued and running request -41002 (``why``), as a drain's deadline does, and cancel
        the running ones' tasks; returns how many there were."""
        with self.lock:
            calls = [*self._take_waiting(), *(call for slot in self._slots for call in slot.calls if not call.done)]
            for call in calls:
                call.done = True
        for call in calls:
            call.cancel()
            call.reply(self.not_available(why))
        return len(calls)

    def stop(self) -> None:
        """Stop every instance once its calls in flight are over (``on_stop`` in its thread); refuse new
        requests."""
        with self.lock:
            self.stopping = True
            self._available.clear()
            for slot in self._slots:
                slot.listed = False
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
            busy += len(slot.calls)
        return AgentStatus(
            state=self.state,
            restarts=self.restarts,
            escalations=self.escalations,
            mailbox=self._waiting,
            busy=busy,
            uptime_s=int((time.monotonic() - self.started_at) * 1000) / 1000,
            last_crash=self.last_crash,
            backoff_s=self.supervisor.backoff_s(self.agent_id),
        )

    def not_available(self, why: str) -> ErrorObject:
        return not_available(self.agent_id, why, self.last_crash)

    # -- the mailbox (the lock held) --

    def _taker(self, reentrant: bool = False) -> _Slot | None:
        """An instance waiting for a call, with room for it (taken off the available list), or None. A
        call back into the agent (``reentrant``) takes a running instance past ``max_in_flight``, as
        Orleans' call-chain reentrancy does: the requests that hold the room may be the ones awaiting it,
        and the call chain's depth bounds how far past it goes."""
        while self._available:
            slot = self._available.pop()
            slot.listed = False
            if len(slot.calls) < self.max_in_flight:
                return slot
        if reentrant and self.max_in_flight > 1:
            return next((slot for slot in self._slots if slot.state is AgentState.RUNNING), None)
        return None

    def _hand(self, slot: _Slot, call: Call) -> bool:
        """Start ``call`` on ``slot``, taken off the available list, with a ``tell``."""
        slot.listed = False
        self._begin(slot, call)
        try:
            slot.ref.tell(call)
        except pykka.ActorDeadError:
            slot.calls.discard(call)
            call.started_at = None
            return False
        return True

    @staticmethod
    def _begin(slot: _Slot, call: Call) -> None:
        call.started_at = time.monotonic()
        slot.calls.add(call)

    def _dispatch(self, call: Call) -> None:
        """A call whose turn has come (the previous one of its conversation is over): to an instance with
        room, else first in the queue."""
        while (slot := self._taker()) is not None:
            if self._hand(slot, call):
                return
        self._queue.appendleft(call)
        self._waiting += 1

    def _release(self, key: str | None) -> None:
        """The call of conversation ``key`` ahead of the others is over: its next one's turn."""
        if key is None:
            return
        later = self._after.get(key)
        if later:
            self._waiting -= 1
            self._dispatch(later.popleft())
        elif later is not None:
            del self._after[key]

    def _unqueue(self, call: Call) -> bool:
        """Take a call that has not started out of the mailbox; returns whether it was there."""
        later = self._after.get(call.key) if call.key is not None else None
        if later is not None and call in later:
            later.remove(call)
        else:
            try:
                self._queue.remove(call)
            except ValueError:
                return False
            self._release(call.key)
        self._waiting -= 1
        return True

    def _take_waiting(self) -> list[Call]:
        calls = [*self._queue, *(call for later in self._after.values() for call in later)]
        self._queue.clear()
        self._after.clear()
        self._waiting = 0
        return calls

    def _fail(self) -> list[Call]:
        """Give up on the agent. Returns the waiting calls, for the caller to answer -41002 once the lock
        is released; the calls in flight are finished by their instances, which then stop."""
        self.failed = True
        self.escalations += 1
        self._available.clear()
        for slot in self._slots:
            slot.listed = False
            if slot.ref is not None and slot.ref.is_alive():
                slot.ref.stop(block=False)
        return self._take_waiting()

    def _replace(self, slot: _Slot, delay_s: float) -> None:
        """Abandon the slot's actor for a new one, started after ``delay_s``."""
        slot.generation += 1
        slot.marks = _Marks()
        slot.calls = set()
        slot.state = AgentState.RESTARTING
        if slot.listed:
            slot.listed = False
            self._available.remove(slot)
        slot.ref = _Instance.start(self, slot, delay_s)

    # -- from the instances' threads and the watchdog --

    def _refuse(self, calls: Iterable[Call]) -> None:
        for call in calls:
            call.reply(self.not_available(FAILED))

    def _next(self, slot: _Slot, generation: int) -> Call | None:
        """The next queued call for an instance with room, or None: it waits for a ``tell``."""
        with self.lock:
            if generation != slot.generation or self.failed or slot.state is not AgentState.RUNNING:
                return None
            if len(slot.calls) >= self.max_in_flight and not (self._queue and self._queue[0].reentrant):
                return None
            if self._queue:
                call = self._queue.popleft()
                self._waiting -= 1
                self._begin(slot, call)
                return call
            if not slot.listed:
                slot.listed = True
                self._available.append(slot)
            return None

    def _running(self, slot: _Slot, generation: int, call: Call) -> bool:
        """At an ``async def`` handler's first step: mark its call running, unless it is answered already
        or the instance was abandoned (a handed call then runs on another); returns whether to run it."""
        with self.lock:
            if generation != slot.generation or call.done:
                return False
            call.running = True
            return True

    def _finish(self, slot: _Slot, generation: int, call: Call) -> tuple[bool, Call | None]:
        """A call's handler is over: whether this instance answers it (nobody has), and the next call of
        its conversation when it is this instance's to run."""
        with self.lock:
            if generation != slot.generation:
                return False, None  # abandoned: the watchdog answered it and let its conversation go on
            slot.calls.discard(call)
            answers = not call.done
            call.done = True
            follower = None
            later = self._after.get(call.key) if call.key is not None else None
            if later and slot.state is AgentState.RUNNING and not self.failed:
                follower = later.popleft()
                self._waiting -= 1
                self._begin(slot, follower)
            elif not self.failed:
                self._release(call.key)
            return answers, follower

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
                if slot.listed:
                    slot.listed = False
                    self._available.remove(slot)
                self.restarts += 1
                self.failing = True
        self._refuse(queued)
        return None if self.failed or decision is None else decision.delay_s

    def _abandon(self, slot: _Slot, marks: _Marks) -> None:
        """The slot's thread has been held past the hang threshold: answer its calls -41006 and, as the
        supervisor decides, give the slot a new actor or fail the agent."""
        queued: list[Call] = []
        now = time.monotonic()
        with self.lock:
            since, turned = marks.busy_since, marks.turned_at
            held = (since is not None and now - since > self.hang_after_s) or (
                turned is not None and now - turned > self.hang_after_s
            )
            if slot.marks is not marks or not held:
                return  # it moved on after all
            interrupted = [call for call in slot.calls if call.running and not call.done]
            for call in interrupted:
                call.done = True
            handed = sorted((call for call in slot.calls if not call.running), key=_started_at, reverse=True)
            what = ", ".join(sorted({call.method for call in interrupted})) or "on_start"
            reason = f"{what} hung for more than {self.hang_after_s} s"
            logger.bind(agent_id=self.agent_id).error("watchdog: {} {}; abandoning its thread", self.agent_id, reason)
            self.last_crash = crash_record("Hang", reason)
            try:
                decision = self.supervisor.on_failure(self.agent_id, reason)
            except Exception as bug:  # noqa: BLE001 - reported, and the agent is given up on visibly
                logger.bind(agent_id=self.agent_id).opt(exception=bug).critical("supervision failed")
                decision = Decision(restart=False)
            if decision.restart and not self.failed:
                self._replace(slot, decision.delay_s)
                self.restarts += 1
                self.failing = True
            else:
                slot.generation += 1
                slot.marks = _Marks()
                slot.calls = set()
                queued = self._fail()
            if not self.failed:
                for call in handed:  # never reached the stuck thread: served by another instance
                    call.started_at = None
                    self._dispatch(call)
                for call in interrupted:
                    self._release(call.key)
            else:
                queued += handed
        self._refuse(queued)
        for call in interrupted:
            task = call.task
            if task is not None and task.done() and not task.cancelled():
                call.reply(_judged(call, *task.result())[0])  # over, its answer not yet sent by the stuck thread
            else:
                call.reply(hung(self.agent_id, self.hang_after_s))

    def _cut(self, call: Call) -> None:
        """A call awaiting past the hang threshold: answered -41006, its task cancelled."""
        with self.lock:
            if call.done:
                return
            call.done = True
            reason = f"{call.method} hung for more than {self.hang_after_s} s"
            self.last_crash = crash_record("Hang", reason)
        logger.bind(agent_id=self.agent_id, trace_id=call.context.trace_id).error("watchdog: {}; cancelled", reason)
        call.cancel()
        call.reply(hung(self.agent_id, self.hang_after_s))


class _Incarnation:
    """One agent instance an actor made, with the calls in flight on it; a crash retires it (its
    ``on_stop`` runs once the last of them is over)."""

    __slots__ = ("agent", "calls", "handlers", "retired")

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.handlers = agent.handlers()
        self.calls = 0
        self.retired = False


class _LoopInbox:
    """The inbox of an :class:`_Instance`: while its actor has work on its event loop (handlers awaiting,
    a restart's delay), ``get`` runs the loop until a message arrives, as pykka's gevent inbox once
    yielded to the gevent hub; otherwise it waits on a ``SimpleQueue`` (in C: an agent of ``def``
    handlers never pays for the loop). ``has_work`` is the actor's; the loop stops itself when idle."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.has_work: Callable[[], bool] = lambda: False
        self._items: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._asleep = False
        self.turns_owed = 0
        """Turns of the loop the awaiting handlers get before the next call is taken (see ``FAIR_TURNS``)."""

    def put(self, envelope: Any) -> None:
        self._items.put(envelope)
        if self._asleep:  # read after the put: a getter going to sleep has set it, or sees the envelope
            with contextlib.suppress(RuntimeError):  # closed: the actor is over, pykka answers for it
                self.loop.call_soon_threadsafe(self.loop.stop)

    def get(self) -> Any:
        while self.has_work() and not self.loop.is_closed():
            self._asleep = True
            try:
                if not self._items.empty():
                    for _ in range(self.turns_owed):
                        self.loop.call_soon(self.loop.stop)
                        self.loop.run_forever()
                    break
                self.loop.run_forever()
            except BaseException as bug:  # noqa: BLE001 - pykka would stop every actor of the process
                logger.opt(exception=bug).critical("an agent's event loop failed")
            finally:
                self._asleep = False
        return self._items.get()

    def empty(self) -> bool:
        return self._items.empty()


class _Instance(pykka.ThreadingActor):
    """One instance of an agent: a thread of its own running an event loop, which makes the agent
    instance and serves the calls its cell hands it, up to the agent's ``max_in_flight`` at once.

    The thread is a daemon, so a handler that never returns cannot keep the process alive."""

    use_daemon_thread = True

    def _create_actor_inbox(self) -> _LoopInbox:  # type: ignore[override]
        """The one place arc_actors builds on pykka's seam for actor types (``Actor._create_actor_inbox``,
        "for implementors of new actor types", as ``ThreadingActor`` and pykka's former gevent and
        eventlet actors do): an inbox whose ``get`` runs the actor's asyncio loop while it waits
        (:class:`_LoopInbox`), so that one thread both takes messages and runs the handlers' tasks. The
        rest is pykka's public API: ``tell``, ``stop``, ``on_start``/``on_receive``/``on_stop``/``on_failure``."""
        self._inbox = _LoopInbox()
        return self._inbox

    def __init__(self, cell: AgentCell, slot: _Slot, delay_s: float) -> None:
        super().__init__()
        self._loop = self._inbox.loop
        self._inbox.has_work = self._has_work
        self._pending = 0
        """Other work of its own on the loop: timers (a restart's delay) and ``on_start``/``on_stop`` tasks."""
        self._stopping = False
        self._side: set[asyncio.Task[Any]] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        """Its calls' handler tasks, while they await."""
        self._cell = cell
        self._slot = slot
        self._generation = slot.generation
        self._marks = slot.marks
        self._delay_s = delay_s
        self._incarnation: _Incarnation | None = None
        self._beat_timer: asyncio.TimerHandle | None = None
        self._fill_due = False
        """Whether a ``_fill_turn`` is due on the loop (counted in ``_pending``)."""
        self._beat_s = min(1.0, max(0.01, cell.hang_after_s / WATCHDOG_TICKS_PER_THRESHOLD))

    @property
    def _abandoned(self) -> bool:
        return self._generation != self._slot.generation

    # -- pykka's hooks --

    def on_start(self) -> None:
        self._later(self._delay_s, self._make)

    def on_receive(self, message: Any) -> None:
        if self._abandoned:
            self._leave()
        elif self._incarnation is None:
            self._requeue(message)
        else:
            self._serve(message)
            self._fill()

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        """A failure of the runtime's own code in this thread: the agent is given up on visibly rather
        than left with an instance ``/health`` would still call running."""
        cell = self._cell
        logger.bind(agent_id=cell.agent_id).opt(exception=exception_value).critical("agent instance failed")
        with cell.lock:
            current = [] if self._abandoned else [call for call in self._slot.calls if not call.done]
            for call in current:
                call.done = True
            queued = [] if cell.failed else cell._fail()
        cell._refuse([*queued, *current])

    def on_stop(self) -> None:
        self._stopping = True
        with self._cell.lock:
            if not self._abandoned:
                self._slot.state = AgentState.STOPPED
        tasks = set(self._tasks)
        if tasks:  # what is in flight ends first: answered or cut by the watchdog (an abandoned one's: cut now)
            if self._abandoned:
                for task in tasks:
                    task.cancel()
            self._run_until(asyncio.wait(tasks))
        if self._incarnation is not None:
            self._release(self._incarnation)
        if self._side:  # an async on_stop (or on_start) ends first
            self._run_until(asyncio.wait(set(self._side)))
        self._run_until(self._loop.shutdown_asyncgens())
        self._loop.close()

    def _run_until(self, awaitable: Awaitable[Any]) -> None:
        """Run the loop until ``awaitable`` is over, in ``on_stop``: a ``loop.stop`` left from a wake-up
        does not cut it short, and nothing raised gets out (pykka would then stop every actor)."""
        future = asyncio.ensure_future(awaitable, loop=self._loop)
        while not future.done() and not self._loop.is_closed():
            try:
                self._loop.run_until_complete(future)
            except BaseException as exc:  # noqa: BLE001 - logged; the stop goes on
                if not future.done():
                    continue
                logger.bind(agent_id=self._cell.agent_id).opt(exception=exc).error("stopping the instance failed")

    # -- making the agent instance (on the loop) --

    def _leave(self) -> None:
        """Stop this actor (abandoned, or its agent failed), once: it may be stopping already."""
        if not self._stopping:
            with contextlib.suppress(pykka.ActorDeadError):
                self.stop()

    def _has_work(self) -> bool:
        return bool(self._tasks or self._pending)

    def _idle_check(self) -> None:
        """On the loop: stop it once nothing of ours is left on it (the inbox then waits in C)."""
        if not (self._tasks or self._pending or self._stopping):
            self._marks.turned_at = None  # not stuck: idle
            if self._beat_timer is not None:
                self._beat_timer.cancel()
                self._beat_timer = None
            self._loop.stop()

    def _later(self, delay_s: float, callback: Callable[[], None]) -> None:
        self._pending += 1

        def due() -> None:
            self._pending -= 1
            callback()
            self._idle_check()

        self._loop.call_later(delay_s, due)

    def _spawn(self, awaitable: Awaitable[Any], done: Callable[[asyncio.Task[Any]], None]) -> None:
        """Run ``awaitable`` as a task on the loop (``on_start``, ``on_stop``); ``done`` gets it, over."""
        self._pending += 1

        def over(task: asyncio.Task[Any]) -> None:
            self._pending -= 1
            self._side.discard(task)
            done(task)
            self._idle_check()

        task = self._loop.create_task(_settled(awaitable))
        self._side.add(task)
        task.add_done_callback(over)

    def _make(self) -> None:
        """Make a fresh agent instance; a failing start is a crash like any other."""
        cell = self._cell
        with cell.lock:
            if self._abandoned or cell.failed:
                return
            self._marks.busy_since = time.monotonic()
        try:
            agent = cell.factory()
            started = agent.on_start()
        except BaseException as exc:  # noqa: BLE001 - whatever on_start raises stays in this agent
            self._start_failed(exc)
            return
        if inspect.isawaitable(started):
            self._spawn(started, partial(self._started, agent))
        else:
            self._started(agent, None)

    def _started(self, agent: Agent, task: asyncio.Task[tuple[Any, BaseException | None]] | None) -> None:
        failure = None if task is None else _failure(task)
        if failure is None:
            try:
                incarnation = _Incarnation(agent)
            except BaseException as exc:  # noqa: BLE001 - handlers() is the agent's code too
                failure = exc
        if failure is not None:
            self._start_failed(failure)
            return
        cell, slot = self._cell, self._slot
        with cell.lock:
            if self._abandoned:
                abandoned = True
            else:
                abandoned = False
                self._marks.busy_since = None
                slot.state = AgentState.RUNNING
                cell.started_at = time.monotonic()
        self._incarnation = incarnation
        if abandoned:
            self._release(incarnation)
            self._leave()
            return
        self._fill()

    def _start_failed(self, exc: BaseException) -> None:
        logger.bind(agent_id=self._cell.agent_id).opt(exception=exc).error("agent failed to start")
        self._marks.busy_since = None
        delay_s = self._cell._supervise(self._slot, self._generation, exc)
        if delay_s is not None:
            self._later(delay_s, self._make)
        elif self._abandoned:
            self._leave()

    def _release(self, incarnation: _Incarnation) -> None:
        """Run the agent instance's ``on_stop`` (an awaitable one as a task)."""
        if self._incarnation is incarnation:
            self._incarnation = None
        try:
            stopped = incarnation.agent.on_stop()
            if inspect.isawaitable(stopped):
                self._spawn(stopped, self._log_stop_failure)
        except BaseException as exc:  # noqa: BLE001 - logged, and even SystemExit stops only this instance
            logger.bind(agent_id=self._cell.agent_id).opt(exception=exc).error("on_stop raised")

    def _log_stop_failure(self, task: asyncio.Task[tuple[Any, BaseException | None]]) -> None:
        failure = _failure(task)
        if failure is not None:
            logger.bind(agent_id=self._cell.agent_id).opt(exception=failure).error("on_stop raised")

    # -- serving calls --

    def _fill(self) -> None:
        """Take calls while there is room: at once while nothing awaits (an agent of ``def`` handlers pays
        no loop turn), else one per turn of the loop, so that the awaiting handlers are not starved; after
        calls that held the thread a while, one after the ``FAIR_TURNS`` turns owed."""
        while self._incarnation is not None:
            if self._tasks and self._inbox.turns_owed:
                self._fill_after_owed_turns()
                return
            call = self._cell._next(self._slot, self._generation)
            if call is None:
                return
            self._serve(call)
            if self._tasks and not self._inbox.turns_owed:
                self._loop.call_soon(self._fill)
                return

    def _fill_after_owed_turns(self) -> None:
        if self._fill_due:
            return
        self._fill_due = True
        self._pending += 1
        callback = self._fill_turn
        for _ in range(self._inbox.turns_owed - 1):
            callback = partial(self._loop.call_soon, callback)
        self._loop.call_soon(callback)

    def _fill_turn(self) -> None:
        """The turns owed given: one call taken, then as ``_fill`` goes on."""
        self._fill_due = False
        self._pending -= 1
        call = None if self._incarnation is None else self._cell._next(self._slot, self._generation)
        if call is not None:
            self._serve(call)
            self._fill()
        self._idle_check()

    def _requeue(self, call: Call) -> None:
        """A call handed to this instance while it was being restarted: to another instance, or the front
        of the queue; answered -41002 if the agent has failed meanwhile."""
        cell = self._cell
        refused = False
        with cell.lock:
            self._slot.calls.discard(call)
            call.started_at = None
            if call.done:  # answered meanwhile (its timeout): its conversation goes on
                cell._release(call.key)
            elif cell.failed or cell.stopping:
                call.done = refused = True
                cell._release(call.key)
            else:
                cell._dispatch(call)
        if refused:
            call.reply(cell.not_available(FAILED if cell.failed else "stopped before serving this request"))

    def _serve(self, call: Call | None) -> None:
        """Serve ``call``, then (a loop, not recursion: a chat may have a thousand queued) each next call of
        its conversation that a ``def`` handler's end hands this instance. If they held the thread a
        while, the handlers awaiting get ``FAIR_TURNS`` turns of the loop before the next call is taken."""
        if call is None:
            return
        began = time.monotonic()
        while call is not None:
            call = self._serve_one(call)
        self._inbox.turns_owed = FAIR_TURNS if time.monotonic() - began > HELD_A_WHILE_S else 0

    def _serve_one(self, call: Call) -> Call | None:
        if call.done:  # answered while it waited to reach this thread (its timeout, a drain): never run
            return self._end(call, self._incarnation, None, None, run=False)
        incarnation = self._incarnation
        call.running = True
        incarnation.calls += 1
        marks = self._marks
        # Its hang threshold runs from now, not from when it was handed over; and a thread that takes a
        # new call is not stuck, even if its loop has not turned while it served calls back to back.
        call.started_at = marks.busy_since = now = time.monotonic()
        if marks.turned_at is not None:
            marks.turned_at = now
        try:
            value = call.run(incarnation.handlers[call.method])
            if inspect.isasyncgen(value):
                value = streamed(value, call.context.stream)
        except BaseException as exc:  # noqa: BLE001 - SystemExit and KeyboardInterrupt stay in this agent
            marks.busy_since = None
            return self._end(call, incarnation, None, exc)
        marks.busy_since = None
        if type(value) in PLAIN_RESULTS or not inspect.isawaitable(value):
            return self._end(call, incarnation, value, None)
        call.running = False  # until its task's first step
        begin = partial(self._cell._running, self._slot, self._generation, call)
        task = call.task = self._loop.create_task(_settled(value, begin))
        self._tasks.add(task)
        task.add_done_callback(partial(self._awaited, call, incarnation))
        if self._beat_timer is None:
            self._beat()
        return None

    def _awaited(
        self, call: Call, incarnation: _Incarnation, task: asyncio.Task[tuple[Any, BaseException | None]]
    ) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            value, exc = None, asyncio.CancelledError()
        else:
            value, exc = task.result()
        self._serve(self._end(call, incarnation, value, exc))
        self._fill()
        self._idle_check()

    def _end(
        self, call: Call, incarnation: _Incarnation, value: Any, exc: BaseException | None, *, run: bool = True
    ) -> Call | None:
        """A call's handler is over (``run``: it was called): answer it (unless the watchdog or its timeout
        did) and carry out what a crash means. Returns its conversation's next call when it is this
        instance's to serve now."""
        cell, slot = self._cell, self._slot
        if call.done and isinstance(exc, asyncio.CancelledError):
            outcome, crash = None, None  # cancelled because its caller was answered already: no crash
        else:
            outcome, crash = _judged(call, value, exc)
        if run:
            incarnation.calls -= 1
        current = incarnation is self._incarnation
        delay_s = None
        if crash is not None and current:
            delay_s = cell._supervise(slot, self._generation, crash)
        elif crash is not None:
            cell.last_crash = crash_record(type(crash).__name__, str(crash))
        answers, follower = cell._finish(slot, self._generation, call)
        if answers:
            call.reply(outcome)
            if exc is None and cell.failing and current and not self._abandoned:  # served: proof it works
                cell.failing = False
                cell.supervisor.served(cell.agent_id)
        if self._abandoned:
            self._leave()
            return None
        if crash is not None and current:
            incarnation.retired = True
            self._incarnation = None
            if delay_s is not None:
                self._later(delay_s, self._make)
        if incarnation.retired and incarnation.calls == 0:
            self._release(incarnation)
        if follower is not None and self._incarnation is None:
            self._requeue(follower)
            return None
        return follower

    def _beat(self) -> None:
        """While calls await: mark that the loop turns, for the watchdog."""
        if self._tasks and not self._abandoned:
            self._marks.turned_at = time.monotonic()
            self._beat_timer = self._loop.call_later(self._beat_s, self._beat)
        else:
            self._beat_timer = None
            self._marks.turned_at = None


async def _settled(
    awaitable: Awaitable[Any], begin: Callable[[], bool] | None = None
) -> tuple[Any, BaseException | None]:
    """``awaitable``'s result and the exception it raised: even ``SystemExit`` stays a value here (a task
    lets it out of the loop, and pykka would then stop every actor); a cancellation stays one. ``begin``,
    when given, says at the task's first step whether it is still to run (its call is not answered nor
    handed to another instance); if not, the awaitable is closed unrun."""
    if begin is not None and not begin():
        if inspect.iscoroutine(awaitable):
            awaitable.close()
        return None, None
    try:
        return await awaitable, None
    except asyncio.CancelledError:
        raise
    except BaseException as exc:  # noqa: BLE001 - judged by the cell: an answer or a crash
        return None, exc


def _started_at(call: Call) -> float:
    return call.started_at or 0.0


def _failure(task: asyncio.Task[tuple[Any, BaseException | None]]) -> BaseException | None:
    if task.cancelled():
        return asyncio.CancelledError()
    return task.result()[1]


def _judged(call: Call, value: Any, exc: BaseException | None) -> tuple[Outcome, BaseException | None]:
    """The outcome of a call's handler and, when it crashed (anything but an ``ARCError``), the crash."""
    try:
        if exc is not None:
            raise exc
        return msgspec.Raw(encoder.encode(value)), None
    except ARCError as error:
        return error.to_error_object(), None
    except BaseException as crash:  # noqa: BLE001 - SystemExit and KeyboardInterrupt stay in this agent
        context = call.context
        return internal_error(crash, context.target_agent, context.trace_id, context.method), crash


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

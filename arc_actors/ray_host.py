"""The agent's side of the Ray engine: :class:`AgentHost`, the asyncio Ray actor that runs one agent in its
own worker process, and the messages it exchanges with a gateway.

The host owns the agent's mailbox (callers wait for one of ``concurrency`` slots, first come first
served, at most ``mailbox_size`` waiting) and its supervision: each slot is one agent instance with its
own thread, so a blocking or hung handler never stalls the actor, and a crash or hang is decided by a
:class:`~arc_actors.supervisor.Supervisor` with the agent's own :class:`RestartPolicy`, in the process
where it happened, before the next queued message is taken (as in the in-process engine).

**One channel per request.** What a handler needs of its gateway while it runs travels as events on
that request's own channel: a streamed reply's :class:`Delta` s, and :class:`Ask` s for ``context.call``
and for ``context.task`` reports, answered by ``AgentHost.answer``. ``AgentHost.call`` answers the
:class:`Reply` itself when the handler made no event, one round trip as for any actor call; otherwise it
answers None and the gateway reads the events, then the reply, from the streaming generator
``AgentHost.follow``. Faults drawn by the gateway strike in the agent's thread (:class:`Errand`).
The gateway's half is :mod:`arc_actors.ray_engine`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import itertools
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import msgspec
from loguru import logger

from arc_actors.agent import Agent, Context, Handler
from arc_actors.engine import (
    AgentState,
    crash_record,
    hung,
    mailbox_full,
    not_available,
    run_to_completion,
    serve_request,
)
from arc_actors.exceptions import ARCError, internal_error
from arc_actors.faults import Struck, strike
from arc_actors.protocol import ErrorCode, ErrorObject, Outcome
from arc_actors.streaming import collect
from arc_actors.supervisor import RestartPolicy, Supervisor
from arc_actors.tasks import Task, TaskCancelled, TaskHandle

GATEWAY_SILENT_S = 5.0
"""How long a gateway with requests in flight may go unheard before the hosts refuse those requests'
asks (``context.call``, task reports) with -41003: Ray does not tell an actor that a caller died."""
GATEWAY_CHECK_S = 1.0
WITHDRAWN_KEPT = 1024
TASK_OPERATIONS = frozenset(("get", "add_message", "add_artifact", "progress"))
"""What a handler on Ray may ask of its request's ``TaskHandle``, done by the gateway."""


class HostStatus(msgspec.Struct, frozen=True, kw_only=True):
    """What a host reports with every answer and poll. ``seq`` orders reports that arrive out of order;
    ``failure_ages`` is its supervisor's window, carried over if its process dies."""

    seq: int
    state: AgentState
    restarts: int
    escalations: int
    mailbox: int
    busy: int
    up_s: float
    last_crash: dict[str, str] | None
    failure_ages: list[float]


class Reply(msgspec.Struct, frozen=True):
    """A host's answer to one request: the JSON-encoded result, or the error to answer with, or (a
    managed task's run only) what the handler raised, for the gateway's task book to judge."""

    result: bytes | None
    error: ErrorObject | None
    status: HostStatus
    raised: Any = None


class Errand(msgspec.Struct, frozen=True):
    """What travels with a request besides its context: the gateway that waits for it, whether it is
    streamed, the managed task it runs, and the faults drawn for it, to strike in the agent's thread."""

    gateway: str
    stream: bool = False
    task_id: str | None = None
    faults: list[Struck] = []


class Delta(msgspec.Struct, frozen=True):
    """An event of a request's channel: the next delta of a streamed reply."""

    text: str


class Ask(msgspec.Struct, frozen=True):
    """An event of a request's channel: the handler needs the gateway to ``call`` another agent (``args``:
    agent id, method, params) or to do a ``task`` operation on the request's real ``TaskHandle``
    (``args``: one of ``TASK_OPERATIONS``, then its arguments). Answered by ``AgentHost.answer``."""

    ask_id: int
    op: str
    args: tuple[Any, ...]


class _Slot:
    """One agent instance and the one thread that runs it; a hung slot's thread is abandoned."""

    def __init__(self, agent_id: str) -> None:
        self._name = f"arc-{agent_id}"
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=self._name)
        self._local = threading.local()
        self.agent: Agent | None = None
        self.handlers: dict[str, Handler] = {}

    def submit(self, function: Any, *args: Any) -> asyncio.Future[Any]:
        return asyncio.wrap_future(self._thread.submit(function, *args))

    def complete(self, value: Any, exchange: _Exchange | None = None) -> Any:
        """In the slot's thread: run an awaitable (an async generator: to its joined deltas, each sent to
        the gateway when the request streams) to its end on the thread's own loop, as the in-process
        engine does, cancellable through the request's ``exchange``."""
        if inspect.isasyncgen(value):
            value = collect(value, exchange.delta if exchange is not None and exchange.errand.stream else None)
        if not inspect.isawaitable(value):
            return value
        loop = getattr(self._local, "loop", None)
        if loop is None:
            loop = self._local.loop = asyncio.new_event_loop()
        return run_to_completion(loop, value if exchange is None else exchange.guard(value))

    def serve(
        self, method: str, params: dict[str, Any], context: Context, exchange: _Exchange
    ) -> tuple[Outcome, BaseException | None]:
        """In the slot's thread: one request, its drawn faults first. A cancelled request ends with an
        ARC error, not a crash; in a managed task's run, what the handler raises is kept in
        ``exchange.raised`` for the gateway's task book, as the in-process task wrap would judge it."""
        handler = self.handlers[method]
        errand = exchange.errand

        def run(params: dict[str, Any], context: Context) -> Any:
            strike(errand.faults, context.target_agent, method, context.trace_id)
            try:
                return self.complete(handler(params, context), exchange)
            except (asyncio.CancelledError, TaskCancelled):
                if not exchange.cancelled.is_set():
                    raise
                raise ARCError(ErrorCode.INTERNAL_ERROR, "Request cancelled by its gateway") from None
            except Exception as exc:
                if errand.task_id is None:
                    raise
                exchange.raised = exc
                return None

        return serve_request(run, params, context, _as_is)

    def abandon(self) -> None:
        """Leave the thread to whatever it is stuck in, for a fresh one."""
        self._thread.shutdown(wait=False, cancel_futures=True)
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=self._name)
        self._local = threading.local()
        self.agent, self.handlers = None, {}


class _Exchange:
    """The host's end of one request's channel to its gateway (see ``AgentHost.follow``): the events to
    send it, the asks it has yet to answer, and the request's cancellation. It is the handler's
    ``context.call`` (an :class:`~arc_actors.agent.AgentCaller`)."""

    def __init__(self, key: str, errand: Errand) -> None:
        self.key = key
        self.errand = errand
        self.cancelled = threading.Event()
        self.raised: Exception | None = None
        self._loop = asyncio.get_running_loop()
        self._events: list[Any] = []
        self._ready = asyncio.Event()
        self._lock = threading.Lock()
        self._asks = itertools.count()
        self._pending: dict[int, concurrent.futures.Future[Any]] = {}
        self._refusal: ARCError | None = None
        self._running: tuple[asyncio.AbstractEventLoop, asyncio.Task[Any]] | None = None

    # -- on the host's loop --

    def put(self, event: Any) -> None:
        self._events.append(event)
        self._ready.set()

    async def first(self) -> Any:
        """The first event, left in place."""
        await self._ready.wait()
        return self._events[0]

    async def take(self) -> list[Any]:
        """Every event so far, at least one."""
        await self._ready.wait()
        self._ready.clear()
        events, self._events = self._events, []
        return events

    @property
    def asking(self) -> bool:
        return bool(self._pending)

    @property
    def abandoned(self) -> bool:
        """Whether its gateway gave up on it or went silent: nobody may read its reply."""
        return self._refusal is not None

    def answer(self, ask_id: int, value: Any, error: BaseException | None) -> None:
        with self._lock:
            future = self._pending.pop(ask_id, None)
        if future is None or future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)

    def refuse(self, error: ARCError) -> None:
        """Answer every pending ask, and every later one, with ``error`` (the gateway is gone)."""
        with self._lock:
            self._refusal = error
            pending, self._pending = list(self._pending.values()), {}
        for future in pending:
            if not future.done():
                future.set_exception(error)

    def cancel(self) -> None:
        """The gateway gave up on the request (task cancelled, stream client gone): stop its handler."""
        self.cancelled.set()
        self.refuse(ARCError(ErrorCode.INTERNAL_ERROR, "Request cancelled by its gateway"))
        with self._lock:
            running = self._running
        if running is not None:
            loop, task = running
            with contextlib.suppress(RuntimeError):  # the slot's loop is closed: the run is over
                loop.call_soon_threadsafe(task.cancel)

    # -- in the slot's thread --

    def delta(self, text: str) -> None:
        self._loop.call_soon_threadsafe(self.put, Delta(text))

    def ask(self, op: str, *args: Any) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._lock:
            if self._refusal is not None:
                future.set_exception(self._refusal)
                return future
            ask_id = next(self._asks)
            self._pending[ask_id] = future
        self._loop.call_soon_threadsafe(self.put, Ask(ask_id, op, args))
        return future

    def call_from(
        self, context: Context, agent_id: str, method: str, params: dict[str, Any]
    ) -> concurrent.futures.Future[Outcome]:
        return self.ask("call", agent_id, method, params)

    async def guard(self, awaitable: Awaitable[Any]) -> Any:
        """Await ``awaitable`` as the task ``cancel`` cancels."""
        with self._lock:
            if self.cancelled.is_set():
                raise asyncio.CancelledError
            self._running = (asyncio.get_running_loop(), asyncio.current_task())
        try:
            return await awaitable
        finally:
            with self._lock:
                self._running = None


class _RemoteTask(TaskHandle):
    """``context.task`` in the host: each report is made by the gateway on the request's real
    ``TaskHandle`` (with the gateway's store) and waited for, as the in-process handle waits for its
    store; its exceptions are raised here. ``cancelled`` is this request's."""

    def __init__(self, exchange: _Exchange, task_id: str) -> None:
        self.task_id = task_id  # the task book and run of a real handle stay in the gateway
        self._exchange = exchange

    @property
    def cancelled(self) -> bool:
        return self._exchange.cancelled.is_set()

    def get(self) -> Task:
        return self._do("get")

    def add_message(self, message: Any) -> None:
        self._do("add_message", message)

    def add_artifact(self, artifact: dict[str, Any]) -> None:
        self._do("add_artifact", artifact)

    def progress(self, fraction: float) -> None:
        self._do("progress", fraction)

    def _do(self, operation: str, *args: Any) -> Any:
        return self._exchange.ask("task", operation, *args).result()


class AgentHost:
    """The Ray actor of one agent (see the module docstring). Made by :class:`RayEngine`, not by users."""

    def __init__(
        self,
        agent_id: str,
        factory: bytes,
        sys_path: list[str],
        policy: RestartPolicy,
        hang_after_s: float,
        concurrency: int,
        mailbox_size: int,
        failure_ages: list[float],
        gateway_silent_s: float = GATEWAY_SILENT_S,
    ) -> None:
        sys.path.extend(entry for entry in sys_path if entry not in sys.path)  # where the agent's modules are
        from ray import cloudpickle

        self._agent_id = agent_id
        self._factory = cloudpickle.loads(factory)
        self._supervisor = Supervisor({}, policy, hang_after_s)
        self._supervisor.remember(agent_id, failure_ages)
        self._hang_after_s = hang_after_s
        self._concurrency = concurrency
        self._mailbox_size = mailbox_size
        self._slots: list[_Slot] = []
        self._free: asyncio.Queue[_Slot | None] = asyncio.Queue()
        self._restarting: set[asyncio.Task[None]] = set()
        self._down = 0
        """Slots being (re)started: the agent is ``restarting`` while any is."""
        self._seq = 0
        self._waiting = 0
        self._busy = 0
        self._restarts = 0
        self._escalations = 0
        self._failed = False
        self._last_crash: dict[str, str] | None = None
        self._started_at = time.monotonic()
        self._log = logger.bind(agent_id=agent_id)
        self._exchanges: dict[str, _Exchange] = {}
        """The requests that have events to send or asks to be answered, by the gateway's key."""
        self._serving: set[asyncio.Future[None]] = set()
        self._withdrawn: dict[str, None] = {}
        """The requests their gateway gave up on before they had a slot (the latest ``WITHDRAWN_KEPT``;
        a ``cancel`` may even arrive before its ``call``: Ray runs an async actor's calls concurrently)."""
        self._heard: dict[str, float] = {}
        """When each gateway was last heard from (a request, a status poll)."""
        self._watching: asyncio.Task[None] | None = None
        self._gateway_silent_s = gateway_silent_s

    async def ready(self) -> HostStatus:
        """Make the first instances; answered once each slot has one, or the agent has failed."""
        if self._watching is None:
            self._watching = asyncio.get_running_loop().create_task(self._watch_gateways())
        if not self._slots:
            await self._start_all()
        return self.status()

    def status(self, gateway: str | None = None) -> HostStatus:
        """The agent's status now; ``gateway``, when a gateway polls, is heard from."""
        if gateway is not None:
            self._heard[gateway] = time.monotonic()
        self._seq += 1
        state = AgentState.FAILED if self._failed else AgentState.RESTARTING if self._down else AgentState.RUNNING
        return HostStatus(
            seq=self._seq,
            state=state,
            restarts=self._restarts,
            escalations=self._escalations,
            mailbox=self._waiting,
            busy=self._busy,
            up_s=time.monotonic() - self._started_at,
            last_crash=self._last_crash,
            failure_ages=self._supervisor.failure_ages(self._agent_id),
        )

    async def call(
        self, key: str, method: str, params: dict[str, Any], context: Context, errand: Errand
    ) -> Reply | None:
        """Serve one request when a slot is free, in arrival order. Answers its :class:`Reply` when the
        handler made no event on the way; else None, and the gateway reads the events, then the reply,
        with ``follow(key)``: a plain request costs one round trip, as before the channel existed."""
        self._heard[errand.gateway] = time.monotonic()
        if self._failed:
            return self._reply(error=self._refused())
        if self._waiting >= self._mailbox_size:
            return self._reply(error=mailbox_full(self._agent_id, self._mailbox_size))
        self._waiting += 1
        try:
            slot = await self._free.get()
        finally:
            self._waiting -= 1
        if slot is None:  # woken by the agent's failure
            return self._reply(error=self._refused())
        if key in self._withdrawn:  # its gateway gave up on it before it started: skipped, as in process
            del self._withdrawn[key]
            self._free.put_nowait(slot)
            return self._reply(error=not_available(self._agent_id, "skipped: withdrawn by its gateway", None))
        exchange = self._exchanges[key] = _Exchange(key, errand)
        context._caller = exchange
        if errand.task_id is not None:
            context.task = _RemoteTask(exchange, errand.task_id)
        serving = asyncio.ensure_future(self._serve(slot, method, params, context, exchange))
        self._serving.add(serving)
        serving.add_done_callback(self._serving.discard)
        first = await exchange.first()
        if isinstance(first, Reply):
            self._exchanges.pop(key, None)  # gone already if the gateway gave up on it
            return first
        return None

    async def follow(self, key: str) -> AsyncIterator[list[Any]]:
        """The rest of a request ``call`` answered None for, as a Ray streaming generator: batches of
        :class:`Delta` and :class:`Ask` events in the order the handler made them, the last batch ending
        with the :class:`Reply`."""
        exchange = self._exchanges.get(key)
        if exchange is None:
            return
        try:
            while True:
                events = await exchange.take()
                yield events
                if isinstance(events[-1], Reply):
                    return
        finally:
            self._exchanges.pop(key, None)

    def answer(self, key: str, ask_id: int, value: Any, error: BaseException | None) -> None:
        """The gateway's answer to an :class:`Ask` of request ``key``."""
        exchange = self._exchanges.get(key)
        if exchange is not None:
            exchange.answer(ask_id, value, error)

    def cancel(self, key: str) -> None:
        """The gateway gave up on request ``key`` (its task was cancelled, its stream's client left)."""
        exchange = self._exchanges.get(key)
        if exchange is not None:
            exchange.cancel()
        else:  # not started yet (or over already: then the key ages out)
            self._withdrawn[key] = None
            if len(self._withdrawn) > WITHDRAWN_KEPT:
                del self._withdrawn[next(iter(self._withdrawn))]

    async def _serve(
        self, slot: _Slot, method: str, params: dict[str, Any], context: Context, exchange: _Exchange
    ) -> None:
        try:
            reply = await self._run(slot, method, params, context, exchange)
        except Exception as exc:  # noqa: BLE001 - a failure of the host's own code still answers
            reply = self._reply(error=internal_error(exc, self._agent_id, context.trace_id, method))
        exchange.put(reply)
        if exchange.abandoned:
            self._exchanges.pop(exchange.key, None)

    async def _run(
        self, slot: _Slot, method: str, params: dict[str, Any], context: Context, exchange: _Exchange
    ) -> Reply:
        self._busy += 1
        try:
            outcome, crash = await asyncio.wait_for(
                slot.submit(slot.serve, method, params, context, exchange), self._hang_after_s
            )
        except TimeoutError:
            reason = f"{method} hung for more than {self._hang_after_s} s"
            self._log.error("watchdog: {} {}; abandoning its thread", self._agent_id, reason)
            slot.abandon()
            self._supervise(slot, "Hang", reason)
            return self._reply(error=hung(self._agent_id, self._hang_after_s))
        finally:
            self._busy -= 1
        if crash is not None:
            self._supervise(slot, type(crash).__name__, str(crash))
        else:
            self._free.put_nowait(slot)
        if exchange.raised is not None:
            return self._reply(raised=exchange.raised)
        if isinstance(outcome, ErrorObject):
            return self._reply(error=outcome)
        return self._reply(result=bytes(outcome))

    async def _watch_gateways(self) -> None:
        """Until the actor ends: refuse the asks of requests whose gateway has gone silent (it polls
        every ``ray_engine.POLL_BUSY_S`` while it has requests in flight), so a handler waiting on a dead gateway
        gets an ARC error instead of waiting forever."""
        while True:
            await asyncio.sleep(min(GATEWAY_CHECK_S, self._gateway_silent_s))
            now = time.monotonic()
            for exchange in list(self._exchanges.values()):
                silent_s = now - self._heard.get(exchange.errand.gateway, now)
                if exchange.asking and silent_s > self._gateway_silent_s:
                    self._log.warning(
                        "gateway {} silent for {:.1f} s: its requests' asks refused", exchange.errand.gateway, silent_s
                    )
                    exchange.refuse(
                        ARCError(
                            ErrorCode.AGENT_UNREACHABLE,
                            f"Agent unreachable: the gateway serving this request has not been heard from "
                            f"for {silent_s:.1f} s",
                            {"gateway": exchange.errand.gateway},
                        )
                    )

    async def revive(self) -> HostStatus:
        """Bring a failed agent back with fresh instances and a forgotten failure history."""
        if not self._failed:
            raise ValueError(f"agent {self._agent_id!r} is not failed: only a failed agent is restarted by hand")
        while not self._free.empty():
            self._free.get_nowait()
        self._supervisor.forget(self._agent_id)
        self._failed = False
        await self._start_all()
        return self.status()

    async def shutdown(self) -> None:
        """Run every instance's ``on_stop`` in its thread, before the actor is killed."""
        for slot in self._slots:
            if slot.agent is not None:
                with _logged(self._log, "on_stop raised"):
                    await slot.submit(slot.complete, slot.agent.on_stop())

    async def _start_all(self) -> None:
        self._slots = [_Slot(self._agent_id) for _ in range(self._concurrency)]
        self._down += len(self._slots)
        await asyncio.gather(*(self._start(slot, 0.0) for slot in self._slots))

    def _reply(self, result: bytes | None = None, error: ErrorObject | None = None, raised: Any = None) -> Reply:
        return Reply(result, error, self.status(), raised)

    def _refused(self) -> ErrorObject:
        return not_available(self._agent_id, "has failed and awaits a restart", self._last_crash)

    def _supervise(self, slot: _Slot, kind: str, message: str) -> None:
        """Decide on a crash or hang and count the restart before the crashing request is answered; the
        slot comes back to the mailbox only with a fresh instance."""
        self._last_crash = crash_record(kind, message)
        decision = self._supervisor.on_failure(self._agent_id, f"{kind}: {message}")
        if not decision.restart:
            self._fail()
            return
        self._restarts += 1
        self._down += 1
        task = asyncio.get_running_loop().create_task(self._start(slot, decision.delay_s, release=True))
        self._restarting.add(task)
        task.add_done_callback(self._restarting.discard)

    async def _start(self, slot: _Slot, delay_s: float, *, release: bool = False) -> None:
        """After ``delay_s``, a fresh instance in ``slot`` (``release``: the old one's ``on_stop`` first);
        a failing or hung start is a failure like any other. The caller counted the slot down."""
        try:
            await self._restart_slot(slot, delay_s, release)
        finally:
            self._down -= 1

    async def _restart_slot(self, slot: _Slot, delay_s: float, release: bool) -> None:
        if release and slot.agent is not None:
            with _logged(self._log, "on_stop raised"):
                await slot.submit(slot.complete, slot.agent.on_stop())
        await asyncio.sleep(delay_s)
        try:
            await asyncio.wait_for(slot.submit(self._make, slot), self._hang_after_s)
        except TimeoutError:
            reason = f"on_start hung for more than {self._hang_after_s} s"
            self._log.error("watchdog: {} {}; abandoning its thread", self._agent_id, reason)
            slot.abandon()
            self._supervise(slot, "Hang", reason)
            return
        except BaseException as exc:  # noqa: BLE001 - whatever on_start raises stays in this agent
            self._log.opt(exception=exc).error("agent failed to start")
            self._supervise(slot, type(exc).__name__, str(exc))
            return
        if self._failed:
            return
        self._started_at = time.monotonic()
        self._free.put_nowait(slot)

    def _make(self, slot: _Slot) -> None:
        agent = self._factory()
        slot.complete(agent.on_start())
        slot.agent, slot.handlers = agent, agent.handlers()

    def _fail(self) -> None:
        """Give up: every waiting request and every new one is answered -41002."""
        self._failed = True
        self._escalations += 1
        for _ in range(self._waiting):
            self._free.put_nowait(None)


class _logged:
    """Log, not raise, what a clean-up step raises."""

    def __init__(self, log: Any, what: str) -> None:
        self._log, self._what = log, what

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: BaseException | None, traceback: Any) -> bool:
        if exc is not None and isinstance(exc, Exception):
            self._log.opt(exception=exc).error(self._what)
            return True
        return False


def _as_is(value: Any) -> Any:
    return value

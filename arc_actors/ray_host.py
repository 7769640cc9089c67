"""The agent's side of the Ray engine: :class:`AgentHost`, the asyncio Ray actor that runs one agent in its
own worker process, and the messages it exchanges with a gateway.

The host runs the agent's :class:`~arc_actors.cell.AgentCell`, the same cell the in-process engine runs:
mailbox, instances, watchdog and supervision (with the agent's own :class:`RestartPolicy`, decided in
the process where the failure happened). What is the host's own is the way to its gateways.

**One channel per request.** What a handler needs of its gateway while it runs travels as events on
that request's own channel: a streamed reply's :class:`Delta` s, and :class:`Ask` s for ``context.call``
and for ``context.task`` reports, answered by ``AgentHost.answer``. ``AgentHost.call`` answers the
:class:`Reply` itself when the handler made no event, one round trip as for any actor call; otherwise it
answers None and the gateway reads the events, then the reply, from the streaming generator
``AgentHost.follow``. The gateway's half is :mod:`arc_actors.ray_engine`.
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
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any

import msgspec
from loguru import logger

from arc_actors.agent import Context, Handler
from arc_actors.cell import AgentCell, Call, watch_for_hangs
from arc_actors.engine import AgentState, AgentStatus
from arc_actors.exceptions import ARCError
from arc_actors.protocol import ErrorCode, ErrorObject, Outcome
from arc_actors.streaming import collect, streamed
from arc_actors.supervisor import FailureHistory, RestartPolicy, Supervisor
from arc_actors.tasks import Task, TaskCancelled, TaskHandle

GATEWAY_SILENT_S = 5.0
"""How long a gateway with requests in flight may go unheard before the hosts refuse those requests'
asks (``context.call``, task reports) with -41003: Ray does not tell an actor that a caller died."""
GATEWAY_CHECK_S = 1.0
WITHDRAWN_KEPT = 1024
START_POLL_S = 0.01
TASK_OPERATIONS = frozenset(("get", "add_message", "add_artifact", "progress"))
"""What a handler on Ray may ask of its request's ``TaskHandle``, done by the gateway."""
WITHDRAWN = "skipped: withdrawn by its gateway"


class HostStatus(msgspec.Struct, frozen=True, kw_only=True):
    """What a host reports with every answer and poll: its agent's status; ``seq`` orders reports that
    arrive out of order; ``failures`` is its supervisor's history, carried over if its process dies."""

    seq: int
    agent: AgentStatus
    failures: FailureHistory


class Reply(msgspec.Struct, frozen=True):
    """A host's answer to one request: the JSON-encoded result, or the error to answer with, or (a
    managed task's run only) what the handler raised, for the gateway's task book to judge."""

    result: bytes | None
    error: ErrorObject | None
    status: HostStatus
    raised: Any = None


class Errand(msgspec.Struct, frozen=True):
    """What travels with a request besides its context: the gateway that waits for it, whether it is
    streamed, and the managed task it runs."""

    gateway: str
    stream: bool = False
    task_id: str | None = None


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


class _Exchange:
    """The host's end of one request's channel to its gateway (see ``AgentHost.follow``): the events to
    send it, the asks it has yet to answer, and the request's cancellation. It is the handler's
    ``context.call`` (an :class:`~arc_actors.agent.AgentCaller`)."""

    def __init__(self, key: str, errand: Errand) -> None:
        self.key = key
        self.errand = errand
        self.cancelled = threading.Event()
        self.raised: Exception | None = None
        self.answered = False
        self.call: Call | None = None
        self._loop = asyncio.get_running_loop()
        self._events: list[Any] = []
        self._arrived = asyncio.Event()
        self._lock = threading.Lock()
        self._asks = itertools.count()
        self._pending: dict[int, concurrent.futures.Future[Any]] = {}
        self._refusal: ARCError | None = None
        self._running: tuple[asyncio.AbstractEventLoop, asyncio.Task[Any]] | None = None

    # -- on the host's loop --

    def put(self, event: Any) -> None:
        self._events.append(event)
        self._arrived.set()

    async def first(self) -> Any:
        """The first event, left in place."""
        await self._arrived.wait()
        return self._events[0]

    async def take(self) -> list[Any]:
        """Every event so far, at least one."""
        await self._arrived.wait()
        self._arrived.clear()
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

    def relay(self, generator: AsyncGenerator[object, None]) -> Awaitable[str]:
        """The request's stream, here: each delta sent to the gateway as it is made."""
        return collect(generator, self.delta)

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


class _HostCall(Call):
    """A request in the host: its handler's awaitable is cancellable through the request's channel, and
    in a managed task's run what the handler raises is kept for the gateway's task book, as the task
    wrap there judges it (a task's failure, not the agent's crash)."""

    __slots__ = ("exchange",)

    def __init__(
        self,
        method: str,
        params: dict[str, Any],
        context: Context,
        reply: Callable[[Outcome], object],
        exchange: _Exchange,
    ) -> None:
        super().__init__(method, params, context, reply)
        self.exchange = exchange

    def run(self, handler: Handler) -> Any:
        try:
            value = handler(self.params, self.context)
        except Exception as exc:  # noqa: BLE001 - judged: a task's failure, a cancellation, or a crash
            return self._judged(exc)
        if inspect.isasyncgen(value):
            value = streamed(value, self.context.stream)
        if inspect.isawaitable(value):
            return self._judged_later(self.exchange.guard(value))
        return value

    async def _judged_later(self, awaitable: Awaitable[Any]) -> Any:
        try:
            return await awaitable
        except (asyncio.CancelledError, Exception) as exc:  # noqa: BLE001 - judged as a synchronous one
            return self._judged(exc)

    def _judged(self, exc: BaseException) -> Any:
        """A cancellation by the gateway is an ARC error, not a crash; in a managed task's run, what the
        handler raised is kept for the gateway's task book (None answers meanwhile)."""
        exchange = self.exchange
        if isinstance(exc, asyncio.CancelledError | TaskCancelled) and exchange.cancelled.is_set():
            raise ARCError(ErrorCode.INTERNAL_ERROR, "Request cancelled by its gateway") from None
        if exchange.errand.task_id is None or not isinstance(exc, Exception):
            raise exc
        exchange.raised = exc
        return None


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
        failures: FailureHistory,
        gateway_silent_s: float = GATEWAY_SILENT_S,
        max_in_flight: int = 1,
    ) -> None:
        sys.path.extend(entry for entry in sys_path if entry not in sys.path)  # where the agent's modules are
        logger.enable("arc_actors")  # this worker process is the server's: its crashes and hangs are logged
        from ray import cloudpickle

        self._agent_id = agent_id
        self._supervisor = Supervisor({}, policy, hang_after_s)
        self._supervisor.remember(agent_id, failures)
        self._cell = AgentCell(
            agent_id,
            cloudpickle.loads(factory),
            self._supervisor,
            concurrency=concurrency,
            mailbox_size=mailbox_size,
            max_in_flight=max_in_flight,
        )
        self._seq = 0
        self._log = logger.bind(agent_id=agent_id)
        self._exchanges: dict[str, _Exchange] = {}
        """The requests that have events to send or asks to be answered, by the gateway's key."""
        self._withdrawn: dict[str, None] = {}
        """The requests their gateway gave up on before they arrived (the latest ``WITHDRAWN_KEPT``: Ray
        runs an async actor's calls concurrently, so a ``cancel`` may arrive before its ``call``)."""
        self._heard: dict[str, float] = {}
        """When each gateway was last heard from (a request, a status poll)."""
        self._watching: list[asyncio.Task[None]] = []
        self._gateway_silent_s = gateway_silent_s

    async def ready(self) -> HostStatus:
        """Start the agent; answered once each instance is up, or the agent has failed."""
        if not self._watching:
            loop = asyncio.get_running_loop()
            self._watching = [loop.create_task(self._watch_gateways()), loop.create_task(watch_for_hangs([self._cell]))]
            self._cell.start()
        await self._started()
        return self.status()

    def status(self, gateway: str | None = None) -> HostStatus:
        """The agent's status now; ``gateway``, when a gateway polls, is heard from."""
        if gateway is not None:
            self._heard[gateway] = time.monotonic()
        self._seq += 1
        return HostStatus(seq=self._seq, agent=self._cell.status(), failures=self._supervisor.history(self._agent_id))

    async def call(
        self, key: str, method: str, params: dict[str, Any], context: Context, errand: Errand
    ) -> Reply | None:
        """Put one request in the agent's mailbox. Answers its :class:`Reply` when the handler made no
        event on the way; else None, and the gateway reads the events, then the reply, with
        ``follow(key)``: a plain request costs one round trip, as before the channel existed."""
        self._heard[errand.gateway] = time.monotonic()
        if key in self._withdrawn:  # its gateway gave up on it before it arrived: skipped, as in process
            del self._withdrawn[key]
            return self._reply(error=self._cell.not_available(WITHDRAWN))
        exchange = _Exchange(key, errand)
        task = None if errand.task_id is None else _RemoteTask(exchange, errand.task_id)
        here = context.rebound(exchange, exchange if errand.stream else None, task)
        loop = asyncio.get_running_loop()
        call = exchange.call = _HostCall(
            method, params, here, partial(loop.call_soon_threadsafe, self._answer, exchange), exchange
        )
        refused = self._cell.submit(call)
        if refused is not None:
            return self._reply(error=refused)
        self._exchanges[key] = exchange
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
        """The gateway gave up on request ``key`` (its task was cancelled, its stream's client left): a
        request still in the mailbox never runs, a running one's handler is cancelled."""
        exchange = self._exchanges.get(key)
        if exchange is None:  # not arrived yet (or over already: then the key ages out)
            self._withdrawn[key] = None
            if len(self._withdrawn) > WITHDRAWN_KEPT:
                del self._withdrawn[next(iter(self._withdrawn))]
        elif exchange.call is not None and self._cell.withdraw(exchange.call):
            self._answer(exchange, self._cell.not_available(WITHDRAWN))
        else:
            exchange.cancel()

    async def revive(self) -> HostStatus:
        """Bring a failed agent back with fresh instances and a forgotten failure history."""
        self._cell.restart()
        await self._started()
        return self.status()

    async def shutdown(self, timeout_s: float) -> None:
        """Stop the instances (each runs ``on_stop`` in its thread), waiting at most ``timeout_s``, before
        the actor is killed."""
        self._cell.stop()
        deadline = time.monotonic() + timeout_s
        await asyncio.get_running_loop().run_in_executor(None, self._cell.wait_stopped, deadline)

    async def _started(self) -> None:
        while self._cell.state in (AgentState.STARTING, AgentState.RESTARTING):
            await asyncio.sleep(START_POLL_S)

    def _answer(self, exchange: _Exchange, outcome: Outcome) -> None:
        """On the host's loop: the request's reply, its last event (the first answer only: a hung one's
        is the watchdog's)."""
        if exchange.answered:
            return
        exchange.answered = True
        if exchange.raised is not None:
            reply = self._reply(raised=exchange.raised)
        elif isinstance(outcome, ErrorObject):
            reply = self._reply(error=outcome)
        else:
            reply = self._reply(result=bytes(outcome))
        exchange.put(reply)
        if exchange.abandoned:
            self._exchanges.pop(exchange.key, None)

    def _reply(self, result: bytes | None = None, error: ErrorObject | None = None, raised: Any = None) -> Reply:
        return Reply(result, error, self.status(), raised)

    async def _watch_gateways(self) -> None:
        """Until the actor ends: refuse the asks of requests whose gateway has gone silent (it polls
        every ``ray_engine.POLL_BUSY_S`` while it has requests in flight), so a handler waiting on a dead
        gateway gets an ARC error instead of waiting forever."""
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

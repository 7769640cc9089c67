"""The Ray engine: each agent is one named Ray actor, in its own worker process, on any node of a cluster.

Two halves, one per process:

* :class:`~arc_actors.ray_host.AgentHost` (module :mod:`arc_actors.ray_host`) runs inside the Ray
  actor the agent's :class:`~arc_actors.cell.AgentCell`, the same cell the in-process engine runs:
  mailbox, instances, watchdog, and supervision with the agent's own :class:`RestartPolicy`, decided in
  the process where the failure happened.
* :class:`RayEngine` runs in the gateway. It sends requests to the hosts, keeps the latest status each
  reports for ``/health`` (never waiting on an actor to answer it), and supervises the processes
  themselves: a host whose process dies (``ray.kill``, ``os._exit``, a lost node) is made anew, after
  the policy's backoff, under the same policy and failure window; the requests it held are answered
  -41002 at once. Ray's own actor restarts are off (``max_restarts=0``): the one policy users configure
  is ours.

The runtime's layers run here, in the gateway, around a proxy of the agent, so they use the gateway's
store (managed chats and tasks) and its fault plan; only the agent's own code and the layers that must
run beside it (faults struck in its thread) are shipped to Ray (by cloudpickle, so classes and closures
defined in ``__main__`` or in an APP file travel by value).

**One channel per request.** What a handler needs of its gateway while it runs travels as events on
that request's own channel: a streamed reply's :class:`Delta` s, and :class:`Ask` s for ``context.call``
(done by the gateway's router, so call chains, cycles, trace ids and -41001/-41003 are the in-process
ones) and for ``context.task`` reports (done on the gateway's real ``TaskHandle``, with its store),
answered by ``AgentHost.answer``. ``AgentHost.call`` answers the :class:`Reply` itself when the handler
made no event, one round trip as for any actor call; otherwise it answers None and the gateway reads
the events, then the reply, from the streaming generator ``AgentHost.follow``.

Actors are named ``agent_id`` in the namespace ``arc_actors-<server_id>`` (or ``ray_namespace``) and
found with ``get_if_exists``, so every gateway of one app reaches the same actors.
"""

from __future__ import annotations

import asyncio
import inspect
import sys
import time
import uuid
from collections.abc import Awaitable
from functools import partial
from typing import Any

import msgspec
from loguru import logger

from arc_actors.agent import Agent, AgentSpec, Context, Handler
from arc_actors.engine import (
    AgentState,
    AgentStatus,
    EngineUnavailable,
    answer_in_time,
    crash_record,
    mailbox_full,
    not_available,
    resolve,
    timed_out,
)
from arc_actors.exceptions import ARCError, internal_error
from arc_actors.protocol import ErrorObject, Outcome
from arc_actors.ray_host import TASK_OPERATIONS, AgentHost, Ask, Delta, Errand, HostStatus, Reply
from arc_actors.supervisor import Supervisor

RAY_MISSING = "the ray engine needs Ray: pip install 'arc-actors[ray]'"
CONTROL_CALLS = 8
"""Room in a host's ``max_concurrency`` beyond its mailbox and slots, for status polls and control."""
POLL_BUSY_S = 0.1
"""How often the gateway refreshes the status of an agent it has requests in flight with."""
POLL_IDLE_S = 1.0
"""How often it checks on an idle agent: how soon a process that died idle is noticed and replaced."""
STOP_POLL_S = 0.01
NAME_RELEASE_WAIT_S = 10.0
"""How long a replacement waits for the cluster to record its predecessor's death."""


def import_ray() -> Any:
    """The ``ray`` module, or a one-line error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise EngineUnavailable(RAY_MISSING) from None
    return ray


class _Answered(Exception):
    """The host (or the gateway for it) answered the request with an error: it passes the runtime's
    wraps untouched, as a crash would, and becomes the answer."""

    def __init__(self, outcome: ErrorObject) -> None:
        super().__init__(outcome.message)
        self.outcome = outcome


class _Cell:
    """The gateway's record of one agent: its host, what the host last reported, and the requests this
    gateway has in flight with it."""

    def __init__(self, spec: AgentSpec, mailbox_size: int, request_timeout_s: float | None) -> None:
        self.spec = spec
        self.mailbox_size = mailbox_size
        self.request_timeout_s = request_timeout_s
        self.host: Any = None
        self.owned = False
        self.generation = 0
        self.report: HostStatus | None = None
        self.restarts_before = 0
        self.escalations_before = 0
        self.failed = False
        self.stopping = False
        self.last_crash: dict[str, str] | None = None
        self.ready = asyncio.Event()
        self.in_flight: set[asyncio.Future[Outcome]] = set()
        self.waiting = 0
        """Requests waiting here for the host to be (re)made."""
        self.polled_at = 0.0
        self.handlers: dict[str, Handler] = {}
        self.layered = any(not layer.beside_agent for layer in spec.layers)
        """Whether layers run here around the proxy (they may answer some requests themselves: chat.end)."""

    def observe(self, report: HostStatus) -> None:
        if self.report is None or report.seq > self.report.seq:
            self.report = report
            if report.agent.last_crash is not None:
                self.last_crash = report.agent.last_crash

    @property
    def state(self) -> AgentState:
        if self.failed:
            return AgentState.FAILED
        if self.stopping and self.host is None:
            return AgentState.STOPPED
        if not self.ready.is_set():
            return AgentState.STARTING if self.generation == 0 else AgentState.RESTARTING
        return self.report.agent.state if self.report is not None else AgentState.STARTING


class _Proxy(Agent):
    """The gateway's stand-in for an agent's instance: each of its handlers is a request to the host,
    so the runtime's wraps run around it here, with the gateway's store."""

    def __init__(self, engine: RayEngine, cell: _Cell) -> None:
        self._engine, self._cell = engine, cell

    def handlers(self) -> dict[str, Handler]:
        return {method: self._remote(method) for method in self._cell.spec.own_methods}

    def _remote(self, method: str) -> Handler:
        async def remote(params: dict[str, Any], context: Context) -> Any:
            reply = await self._engine._request(self._cell, method, params, context)
            return msgspec.json.decode(reply)

        return remote


def _why_not_connected(exc: ConnectionError) -> str:
    """What to do about a cluster that refused us: Ray's own cause is deep in a traceback."""
    if "InvalidAuthToken" in str(exc.__cause__):
        return (
            "the cluster wants its auth token: set RAY_AUTH_MODE=token, with the head's ~/.ray/auth_token "
            "copied here or RAY_AUTH_TOKEN set"
        )
    return "is the head running, and is the address the one `ray start --head` printed?"


class RayEngine:
    """The :class:`~arc_actors.engine.Engine` over a Ray cluster (see the module docstring).

    ``address`` is the cluster's (``"auto"``, ``"ray://host:10001"``, ...); None starts a local Ray in
    this process unless one is running already. ``namespace`` is where the agents' actors are named."""

    def __init__(
        self,
        supervisor: Supervisor,
        mailbox_size: int,
        request_timeout_s: float | None,
        *,
        address: str | None,
        namespace: str,
    ) -> None:
        self._ray = import_ray()
        if not self._ray.is_initialized():
            try:
                self._ray.init(address=address, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
            except ConnectionError as exc:
                raise EngineUnavailable(f"{exc} ({_why_not_connected(exc)})") from None
        self._supervisor = supervisor
        self._default_mailbox_size = mailbox_size
        self._default_request_timeout_s = request_timeout_s
        self._namespace = namespace
        self._cells: dict[str, _Cell] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._host_class = self._ray.remote(max_restarts=0)(AgentHost)
        self._id = uuid.uuid4().hex
        """This gateway, to the hosts: who they wait for and check on."""

    # -- the Engine interface --

    def spawn(self, spec: AgentSpec) -> None:
        if spec.agent_id in self._cells:
            raise ValueError(f"agent {spec.agent_id!r} is already running")
        cell = _Cell(
            spec,
            spec.mailbox_size or self._default_mailbox_size,
            spec.request_timeout_s or self._default_request_timeout_s,
        )
        cell.handlers = spec.dress_remote(_Proxy(self, cell)).handlers()
        self._loop = asyncio.get_running_loop()
        self._cells[spec.agent_id] = cell
        self._connect(cell)

    def ask(self, agent_id: str, method: str, params: dict[str, Any], context: Context) -> Awaitable[Outcome]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()
        cell = self._cells[agent_id]
        refused = self._refusal(cell)
        if refused is not None:
            future.set_result(refused)
            return future
        cell.in_flight.add(future)
        future.add_done_callback(cell.in_flight.discard)
        answering = self._background(self._answer(cell, method, params, context, future))
        # answered otherwise (its timeout, a drain) or given up on: the host withdraws or cancels it
        future.add_done_callback(lambda _: answering.done() or answering.cancel())
        if cell.request_timeout_s is not None:
            answer_in_time(future, cell.request_timeout_s, partial(timed_out, agent_id, cell.request_timeout_s))
        return future

    def restart(self, agent_id: str) -> None:
        """Bring a failed agent back: a failed host revives its instances; a host given up on after its
        process died is made anew. Blocks for the revival (call it off the event loop)."""
        cell = self._cells[agent_id]
        if cell.state is not AgentState.FAILED:
            raise ValueError(f"agent {agent_id!r} is {cell.state.value}: only a failed agent is restarted by hand")
        self._supervisor.forget(agent_id)
        if cell.failed:  # the gateway gave up on its process
            self._on_loop(self._reconnect, cell)
        else:
            cell.observe(self._ray.get(cell.host.revive.remote()))
        logger.bind(agent_id=agent_id).warning("{} restarted by hand", agent_id)

    def _reconnect(self, cell: _Cell) -> None:
        cell.failed = False
        cell.generation += 1
        cell.ready.clear()
        self._connect(cell)

    def _on_loop(self, function: Any, *args: Any) -> None:
        """Run ``function`` on the gateway's loop and wait for it, from whichever thread."""
        try:
            here = asyncio.get_running_loop() is self._loop
        except RuntimeError:
            here = False
        if here:
            function(*args)
            return

        async def run() -> None:
            function(*args)

        asyncio.run_coroutine_threadsafe(run(), self._loop).result()

    def status(self, agent_id: str) -> AgentStatus:
        cell = self._cells[agent_id]
        report = None if cell.report is None else cell.report.agent
        return AgentStatus(
            state=cell.state,
            restarts=cell.restarts_before + (report.restarts if report else 0),
            escalations=cell.escalations_before + (report.escalations if report else 0),
            mailbox=(report.mailbox if report else 0) + cell.waiting,
            busy=report.busy if report else 0,
            uptime_s=report.uptime_s if report else 0.0,
            last_crash=cell.last_crash,
            backoff_s=report.backoff_s if report else self._supervisor.backoff_s(agent_id),
        )

    async def watch_for_hangs(self) -> None:
        """Hangs are cut inside each host; here, until cancelled, the hosts' statuses are refreshed
        (often while requests are in flight) and a host whose process died idle is noticed and replaced."""
        while True:
            await asyncio.sleep(POLL_BUSY_S)
            now = time.monotonic()
            due = [
                cell
                for cell in self._cells.values()
                if cell.ready.is_set()
                and not cell.failed
                and now - cell.polled_at >= (POLL_BUSY_S if cell.in_flight else POLL_IDLE_S)
            ]
            for cell in due:
                cell.polled_at = now
            await asyncio.gather(*(self._poll(cell, cell.generation) for cell in due))

    async def drain(self, timeout_s: float) -> dict[str, int]:
        for cell in self._cells.values():
            cell.stopping = True
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and any(cell.in_flight for cell in self._cells.values()):
            await asyncio.sleep(STOP_POLL_S)
        unserved: dict[str, int] = {}
        for agent_id, cell in self._cells.items():
            left = list(cell.in_flight)
            for future in left:
                why = "stopped before serving this request: the server shut down"
                resolve(future, not_available(agent_id, why, cell.last_crash))
            if left:
                unserved[agent_id] = len(left)
        return unserved

    def stop(self, timeout_s: float) -> list[str]:
        """Run the ``on_stop`` of the agents this gateway started and end their actors; agents started by
        another gateway are left to it."""
        deadline = time.monotonic() + timeout_s
        owned = {agent_id: cell for agent_id, cell in self._cells.items() if cell.owned and cell.host is not None}
        for cell in self._cells.values():
            cell.stopping = True
        stopping = {agent_id: cell.host.shutdown.remote(timeout_s) for agent_id, cell in owned.items()}
        done = []
        if stopping:
            done, _ = self._ray.wait(list(stopping.values()), num_returns=len(stopping), timeout=timeout_s)
        busy = [agent_id for agent_id, ref in stopping.items() if ref not in done]
        for cell in owned.values():
            self._ray.kill(cell.host, no_restart=True)
            cell.host = None
        for agent_id in owned:  # the names are free again before this returns
            while time.monotonic() < deadline and self._named(agent_id) is not None:
                time.sleep(STOP_POLL_S)
        return busy

    # -- the gateway's half of supervision --

    def _refusal(self, cell: _Cell) -> ErrorObject | None:
        """What the gateway refuses itself: an agent it gave up on, or its own stopping; the mailbox's
        bound is the agent's cell's, in its host."""
        agent_id = cell.spec.agent_id
        if cell.state is AgentState.FAILED:
            return not_available(agent_id, "has failed and awaits a restart", cell.last_crash)
        if cell.stopping:
            return not_available(agent_id, "is stopping: the server is shutting down", cell.last_crash)
        return None

    async def _answer(
        self, cell: _Cell, method: str, params: dict[str, Any], context: Context, future: asyncio.Future[Outcome]
    ) -> None:
        try:
            if cell.layered:
                answer = cell.handlers[method](params, context)
                result = await answer if inspect.isawaitable(answer) else answer
                outcome: Outcome = msgspec.Raw(msgspec.json.encode(result))
            else:
                outcome = msgspec.Raw(await self._request(cell, method, params, context))
        except _Answered as answered:
            outcome = answered.outcome
        except ARCError as exc:
            outcome = exc.to_error_object()
        except Exception as exc:  # noqa: BLE001 - a failure in the runtime's wraps answers -32603, never a hang
            outcome = internal_error(exc, cell.spec.agent_id, context.trace_id, method)
        resolve(future, outcome)

    async def _request(self, cell: _Cell, method: str, params: dict[str, Any], context: Context) -> bytes:
        """One request to the agent's host: its encoded result, or :class:`_Answered` with its error (or,
        in a managed task's run, what the handler raised, raised here). Its deltas go to the request's
        stream and its asks are done here, as they come."""
        if not cell.ready.is_set():
            await self._wait_for_host(cell)
        if cell.failed:
            raise _Answered(not_available(cell.spec.agent_id, "has failed and awaits a restart", cell.last_crash))
        generation = cell.generation
        key = uuid.uuid4().hex
        errand = Errand(self._id, context.stream is not None, None if context.task is None else context.task.task_id)
        try:
            reply: Reply | None = await cell.host.call.remote(key, method, params, context.rebound(None), errand)
            if reply is None:
                reply = await self._follow(cell, key, context)
        except self._ray.exceptions.RayActorError as exc:
            self._died(cell, generation, exc)
            why = "lost its worker process with this request in flight; it may or may not have run"
            raise _Answered(not_available(cell.spec.agent_id, why, cell.last_crash)) from None
        except asyncio.CancelledError:
            cell.host.cancel.remote(key)
            raise
        cell.observe(reply.status)
        if reply.raised is not None:
            raise reply.raised
        if reply.error is not None:
            raise _Answered(reply.error)
        return reply.result

    async def _wait_for_host(self, cell: _Cell) -> None:
        """Wait while the agent's host is (re)made: these requests wait here, not in its cell, so the
        same bound holds here (at most ``mailbox_size`` waiting)."""
        if cell.waiting >= cell.mailbox_size:
            raise _Answered(mailbox_full(cell.spec.agent_id, cell.mailbox_size))
        cell.waiting += 1
        try:
            await cell.ready.wait()
        finally:
            cell.waiting -= 1

    async def _follow(self, cell: _Cell, key: str, context: Context) -> Reply:
        """Read a request's events until its reply: deltas to its stream, asks done in the background
        (a handler may wait on several at once) and answered to the host."""
        host = cell.host
        async for batch in host.follow.remote(key):
            for event in await batch:
                if isinstance(event, Reply):
                    return event
                if isinstance(event, Delta):
                    context.stream.send(event.text)
                else:
                    self._background(self._do(host, key, event, context))
        raise RuntimeError(f"the host of {cell.spec.agent_id} ended a request without its reply")

    async def _do(self, host: Any, key: str, ask: Ask, context: Context) -> None:
        """Do what a handler asked, as if it ran here: a call through the router (cycles, call chains and
        the trace id as in process), a task operation on the real handle; answer the host."""
        value: Any = None
        error: BaseException | None = None
        try:
            if ask.op == "call":
                value = msgspec.Raw(msgspec.json.encode(await context.call(*ask.args)))
            elif ask.op == "task" and context.task is not None and ask.args[0] in TASK_OPERATIONS:
                operation = getattr(context.task, ask.args[0])
                value = await asyncio.get_running_loop().run_in_executor(None, operation, *ask.args[1:])
            else:
                raise ValueError(f"the host asked for {ask.op} {ask.args[:1]}, which this request does not offer")
        except Exception as exc:  # noqa: BLE001 - raised in the handler that asked, as in process
            error = exc
        host.answer.remote(key, ask.ask_id, value, error)

    async def _poll(self, cell: _Cell, generation: int) -> None:
        """Refresh the status of the host of ``generation``, found due; by the time this runs a request
        may have seen it die (and ``cell.host`` still be the dead one until its replacement is made)."""
        if generation != cell.generation:
            return
        try:
            cell.observe(await cell.host.status.remote(self._id))
        except self._ray.exceptions.RayActorError as exc:
            self._died(cell, generation, exc)

    def _died(self, cell: _Cell, generation: int, exc: BaseException) -> None:
        """The host's process is gone: restart it under the agent's policy, its failure window carried
        over from the host's last report, or give the agent up."""
        if generation != cell.generation or cell.stopping:
            return  # another request saw this death first, or the server is stopping
        agent_id = cell.spec.agent_id
        cell.generation += 1
        cell.ready.clear()
        message = str(exc).splitlines()[0][:200]
        cell.last_crash = crash_record("WorkerDied", message)
        report = cell.report
        if report is not None:  # else it died before reporting: the window here is the latest
            self._supervisor.remember(agent_id, report.failures)
        decision = self._supervisor.on_failure(agent_id, f"worker process died: {message}")
        cell.restarts_before += report.agent.restarts if report else 0
        cell.escalations_before += report.agent.escalations if report else 0
        cell.report = None
        if not decision.restart:
            cell.failed = True
            cell.escalations_before += 1
            cell.ready.set()  # requests waiting for the new host are answered -41002
            return
        cell.restarts_before += 1
        self._background(self._replace(cell, cell.host, decision.delay_s))

    async def _replace(self, cell: _Cell, dead: Any, delay_s: float) -> None:
        """After ``delay_s``, a new host in place of ``dead``, once Ray has let go of its name (a death
        is often seen by a caller before the cluster has recorded it, and a killed one releases its name
        at once)."""
        self._ray.kill(dead, no_restart=True)
        await asyncio.sleep(delay_s)
        deadline = time.monotonic() + NAME_RELEASE_WAIT_S
        loop = asyncio.get_running_loop()
        while time.monotonic() < deadline:
            found = await loop.run_in_executor(None, self._named, cell.spec.agent_id)  # a GCS round trip
            if found is None or found._actor_id != dead._actor_id:
                break
            await asyncio.sleep(STOP_POLL_S)
        self._connect(cell)

    def _connect(self, cell: _Cell) -> None:
        """Find the agent's actor in the namespace or make it, then wait for it in the background."""
        spec = cell.spec
        existing = self._named(spec.agent_id)
        if existing is not None:
            cell.host, cell.owned = existing, False
        else:
            from ray import cloudpickle

            try:
                factory = cloudpickle.dumps(spec.beside_agent())
            except Exception as exc:  # noqa: BLE001 - cloudpickle raises whatever the unpicklable object does
                raise ValueError(
                    f"agent {spec.agent_id!r} cannot be sent to a Ray actor: its class, handlers or arguments "
                    f"hold something that cannot be pickled ({type(exc).__name__}: {exc})"
                ) from None
            cell.host = self._host_class.options(
                name=spec.agent_id,
                namespace=self._namespace,
                get_if_exists=True,
                max_concurrency=cell.mailbox_size + spec.concurrency * spec.max_in_flight + CONTROL_CALLS,
            ).remote(
                spec.agent_id,
                factory,
                list(sys.path),
                self._supervisor.policy(spec.agent_id),
                self._supervisor.hang_after_s(spec.agent_id),
                spec.concurrency,
                cell.mailbox_size,
                self._supervisor.history(spec.agent_id),
                max_in_flight=spec.max_in_flight,
            )
            cell.owned = True
        self._background(self._await_host(cell, cell.generation))

    async def _await_host(self, cell: _Cell, generation: int) -> None:
        try:
            report = await cell.host.ready.remote()
        except self._ray.exceptions.RayActorError as exc:
            self._died(cell, generation, exc)  # requests waiting go to its successor, or are refused
            return
        if generation == cell.generation:
            cell.observe(report)
            cell.ready.set()

    def _named(self, agent_id: str) -> Any:
        try:
            return self._ray.get_actor(agent_id, namespace=self._namespace)
        except ValueError:
            return None

    def _background(self, coroutine: Any) -> asyncio.Task[Any]:
        """Run ``coroutine`` on the gateway's loop (called on it)."""
        task = self._loop.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

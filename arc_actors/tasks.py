"""Managed tasks: the runtime owns a task's id, status, timestamps, messages and artifacts, and runs the
agent's ``task_create`` in the background after ``task.create`` has answered.

For every agent that answers ``task.create``, the runtime answers ``task.create``, ``task.send``,
``task.info``, ``task.get`` and ``task.cancel`` itself, in two places:

* **In front of the mailbox** (``TaskBook.front``, which the router asks before the engine), from the
  store, so they answer at once even while the agent is busy running a task: ``task.create`` records
  the task (SUBMITTED, ``taskId`` generated, priority kept, default NORMAL), puts its run in the agent's
  mailbox and answers ``{"type": "task", "task": {...}}`` without waiting for it. ``task.send`` appends
  the message and answers ``{"success": true}``; when the task is INPUT_REQUIRED and the agent has a
  ``task_send`` handler, that handler's run is put in the mailbox too. ``task.info``/``task.get`` answer
  the task, with messages and artifacts unless ``includeMessages``/``includeArtifacts`` are false.
  ``task.cancel`` makes the task CANCELED and tells its running handler; a COMPLETED task is -42002, a
  CANCELED one -42003, a FAILED one -42006, an unknown one -42001, all with ``taskId`` in details.
  ``task.subscribe`` records a webhook subscription (``arc_actors.webhooks``).
* **In the agent's own thread** (``TaskBook.manage``, around its handlers): the run makes the task
  WORKING, calls the handler with ``params["taskId"]`` and ``context.task`` (a ``TaskHandle``), and
  records its end: COMPLETED with the reply it returns (None, a string, a Message dict or a list of
  parts, as a chat handler's; any other dict, such as a seed-style result, as one DataPart),
  INPUT_REQUIRED if it raises ``InputRequired``, FAILED if it raises
  anything else (an ``ARCError``'s code and message, else -42004 with the
  exception's text; the task's failure is not an agent crash, so the agent is not restarted).

**Events.** Every change of a task is saved through :meth:`TaskBook.update`, which turns it into task
events (:func:`task_events`: NEW_MESSAGE, NEW_ARTIFACT, then the status event) and hands them to the
webhooks, in the store transaction that orders the changes, so a task's events are queued in the order they happened.

**Task timeout.** A task's run is a request in the agent's mailbox like any other, so it gets what the
agent's requests get: the agent's ``request_timeout_s`` when one is set, and its hang threshold
(``hang_after_s``, ``ARC_HANG_AFTER_S``, 120 s by default) in any case. A run that exceeds it is FAILED
with -42005 and told it is cancelled; past the hang threshold its thread is abandoned as a hung one.
Give an agent with long tasks a larger ``hang_after_s`` in its restart policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import msgspec
from loguru import logger

from arc_actors.agent import AgentSpec, Context, Handler
from arc_actors.chats import NOT_A_REPLY, as_message
from arc_actors.exceptions import ARCError
from arc_actors.protocol import ErrorCode, ErrorObject, Outcome, encoder
from arc_actors.store import Lease, ServingStore, SQLiteStore, Store, new_id, record_key, utc_now

if TYPE_CHECKING:
    from arc_actors.engine import Engine
    from arc_actors.webhooks import Webhooks

SUBMITTED = "SUBMITTED"
WORKING = "WORKING"
INPUT_REQUIRED = "INPUT_REQUIRED"
COMPLETED = "COMPLETED"
FAILED = "FAILED"
CANCELED = "CANCELED"
ENDED = frozenset((COMPLETED, FAILED, CANCELED))
"""The statuses a task never leaves."""
PRIORITIES = ("LOW", "NORMAL", "HIGH", "URGENT")
TASK_KIND = "task"
"""The store ``kind`` of task records."""

_FRONT_METHODS = ("task.create", "task.send", "task.info", "task.get", "task.cancel", "task.subscribe")
_STATUS_EVENTS = {
    COMPLETED: "TASK_COMPLETED",
    FAILED: "TASK_FAILED",
    CANCELED: "TASK_CANCELED",
    INPUT_REQUIRED: "TASK_PAUSED",
}


class _Status(msgspec.Struct):
    """What ``live_task`` reads of a stored task."""

    status: str = ""


_status_decoder = msgspec.json.Decoder(_Status)


def live_task(kind: str, value: bytes) -> bool:
    """Whether a stored record is a task not yet ended (not COMPLETED, FAILED or CANCELED): the store's
    bound never forgets it, so a long run's reports and result still find their task however many
    records were written since it started."""
    return kind == TASK_KIND and _status_decoder.decode(value).status not in ENDED


class Task(msgspec.Struct, rename="camel", kw_only=True, omit_defaults=True):
    """One managed task, as it is stored and (through ``result``) answered."""

    task_id: str
    agent_id: str
    status: str
    priority: str
    created_at: str
    updated_at: str
    completed_at: str | None = None
    canceled_at: str | None = None
    reason: str | None = None
    progress: float | None = None
    error: dict[str, Any] | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    messages: list[dict[str, Any]] = msgspec.field(default_factory=list)
    artifacts: list[dict[str, Any]] = msgspec.field(default_factory=list)
    runner: str | None = None
    """The lease of the process that took it on (see ``arc_actors.store.Lease``), never answered: a task
    it left SUBMITTED or WORKING is failed by the next process to start on the state file."""

    def result(self, *, messages: bool = True, artifacts: bool = True) -> dict[str, Any]:
        """The ARC result ``{"type": "task", "task": {...}}``."""
        task = msgspec.to_builtins(self)
        task.pop("agentId")
        task.pop("runner", None)
        task["assignedAgent"] = self.agent_id
        task["messages"] = self.messages if messages else None
        task["artifacts"] = self.artifacts if artifacts else None
        return {"type": "task", "task": {key: value for key, value in task.items() if value is not None}}


class InputRequired(Exception):
    """Raised by a task handler to stop and wait for the caller: the task becomes INPUT_REQUIRED, with
    ``message`` (a string, Message dict or list of parts, optional) added as the agent's question. A
    ``task.send`` then resumes it through the agent's ``task_send`` handler, if it has one."""

    def __init__(self, message: Any = None) -> None:
        super().__init__("input required")
        self.message = message


class TaskCancelled(Exception):
    """Raised by ``TaskHandle.check_cancelled`` once the task is cancelled; the runtime ends the run."""


class _Run:
    """What cancel needs to reach a running handler: a flag, and the asyncio task on the agent's loop."""

    __slots__ = ("cancelled", "loop", "task")

    def __init__(self) -> None:
        self.cancelled = threading.Event()
        self.loop = asyncio.get_running_loop()
        self.task = asyncio.current_task()

    def cancel(self) -> None:
        self.cancelled.set()
        if self.task is not None:
            with contextlib.suppress(RuntimeError):  # the agent's loop is closed: the run is over already
                self.loop.call_soon_threadsafe(self.task.cancel)


class TaskHandle:
    """A running task, as its handler sees it in ``context.task``: report progress, messages and
    artifacts (each saved at once, so ``task.info`` shows it), and learn whether it was cancelled."""

    def __init__(self, book: TaskBook, agent_id: str, task_id: str, run: _Run) -> None:
        self._book = book
        self._agent_id = agent_id
        self.task_id = task_id
        self._run = run

    @property
    def cancelled(self) -> bool:
        """Whether ``task.cancel`` (or the task timeout) has ended this task."""
        return self._run.cancelled.is_set()

    def check_cancelled(self) -> None:
        """Raise ``TaskCancelled`` if the task is cancelled: a sync handler's way to stop."""
        if self.cancelled:
            raise TaskCancelled(self.task_id)

    def get(self) -> Task:
        """The task as stored now, the caller's messages included."""
        return self._book.load(self._agent_id, self.task_id)

    def add_message(self, message: Any) -> None:
        """Add the agent's ``message`` (a string, Message dict or list of parts)."""
        reply = _reply(message)
        self._update(lambda task: reply is not None and task.messages.append(reply))

    def add_artifact(self, artifact: dict[str, Any]) -> None:
        """Add an artifact (an ARC Artifact dict: ``{"name", "parts", ...}``); an ``artifactId`` and
        ``createdAt`` are filled in when it has none."""
        filled = {"artifactId": new_id("artifact"), "createdAt": utc_now(), **artifact}
        self._update(lambda task: task.artifacts.append(filled))

    def progress(self, fraction: float) -> None:
        """Record how far the task is, from 0.0 to 1.0 (``task.progress``)."""
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"progress is a fraction from 0.0 to 1.0, got {fraction!r}")
        self._update(lambda task: setattr(task, "progress", fraction))

    def _update(self, change: Callable[[Task], Any]) -> None:
        self._book.update(self._agent_id, self.task_id, change, live_only=True)


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Task)


class TaskBook:
    """The managed tasks of one serving server, kept in its one ``ServingStore``
    (opened and closed off the event loop around the agents' life); their events go to ``webhooks``."""

    def __init__(self, store: ServingStore, webhooks: Webhooks) -> None:
        self._serving = store
        self._webhooks = webhooks
        self._runs: dict[str, _Run] = {}
        self._managed: set[str] = set()
        self._resumable: set[str] = set()

    def manage(self, spec: AgentSpec) -> AgentSpec:
        """``spec`` with managed tasks when it answers ``task.create``; other agents are left as they are."""
        if "task.create" not in spec.methods:
            return spec
        self._managed.add(spec.agent_id)
        if "task.send" in spec.methods:
            self._resumable.add(spec.agent_id)
        return spec.map_handlers(self._wrap, tuple(dict.fromkeys((*spec.methods, *_FRONT_METHODS))))

    def manages(self, agent_id: str) -> bool:
        """Whether ``agent_id``'s tasks are managed (it answers ``task.create``)."""
        return agent_id in self._managed

    def front(self, engine: Engine) -> _Front:
        """What answers the task methods of managed agents before the mailbox, putting runs in ``engine``."""
        return _Front(self, engine)

    def load(self, agent_id: str, task_id: str) -> Task:
        """The task ``task_id`` of ``agent_id``; -42001 with ``taskId`` when there is none."""
        raw = self._store_in_use().load(TASK_KIND, record_key(agent_id, task_id))
        if raw is None:
            raise ARCError(ErrorCode.TASK_NOT_FOUND, f"Task not found: {task_id}", {"taskId": task_id})
        return _decoder.decode(raw)

    def update(self, agent_id: str, task_id: str, change: Callable[[Task], Any], *, live_only: bool = False) -> Task:
        """Load, change and save the task in one store transaction, and publish its events; ``live_only`` leaves an
        ended task as it is."""
        with self._serving.transaction():
            task = self.load(agent_id, task_id)
            if live_only and task.status in ENDED:
                return task
            before = (task.status, len(task.messages), len(task.artifacts))
            change(task)
            task.updated_at = utc_now()
            self._save(task)
            self._webhooks.publish(task, task_events(*before, task))
            return task

    # -- in front of the mailbox (called off the event loop) --

    def create(self, agent_id: str, params: dict[str, Any]) -> Task:
        priority = params.get("priority") or "NORMAL"
        if priority not in PRIORITIES:
            raise ARCError(
                ErrorCode.INVALID_PARAMS,
                f"Invalid params: priority is one of {', '.join(PRIORITIES)}, got {priority!r}",
                {"priority": priority},
            )
        now = utc_now()
        task = Task(
            task_id=new_id("task"),
            agent_id=agent_id,
            status=SUBMITTED,
            priority=priority,
            created_at=now,
            updated_at=now,
            metadata=params.get("metadata") or {},
            messages=[params["initialMessage"]],
            runner=self._lease_id(),
        )
        with self._serving.transaction():
            self._save(task)
        return task

    def send(self, agent_id: str, params: dict[str, Any]) -> bool:
        """Append the message; returns whether the agent's ``task_send`` should run (the task waited
        for input and the agent has that handler), in which case the task is WORKING already."""
        resume = False

        def append(task: Task) -> None:
            nonlocal resume
            if task.status in ENDED:
                raise _ended(task, "take a message")
            task.messages.append(params["message"])
            if task.status == INPUT_REQUIRED and agent_id in self._resumable:
                task.status, resume = WORKING, True

        self.update(agent_id, params["taskId"], append)
        return resume

    def cancel(self, agent_id: str, params: dict[str, Any]) -> Task:
        def to_canceled(task: Task) -> None:
            if task.status in ENDED:
                raise _ended(task, "be canceled")
            task.status, task.canceled_at, task.reason = CANCELED, utc_now(), params.get("reason")

        task = self.update(agent_id, params["taskId"], to_canceled)
        run = self._runs.get(record_key(agent_id, task.task_id))
        if run is not None:
            run.cancel()
        logger.bind(agent_id=agent_id).debug("task {} canceled", task.task_id)
        return task

    def subscribe(self, agent_id: str, params: dict[str, Any]) -> dict[str, Any]:
        """Record a ``task.subscribe``: its params are checked first (which may resolve a host name),
        then the task is read and the subscription kept in one store transaction, so no event falls between."""
        events = self._webhooks.check(params)
        with self._serving.transaction():
            task = self.load(agent_id, params["taskId"])
            return self._webhooks.record(task, params["callbackUrl"], events)

    def recover(self) -> int:
        """Fail the tasks a process that is gone (killed, crashed, stopped) left SUBMITTED or WORKING on a
        shared state file, their subscribers told; a live process's tasks are left alone. Returns how
        many. Called as serving starts, off the event loop; a store without leases has nothing to do."""
        store = self._store_in_use()
        if not isinstance(store, SQLiteStore) or store.lease is None:
            return 0
        lease = store.lease
        orphaned = [
            task
            for task in map(_decoder.decode, store.kept(TASK_KIND))
            if task.status in (SUBMITTED, WORKING) and not (task.runner and lease.alive(task.runner))
        ]
        for task in orphaned:
            self.update(task.agent_id, task.task_id, partial(_orphaned, lease), live_only=True)
            logger.bind(agent_id=task.agent_id).warning("task {} failed: the process running it is gone", task.task_id)
        lease.forget_gone()
        return len(orphaned)

    def fail(self, agent_id: str, task_id: str, error: ErrorObject) -> None:
        """End a task whose run was answered with a runtime error (timeout, agent not available)."""
        if not self._serving.is_open:
            return  # the server stopped: the store is closed, the task stays as it was
        if error.code == ErrorCode.AGENT_TIMEOUT:
            error = ErrorObject(ErrorCode.TASK_TIMEOUT, f"Task timeout: {error.message}", error.details)
        self.update(agent_id, task_id, lambda task: _end(task, FAILED, error=error), live_only=True)
        run = self._runs.get(record_key(agent_id, task_id))
        if run is not None:
            run.cancel()

    # -- in the agent's thread --

    def _wrap(self, method: str, handler: Handler | None) -> Handler:
        if method == "task.create" or (method == "task.send" and handler is not None):

            async def managed(params: dict[str, Any], context: Context) -> None:
                await self._run(handler, params, context)

            return managed
        if method in _FRONT_METHODS:
            return self._answer_here
        return handler

    def _answer_here(self, params: dict[str, Any], context: Context) -> Any:
        """``task.info``, ``task.get``, ``task.cancel`` (and ``task.send`` for an agent without a
        ``task_send``), were they to reach the agent's mailbox: answered as the front answers them."""
        return _answer_now(self, context.target_agent, context.method, params)

    async def _run(self, handler: Handler, params: dict[str, Any], context: Context) -> None:
        agent_id, task_id = context.target_agent, params["taskId"]
        key = record_key(agent_id, task_id)
        run = self._runs[key] = _Run()  # first, so a cancel from now on reaches it
        context.task = TaskHandle(self, agent_id, task_id, run)
        log = logger.bind(agent_id=agent_id, trace_id=context.trace_id)
        try:
            if self.update(agent_id, task_id, partial(_to_working, self._lease_id()), live_only=True).status != WORKING:
                return  # canceled (or timed out) before it started
            answer = handler(params, context)
            if inspect.isawaitable(answer):
                answer = await answer
            reply = _reply(answer)
            self.update(agent_id, task_id, lambda task: _end(task, COMPLETED, reply), live_only=True)
        except (asyncio.CancelledError, TaskCancelled):
            if not run.cancelled.is_set():
                raise
            asyncio.current_task().uncancel()
        except InputRequired as asked:
            question = _reply(asked.message)
            self.update(agent_id, task_id, lambda task: _end(task, INPUT_REQUIRED, question), live_only=True)
        except Exception as exc:  # noqa: BLE001 - a task's failure is recorded on the task, not a crash
            failure = exc.to_error_object() if isinstance(exc, ARCError) else _execution_failed(exc)
            log.opt(exception=exc).warning("task {} failed", task_id)
            self.update(agent_id, task_id, lambda task: _end(task, FAILED, error=failure), live_only=True)
        finally:
            self._runs.pop(key, None)
        log.debug("task {} run ended", task_id)

    def _lease_id(self) -> str | None:
        store = self._store_in_use()
        return store.lease.id if isinstance(store, SQLiteStore) and store.lease is not None else None

    def _save(self, task: Task) -> None:
        self._store_in_use().save(TASK_KIND, record_key(task.agent_id, task.task_id), _encoder.encode(task))

    def _store_in_use(self) -> Store:
        return self._serving.store


class _Front:
    """Managed agents' task methods, answered from the store (off the event loop), their runs put in the
    agents' mailboxes without waiting for them (a :class:`~arc_actors.router.Front`)."""

    def __init__(self, book: TaskBook, engine: Engine) -> None:
        self._book = book
        self._engine = engine
        self._pending: set[asyncio.Future[Outcome]] = set()

    def takes(self, agent_id: str, method: str) -> bool:
        return method in _FRONT_METHODS and self._book.manages(agent_id)

    async def ask(self, agent_id: str, method: str, params: dict[str, Any], context: Context) -> Outcome:
        loop = asyncio.get_running_loop()
        try:
            if method == "task.create":
                task = await loop.run_in_executor(None, self._book.create, agent_id, params)
                self._start(agent_id, method, {**params, "taskId": task.task_id}, context)
                return _raw(task.result())
            if method == "task.send":
                if await loop.run_in_executor(None, self._book.send, agent_id, params):
                    self._start(agent_id, method, params, context)
                return _raw({"success": True})
            result = await loop.run_in_executor(None, _answer_now, self._book, agent_id, method, params)
            return _raw(result)
        except ARCError as exc:
            return exc.to_error_object()

    def _start(self, agent_id: str, method: str, params: dict[str, Any], context: Context) -> None:
        """Put the run in the agent's mailbox; a runtime error in its place (timeout, refusal) fails the task."""
        outcome = asyncio.ensure_future(self._engine.ask(agent_id, method, params, context))
        self._pending.add(outcome)
        task_id = params["taskId"]

        def settled(done: asyncio.Future[Outcome]) -> None:
            self._pending.discard(done)
            if not done.cancelled() and isinstance(done.result(), ErrorObject):
                asyncio.get_running_loop().run_in_executor(None, self._book.fail, agent_id, task_id, done.result())

        outcome.add_done_callback(settled)


def _answer_now(book: TaskBook, agent_id: str, method: str, params: dict[str, Any]) -> Any:
    """The answer of ``task.info``, ``task.get``, ``task.cancel``, or a ``task.send`` that resumes nothing."""
    if method in ("task.info", "task.get"):
        task = book.load(agent_id, params["taskId"])
        return task.result(
            messages=params.get("includeMessages", True) is not False,
            artifacts=params.get("includeArtifacts", True) is not False,
        )
    if method == "task.send":
        book.send(agent_id, params)
        return {"success": True}
    if method == "task.subscribe":
        return book.subscribe(agent_id, params)
    return book.cancel(agent_id, params).result()


def task_events(status: str, messages: int, artifacts: int, task: Task) -> list[tuple[str, dict[str, Any]]]:
    """The events of a change that found the task in ``status`` with ``messages`` messages and
    ``artifacts`` artifacts and left it as ``task``: NEW_MESSAGE and NEW_ARTIFACT for each one added,
    then TASK_STARTED, TASK_RESUMED, TASK_PAUSED, TASK_COMPLETED, TASK_FAILED or TASK_CANCELED for a
    new status. Each event's data says the task's status now."""
    events: list[tuple[str, dict[str, Any]]] = []
    now = {"status": task.status}
    events += [("NEW_MESSAGE", {**now, "message": message}) for message in task.messages[messages:]]
    events += [("NEW_ARTIFACT", {**now, "artifact": artifact}) for artifact in task.artifacts[artifacts:]]
    if task.status != status:
        event = _STATUS_EVENTS.get(task.status) or ("TASK_RESUMED" if status == INPUT_REQUIRED else "TASK_STARTED")
        data = {**now, "previousStatus": status, "updatedAt": task.updated_at}
        optional = {"completedAt": task.completed_at, "canceledAt": task.canceled_at, "reason": task.reason}
        data.update({key: value for key, value in optional.items() if value is not None})
        if task.error is not None:
            data["error"] = task.error
        events.append((event, data))
    return events


def _to_working(runner: str | None, task: Task) -> None:
    if task.status in (SUBMITTED, WORKING):
        task.status, task.runner = WORKING, runner


ORPHANED = ErrorObject(
    ErrorCode.TASK_EXECUTION_FAILED,
    "Task execution failed: the server process running it is gone (killed, crashed or stopped) before it"
    " ended; it was not re-run",
    {"reason": "process gone"},
)


def _orphaned(lease: Lease, task: Task) -> None:
    """Fail ``task`` if it is still SUBMITTED or WORKING for a gone process (another process starting on
    the same file may have been first)."""
    if task.status in (SUBMITTED, WORKING) and not (task.runner and lease.alive(task.runner)):
        _end(task, FAILED, error=ORPHANED)
        task.reason = ORPHANED.message


def _end(task: Task, status: str, reply: dict[str, Any] | None = None, error: ErrorObject | None = None) -> None:
    if reply is not None:
        task.messages.append(reply)
    task.status = status
    if status in (COMPLETED, FAILED):
        task.completed_at = utc_now()
    if error is not None:
        task.error = msgspec.to_builtins(error)


def _reply(answer: Any) -> dict[str, Any] | None:
    """The agent's message a task handler's answer stands for: as a chat handler's reply, and any other
    dict (a result computed the reference SDK's way) as the content of one DataPart."""
    reply = as_message(answer)
    if reply is not NOT_A_REPLY:
        return reply
    if isinstance(answer, dict):
        return {"role": "agent", "parts": [{"type": "DataPart", "content": answer}]}
    raise TypeError(f"a task handler returns None, a string, a Message, a list of parts or a dict, got {answer!r}")


def _ended(task: Task, what: str) -> ARCError:
    code = {
        COMPLETED: ErrorCode.TASK_ALREADY_COMPLETED,
        CANCELED: ErrorCode.TASK_ALREADY_CANCELED,
    }.get(task.status, ErrorCode.INVALID_TASK_STATUS_TRANSITION)
    return ARCError(
        code, f"Task {task.task_id} is {task.status} and cannot {what}", {"taskId": task.task_id, "status": task.status}
    )


def _execution_failed(exc: Exception) -> ErrorObject:
    return ErrorObject(ErrorCode.TASK_EXECUTION_FAILED, f"{type(exc).__name__}: {exc}", {})


def _raw(result: Any) -> Outcome:
    return msgspec.Raw(encoder.encode(result))

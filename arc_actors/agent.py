"""How users write agents: an ``Agent`` subclass, or plain handler functions.

An agent never touches threads, mailboxes or HTTP. It is a plain object whose handler methods take
``(params, context)`` and return the ARC ``result``; the engine runs each agent instance inside its
own actor, one message at a time. Handlers may be ``def`` or ``async def``.

Which methods answer which ARC method:

* a method named after an ARC method with its dot made an underscore (``chat_start`` answers
  ``chat.start``, ``task_create`` answers ``task.create``; the full list is ``ARC_METHODS``), or
* any method decorated with ``@handles("some.method")``, for names outside the ARC method set.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

import msgspec

from arc_actors.exceptions import ARCError
from arc_actors.protocol import ARC_METHODS, ErrorCode, ErrorObject, Outcome
from arc_actors.supervisor import RestartPolicy

if TYPE_CHECKING:
    from arc_actors.auth import Identity
    from arc_actors.chats import Chat
    from arc_actors.faults import Struck
    from arc_actors.streaming import StreamSink
    from arc_actors.tasks import TaskHandle

_METHOD_BY_ATTRIBUTE = {method.replace(".", "_"): method for method in ARC_METHODS}

Handler = Callable[[dict[str, Any], "Context"], Any]
PLAIN_RESULTS = frozenset((str, dict, list, int, float, bool, type(None)))
"""Types of handler results that are neither awaited nor iterated: checked before the ABC checks of
``inspect.isawaitable``, which cost more, on every request."""
F = TypeVar("F", bound=Callable[..., Any])
DEFAULT_MAX_IN_FLIGHT = 100
"""Requests one agent instance serves at once, interleaved at its handlers' awaits: an agent waiting
~100 ms on an LLM serves up to ~1,000 requests a second, and a flood still queues in its mailbox (and is
refused there) instead of opening unbounded work."""


def handles(method: str) -> Callable[[F], F]:
    """Mark an ``Agent`` method as the handler of the ARC method ``method``."""
    if not isinstance(method, str) or not method:
        raise TypeError(f"handles() takes a non-empty method name, got {method!r}")

    def mark(func: F) -> F:
        func.__arc_method__ = method  # type: ignore[attr-defined]
        return func

    return mark


class AgentCaller(Protocol):
    """Reaches another agent on behalf of a handler (the router implements it)."""

    def call_from(
        self, context: Context, agent_id: str, method: str, params: dict[str, Any]
    ) -> concurrent.futures.Future[Outcome]: ...


class Context:
    """What a handler knows of the request it serves.

    Attributes and, for code written against the reference SDK, mapping keys:
    ``request_id``, ``method``, ``request_agent``, ``target_agent``, ``trace_id``, ``auth``, ``chat``.
    ``auth`` is the caller's ``Identity`` (subject, scopes, claims) when the
    server checks tokens, else None. ``call_chain`` lists the agents whose calls led here (empty for a
    request from outside). ``chat`` is the ``Chat`` a ``chat.*`` request belongs
    to, history included, when the runtime manages the agent's chats, else None. ``task`` is the
    ``TaskHandle`` of the task a managed ``task_create``/``task_send`` runs
    (progress, messages, artifacts, cancellation), else None. ``stream`` is the
    ``DeltaSink`` of a request answered as SSE (``params.stream: true``),
    else None; the runtime uses it, a handler streams by being an async generator. ``faults`` are the
    faults fault injection drew for this request, struck before the handler runs (None until drawn).
    """

    __slots__ = (
        "_caller",
        "_chat",
        "_chat_copy",
        "auth",
        "call_chain",
        "faults",
        "method",
        "request_agent",
        "request_id",
        "stream",
        "target_agent",
        "task",
        "trace_id",
    )
    _KEYS = frozenset({"chat", *(name for name in __slots__ if not name.startswith("_"))})
    """What mapping-style access (``context["trace_id"]``) offers: every public attribute."""

    def __init__(
        self,
        request_id: str | int,
        method: str,
        request_agent: str,
        target_agent: str,
        trace_id: str | None = None,
        auth: Identity | None = None,
        call_chain: tuple[str, ...] = (),
        caller: AgentCaller | None = None,
        stream: StreamSink | None = None,
    ) -> None:
        self.request_id = request_id
        self.method = method
        self.request_agent = request_agent
        self.target_agent = target_agent
        self.trace_id = trace_id
        self.auth = auth
        self.call_chain = call_chain
        self._caller = caller
        self.stream = stream
        self._chat: Chat | None = None
        self._chat_copy: Callable[[], Chat] | None = None
        self.task: TaskHandle | None = None
        self.faults: tuple[Struck, ...] | None = None

    def rebound(
        self, caller: AgentCaller | None, stream: StreamSink | None = None, task: TaskHandle | None = None
    ) -> Context:
        """A copy of this request's data (chat and drawn faults included) with other objects behind
        ``call``, ``stream`` and ``task``: what an engine ships to the process that runs the handler (none
        of them), and what it gives the handler there (its stand-ins for the gateway's)."""
        copy = Context(
            self.request_id,
            self.method,
            self.request_agent,
            self.target_agent,
            self.trace_id,
            self.auth,
            self.call_chain,
            caller,
            stream,
        )
        copy.chat, copy.task, copy.faults = self.chat, task, self.faults
        return copy

    @property
    def chat(self) -> Chat | None:
        if self._chat_copy is not None:
            self._chat, self._chat_copy = self._chat_copy(), None
        return self._chat

    @chat.setter
    def chat(self, chat: Chat | None) -> None:
        self._chat, self._chat_copy = chat, None

    def copy_chat_when_read(self, copy: Callable[[], Chat]) -> None:
        """Make ``chat`` the result of ``copy()``, called the first time it is read: most handlers never
        read it, and a deep copy of a chat costs more than the rest of a plain handler's request."""
        self._chat, self._chat_copy = None, copy

    async def call(self, agent_id: str, method: str, params: dict[str, Any] | None = None) -> Any:
        """Ask another agent of this server, through its mailbox, and return its result.

        The request carries this request's ``trace_id`` and comes from this agent. Its ARC error, or
        one of the runtime's (-41001 unknown agent, -41003 a call that would deadlock, such as a → b → a
        when a takes one request at a time, or a chain deeper than 8), is raised as ``ARCError``. ``params`` are copied,
        as a message should be, so the two agents never share mutable state."""
        if self._caller is None:
            raise RuntimeError("context.call works only inside a request served by a running server")
        try:
            copied = msgspec.json.decode(msgspec.json.encode(params or {}))
        except (TypeError, msgspec.EncodeError) as exc:
            raise ARCError(ErrorCode.INVALID_PARAMS, f"params of a call must be JSON: {exc}") from None
        outcome = await asyncio.wrap_future(self._caller.call_from(self, agent_id, method, copied))
        if isinstance(outcome, ErrorObject):
            raise ARCError(outcome.code, outcome.message, outcome.details)
        return msgspec.json.decode(outcome)

    @property
    def agent_id(self) -> str:
        """The id of the agent serving this request (the request's ``targetAgent``)."""
        return self.target_agent

    def __getitem__(self, key: str) -> Any:
        if key not in self._KEYS:
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        """Mapping-style access, as the reference SDK's context dict offers."""
        return getattr(self, key, default) if key in self._KEYS else default

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in sorted(self._KEYS))
        return f"Context({fields})"


class Agent:
    """Base class of agents written as classes; each instance runs inside its own actor.

    Set ``agent_id`` as a class attribute or pass it to ``Server.add_agent``. State kept on ``self``
    is only ever touched by one handler at a time: a ``def`` handler holds the agent's thread until it
    returns; an ``async def`` handler lets the agent take its next request while it awaits, up to
    ``max_in_flight`` at once (default 100; 1 serves one request at a time, awaits included), so code
    between two awaits runs alone but state read before an await may have changed after it. Requests of
    one chat or task are served one after the other. ``on_start`` and ``on_stop`` run in the agent's
    own thread, before its first and after its last message; a restart after a crash makes a new
    instance, so state starts afresh. ``restart_policy`` (or ``add_agent(..., policy=)``) sets how it
    is supervised; by default the server's policy applies. ``concurrency = N`` runs N instances, each
    with its own state, reading one mailbox; ``mailbox_size`` bounds how many requests may wait (by
    default the server's bound); ``request_timeout_s`` bounds how long a caller waits, queue included
    (by default the server's, none unless set). ``managed_chats = False`` hands ``chat.*`` requests to
    the handlers as they came, like any other method: no chat record, no ``context.chat``, and the
    handler answers the full result (for agents that keep their own chat state; see docs/chats.md).
    """

    agent_id: ClassVar[str | None] = None
    restart_policy: ClassVar[RestartPolicy | None] = None
    concurrency: ClassVar[int] = 1
    mailbox_size: ClassVar[int | None] = None
    request_timeout_s: ClassVar[float | None] = None
    managed_chats: ClassVar[bool] = True
    max_in_flight: ClassVar[int] = DEFAULT_MAX_IN_FLIGHT
    _arc_method_attributes: ClassVar[dict[str, str]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        table: dict[str, str] = {}
        for klass in reversed(cls.__mro__):
            for name, value in vars(klass).items():
                method = getattr(value, "__arc_method__", None) or _METHOD_BY_ATTRIBUTE.get(name)
                if method is not None and callable(value):
                    table[method] = name
        cls._arc_method_attributes = table

    @classmethod
    def arc_methods(cls) -> tuple[str, ...]:
        """The ARC methods this class answers, known without making an instance."""
        return tuple(cls._arc_method_attributes)

    def handlers(self) -> dict[str, Handler]:
        """This instance's handlers by ARC method name."""
        return {method: getattr(self, name) for method, name in self._arc_method_attributes.items()}

    def on_start(self) -> None:
        """Called in the agent's thread before it serves its first request."""

    def on_stop(self) -> None:
        """Called in the agent's thread after it served its last request."""


class FunctionAgent(Agent):
    """An agent made of plain handler functions, as the reference SDK's decorator declares them."""

    def __init__(self, handlers: Mapping[str, Handler]) -> None:
        self._handlers = dict(handlers)

    def handlers(self) -> dict[str, Handler]:
        return self._handlers


HandlerWrap = Callable[[str, "Handler | None"], Handler]
"""``wrap(method, handler)``: the handler to use instead; ``handler`` is None for a method added by
``AgentSpec.map_handlers`` that the original agent does not answer."""


class _MappedAgent(Agent):
    """An agent instance whose handlers go through a wrap; it delegates everything else."""

    def __init__(self, inner: Agent, wrap: HandlerWrap, methods: tuple[str, ...]) -> None:
        self._inner = inner
        self._wrap = wrap
        self._methods = methods

    def on_start(self) -> Any:
        return self._inner.on_start()

    def on_stop(self) -> Any:
        return self._inner.on_stop()

    def handlers(self) -> dict[str, Handler]:
        inner = self._inner.handlers()
        return {method: self._wrap(method, inner.get(method)) for method in self._methods}


@dataclass(frozen=True)
class Layer:
    """One runtime wrap of an agent's handlers: ``wrap`` turns the agent answering ``methods_before``
    into one answering ``methods``. ``beside_agent``: it must run in the agent's own thread, beside its
    code (a fault's hang blocks that thread); any other layer may run where the gateway is, with its
    store, as the Ray engine runs it."""

    wrap: HandlerWrap
    methods_before: tuple[str, ...]
    methods: tuple[str, ...]
    beside_agent: bool = False


@dataclass(frozen=True)
class AgentSpec:
    """Everything the runtime needs to make (and later re-make) one agent: its id, its methods, and
    a factory for fresh instances."""

    agent_id: str
    factory: Callable[[], Agent]
    methods: tuple[str, ...]
    policy: RestartPolicy | None = None
    concurrency: int = 1
    mailbox_size: int | None = None
    request_timeout_s: float | None = None
    layers: tuple[Layer, ...] = ()
    """The runtime's wraps around every instance (``map_handlers``), innermost first, kept apart from
    ``factory`` so an engine may run them in another process than the agent's own code."""
    managed_chats: bool = True
    """Whether the runtime keeps this agent's chats (``arc_actors.chats``); False hands ``chat.*`` requests
    to its handlers as they came."""
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    """How many requests one instance serves at once, interleaved at its ``async def`` handlers' awaits."""

    def __post_init__(self) -> None:
        if not isinstance(self.concurrency, int) or self.concurrency < 1:
            raise ValueError(f"agent {self.agent_id!r}: concurrency must be an int >= 1, got {self.concurrency!r}")
        if self.mailbox_size is not None and (not isinstance(self.mailbox_size, int) or self.mailbox_size < 1):
            raise ValueError(f"agent {self.agent_id!r}: mailbox_size must be an int >= 1, got {self.mailbox_size!r}")
        if self.request_timeout_s is not None and not self.request_timeout_s > 0:
            raise ValueError(f"agent {self.agent_id!r}: request_timeout_s must be > 0, got {self.request_timeout_s!r}")
        if not isinstance(self.max_in_flight, int) or isinstance(self.max_in_flight, bool) or self.max_in_flight < 1:
            raise ValueError(f"agent {self.agent_id!r}: max_in_flight must be an int >= 1, got {self.max_in_flight!r}")
        if not isinstance(self.managed_chats, bool):
            raise ValueError(f"agent {self.agent_id!r}: managed_chats is True or False, got {self.managed_chats!r}")

    def map_handlers(
        self, wrap: HandlerWrap, methods: tuple[str, ...] | None = None, *, beside_agent: bool = False
    ) -> AgentSpec:
        """This spec, with every instance's handlers passed through ``wrap(method, handler)``, for
        behaviour the runtime adds around an agent's own code (managed chats) without the engine or
        the agent knowing. ``methods`` (default: the spec's) is what the mapped agent answers; ``wrap``
        gets None for a method in it that the original agent lacks. ``on_start``/``on_stop`` are the
        original instance's.

        A layer ``beside_agent`` goes right around the agent's own handlers, inside every layer that may
        run elsewhere, so every engine runs the layers in the same order; it answers the agent's own
        methods, no others."""
        if beside_agent:
            if methods is not None:
                raise ValueError("a layer beside the agent answers the agent's own methods: pass no methods")
            inner = 0
            while inner < len(self.layers) and self.layers[inner].beside_agent:
                inner += 1
            own = self.own_methods
            layers = (*self.layers[:inner], Layer(wrap, own, own, beside_agent=True), *self.layers[inner:])
            return replace(self, layers=layers)
        methods = self.methods if methods is None else tuple(methods)
        return replace(self, methods=methods, layers=(*self.layers, Layer(wrap, self.methods, methods)))

    @property
    def own_methods(self) -> tuple[str, ...]:
        """The methods the agent's own instances answer, before any runtime wrap."""
        return self.layers[0].methods_before if self.layers else self.methods

    def make(self) -> Agent:
        """A fresh instance: the factory's, inside the runtime's wraps."""
        return _dressed(self.factory, self.layers)

    def beside_agent(self) -> Callable[[], Agent]:
        """A factory of fresh instances inside the layers that run beside the agent's code only, for an
        engine that runs the others elsewhere (:meth:`dress_remote`). It holds nothing else of the spec,
        so it can be pickled wherever the agent's own code can."""
        return partial(_dressed, self.factory, tuple(layer for layer in self.layers if layer.beside_agent))

    def dress_remote(self, proxy: Agent) -> Agent:
        """``proxy``, an engine's stand-in for an instance made by :meth:`beside_agent` elsewhere, inside
        the other layers."""
        return _dressed(lambda: proxy, tuple(layer for layer in self.layers if not layer.beside_agent))

    @classmethod
    def of_class(
        cls,
        agent_class: type[Agent],
        agent_id: str | None = None,
        args: tuple[Any, ...] = (),
        kwargs: Mapping[str, Any] | None = None,
        policy: RestartPolicy | None = None,
        concurrency: int | None = None,
        mailbox_size: int | None = None,
        request_timeout_s: float | None = None,
        managed_chats: bool | None = None,
        max_in_flight: int | None = None,
    ) -> AgentSpec:
        """The spec of an ``Agent`` subclass, made with ``agent_class(*args, **kwargs)``;
        ``policy``, ``concurrency``, ``mailbox_size``, ``request_timeout_s``, ``managed_chats`` and
        ``max_in_flight`` default to the class's attributes."""
        if not (isinstance(agent_class, type) and issubclass(agent_class, Agent)):
            raise TypeError(f"expected an Agent subclass, got {agent_class!r}")
        resolved_id = agent_id or agent_class.agent_id
        if not resolved_id:
            raise ValueError(f"{agent_class.__name__} has no agent_id: set the class attribute or pass agent_id=")
        methods = agent_class.arc_methods()
        if not methods:
            raise ValueError(
                f"{agent_class.__name__} answers no ARC method: name a method chat_start, task_create, ... "
                "or decorate it with @handles('method.name')"
            )
        bound_kwargs = dict(kwargs or {})

        def factory() -> Agent:
            return agent_class(*args, **bound_kwargs)

        return cls(
            _check_agent_id(resolved_id),
            factory,
            methods,
            policy or agent_class.restart_policy,
            concurrency or agent_class.concurrency,
            mailbox_size or agent_class.mailbox_size,
            request_timeout_s or agent_class.request_timeout_s,
            managed_chats=agent_class.managed_chats if managed_chats is None else managed_chats,
            max_in_flight=agent_class.max_in_flight if max_in_flight is None else max_in_flight,
        )

    @classmethod
    def of_handlers(
        cls,
        agent_id: str,
        handlers: Mapping[str, Handler],
        policy: RestartPolicy | None = None,
        concurrency: int = 1,
        mailbox_size: int | None = None,
        request_timeout_s: float | None = None,
        managed_chats: bool = True,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    ) -> AgentSpec:
        """The spec of an agent made of handler functions keyed by ARC method."""
        frozen = dict(handlers)
        return cls(
            _check_agent_id(agent_id),
            lambda: FunctionAgent(frozen),
            tuple(frozen),
            policy,
            concurrency,
            mailbox_size,
            request_timeout_s,
            managed_chats=managed_chats,
            max_in_flight=max_in_flight,
        )


def _dressed(factory: Callable[[], Agent], layers: tuple[Layer, ...]) -> Agent:
    """A fresh instance of ``factory`` inside ``layers``, innermost first."""
    agent = factory()
    for layer in layers:
        agent = _MappedAgent(agent, layer.wrap, layer.methods)
    return agent


def _check_agent_id(agent_id: Any) -> str:
    if not isinstance(agent_id, str) or not agent_id.strip():
        raise ValueError(f"an agent id is a non-empty string, got {agent_id!r}")
    return agent_id

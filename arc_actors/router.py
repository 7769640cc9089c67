"""Routing a decoded request to its agent: unknown agent (-41001) and unknown method (-32601) are
answered here, everything else goes through the engine to the agent's actor. Agents' calls to each
other (``Context.call``) come back through here, so they take the same path as any request."""

from __future__ import annotations

import asyncio
import concurrent.futures
import uuid
from collections.abc import Awaitable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

from arc_actors.agent import AgentSpec, Context
from arc_actors.engine import AgentStatus, Engine
from arc_actors.protocol import ARC_VERSION, ARCRequest, ErrorCode, Outcome, error, params_error

if TYPE_CHECKING:
    from arc_actors.auth import Identity
    from arc_actors.streaming import DeltaSink

MAX_CALL_DEPTH = 8
"""How many agents one request may pass through by ``Context.call`` before a further call is refused."""
MAX_LISTED_AGENTS = 100
"""An unknown-agent error lists at most this many agent ids, so a probe cannot make us echo 10,000."""


class Front(Protocol):
    """Answers some requests before they reach an agent's mailbox (managed tasks' methods, from the store)."""

    def takes(self, agent_id: str, method: str) -> bool:
        """Whether it answers ``method`` of ``agent_id``."""

    def ask(self, agent_id: str, method: str, params: dict[str, Any], context: Context) -> Awaitable[Outcome]:
        """The outcome of a request it takes, to await."""


class Router:
    """Knows which agents exist and which methods each answers; reaches them only through the engine,
    or the ``front`` that answers some requests before it."""

    def __init__(self, specs: Iterable[AgentSpec], engine: Engine, front: Front | None = None) -> None:
        self._engine = engine
        self._front = front
        self._specs = list(specs)
        self._methods: dict[str, frozenset[str]] = {spec.agent_id: frozenset(spec.methods) for spec in self._specs}
        self._own_chats = {spec.agent_id for spec in self._specs if not spec.managed_chats}
        self._strict = {spec.agent_id for spec in self._specs if spec.max_in_flight == 1}
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Spawn every agent's actor; called on the gateway's loop, which agents' calls then use."""
        self._loop = asyncio.get_running_loop()
        for spec in self._specs:
            self._engine.spawn(spec)

    @property
    def agent_ids(self) -> list[str]:
        return list(self._methods)

    def has_agent(self, agent_id: str) -> bool:
        return agent_id in self._methods

    def manages_chats(self, agent_id: str) -> bool:
        """Whether the runtime keeps ``agent_id``'s chats (it has not said ``managed_chats=False``)."""
        return agent_id not in self._own_chats

    def methods_of(self, agent_id: str) -> list[str]:
        return sorted(self._methods[agent_id])

    def status(self, agent_id: str) -> AgentStatus:
        return self._engine.status(agent_id)

    def restart(self, agent_id: str) -> None:
        if agent_id not in self._methods:
            raise KeyError(f"no agent {agent_id!r}; agents: {', '.join(self._methods)}")
        self._engine.restart(agent_id)

    def dispatch(
        self,
        request: ARCRequest,
        auth: Identity | None = None,
        call_chain: tuple[str, ...] = (),
        stream: DeltaSink | None = None,
    ) -> Awaitable[Outcome]:
        """The outcome of one valid request, to await; ``auth`` is the caller's identity, when auth is
        on, ``call_chain`` the agents whose calls led to it, and ``stream`` where a streamed reply's
        deltas go as they are made. Not a coroutine: the engine's awaitable is handed on as it is."""
        methods = self._methods.get(request.target_agent)
        if methods is None:
            return _answered(self._agent_not_found(request.target_agent))
        if request.method not in methods:
            return _answered(
                error(
                    ErrorCode.METHOD_NOT_FOUND,
                    f"Method {request.method} not found for agent {request.target_agent}",
                    {"method": request.method, "agentId": request.target_agent, "supportedMethods": sorted(methods)},
                )
            )
        invalid = params_error(request.method, request.params)
        if invalid is not None:
            return _answered(invalid)
        context = Context(
            request.id,
            request.method,
            request.request_agent,
            request.target_agent,
            request.trace_id,
            auth,
            call_chain,
            self,
            stream,
        )
        if self._front is not None and self._front.takes(request.target_agent, request.method):
            return self._front.ask(request.target_agent, request.method, request.params, context)
        return self._engine.ask(request.target_agent, request.method, request.params, context)

    def call_from(
        self, context: Context, agent_id: str, method: str, params: dict[str, Any]
    ) -> concurrent.futures.Future[Outcome]:
        """An agent's call to another (``Context.call``), from the agent's thread: dispatched on the
        gateway's loop like any request, refused when it could deadlock or goes too deep."""
        return asyncio.run_coroutine_threadsafe(self._call(context, agent_id, method, params), self._loop)

    async def _call(self, context: Context, agent_id: str, method: str, params: dict[str, Any]) -> Outcome:
        chain = (*context.call_chain, context.target_agent)
        why = None
        if len(chain) >= MAX_CALL_DEPTH:
            why = f"would go deeper than {MAX_CALL_DEPTH} calls"
        elif agent_id in chain and agent_id in self._strict:
            # Its one request in flight awaits this call: the call would wait for it forever. An agent
            # that interleaves serves a call back past its bound (see AgentCell.submit).
            why = "would close a call cycle through an agent that takes one request at a time (max_in_flight = 1)"
        if why is not None:
            return error(
                ErrorCode.AGENT_UNREACHABLE,
                f"Agent unreachable: calling {agent_id} from {' -> '.join(chain)} {why}",
                {"agentId": agent_id, "callChain": [*chain, agent_id]},
            )
        request = ARCRequest(
            ARC_VERSION, uuid.uuid4().hex, method, context.target_agent, agent_id, params, context.trace_id
        )
        return await self.dispatch(request, context.auth, chain)

    def _agent_not_found(self, agent_id: str) -> Outcome:
        available = self.agent_ids
        details: dict[str, Any] = {
            "agentId": agent_id,
            "requestedAgent": agent_id,
            "availableAgents": available[:MAX_LISTED_AGENTS],
        }
        if len(available) > MAX_LISTED_AGENTS:
            details["totalAgents"] = len(available)
        return error(ErrorCode.AGENT_NOT_FOUND, f"Agent not found: {agent_id}", details)


def _answered(outcome: Outcome) -> asyncio.Future[Outcome]:
    """An outcome known at once, as the awaitable ``dispatch`` returns."""
    future = asyncio.get_running_loop().create_future()
    future.set_result(outcome)
    return future

"""Fault injection: crashes, hangs, latency and ARC errors, as data, applied around agents' handlers.

A ``Fault`` says what goes wrong and how often; a ``FaultPlan`` says which faults each agent
(or one method of an agent) suffers, under a seed. The server's ``FaultInjector`` applies the plan
in the agent's own thread, before its handler runs, so a fault behaves exactly like the real thing:

* ``crash``: the handler raises; the request is answered -32603 and the agent restarted.
* ``hang``: the agent's thread blocks for the duration; past the agent's ``hang_after_s`` the watchdog
  answers -41006 and restarts the agent; a shorter hang just makes the answer late.
* ``latency``: the thread sleeps, then the handler runs as usual.
* ``error``: the handler raises ``ARCError(code)``, an answer and not a crash.

Each agent draws from its own ``random.Random`` seeded with the plan's seed and the agent id. An agent
serves one message at a time, so the n-th message an agent serves meets the same faults in every run
with the same seed.

The text form, used by ``--fault`` and the admin endpoint, is ``AGENT[.METHOD]:KIND=P[:ARG],...``::

    finance-agent:crash=0.2,hang=0.05:5s       20% of its requests crash, 5% hang for 5 s
    hr-agent.chat.start:latency=1:100ms-300ms  every chat.start 100 to 300 ms late (uniform)
    support-agent:error=0.1:-41003             one request in ten answered error -41003
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from enum import StrEnum
from functools import partial
from typing import Any

import msgspec
from loguru import logger

from arc_actors.agent import AgentSpec, Context, Handler
from arc_actors.exceptions import ARCError
from arc_actors.protocol import ARC_METHODS

SPEC_FORM = "AGENT[.METHOD]:KIND=P[:ARG],..."

_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m)")
_SECONDS_PER_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0}
_TARGET_AND_FAULTS = re.compile(r"(?P<target>.*?):(?P<faults>[A-Za-z_]+=.*)", re.S)


class FaultKind(StrEnum):
    """What goes wrong."""

    CRASH = "crash"
    HANG = "hang"
    LATENCY = "latency"
    ERROR = "error"


_KINDS = ", ".join(kind.value for kind in FaultKind)


class FaultSpecError(ValueError):
    """A fault spec or plan that cannot be applied; the message is one line naming what is wrong."""


class InjectedCrash(RuntimeError):
    """The exception an injected ``crash`` raises in a handler."""


class Fault(msgspec.Struct, frozen=True, kw_only=True):
    """One fault: ``kind`` happens to a request with ``probability``.

    ``hang`` and ``latency`` last ``duration_s``, or a uniform draw between ``duration_s`` and
    ``max_duration_s`` when that is set; ``error`` answers ARC error ``code``. The constructors
    ``crash``, ``hang``, ``latency`` and ``error`` read best."""

    kind: FaultKind
    probability: float = 1.0
    duration_s: float | None = None
    max_duration_s: float | None = None
    code: int | None = None

    @classmethod
    def crash(cls, probability: float) -> Fault:
        return cls(kind=FaultKind.CRASH, probability=probability)

    @classmethod
    def hang(cls, probability: float, duration_s: float, max_duration_s: float | None = None) -> Fault:
        return cls(kind=FaultKind.HANG, probability=probability, duration_s=duration_s, max_duration_s=max_duration_s)

    @classmethod
    def latency(cls, probability: float, duration_s: float, max_duration_s: float | None = None) -> Fault:
        return cls(
            kind=FaultKind.LATENCY, probability=probability, duration_s=duration_s, max_duration_s=max_duration_s
        )

    @classmethod
    def error(cls, probability: float, code: int) -> Fault:
        return cls(kind=FaultKind.ERROR, probability=probability, code=code)

    def __post_init__(self) -> None:
        if not isinstance(self.kind, FaultKind):
            try:
                msgspec.structs.force_setattr(self, "kind", FaultKind(self.kind))
            except ValueError:
                raise FaultSpecError(f"unknown fault kind {self.kind!r} (kinds: {_KINDS})") from None
        timed = self.kind in (FaultKind.HANG, FaultKind.LATENCY)
        problem = None
        if not 0 <= self.probability <= 1:
            problem = f"probability must be in [0, 1], got {self.probability!r}"
        elif timed and (self.duration_s is None or self.duration_s <= 0):
            problem = f"needs a duration > 0, got {self.duration_s!r}"
        elif timed and self.max_duration_s is not None and self.max_duration_s < self.duration_s:
            problem = f"max_duration_s {self.max_duration_s!r} is below duration_s {self.duration_s!r}"
        elif not timed and (self.duration_s is not None or self.max_duration_s is not None):
            problem = "takes no duration"
        elif self.kind is FaultKind.ERROR and (self.code is None or isinstance(self.code, bool)):
            problem = "needs an ARC error code"
        elif self.kind is not FaultKind.ERROR and self.code is not None:
            problem = "takes no error code"
        if problem:
            raise FaultSpecError(f"{self.kind.value} fault {problem}")

    def seconds(self, rng: random.Random) -> float:
        """How long this hang or latency lasts this time (0 for the other kinds)."""
        if self.duration_s is None:
            return 0.0
        if self.max_duration_s is None:
            return self.duration_s
        return rng.uniform(self.duration_s, self.max_duration_s)

    def spec(self) -> str:
        """The text form, ``kind=P[:ARG]``."""
        text = f"{self.kind.value}={self.probability:g}"
        if self.code is not None:
            return f"{text}:{self.code}"
        if self.duration_s is not None:
            text += f":{_format_duration(self.duration_s)}"
            if self.max_duration_s is not None:
                text += f"-{_format_duration(self.max_duration_s)}"
        return text


Target = tuple[str, str | None]
"""``(agent_id, method)``; method ``None`` means every method of the agent."""


class FaultPlan:
    """Which faults each agent suffers, under a seed. Immutable.

    ``FaultPlan({"finance-agent": [Fault.crash(0.2)], ("hr-agent", "chat.start"): [Fault.latency(1, 0.2)]},
    seed=7)``. A rule for an agent's method replaces the agent's own rule for that method. Crash, hang
    and error of one rule exclude each other (one draw, so their probabilities add up to at most 1);
    each latency is drawn on its own and comes first."""

    __slots__ = ("_rules", "_seed")

    def __init__(self, faults: Mapping[str | Target, Iterable[Fault]] | None = None, *, seed: int = 0) -> None:
        rules: dict[Target, tuple[Fault, ...]] = {}
        for key, values in (faults or {}).items():
            target: Target = (key, None) if isinstance(key, str) else (key[0], key[1])
            if not isinstance(target[0], str) or not target[0]:
                raise FaultSpecError(f"a fault target is an agent id or (agent id, method), got {key!r}")
            listed = tuple(values)
            if not all(isinstance(fault, Fault) for fault in listed):
                raise FaultSpecError(f"faults of {_target_text(target)} must be Fault values, got {listed!r}")
            rules[target] = rules.get(target, ()) + listed
        for target, listed in rules.items():
            exclusive = sum(fault.probability for fault in listed if fault.kind is not FaultKind.LATENCY)
            if exclusive > 1 + 1e-9:
                raise FaultSpecError(
                    f"crash, hang and error probabilities of {_target_text(target)} add up to {exclusive:g}; "
                    "they exclude each other, so at most 1"
                )
        self._rules = rules
        self._seed = seed

    @classmethod
    def parse(
        cls,
        specs: str | Iterable[str],
        *,
        seed: int = 0,
        agents: Mapping[str, Iterable[str]] | None = None,
    ) -> FaultPlan:
        """The plan the text specs describe (``AGENT[.METHOD]:KIND=P[:ARG],...``, see the module doc).

        With ``agents`` (agent id -> methods) the target is split where it names one of those agents
        and one of its methods, and anything else is an error. Without it only the ARC method set
        (``chat.start``, ``task.create``, ...) is told apart from the agent id."""
        known = None if agents is None else {agent_id: tuple(methods) for agent_id, methods in agents.items()}
        faults: dict[Target, list[Fault]] = {}
        for spec in [specs] if isinstance(specs, str) else list(specs):
            try:
                target, listed = _parse_spec(spec, known)
            except FaultSpecError as exc:
                raise FaultSpecError(f"{spec!r}: {exc}") from None
            faults.setdefault(target, []).extend(listed)
        return cls(faults, seed=seed)

    @property
    def seed(self) -> int:
        """What each agent's random stream is seeded with, together with the agent id."""
        return self._seed

    @property
    def rules(self) -> dict[Target, tuple[Fault, ...]]:
        """The faults by target."""
        return dict(self._rules)

    def specs(self) -> list[str]:
        """The plan in its text form, one spec per target (``FaultPlan.parse`` reads it back)."""
        return [
            f"{_target_text(target)}:{','.join(fault.spec() for fault in faults)}"
            for target, faults in self._rules.items()
        ]

    def faults_for(self, agent_id: str, method: str) -> tuple[Fault, ...]:
        """The faults a call of ``method`` on ``agent_id`` is exposed to."""
        rules = self._rules
        return rules.get((agent_id, method)) or rules.get((agent_id, None), ())

    def draw(self, agent_id: str, method: str, rng: random.Random) -> list[tuple[Fault, float]]:
        """The faults that strike this call, with how long each lasts: every latency that fires, then
        at most one of crash, hang and error."""
        struck = []
        exclusive = []
        for fault in self.faults_for(agent_id, method):
            if fault.kind is not FaultKind.LATENCY:
                exclusive.append(fault)
            elif rng.random() < fault.probability:
                struck.append((fault, fault.seconds(rng)))
        if exclusive:
            roll, edge = rng.random(), 0.0
            for fault in exclusive:
                edge += fault.probability
                if roll < edge:
                    struck.append((fault, fault.seconds(rng)))
                    break
        return struck

    def check(self, agents: Mapping[str, Iterable[str]]) -> None:
        """Raise ``FaultSpecError`` unless every target names one of ``agents`` and, when it names
        a method, one the agent handles."""
        known = {agent_id: tuple(methods) for agent_id, methods in agents.items()}
        for agent_id, method in self._rules:
            _check_target(agent_id, method, known)

    def rng_for(self, agent_id: str) -> random.Random:
        """A fresh random stream of ``agent_id`` under this plan's seed (the same in every process)."""
        return random.Random(f"{self.seed}/{agent_id}")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FaultPlan) and (self._rules, self._seed) == (other._rules, other._seed)

    def __hash__(self) -> int:
        return hash((tuple(self._rules.items()), self._seed))

    def __repr__(self) -> str:
        return f"FaultPlan.parse({self.specs()!r}, seed={self.seed})"


class FaultInjector:
    """A server's fault registry: the plan armed now and what it injected. Thread-safe; arm and
    clear it at any time, from any thread.

    Injection is on for the apps a server creates once it is enabled (``Server(faults=...)``,
    ``enable()``, an admin port, or arming faults before serving). Off, the runtime does not wrap the
    handlers at all, and a request pays nothing for it."""

    def __init__(self, agents: Callable[[], Mapping[str, Sequence[str]]]) -> None:
        self._agents = agents
        self._lock = threading.Lock()
        self._plan = FaultPlan()
        self._rngs: dict[str, random.Random] = {}
        self._injected: dict[str, Counter[str]] = {}
        self._enabled = False
        self._served_without = False

    @property
    def enabled(self) -> bool:
        """Whether apps created from now on wrap their agents' handlers to inject faults."""
        return self._enabled

    @property
    def plan(self) -> FaultPlan:
        """The plan armed now."""
        return self._plan

    @property
    def injected(self) -> dict[str, dict[str, int]]:
        """How many faults of each kind were injected into each agent since the server started serving."""
        with self._lock:
            return {
                agent_id: {kind.value: counts[kind.value] for kind in FaultKind}
                for agent_id, counts in self._injected.items()
            }

    def enable(self) -> None:
        """Turn injection on for the apps created from now on: call it before serving."""
        self._enabled = True

    def arm(self, faults: FaultPlan | str | Iterable[str], *, seed: int = 0) -> FaultPlan:
        """Replace the armed plan: a ``FaultPlan``, or text specs read against the server's agents
        (``seed`` then seeds them). Each agent's random stream starts afresh. Before serving, this
        turns injection on; on a server already serving without it, it is an error. Returns the plan."""
        if not self._enabled and self._served_without:
            raise RuntimeError(
                "fault injection is off on this server, which already serves without it: enable it before "
                "serving, with Server(faults=...), server.faults.enable(), arm() or an admin port"
            )
        agents = self._agents()
        if isinstance(faults, FaultPlan):
            plan = faults
            if agents:
                plan.check(agents)
        else:
            plan = FaultPlan.parse(faults, seed=seed, agents=agents or None)
        with self._lock:
            self._plan = plan
            self._rngs = {}
        self._enabled = True
        logger.info("faults armed: {}", "; ".join(plan.specs()) or "none")
        return plan

    def clear(self) -> None:
        """Disarm every fault; the injected counts are kept."""
        self.arm(FaultPlan(seed=self._plan.seed))

    def wire(self, specs: Iterable[AgentSpec]) -> list[AgentSpec]:
        """The specs of a new app: with injection on, their instances wrapped so that every request meets
        the armed faults (the plan is checked against these agents, the counts start afresh); with it
        off, the specs unchanged. Wire them before the runtime's other layers: a fault meets the request
        where the agent's own handler runs (one the runtime answers itself, such as a message to an unknown
        chat, meets none). Two layers: the faults are drawn where the plan and its counts are (the
        gateway's process) into ``context.faults``, and struck right around the handler, in the agent's
        thread, so a fault behaves as the agent's own crash, hang or error would, on either engine."""
        specs = list(specs)
        if not self._enabled:
            self._served_without = True
            return specs
        self._plan.check({spec.agent_id: spec.methods for spec in specs})
        with self._lock:
            self._rngs = {}
            self._injected = {spec.agent_id: Counter() for spec in specs}
        return [
            spec.map_handlers(partial(self._drawn, spec.agent_id)).map_handlers(_struck, beside_agent=True)
            for spec in specs
        ]

    def _drawn(self, agent_id: str, method: str, handler: Handler) -> Handler:
        """``handler`` with the faults armed for ``agent_id``'s ``method`` (read at each call) drawn first."""

        def with_faults(params: dict[str, Any], context: Context) -> Any:
            if context.faults is None and self._plan.faults_for(agent_id, method):  # once per request
                context.faults = tuple(self.draw(agent_id, method))
            return handler(params, context)

        return with_faults

    def draw(self, agent_id: str, method: str) -> list[Struck]:
        """The faults that strike this call of ``agent_id``'s ``method`` under the armed plan, counted as
        injected; ``strike`` makes them happen, in the agent's thread."""
        with self._lock:
            plan = self._plan
            if not plan.faults_for(agent_id, method):
                return []
            rng = self._rngs.get(agent_id)
            if rng is None:
                rng = self._rngs[agent_id] = plan.rng_for(agent_id)
            struck = plan.draw(agent_id, method, rng)
            counts = self._injected.setdefault(agent_id, Counter())
            counts.update(fault.kind.value for fault, _ in struck)
        return struck


Struck = tuple[Fault, float]
"""A fault drawn for one call, with how long it lasts (hang, latency)."""


def strike(struck: Sequence[Struck], agent_id: str, method: str, trace_id: str | None) -> None:
    """Make the drawn faults happen, in the thread of the agent serving the call: sleep for a latency
    or hang, raise ``InjectedCrash`` for a crash, ``ARCError`` for an error."""
    log = logger.bind(agent_id=agent_id, trace_id=trace_id or "-")
    for fault, seconds in struck:
        if fault.kind is FaultKind.LATENCY:
            log.debug("injected latency of {:.3f} s into {}", seconds, method)
            time.sleep(seconds)
        elif fault.kind is FaultKind.HANG:
            log.info("injected hang of {:.3f} s into {}", seconds, method)
            time.sleep(seconds)
        elif fault.kind is FaultKind.CRASH:
            log.info("injected crash into {}", method)
            raise InjectedCrash(f"injected crash ({fault.spec()}) in {agent_id} {method}")
        else:
            log.info("injected error {} into {}", fault.code, method)
            raise ARCError(fault.code, f"Injected error {fault.code}", {"agentId": agent_id, "injected": True})


def _struck(method: str, handler: Handler) -> Handler:
    """``handler`` with the faults drawn for its request struck first (a module function: it travels with
    the agent's code to another process)."""

    def with_faults(params: dict[str, Any], context: Context) -> Any:
        if context.faults:
            strike(context.faults, context.target_agent, method, context.trace_id)
        return handler(params, context)

    return with_faults


def _parse_spec(spec: str, agents: dict[str, tuple[str, ...]] | None) -> tuple[Target, list[Fault]]:
    if not isinstance(spec, str):
        raise FaultSpecError(f"a fault spec is a string {SPEC_FORM}")
    match = _TARGET_AND_FAULTS.fullmatch(spec.strip())
    if match is None:
        raise FaultSpecError(f"expected {SPEC_FORM}, e.g. finance-agent:crash=0.2,hang=0.05:5s")
    target = match["target"].strip()
    if not target:
        raise FaultSpecError("no agent id before ':'")
    agent_id, method = _split_target(target, agents)
    return (agent_id, method), [_parse_fault(item.strip()) for item in match["faults"].split(",")]


def _split_target(target: str, agents: dict[str, tuple[str, ...]] | None) -> Target:
    if agents is None:
        for method in ARC_METHODS:
            if target.endswith(f".{method}") and len(target) > len(method) + 1:
                return target[: -len(method) - 1], method
        return target, None
    if target in agents:
        return target, None
    for agent_id, methods in agents.items():
        method = target[len(agent_id) + 1 :]
        if target.startswith(f"{agent_id}.") and method in methods:
            return agent_id, method
    owner = max((agent_id for agent_id in agents if target.startswith(f"{agent_id}.")), key=len, default=None)
    if owner is None:
        raise _no_agent(target, agents)
    raise _no_method(owner, target[len(owner) + 1 :], agents)


def _check_target(agent_id: str, method: str | None, agents: dict[str, tuple[str, ...]]) -> None:
    if agent_id not in agents:
        raise _no_agent(agent_id, agents)
    if method is not None and method not in agents[agent_id]:
        raise _no_method(agent_id, method, agents)


def _no_agent(agent_id: str, agents: dict[str, tuple[str, ...]]) -> FaultSpecError:
    message = f"no agent {agent_id!r} on this server (agents: {', '.join(agents) or 'none'})"
    for owner, methods in agents.items():
        method = agent_id[len(owner) + 1 :]
        if agent_id.startswith(f"{owner}.") and method in methods:
            message += (
                f"; for method {method!r} of agent {owner!r}, arm the spec with server.faults.arm() "
                "or parse it with agents=server.agent_methods"
            )
    return FaultSpecError(message)


def _no_method(agent_id: str, method: str, agents: dict[str, tuple[str, ...]]) -> FaultSpecError:
    methods = ", ".join(sorted(agents[agent_id]))
    return FaultSpecError(f"agent {agent_id!r} has no method {method!r} (methods: {methods})")


def _parse_fault(item: str) -> Fault:
    name, _, rest = item.partition("=")
    probability_text, _, argument = rest.partition(":")
    try:
        kind = FaultKind(name.strip().lower())
    except ValueError:
        raise FaultSpecError(f"unknown fault kind {name!r} in {item!r} (kinds: {_KINDS})") from None
    try:
        probability = float(probability_text)
    except ValueError:
        raise FaultSpecError(f"{item!r}: probability {probability_text!r} is not a number in [0, 1]") from None
    if not 0 <= probability <= 1:
        raise FaultSpecError(f"{item!r}: probability {probability_text!r} is not in [0, 1]")
    if kind is FaultKind.CRASH:
        if argument:
            raise FaultSpecError(f"{item!r}: crash takes no argument, write crash=P")
        return Fault.crash(probability)
    if kind is FaultKind.ERROR:
        if not argument:
            raise FaultSpecError(f"{item!r}: error needs an ARC error code, e.g. error={probability_text}:-41003")
        try:
            code = int(argument)
        except ValueError:
            raise FaultSpecError(f"{item!r}: error code {argument!r} is not an integer") from None
        return Fault.error(probability, code)
    if not argument:
        raise FaultSpecError(
            f"{item!r}: {kind.value} needs a duration, e.g. {kind.value}={probability_text}:5s or :100ms-300ms"
        )
    low, dash, high = argument.partition("-")
    duration_s = _parse_duration(low, item)
    max_duration_s = _parse_duration(high, item) if dash else None
    if max_duration_s is not None and max_duration_s < duration_s:
        raise FaultSpecError(f"{item!r}: duration range {argument!r} runs backwards")
    return Fault(kind=kind, probability=probability, duration_s=duration_s, max_duration_s=max_duration_s)


def _parse_duration(text: str, item: str) -> float:
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise FaultSpecError(f"{item!r}: duration {text!r} is not a number with a unit ms, s or m (e.g. 200ms, 5s)")
    seconds = float(match[1]) * _SECONDS_PER_UNIT[match[2]]
    if seconds <= 0:
        raise FaultSpecError(f"{item!r}: duration {text!r} must be > 0")
    return seconds


def _format_duration(seconds: float) -> str:
    if seconds < 1:
        return f"{round(seconds * 1000, 3):g}ms"
    return f"{seconds:g}s"


def _target_text(target: Target) -> str:
    agent_id, method = target
    return agent_id if method is None else f"{agent_id}.{method}"

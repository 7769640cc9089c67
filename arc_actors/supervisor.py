"""Supervision as data, decisions in one place (after Erlang/OTP's supervisor).

A ``RestartPolicy`` per agent says how many restarts are allowed within how long (the
intensity), how long to wait before each (backoff) and when a handler counts as hung. The
``Supervisor`` keeps each agent's failure history and answers the one question an engine asks when
an agent fails: restart it (after which delay), or give up on it. Agents never see any of this: they
only raise.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

import msgspec
from loguru import logger

from arc_actors.logs import LineRate

HANG_AFTER_ENV = "ARC_HANG_AFTER_S"
DEFAULT_HANG_AFTER_S = 120.0
"""A handler running longer than this is abandoned, unless a policy or ARC_HANG_AFTER_S says otherwise.
Generous, because agents often wait on slow LLM calls."""


class RestartPolicy(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How an agent is restarted when it crashes or hangs.

    * ``max_restarts`` within ``within_s`` seconds is the intensity: one more failure in that window
      and the agent is marked failed until restarted by hand (``Server.restart_agent``). Every failure
      counts, served requests between them or not, so a crash loop still escalates.
    * The n-th failure in a row (no request served since the one before) waits ``backoff_initial_s *
      backoff_factor ** (n - 1)``, at most ``backoff_max_s``, give or take ``backoff_jitter`` (a
      fraction) so restarts do not march in step. A request served resets it: an agent that crashes on
      one message in three restarts after ``backoff_initial_s`` each time.
    * ``hang_after_s``: a handler running longer is abandoned, its caller answered -41006, and the
      agent restarted. ``None`` takes the server-wide default (``ARC_HANG_AFTER_S``, else 120 s).
    """

    max_restarts: int = 10
    within_s: float = 60.0
    backoff_initial_s: float = 0.05
    backoff_factor: float = 2.0
    backoff_max_s: float = 5.0
    backoff_jitter: float = 0.2
    hang_after_s: float | None = None

    def __post_init__(self) -> None:
        problems = [
            f"{name} must be {rule}, got {value!r}"
            for name, value, ok, rule in (
                ("max_restarts", self.max_restarts, self.max_restarts >= 0, ">= 0"),
                ("within_s", self.within_s, self.within_s > 0, "> 0"),
                ("backoff_initial_s", self.backoff_initial_s, self.backoff_initial_s >= 0, ">= 0"),
                ("backoff_factor", self.backoff_factor, self.backoff_factor >= 1, ">= 1"),
                ("backoff_max_s", self.backoff_max_s, self.backoff_max_s >= 0, ">= 0"),
                ("backoff_jitter", self.backoff_jitter, 0 <= self.backoff_jitter < 1, "in [0, 1)"),
                ("hang_after_s", self.hang_after_s, self.hang_after_s is None or self.hang_after_s > 0, "> 0"),
            )
            if not ok
        ]
        if problems:
            raise ValueError("RestartPolicy: " + "; ".join(problems))

    def backoff_s(self, streak: int) -> float:
        """The jittered delay before the restart after the ``streak``-th failure in a row (1-based)."""
        try:
            grown = self.backoff_initial_s * self.backoff_factor ** (streak - 1)
        except OverflowError:  # thousands of restarts in one window: long past the cap
            grown = self.backoff_max_s
        delay = min(self.backoff_max_s, grown)
        return delay * random.uniform(1 - self.backoff_jitter, 1 + self.backoff_jitter)


class FailureHistory(msgspec.Struct, frozen=True):
    """An agent's failures, carried from one supervisor to another (a Ray host's process replaced):
    how many seconds ago each failure in the intensity window happened, oldest first, and how many
    failures in a row have had no request served since (what the backoff grows with)."""

    ages: list[float]
    streak: int = 0


@dataclass(frozen=True)
class Decision:
    """What to do with a failed agent: restart it after ``delay_s``, or (``restart`` false) give up."""

    restart: bool
    delay_s: float = 0.0


def hang_after_from_env(default: float = DEFAULT_HANG_AFTER_S) -> float:
    """The server-wide hang threshold: ``ARC_HANG_AFTER_S`` when set, else ``default``."""
    raw = os.environ.get(HANG_AFTER_ENV)
    if raw is None or not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{HANG_AFTER_ENV} must be a number of seconds, got {raw!r}") from None
    if value <= 0:
        raise ValueError(f"{HANG_AFTER_ENV} must be > 0, got {raw!r}")
    return value


RESTART_LINE_INTERVAL_S = 1.0
"""An agent's restarts are logged at most once a second; the next line counts those left out (``/health``
and ``/metrics`` count every one). An agent crashing 700 times a second wrote 700 lines a second, which
slowed its healthy neighbours."""


class Supervisor:
    """Owns every restart decision. Thread-safe: agents' threads and the event loop both report failures."""

    def __init__(
        self,
        policies: Mapping[str, RestartPolicy],
        default_policy: RestartPolicy,
        default_hang_after_s: float,
    ) -> None:
        self._policies = dict(policies)
        self._default_policy = default_policy
        self._default_hang_after_s = default_hang_after_s
        self._failures: dict[str, deque[float]] = {}
        self._streaks: dict[str, int] = {}
        """Failures in a row per agent, with no request served between them: what the backoff grows with."""
        self._backoffs: dict[str, float] = {}
        """The delay of each agent's latest restart, while its streak lasts (``/health``'s ``backoff_s``)."""
        self._lock = threading.Lock()
        self._restart_lines = LineRate(RESTART_LINE_INTERVAL_S)

    def policy(self, agent_id: str) -> RestartPolicy:
        return self._policies.get(agent_id, self._default_policy)

    def hang_after_s(self, agent_id: str) -> float:
        """How long a handler of ``agent_id`` may run before it counts as hung."""
        own = self._policies.get(agent_id)
        if own is not None and own.hang_after_s is not None:
            return own.hang_after_s
        return self._default_hang_after_s

    def on_failure(self, agent_id: str, reason: str) -> Decision:
        """Record a crash or hang of ``agent_id`` and decide: restart (after a backoff) or give up."""
        policy = self.policy(agent_id)
        now = time.monotonic()
        with self._lock:
            history = self._failures.setdefault(agent_id, deque())
            history.append(now)
            while history and now - history[0] > policy.within_s:
                history.popleft()
            restart_number = len(history)
            streak = self._streaks[agent_id] = self._streaks.get(agent_id, 0) + 1
        if restart_number > policy.max_restarts:
            logger.bind(agent_id=agent_id).error(
                "{} failed {} times within {} s ({}): giving up, agent marked failed",
                agent_id,
                restart_number,
                policy.within_s,
                reason,
            )
            return Decision(restart=False)
        delay_s = self._backoffs[agent_id] = policy.backoff_s(streak)
        folded = self._restart_lines.fold(agent_id, now)
        if folded is not None:
            logger.bind(agent_id=agent_id).warning(
                "{} failed ({}): restart {} of {} allowed within {} s, in {:.3f} s (failure {} in a row){}",
                agent_id,
                reason,
                restart_number,
                policy.max_restarts,
                policy.within_s,
                delay_s,
                streak,
                f" ({folded} more restarts since the last such line)" if folded else "",
            )
        return Decision(restart=True, delay_s=delay_s)

    def served(self, agent_id: str) -> None:
        """``agent_id`` served a request after a failure: proof it works, so its backoff starts over (as
        Akka's backoff supervisor resets after a successful run)."""
        with self._lock:
            self._streaks.pop(agent_id, None)
            self._backoffs.pop(agent_id, None)

    def backoff_s(self, agent_id: str) -> float:
        """The delay of ``agent_id``'s latest restart while it has served nothing since; else 0."""
        return self._backoffs.get(agent_id, 0.0)

    def history(self, agent_id: str) -> FailureHistory:
        """``agent_id``'s failures as :meth:`remember` takes them, so that a supervisor in another process
        carries the same window and streak on."""
        now = time.monotonic()
        with self._lock:
            ages = [now - at for at in self._failures.get(agent_id, ())]
            return FailureHistory(ages=ages, streak=self._streaks.get(agent_id, 0))

    def remember(self, agent_id: str, history: FailureHistory) -> None:
        """Take ``agent_id``'s failures from :meth:`history` of another supervisor."""
        now = time.monotonic()
        with self._lock:
            self._failures[agent_id] = deque(now - age for age in sorted(history.ages, reverse=True))
            if history.streak:
                self._streaks[agent_id] = history.streak
            else:
                self._streaks.pop(agent_id, None)

    def in_streak(self, agent_id: str) -> bool:
        """Whether ``agent_id``'s latest failure has had no request served since."""
        return agent_id in self._streaks

    def forget(self, agent_id: str) -> None:
        """Clear an agent's failure history, as a restart by hand does."""
        with self._lock:
            self._failures.pop(agent_id, None)
            self._streaks.pop(agent_id, None)
            self._backoffs.pop(agent_id, None)

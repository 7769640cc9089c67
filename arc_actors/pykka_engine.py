"""The in-process engine: one :class:`~arc_actors.cell.AgentCell` per agent, its instances pykka
actors in this process.

A request crosses threads twice: the gateway's loop hands a :class:`~arc_actors.cell.Call` to the
agent's cell (a ``tell`` to an idle instance, or a place in its mailbox), and the instance's thread
hands the outcome back with ``loop.call_soon_threadsafe``. Nothing on the event loop ever blocks on an
actor, and nothing raised by a handler, not even ``SystemExit``, leaves the agent that raised it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from functools import partial
from typing import Any

from arc_actors.agent import AgentSpec, Context
from arc_actors.cell import AgentCell, Call, watch_for_hangs
from arc_actors.engine import AgentStatus, answer_in_time, resolve, timed_out
from arc_actors.protocol import Outcome
from arc_actors.supervisor import Supervisor

DRAIN_POLL_S = 0.02


class PykkaEngine:
    """The :class:`~arc_actors.engine.Engine` of one process: a cell of pykka actors per agent."""

    def __init__(self, supervisor: Supervisor, mailbox_size: int, request_timeout_s: float | None = None) -> None:
        self._supervisor = supervisor
        self._default_mailbox_size = mailbox_size
        self._default_request_timeout_s = request_timeout_s
        self._cells: dict[str, AgentCell] = {}
        self._timeouts: dict[str, float | None] = {}

    def spawn(self, spec: AgentSpec) -> None:
        if spec.agent_id in self._cells:
            raise ValueError(f"agent {spec.agent_id!r} is already running")
        cell = AgentCell(
            spec.agent_id,
            spec.make,
            self._supervisor,
            concurrency=spec.concurrency,
            mailbox_size=spec.mailbox_size or self._default_mailbox_size,
            max_in_flight=spec.max_in_flight,
        )
        self._cells[spec.agent_id] = cell
        self._timeouts[spec.agent_id] = spec.request_timeout_s or self._default_request_timeout_s
        cell.start()

    def ask(self, agent_id: str, method: str, params: dict[str, Any], context: Context) -> Awaitable[Outcome]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()
        cell = self._cells[agent_id]
        call = Call(method, params, context, partial(loop.call_soon_threadsafe, resolve, future))
        refused = cell.submit(call)
        if refused is not None:
            future.set_result(refused)
            return future
        timeout_s = self._timeouts[agent_id]
        if timeout_s is not None:
            answer_in_time(future, timeout_s, partial(_withdrawn, cell, call, timeout_s))
        return future

    def restart(self, agent_id: str) -> None:
        self._cells[agent_id].restart()

    async def watch_for_hangs(self) -> None:
        await watch_for_hangs(self._cells.values())

    async def drain(self, timeout_s: float) -> dict[str, int]:
        """Refuse new requests, let the queued and running ones finish for up to ``timeout_s``, then
        answer what is left -41002. Returns, per agent, how many requests were answered so."""
        for cell in self._cells.values():
            cell.refuse_new()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and any(cell.has_work for cell in self._cells.values()):
            await asyncio.sleep(DRAIN_POLL_S)
        why = "stopped before serving this request: the server shut down"
        unserved = {agent_id: cell.answer_unserved(why) for agent_id, cell in self._cells.items()}
        return {agent_id: count for agent_id, count in unserved.items() if count}

    def stop(self, timeout_s: float) -> list[str]:
        deadline = time.monotonic() + timeout_s
        for cell in self._cells.values():
            cell.stop()
        return [agent_id for agent_id, cell in self._cells.items() if not cell.wait_stopped(deadline)]

    def status(self, agent_id: str) -> AgentStatus:
        return self._cells[agent_id].status()


def _withdrawn(cell: AgentCell, call: Call, timeout_s: float) -> Outcome:
    """The request timeout: the caller is answered now; an instance that has not started it never will."""
    cell.withdraw(call)
    return timed_out(cell.agent_id, timeout_s)

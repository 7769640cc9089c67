"""Streamed replies: how an agent's text deltas reach an SSE response as they are made.

An agent streams by being an **async generator** handler of ``chat.start`` or ``chat.message`` that
yields ``str`` deltas (managed chats or not: the agent's cell runs any generator handler through
:func:`streamed`). It runs, like any handler, in its agent's own actor thread on that thread's own
loop; each delta crosses to the gateway's loop with ``loop.call_soon_threadsafe`` into the
:class:`DeltaSink` of the request, which the gateway writes as a ``stream`` frame at once. The final
outcome travels the ordinary way (the engine's answer), after every delta, so supervision is unchanged:
a generator that raises is a crash (-32603, restart, counted in ``/health``), one that hangs is caught
by the watchdog (-41006).

Called without ``stream: true``, the same generator is run to its end and its deltas joined make the
reply. A client that disconnects cancels the generator: the task iterating it is cancelled in the
agent's thread (the generator sees ``CancelledError`` at its current ``await``), it is ``aclose()``-d,
and the agent is free for its next message.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Protocol

from arc_actors.exceptions import ARCError
from arc_actors.protocol import ErrorCode

DEFAULT_KEEPALIVE_S = 15.0
"""How long a streamed response may stay silent before a ``: keep-alive`` comment frame is sent."""


class DeltaSink:
    """The gateway's end of one streamed request: deltas sent from the agent's thread arrive in
    :attr:`deltas` on the gateway's loop, in order; :meth:`cancel` stops the generator."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.deltas: asyncio.Queue[str] = asyncio.Queue()
        self._lock = threading.Lock()
        self._cancelled = False
        self._running: tuple[asyncio.AbstractEventLoop, asyncio.Task[object]] | None = None

    def send(self, delta: str) -> None:
        """From the agent's thread: hand one delta to the gateway's loop."""
        self._loop.call_soon_threadsafe(self.deltas.put_nowait, delta)

    def cancel(self) -> None:
        """From the gateway's loop (the client went away): cancel the generator's iteration, now if it
        runs, or as soon as it starts."""
        with self._lock:
            self._cancelled = True
            running = self._running
        if running is not None:
            agent_loop, task = running
            with contextlib.suppress(RuntimeError):  # a closed agent loop: its worker is gone already
                agent_loop.call_soon_threadsafe(task.cancel)

    async def relay(self, generator: AsyncGenerator[object, None]) -> str:
        """In the agent's thread: iterate ``generator``, sending each delta; returns the whole reply.
        A cancelled stream closes the generator and raises an ARC error that nobody reads."""
        with self._lock:
            cancelled = self._cancelled
            if not cancelled:
                self._running = (asyncio.get_running_loop(), asyncio.current_task())
        try:
            if cancelled:
                raise asyncio.CancelledError
            return await collect(generator, self.send)
        except asyncio.CancelledError:
            if not self._cancelled:
                raise
            await generator.aclose()
            raise ARCError(ErrorCode.INTERNAL_ERROR, "Stream cancelled: the client disconnected") from None
        finally:
            with self._lock:
                self._running = None


class StreamSink(Protocol):
    """Where a request's deltas go as they are made: the gateway's :class:`DeltaSink`, or an engine's
    stand-in for it in another process."""

    def relay(self, generator: AsyncGenerator[object, None]) -> Awaitable[str]: ...


def streamed(generator: AsyncGenerator[object, None], sink: StreamSink | None) -> Awaitable[str]:
    """What an async generator handler answers: its deltas relayed to ``sink`` as they come (a request
    with ``stream: true``) or, without one, joined."""
    return collect(generator) if sink is None else sink.relay(generator)


async def collect(generator: AsyncGenerator[object, None], send: Callable[[str], None] | None = None) -> str:
    """Run ``generator`` to its end, passing each delta to ``send`` (when given); returns them joined.
    A delta that is not a ``str`` is a ``TypeError``: the generator is closed and the agent crashes."""
    deltas: list[str] = []
    try:
        async for delta in generator:
            if not isinstance(delta, str):
                raise TypeError(f"a streaming handler yields str deltas, got {type(delta).__name__}: {delta!r}")
            deltas.append(delta)
            if send is not None:
                send(delta)
    finally:
        await generator.aclose()
    return "".join(deltas)

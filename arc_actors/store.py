"""Where the runtime keeps what must outlive a request: one small key-value interface, two backends.

A record is bytes under ``(kind, key)``; what the bytes mean (a msgspec-encoded chat, a task, ...)
is the caller's business, so a server-grade database can be added later as one more ``Store``
without touching agents or the chat and task logic. Every method is called from agents' threads,
never from the event loop, and may be called from several threads at once.
"""

from __future__ import annotations

import secrets
import sqlite3
import threading
import time
from pathlib import Path
from typing import Protocol, runtime_checkable

import msgspec


@runtime_checkable
class Store(Protocol):
    """Bytes by ``(kind, key)``; safe to call from any thread."""

    def load(self, kind: str, key: str) -> bytes | None:
        """The value saved under ``(kind, key)``, or None."""

    def save(self, kind: str, key: str, value: bytes) -> None:
        """Keep ``value`` under ``(kind, key)``, replacing any value there; durable once it returns."""

    def close(self) -> None:
        """Release what the store holds; it is not used afterwards."""


class MemoryStore:
    """A ``Store`` in a dict: for tests, and the default when no state path is configured
    (everything is lost when the process ends)."""

    def __init__(self) -> None:
        self._records: dict[tuple[str, str], bytes] = {}
        self._lock = threading.Lock()

    def load(self, kind: str, key: str) -> bytes | None:
        with self._lock:
            return self._records.get((kind, key))

    def save(self, kind: str, key: str, value: bytes) -> None:
        with self._lock:
            self._records[(kind, key)] = bytes(value)

    def close(self) -> None:
        """Nothing to release: the records stay readable, as a test may want after a server stops."""


class SQLiteStore:
    """A ``Store`` in one SQLite file (stdlib ``sqlite3``), so records survive a restart.

    One connection in WAL mode, shared by every thread under a lock: writes are single statements in
    autocommit, each durable against a crash of the process when it returns. One process per file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._connection = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        with self._lock:
            self._connection.execute("PRAGMA journal_mode=WAL")
            self._connection.execute("PRAGMA synchronous=NORMAL")
            self._connection.execute(
                "CREATE TABLE IF NOT EXISTS records "
                "(kind TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL, PRIMARY KEY (kind, key))"
            )

    def load(self, kind: str, key: str) -> bytes | None:
        with self._lock:
            row = self._connection.execute(
                "SELECT value FROM records WHERE kind = ? AND key = ?", (kind, key)
            ).fetchone()
        return None if row is None else bytes(row[0])

    def save(self, kind: str, key: str, value: bytes) -> None:
        with self._lock:
            self._connection.execute(
                "INSERT INTO records (kind, key, value) VALUES (?, ?, ?) "
                "ON CONFLICT (kind, key) DO UPDATE SET value = excluded.value",
                (kind, key, bytes(value)),
            )

    def close(self) -> None:
        with self._lock:
            self._connection.close()

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"


def open_store(source: Store | str | Path | None) -> tuple[Store, bool]:
    """The store ``source`` names (a Store as it is, a path as an ``SQLiteStore``, None as a fresh
    ``MemoryStore``) and whether the caller opened it, and so must close it."""
    if source is None:
        return MemoryStore(), True
    if isinstance(source, str | Path):
        return SQLiteStore(source), True
    if isinstance(source, Store):
        return source, False
    raise TypeError(f"a store is a path or a Store (load, save, close), got {source!r}")


class ServingStore:
    """The one store of a serving server, shared by its managed chats and tasks: opened when serving
    starts and closed when it stops (only if it opened it), both off the event loop."""

    def __init__(self, source: Store | str | Path | None) -> None:
        self._source = source
        self._store: Store | None = None
        self._owned = False

    def open(self) -> None:
        self._store, self._owned = open_store(self._source)

    def close(self) -> None:
        store, self._store = self._store, None
        if store is not None and self._owned:
            store.close()

    @property
    def is_open(self) -> bool:
        return self._store is not None

    @property
    def store(self) -> Store:
        """The open store; raises when the server is not serving (records live only while it does)."""
        if self._store is None:
            raise RuntimeError("the store is not open: chats and tasks are kept only while the server serves")
        return self._store


def new_id(prefix: str) -> str:
    """A fresh record id, ``PREFIX-`` and 48 random bits in hex (``chat-``, ``task-``, ``sub-``, ...)."""
    return f"{prefix}-{secrets.token_hex(6)}"


def record_key(agent_id: str, record_id: str) -> str:
    """One store key per agent and record id, unambiguous whatever characters the ids hold."""
    return msgspec.json.encode([agent_id, record_id]).decode()


_MILLISECONDS = [f".{millisecond:03d}Z" for millisecond in range(1000)]
_second: tuple[int, str] = (0, "")
"""The last whole second :func:`utc_now` formatted, and its text (swapped whole: thread-safe)."""


def utc_now() -> str:
    """Now, as records' timestamps are written: ISO 8601 in UTC to the millisecond, ending in ``Z``.
    Called a few times per chat request, so the seconds part is formatted once a second."""
    global _second
    now = time.time()
    whole = int(now)
    second = _second
    if second[0] != whole:
        second = _second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
    return second[1] + _MILLISECONDS[int((now - whole) * 1000)]

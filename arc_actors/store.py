"""Where the runtime keeps what must outlive a request: one small key-value interface, two backends.

A record is bytes under ``(kind, key)``; what the bytes mean (a msgspec-encoded chat, a task, ...)
is the caller's business, so a server-grade database can be added later as one more ``Store``
without touching agents or the chat and task logic. Every method is called from agents' threads,
never from the event loop, and may be called from several threads at once.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import sqlite3
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import msgspec
from loguru import logger


@runtime_checkable
class Store(Protocol):
    """Bytes by ``(kind, key)``; safe to call from any thread. A store may also offer ``transaction()``, a
    context manager in which a read-modify-write is atomic (against other threads and, for a store shared
    by several server processes, other processes); the runtime then uses it, else a lock of its own."""

    def load(self, kind: str, key: str) -> bytes | None:
        """The value saved under ``(kind, key)``, or None."""

    def save(self, kind: str, key: str, value: bytes) -> None:
        """Keep ``value`` under ``(kind, key)``, replacing any value there; durable once it returns."""

    def close(self) -> None:
        """Release what the store holds; it is not used afterwards."""


SQLITE_BUSY_TIMEOUT_S = 30.0
"""How long a write waits for another process's transaction on the same file before it fails."""
DEFAULT_MAX_RECORDS = 100_000
"""How many records of each kind (chats, tasks, subscriptions, ...) a store the runtime opens keeps."""


class _Bound:
    """The most records of each kind a store keeps; past it, the least recently written go, and the first
    time for each kind one line says so (a bound is what keeps a stream of ``chat.start`` from taking all
    the memory or the disk)."""

    def __init__(self, max_records: int | None, store: str) -> None:
        if max_records is not None and max_records < 1:
            raise ValueError(f"max_records must be at least 1 (or None: no bound), got {max_records!r}")
        self.max_records = max_records
        self._store = store
        self._reached: set[str] = set()

    def excess(self, kind: str, count: int) -> int:
        """How many of ``count`` records of ``kind`` must go."""
        if self.max_records is None or count <= self.max_records:
            return 0
        if kind not in self._reached:
            self._reached.add(kind)
            logger.warning(
                "{} holds {} {} records, its bound: the least recently written are forgotten from now on",
                self._store,
                self.max_records,
                kind,
            )
        return count - self.max_records


Keep = Callable[[str, bytes], bool]
"""``keep(kind, value)``: whether a record is still in use (a task still running), so that a store's bound
never forgets it, however long ago it was written."""


class MemoryStore:
    """A ``Store`` in memory: for tests, and the default when no state path is configured (everything is
    lost when the process ends). ``max_records`` bounds each kind (None: no bound), forgetting the least
    recently written records that ``keep`` does not keep."""

    def __init__(self, max_records: int | None = None, keep: Keep | None = None) -> None:
        self._kinds: dict[str, OrderedDict[str, bytes]] = {}
        self._bound = _Bound(max_records, "the memory store")
        self._max_records = math.inf if max_records is None else max_records
        self._keep = keep
        self._kept: dict[str, set[str]] = {}
        self._lock = threading.RLock()

    def transaction(self) -> AbstractContextManager[Any]:
        """Loads and saves in the block happen with no other thread's in between (the store's own lock)."""
        return self._lock

    def load(self, kind: str, key: str) -> bytes | None:
        with self._lock:
            records = self._kinds.get(kind)
            return None if records is None else records.get(key)

    def save(self, kind: str, key: str, value: bytes) -> None:
        with self._lock:
            records = self._kinds.get(kind)
            if records is None:
                records = self._kinds[kind] = OrderedDict()
            records[key] = value if type(value) is bytes else bytes(value)
            records.move_to_end(key)  # least recently written first
            if self._keep is not None:
                kept = self._kept.setdefault(kind, set())
                if self._keep(kind, records[key]):
                    kept.add(key)
                else:
                    kept.discard(key)
            if len(records) > self._max_records:
                self._forget_oldest(kind, records)

    def _forget_oldest(self, kind: str, records: OrderedDict[str, bytes]) -> None:
        """Forget the least recently written records over the bound, passing over (to the back) kept ones."""
        kept = self._kept.get(kind, set())
        excess = min(self._bound.excess(kind, len(records)), len(records) - len(kept))
        while excess > 0:
            key = next(iter(records))
            if key in kept:
                records.move_to_end(key)
            else:
                del records[key]
                excess -= 1

    def close(self) -> None:
        """Nothing to release: the records stay readable, as a test may want after a server stops."""


class Lease:
    """This process's claim on a state file, held as an ``flock`` on a file of its own beside it
    (``STATE.leases/ID``): the kernel lets go of it when the process ends, however it ends (``kill -9``
    included), so another process sharing the file tells a gone claim from a live one. POSIX only."""

    def __init__(self, state: Path) -> None:
        import fcntl  # POSIX; SQLiteStore makes no lease where there is none

        self._fcntl = fcntl
        self.directory = Path(f"{state}.leases")
        self.directory.mkdir(exist_ok=True)
        self.id = uuid.uuid4().hex
        # Locked under a name no other process probes, then renamed into place: a neighbour starting
        # meanwhile never sees it unlocked, and never takes it for a gone process's.
        making = self.directory / f".{self.id}"
        self._held: int | None = os.open(making, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._held, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(making, self.directory / self.id)
        except OSError:
            os.close(self._held)
            making.unlink(missing_ok=True)
            raise

    def alive(self, lease_id: str) -> bool:
        """Whether the process that took ``lease_id`` still holds it (an id read from a record: never a path)."""
        if lease_id == self.id:
            return True
        if not _LEASE_ID.fullmatch(lease_id):
            return False
        try:
            probe = os.open(self.directory / lease_id, os.O_RDONLY)
        except FileNotFoundError:
            return False
        except OSError:
            return True  # not ours to read (another user's process): never taken for gone
        try:
            self._fcntl.flock(probe, self._fcntl.LOCK_EX | self._fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(probe)
        return False

    def forget_gone(self) -> None:
        """Delete the lease files of processes that are gone."""
        for path in self.directory.iterdir():
            if _LEASE_ID.fullmatch(path.name) and not self.alive(path.name):
                path.unlink(missing_ok=True)

    def release(self) -> None:
        if self._held is not None:
            (self.directory / self.id).unlink(missing_ok=True)
            os.close(self._held)
            self._held = None


_LEASE_ID = re.compile(r"[0-9a-f]{32}")


class SQLiteStore:
    """A ``Store`` in one SQLite file (stdlib ``sqlite3``), so records survive a restart.

    One connection in WAL mode per store, shared by its threads under a lock; writes are single statements
    in autocommit, each durable against a crash of the process when it returns. Several server processes
    on one machine may share the file (a local file system: WAL needs shared memory): ``transaction()``
    is SQLite's ``BEGIN IMMEDIATE``, so one process's read-modify-write of a chat or task never interleaves
    with another's. ``max_records`` bounds each kind (None: no bound): every write is numbered per kind,
    and the least recently written records over the bound are deleted (not those ``keep`` keeps), checked
    every tenth of the bound's writes (at most every 1,000), so a kind may exceed it by that much between
    checks."""

    def __init__(self, path: str | Path, max_records: int | None = None, keep: Keep | None = None) -> None:
        self.path = Path(path)
        self._keep = keep
        self.lease: Lease | None = None
        """This process's claim on the file, which records it runs carry (see :class:`Lease`); None where
        the platform has no ``flock``."""
        self._bound = _Bound(max_records, f"the state file {str(self.path)!r}")
        self._check_every = 1 if max_records is None else max(1, min(1000, max_records // 10))
        self._writes_since_check: dict[str, int] = {}
        self._lock = threading.RLock()
        self._depth = 0  # transactions open in this store's connection (nested ones join the outermost)
        self._connection = sqlite3.connect(
            self.path, check_same_thread=False, isolation_level=None, timeout=SQLITE_BUSY_TIMEOUT_S
        )
        with self._lock:
            self._connection.execute("PRAGMA journal_mode=WAL")
            self._connection.execute("PRAGMA synchronous=NORMAL")
            self._connection.execute(
                "CREATE TABLE IF NOT EXISTS records "
                "(kind TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL, PRIMARY KEY (kind, key))"
            )
            columns = {row[1] for row in self._connection.execute("PRAGMA table_info(records)")}
            # Columns a file from before them lacks: every record equally old, none kept past the bound.
            for column in ("written", "kept"):
                if column not in columns:
                    with contextlib.suppress(sqlite3.OperationalError):  # another process added it just now
                        self._connection.execute(f"ALTER TABLE records ADD COLUMN {column} INTEGER NOT NULL DEFAULT 0")
            self._connection.execute("CREATE INDEX IF NOT EXISTS records_by_age ON records (kind, written)")
        with contextlib.suppress(ImportError, OSError):  # no flock here: tasks are then not recovered
            self.lease = Lease(self.path)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Loads and saves in the block happen with no other thread's or process's writes in between
        (``BEGIN IMMEDIATE``; a process waits up to ``SQLITE_BUSY_TIMEOUT_S`` for another's to end)."""
        with self._lock:
            if self._depth:
                yield
                return
            self._connection.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield
                self._connection.execute("COMMIT")
            except BaseException:
                if self._connection.in_transaction:  # a failed block, or a COMMIT that failed: nothing kept
                    with contextlib.suppress(sqlite3.Error):
                        self._connection.execute("ROLLBACK")
                raise
            finally:
                self._depth = 0

    def load(self, kind: str, key: str) -> bytes | None:
        with self._lock:
            row = self._connection.execute(
                "SELECT value FROM records WHERE kind = ? AND key = ?", (kind, key)
            ).fetchone()
        return None if row is None else bytes(row[0])

    def save(self, kind: str, key: str, value: bytes) -> None:
        value = bytes(value)
        kept = self._keep is not None and self._keep(kind, value)
        with self._lock:
            self._connection.execute(  # numbered in the statement: right whichever process writes next
                "INSERT INTO records (kind, key, value, written, kept) VALUES "
                "(?, ?, ?, (SELECT COALESCE(MAX(written), 0) + 1 FROM records WHERE kind = ?), ?) "
                "ON CONFLICT (kind, key) DO UPDATE SET "
                "value = excluded.value, written = excluded.written, kept = excluded.kept",
                (kind, key, value, kind, int(kept)),
            )
            if self._bound.max_records is not None:
                self._keep_bound(kind)

    def _keep_bound(self, kind: str) -> None:
        writes = self._writes_since_check.get(kind, 0) + 1
        if writes < self._check_every:
            self._writes_since_check[kind] = writes
            return
        self._writes_since_check[kind] = 0
        (count,) = self._connection.execute("SELECT COUNT(*) FROM records WHERE kind = ?", (kind,)).fetchone()
        excess = self._bound.excess(kind, count)
        if excess:
            self._connection.execute(
                "DELETE FROM records WHERE rowid IN "
                "(SELECT rowid FROM records WHERE kind = ? AND kept = 0 ORDER BY written LIMIT ?)",
                (kind, excess),
            )

    def kept(self, kind: str) -> list[bytes]:
        """The records of ``kind`` that ``keep`` keeps past the bound (running tasks, say)."""
        with self._lock:
            rows = self._connection.execute("SELECT value FROM records WHERE kind = ? AND kept = 1", (kind,)).fetchall()
        return [bytes(row[0]) for row in rows]

    def close(self) -> None:
        with self._lock:
            self._connection.close()
        if self.lease is not None:
            self.lease.release()

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"


def open_store(
    source: Store | str | Path | None, max_records: int | None = None, keep: Keep | None = None
) -> tuple[Store, bool]:
    """The store ``source`` names (a Store as it is, a path as an ``SQLiteStore``, None as a fresh
    ``MemoryStore``; the two made here keep at most ``max_records`` of each kind, besides those ``keep``
    keeps) and whether the caller opened it, and so must close it."""
    if source is None:
        return MemoryStore(max_records, keep), True
    if isinstance(source, str | Path):
        return SQLiteStore(source, max_records, keep), True
    if isinstance(source, Store):
        return source, False
    raise TypeError(f"a store is a path or a Store (load, save, close), got {source!r}")


class ServingStore:
    """The one store of a serving server, shared by its managed chats and tasks: opened when serving
    starts and closed when it stops (only if it opened it), both off the event loop."""

    def __init__(
        self, source: Store | str | Path | None, max_records: int | None = DEFAULT_MAX_RECORDS, keep: Keep | None = None
    ) -> None:
        self._source = source
        self._max_records = max_records
        self._keep = keep
        self._store: Store | None = None
        self._owned = False
        self._lock = threading.RLock()  # for a store without transactions of its own
        self._transaction: Callable[[], AbstractContextManager[Any]] | None = None

    def transaction(self) -> AbstractContextManager[Any]:
        """A block in which a read-modify-write of records is atomic: the store's own ``transaction()``,
        else a lock of this process."""
        if self._store is None:
            raise _not_open()
        return self._lock if self._transaction is None else self._transaction()

    def open(self) -> None:
        self._store, self._owned = open_store(self._source, self._max_records, self._keep)
        self._transaction = getattr(self._store, "transaction", None)

    def close(self) -> None:
        store, self._store, self._transaction = self._store, None, None
        if store is not None and self._owned:
            store.close()

    @property
    def is_open(self) -> bool:
        return self._store is not None

    @property
    def store(self) -> Store:
        """The open store; raises when the server is not serving (records live only while it does)."""
        if self._store is None:
            raise _not_open()
        return self._store


def _not_open() -> RuntimeError:
    return RuntimeError("the store is not open: chats and tasks are kept only while the server serves")


def new_id(prefix: str) -> str:
    """A fresh record id, ``PREFIX-`` and 48 random bits in hex (``chat-``, ``task-``, ``sub-``, ...)."""
    return f"{prefix}-{os.urandom(6).hex()}"


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

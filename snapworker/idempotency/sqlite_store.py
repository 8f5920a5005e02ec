"""The embedded idempotency store: one SQLite file under STATE_DIR, used from one thread of its own.

- **Never blocks the event loop**: every statement runs on a single dedicated thread (the stdlib ``sqlite3``
  module; one thread also serialises the writes, so no connection pool or aiosqlite is needed). The loop only
  awaits a future.
- **Durable across a crash of the process**: WAL mode with ``synchronous=NORMAL``: a committed transaction
  survives ``kill -9`` (it is in the WAL file); only a power loss may drop the last ones.
- **Batched**: ``record_intent`` / ``record_outcome`` write all their rows in one transaction (one per API call,
  not one per request); ``lookup`` reads any number of keys in one statement per 500 keys (and their outcomes in
  one more).
- **Cheap to write**: intent rows go to ``idem``, indexed by key; outcome rows to ``idem_outcome``, indexed by
  attempt, and found through the intent row of the same key and attempt (the store's contract). An index entry
  per request lands at a random place of a large B-tree, dirtying a page (a WAL frame) of its own; the attempt
  index of one call's outcome rows dirties one. That halves what a request costs to write. (``idem`` may also
  hold outcome rows: files written before this split are read as they are.)
- **Bounded**: rows older than IDEMPOTENCY_TTL_S are deleted, and beyond IDEMPOTENCY_MAX_RECORDS the oldest go
  first; the pruning runs every few thousand rows written, in the same thread.
- Several worker processes may share the file (SQLite locks it; ``busy_timeout`` waits for the other writer).

``sqlite3.Error`` and ``OSError`` become :class:`~snapworker.errors.StoreUnavailable`; so does a statement that
takes longer than ``timeout_s`` (a stuck disk): the worker then holds its messages instead of guessing.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from snapworker.errors import StoreUnavailable
from snapworker.idempotency.store import INTENT, OUTCOME, Row

__all__ = ["SqliteStore"]

T = TypeVar("T")

FILE_NAME = "idempotency.sqlite3"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS idem (
    key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    kind INTEGER NOT NULL,
    attempt TEXT NOT NULL,
    body TEXT NOT NULL,
    at REAL NOT NULL,
    expires REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS idem_key ON idem (key);
CREATE TABLE IF NOT EXISTS idem_outcome (
    key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    attempt TEXT NOT NULL,
    body TEXT NOT NULL,
    at REAL NOT NULL,
    expires REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS idem_outcome_attempt ON idem_outcome (attempt);
"""
_LOOKUP_CHUNK = 500  # under SQLite's bound-parameter limit
_PRUNE_EVERY_ROWS = 5000


class SqliteStore:
    """An :class:`~snapworker.idempotency.store.IdempotencyStore` in ``<directory>/idempotency.sqlite3``."""

    def __init__(self, directory: Path, *, ttl_s: float, max_rows: int, timeout_s: float = 10.0) -> None:
        self.path = directory / FILE_NAME
        self._ttl_s = ttl_s
        self._max_rows = max_rows
        self._timeout_s = timeout_s
        self._thread: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._written_since_prune = _PRUNE_EVERY_ROWS  # prune once soon after opening

    # -- the event loop's side
    async def _run(self, fn: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        if self._thread is None:
            self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="snapworker-sqlite")
        try:
            async with asyncio.timeout(self._timeout_s):  # not wait_for: that makes a task per call
                return await loop.run_in_executor(self._thread, fn)
        except (sqlite3.Error, OSError) as exc:
            self._conn = None if isinstance(exc, sqlite3.DatabaseError) else self._conn
            raise StoreUnavailable(f"SQLite store {self.path}: {exc}") from exc
        except TimeoutError as exc:
            raise StoreUnavailable(f"SQLite store {self.path}: no answer in {self._timeout_s:g} s") from exc

    async def lookup(self, keys: Sequence[str]) -> dict[str, list[Row]]:
        return await self._run(lambda: self._lookup(keys))

    async def record_intent(self, rows: Sequence[Row]) -> None:
        await self._run(lambda: self._insert(rows))

    async def record_outcome(self, rows: Sequence[Row]) -> None:
        await self._run(lambda: self._insert(rows))

    async def close(self) -> None:
        def shut() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        thread, self._thread = self._thread, None
        if thread is not None:
            await asyncio.get_running_loop().run_in_executor(thread, shut)
            thread.shutdown(wait=True)

    # -- the store thread's side
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=self._timeout_s, isolation_level=None, check_same_thread=False)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.executescript(_SCHEMA)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _lookup(self, keys: Sequence[str]) -> dict[str, list[Row]]:
        db = self._db()
        now = time.time()
        found: dict[str, list[Row]] = {}
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), _LOOKUP_CHUNK):
            chunk = unique[start : start + _LOOKUP_CHUNK]
            marks = ",".join("?" * len(chunk))
            cursor = db.execute(
                f"SELECT key, fingerprint, kind, attempt, body, at FROM idem WHERE key IN ({marks}) AND expires > ? "
                "ORDER BY rowid",
                (*chunk, now),
            )
            for key, fp, kind, attempt, body, at in cursor:
                found.setdefault(key, []).append(Row(key, fp, kind, attempt, body, at))
        attempts = list({r.attempt for rows in found.values() for r in rows if r.kind == INTENT})
        for start in range(0, len(attempts), _LOOKUP_CHUNK):
            chunk = attempts[start : start + _LOOKUP_CHUNK]
            marks = ",".join("?" * len(chunk))
            cursor = db.execute(
                f"SELECT key, fingerprint, attempt, body, at FROM idem_outcome WHERE attempt IN ({marks}) "
                "AND expires > ? ORDER BY rowid",
                (*chunk, now),
            )
            for key, fp, attempt, body, at in cursor:
                if key in found:
                    found[key].append(Row(key, fp, OUTCOME, attempt, body, at))
        for rows in found.values():
            rows.sort(key=_oldest_first)
        return found

    def _insert(self, rows: Sequence[Row]) -> None:
        if not rows:
            return
        db = self._db()
        expires = time.time() + self._ttl_s
        intents = [(*r, expires) for r in rows if r.kind == INTENT]
        outcomes = [(r.key, r.fingerprint, r.attempt, r.body, r.at, expires) for r in rows if r.kind == OUTCOME]
        db.execute("BEGIN IMMEDIATE")
        try:
            if intents:
                db.executemany(
                    "INSERT INTO idem (key, fingerprint, kind, attempt, body, at, expires) VALUES (?,?,?,?,?,?,?)",
                    intents,
                )
            if outcomes:
                db.executemany(
                    "INSERT INTO idem_outcome (key, fingerprint, attempt, body, at, expires) VALUES (?,?,?,?,?,?)",
                    outcomes,
                )
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        self._written_since_prune += len(rows)
        if self._written_since_prune >= _PRUNE_EVERY_ROWS:
            self._written_since_prune = 0
            self._prune(db)

    def _prune(self, db: sqlite3.Connection) -> None:
        """Expired rows out; then, past max_rows (per table), the oldest (rowids grow with time)."""
        for table in ("idem", "idem_outcome"):
            # Rows expire in about rowid order (one TTL): look only at the oldest, never scan the table.
            db.execute(
                f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} ORDER BY rowid LIMIT ?) "
                "AND expires <= ?",
                (4 * _PRUNE_EVERY_ROWS, time.time()),
            )
            low, high = db.execute(f"SELECT min(rowid), max(rowid) FROM {table}").fetchone()
            if low is not None and high - low + 1 > self._max_rows:
                db.execute(f"DELETE FROM {table} WHERE rowid <= ?", (high - self._max_rows,))


def _oldest_first(row: Row) -> tuple[float, int]:
    return (row.at, row.kind)

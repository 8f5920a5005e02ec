"""The embedded idempotency store: one SQLite file under STATE_DIR, used from one thread of its own.

- **Never blocks the event loop**: every statement runs on a single dedicated thread (the stdlib ``sqlite3``
  module; one thread also serialises the writes, so no connection pool or aiosqlite is needed). The loop only
  awaits a future.
- **Durable across a crash of the process**: WAL mode with ``synchronous=NORMAL``: a committed transaction
  survives ``kill -9`` (it is in the WAL file); only a power loss may drop the last ones.
- **Batched**: ``record_intent`` / ``record_outcome`` write all their rows in one transaction (one per API call,
  not one per request), and the writes of calls that end or start together share one (a group commit,
  :mod:`.group_commit`); ``lookup`` reads any number of keys in one statement per 500 keys (and the calls they
  name in one or two more).
- **Cheap to write**: a call's rows of one kind are **one** row of ``idem_call`` (every request's key,
  fingerprint and body in one JSON array, encoded on this thread, not the event loop's); the only per-request
  work is one entry of ``idem_key``: a 64-bit hash of the key -> the call, in a ``WITHOUT ROWID`` table (an
  integer index entry: a third of what a text key costs to place in the B-tree). Outcomes get no index entry:
  they are found through the intent of the same key and attempt (the store's contract), by ``idem_call``'s
  attempt index. Checkpoints come every 4,000 pages, not SQLite's 1,000.
- **Ordered by the store**: a row's place is its call's ``id`` (INTEGER PRIMARY KEY: a new call's is above every
  id in the table), then its place in the call's array; never a clock. An attempt's intents go in first.
- **Versioned**: ``PRAGMA user_version`` names the layout (:data:`SCHEMA_VERSION`). A **newer** file is refused,
  untouched (StoreUnavailable naming both versions: the worker holds its messages): versions sharing STATE_DIR
  never wipe each other's records. An older one (0: per-request rows, before layout 2) is emptied, not
  migrated: a request republished after such an upgrade whose only record was in it is sent again. Elements
  this version does not know are ignored; what it cannot read is an UNREADABLE row of its key.
- **Bounded**: calls older than IDEMPOTENCY_TTL_S are deleted, and beyond IDEMPOTENCY_MAX_RECORDS request entries
  the oldest calls go first; the pruning runs every few thousand rows written, in the same thread.
- Several worker processes may share the file (SQLite locks it; ``busy_timeout`` waits for the other writer).

``sqlite3.Error`` and ``OSError`` become :class:`~snapworker.errors.StoreUnavailable`; so does a statement that
takes longer than ``timeout_s`` (a stuck disk): the worker then holds its messages instead of guessing.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from hashlib import blake2b
from operator import attrgetter
from pathlib import Path
from typing import TypeVar

from snapworker.errors import StoreUnavailable
from snapworker.idempotency.group_commit import GroupCommit
from snapworker.idempotency.records import refuse_newer
from snapworker.idempotency.store import INTENT, OUTCOME, UNREADABLE, Row

__all__ = ["SqliteStore"]

T = TypeVar("T")

FILE_NAME = "idempotency.sqlite3"
#: The layout's version (``PRAGMA user_version``): a newer file is refused, an older one emptied (module docstring).
SCHEMA_VERSION = 2
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS idem_call (
    id INTEGER PRIMARY KEY, attempt TEXT NOT NULL, kind INTEGER NOT NULL, at REAL NOT NULL, expires REAL NOT NULL,
    upto INTEGER NOT NULL, body TEXT NOT NULL
)""",
    "CREATE INDEX IF NOT EXISTS idem_call_attempt ON idem_call (attempt)",
    "CREATE TABLE IF NOT EXISTS idem_key (h INTEGER NOT NULL, call INTEGER NOT NULL, PRIMARY KEY (h, call)) "
    "WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS idem_key_call ON idem_key (call)",
    """CREATE VIEW IF NOT EXISTS idem_write (attempt, kind, at, expires, n, body, hashes) AS
    SELECT attempt, kind, at, expires, 0, body, NULL FROM idem_call""",
    """CREATE TRIGGER IF NOT EXISTS idem_write_insert INSTEAD OF INSERT ON idem_write BEGIN
    INSERT INTO idem_call (attempt, kind, at, expires, upto, body) VALUES (
        NEW.attempt, NEW.kind, NEW.at, NEW.expires,
        coalesce((SELECT upto FROM idem_call ORDER BY id DESC LIMIT 1), 0) + NEW.n, NEW.body
    );
    INSERT OR IGNORE INTO idem_key (h, call)
        SELECT value, (SELECT max(id) FROM idem_call) FROM json_each(coalesce(NEW.hashes, '[]'));
END""",
)
_OLD_TABLES = ("idem", "idem_outcome", "idem_call", "idem_key")
_CHECKPOINT_PAGES = 4000  # about 16 MB of WAL between checkpoints (SQLite's default: 1000)
_WAL_LIMIT_BYTES = 64 << 20
_PRUNE_EVERY_ROWS = 5000
_GROUPS_PER_STATEMENT = 1000  # 7 parameters each: within SQLite's default limit of 32,766 per statement
_SEQ = attrgetter("seq")


def key_hash(key: str) -> int:
    """A key's 64-bit index entry (signed, as SQLite stores integers). Two keys may share one: the rows found
    through it are those of the calls it names, and each carries its key in full."""
    return int.from_bytes(blake2b(key.encode(), digest_size=8).digest(), "big", signed=True)


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
        # writes that arrive while one is on the thread share the next transaction (one hop and commit for many)
        self._writes: GroupCommit[Row] = GroupCommit(self._write)

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
        await self._writes.write(rows)

    async def record_outcome(self, rows: Sequence[Row]) -> None:
        await self._writes.write(rows)

    async def _write(self, rows: list[Row]) -> None:
        await self._run(lambda: self._insert(rows))

    async def close(self) -> None:
        await self._writes.wait_idle()

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
            where = f"SQLite store {self.path}"
            try:
                _refuse_newer(conn, where)  # before the pragmas below change anything of a newer version's file
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                # fewer checkpoints (each one writes the pages back and syncs); the WAL is cut back after each
                conn.execute(f"PRAGMA wal_autocheckpoint={_CHECKPOINT_PAGES}")
                conn.execute(f"PRAGMA journal_size_limit={_WAL_LIMIT_BYTES}")
                conn.execute("PRAGMA temp_store=MEMORY")
                _migrate(conn, where)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    # Every statement below is one sqlite3 C call: the thread lets the GIL go while SQLite works and must win it
    # back after, which takes up to the switch interval (5 ms) while the event loop is busy. A statement per row
    # (executemany, or iterating a cursor) would pay that per row; one statement pays it once per write.
    def _lookup(self, keys: Sequence[str]) -> dict[str, list[Row]]:
        db = self._db()
        now = time.time()
        asked = set(keys)
        hashes = "[" + ",".join([str(key_hash(key)) for key in asked]) + "]"
        (calls,) = db.execute(
            "SELECT json_group_array(DISTINCT call) FROM idem_key WHERE h IN (SELECT value FROM json_each(?))",
            (hashes,),
        ).fetchone()
        if calls == "[]":
            return {}
        found: dict[str, list[Row]] = {}
        attempts: dict[str, set[str]] = {}  # attempt -> the keys found announced under it
        for call, attempt, kind, body in self._calls(db, "id", calls, now):
            for row in self._rows(db, call, attempt, kind, body, asked):
                found.setdefault(row.key, []).append(row)
                attempts.setdefault(attempt, set()).add(row.key)
        if attempts:
            for call, attempt, kind, body in self._calls(db, "attempt", json.dumps(list(attempts)), now, OUTCOME):
                for row in self._rows(db, call, attempt, kind, body, attempts.get(attempt, ())):
                    found[row.key].append(row)
        for rows in found.values():  # intents' calls and outcomes' calls, each in id order: merged (a stable sort)
            rows.sort(key=_SEQ)
        return found

    @staticmethod
    def _calls(
        db: sqlite3.Connection, column: str, values: str, now: float, kind: int | None = None
    ) -> list[tuple[int, str, int, str]]:
        """The unexpired calls whose ``column`` is in the JSON array ``values``, in one row (one C call)."""
        only = "" if kind is None else f" AND kind = {int(kind)}"
        (found,) = db.execute(
            "SELECT json_group_array(json_array(id, attempt, kind, body)) FROM "
            f"(SELECT id, attempt, kind, body FROM idem_call WHERE {column} IN (SELECT value FROM json_each(?)) "
            f"AND expires > ?{only} ORDER BY id)",
            (values, now),
        ).fetchone()
        return [tuple(call) for call in json.loads(found)]

    @staticmethod
    def _rows(
        db: sqlite3.Connection, call: int, attempt: str, kind: int, body: str, keys: Collection[str]
    ) -> list[Row]:
        """The rows of ``keys`` in a call's array (``[key, fingerprint, body, at, ...]`` per request), in its order;
        UNREADABLE rows for what cannot be read: of its key, or of each of ``keys`` the call may hold."""
        rows = []
        try:
            entries = json.loads(body)
            if type(entries) is not list:
                raise TypeError("a call's body is not an array")
            for entry in entries:
                key = entry[0]
                if key in keys:
                    try:
                        rows.append(Row(key, entry[1], kind, attempt, entry[2], float(entry[3]), call))
                    except (LookupError, TypeError, ValueError):
                        rows.append(Row(key, "", UNREADABLE, attempt, "", 0.0, call))
        except (LookupError, TypeError, ValueError):
            # Rare (a damaged file), so one more statement is fine: an intent's call may hold the keys its index
            # entries name; an outcome's, any key announced under its attempt (``keys``).
            indexed = {h for (h,) in db.execute("SELECT h FROM idem_key WHERE call = ?", (call,))}
            done = {row.key for row in rows}
            rows += [
                Row(key, "", UNREADABLE, attempt, "", 0.0, call)
                for key in keys
                if key not in done and (kind != INTENT or key_hash(key) in indexed)
            ]
        return rows

    def _insert(self, rows: Sequence[Row]) -> None:
        if not rows:
            return
        db = self._db()
        expires = time.time() + self._ttl_s
        # One row per call and kind (each request's key, fingerprint, body and time in one JSON array), and one
        # index entry (key hash -> call) per request announced: the only per-request work SQLite does. All of
        # it in one statement (the view's trigger), atomic as any statement is.
        groups: dict[tuple[str, int], list[Row]] = {}
        first: dict[str, int] = {}  # attempt -> its place in ``rows``
        for r in rows:
            group = groups.get((r.attempt, r.kind))
            if group is None:
                group = groups[r.attempt, r.kind] = []
                first.setdefault(r.attempt, len(first))
            group.append(r)
        values: list[object] = []
        # calls in the order of their attempts in ``rows``, and an attempt's intents before its outcomes
        for (attempt, kind), group in sorted(groups.items(), key=lambda g: (first[g[0][0]], g[0][1])):
            body = json.dumps([(r.key, r.fingerprint, r.body, r.at) for r in group], separators=(",", ":"))
            at = max(r.at for r in group)
            if kind == INTENT:
                hashes: str | None = "[" + ",".join([str(key_hash(r.key)) for r in group]) + "]"
                values += (attempt, kind, at, expires, len(group), body, hashes)
            else:
                values += (attempt, kind, at, expires, 0, body, None)
        # One statement, unless a group commit gathered more calls than SQLite binds parameters in one
        # (32,766): then one transaction of several.
        chunks = [values[i : i + _GROUPS_PER_STATEMENT * 7] for i in range(0, len(values), _GROUPS_PER_STATEMENT * 7)]
        if len(chunks) > 1:
            db.execute("BEGIN")
        try:
            for chunk in chunks:
                marks = ",".join(["(?,?,?,?,?,?,?)"] * (len(chunk) // 7))
                db.execute(
                    f"INSERT INTO idem_write (attempt, kind, at, expires, n, body, hashes) VALUES {marks}", chunk
                )
            if len(chunks) > 1:
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
        """Expired calls out; then, past max_rows request entries, the oldest calls (ids grow with time); and
        the index entries of the calls gone."""
        # Calls expire in about id order (one TTL): look only at the oldest, never scan the table.
        db.execute(
            "DELETE FROM idem_call WHERE id IN (SELECT id FROM idem_call ORDER BY id LIMIT ?) AND expires <= ?",
            (_PRUNE_EVERY_ROWS, time.time()),
        )
        db.execute(
            "DELETE FROM idem_call WHERE upto <= (SELECT upto FROM idem_call ORDER BY id DESC LIMIT 1) - ?",
            (self._max_rows,),
        )
        oldest = db.execute("SELECT min(id) FROM idem_call").fetchone()[0]
        db.execute("DELETE FROM idem_key WHERE call < ?", (oldest if oldest is not None else 1 << 62,))


def _refuse_newer(conn: sqlite3.Connection, where: str) -> int:
    (found,) = conn.execute("PRAGMA user_version").fetchone()
    refuse_newer(found, SCHEMA_VERSION, where, "a STATE_DIR")
    return int(found)


def _migrate(conn: sqlite3.Connection, where: str) -> None:
    """Create what is missing; a file of an older layout is emptied first, one of a newer refused (checked again
    under the write lock: another process may have changed it meanwhile)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        if _refuse_newer(conn, where) < SCHEMA_VERSION:
            conn.execute("DROP VIEW IF EXISTS idem_write")  # its trigger goes with it
            for table in _OLD_TABLES:
                conn.execute(f"DROP TABLE IF EXISTS {table}")
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        for statement in _SCHEMA:  # all IF NOT EXISTS
            conn.execute(statement)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise

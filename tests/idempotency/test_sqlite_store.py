"""The SQLite store: rows survive a reopen, lookups are per key, size and age are bounded, errors are ours."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import pytest

from snapworker.errors import StoreUnavailable
from snapworker.idempotency import sqlite_store
from snapworker.idempotency.sqlite_store import SqliteStore
from snapworker.idempotency.store import INTENT, OUTCOME, UNREADABLE, Row


def row(key: str, kind: int = INTENT, at: float = 1.0) -> Row:
    return Row(key, "fp", kind, "a1", '["d1"]', at)


async def test_rows_written_are_found_by_key_after_the_store_is_reopened(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path, ttl_s=60, max_rows=1000)
    await store.record_intent([row("k1"), row("k2")])
    await store.record_outcome([row("k1", OUTCOME, 2.0)])
    await store.close()
    reopened = SqliteStore(tmp_path, ttl_s=60, max_rows=1000)
    found = await reopened.lookup(["k1", "k3"])
    await reopened.close()
    assert list(found) == ["k1"]
    assert [r.kind for r in found["k1"]] == [INTENT, OUTCOME]


async def test_the_file_is_in_wal_mode(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path, ttl_s=60, max_rows=1000)
    await store.record_intent([row("k1")])
    await store.close()
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_expired_rows_are_not_found(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path, ttl_s=0.001, max_rows=1000)
    await store.record_intent([row("k1")])
    await asyncio.sleep(0.01)
    found = await store.lookup(["k1"])
    await store.close()
    assert found == {}


async def test_past_max_rows_the_oldest_calls_go(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path, ttl_s=60, max_rows=1000)
    for call in range(60):  # 6,000 request entries in calls of 100: more than one prune period
        await store.record_intent(
            [Row(f"k{call * 100 + i}", "fp", INTENT, f"a{call}", '["d1"]', 1.0) for i in range(100)]
        )
    oldest, newest = await store.lookup(["k0"]), await store.lookup(["k5999"])
    await store.close()
    with sqlite3.connect(store.path) as conn:
        entries = conn.execute("SELECT count(*) FROM idem_key").fetchone()[0]
        calls = conn.execute("SELECT count(*) FROM idem_call").fetchone()[0]
    assert oldest == {}
    assert list(newest) == ["k5999"]
    # whole calls go (here of 100 requests each), at a prune, every _PRUNE_EVERY_ROWS rows written
    assert 1000 <= entries <= 1000 + sqlite_store._PRUNE_EVERY_ROWS
    assert calls == entries // 100


async def test_a_file_of_the_previous_layout_is_emptied_and_used(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "idempotency.sqlite3") as conn:
        conn.execute(
            "CREATE TABLE idem (key TEXT, fingerprint TEXT, kind INTEGER, attempt TEXT, body TEXT, at REAL, "
            "expires REAL)"
        )
        conn.execute("INSERT INTO idem VALUES ('k1', 'fp', 0, 'a0', '[]', 1.0, 1e12)")
    store = SqliteStore(tmp_path, ttl_s=60, max_rows=1000)
    assert await store.lookup(["k1"]) == {}
    await store.record_intent([row("k2")])
    await store.close()
    reopened = SqliteStore(tmp_path, ttl_s=60, max_rows=1000)
    found = await reopened.lookup(["k2"])
    await reopened.close()
    assert list(found) == ["k2"]
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'idem'").fetchone()[0] == 0


async def test_keys_that_share_an_index_entry_keep_their_own_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_store, "key_hash", lambda key: 7)  # every key collides
    store = SqliteStore(tmp_path, ttl_s=60, max_rows=1000)
    await store.record_intent([Row("k1", "fp", INTENT, "a1", '["d1"]', 1.0)])
    await store.record_intent([Row("k2", "fp", INTENT, "a2", '["d2"]', 1.0)])
    await store.record_outcome([Row("k2", "fp", OUTCOME, "a2", "[2]", 2.0)])
    found = await store.lookup(["k1", "k3"])
    await store.close()
    assert list(found) == ["k1"]
    assert [(r.kind, r.body) for r in found["k1"]] == [(INTENT, '["d1"]')]


async def test_a_store_that_cannot_open_raises_store_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("not a directory")
    store = SqliteStore(blocker, ttl_s=60, max_rows=1000)
    with pytest.raises(StoreUnavailable, match="SQLite store"):
        await store.lookup(["k1"])
    await store.close()


async def test_outcomes_are_found_through_the_intent_of_their_key_and_attempt(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path, ttl_s=60, max_rows=1000)
    await store.record_intent([Row("k1", "fp", INTENT, "a1", '["d1"]', 1.0), Row("k2", "fp", INTENT, "a1", "[]", 1.0)])
    # one call's write: k1's outcome, and k3 (joined while the call was in flight) announced with its outcome
    await store.record_outcome(
        [
            Row("k1", "fp", OUTCOME, "a1", "[1]", 2.0),
            Row("k3", "fp", INTENT, "a1", '["d3"]', 2.0),
            Row("k3", "fp", OUTCOME, "a1", "[3]", 2.0),
        ]
    )
    found = await store.lookup(["k1", "k2", "k3"])
    await store.close()
    assert [(r.kind, r.body) for r in found["k1"]] == [(INTENT, '["d1"]'), (OUTCOME, "[1]")]
    assert [r.kind for r in found["k2"]] == [INTENT]  # another key's outcome of the same attempt is not k2's
    assert [(r.kind, r.body) for r in found["k3"]] == [(INTENT, '["d3"]'), (OUTCOME, "[3]")]


async def test_a_file_of_this_layout_missing_some_of_it_gets_it_back(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path, ttl_s=60, max_rows=1000)
    await store.record_intent([row("k1")])
    await store.close()
    with sqlite3.connect(store.path) as conn:
        conn.execute("DROP VIEW idem_write")
    reopened = SqliteStore(tmp_path, ttl_s=60, max_rows=1000)
    await reopened.record_intent([row("k2")])
    found = await reopened.lookup(["k1", "k2"])
    await reopened.close()
    assert sorted(found) == ["k1", "k2"]


async def test_writes_made_together_share_a_transaction_and_are_all_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SqliteStore(tmp_path, ttl_s=60, max_rows=10_000)
    inserts: list[int] = []
    insert = store._insert

    def counted(rows: Sequence[Row]) -> None:
        inserts.append(len(rows))
        insert(rows)

    monkeypatch.setattr(store, "_insert", counted)
    writes = [store.record_intent([Row(f"k{i}", "fp", INTENT, f"a{i}", '["d1"]', 1.0)]) for i in range(20)]
    await asyncio.gather(*writes)
    found = await store.lookup([f"k{i}" for i in range(20)])
    await store.close()
    assert sum(inserts) == 20
    assert len(inserts) <= 2  # the first write alone at most, the rest together
    assert sorted(found) == sorted(f"k{i}" for i in range(20))


async def test_more_calls_in_one_write_than_one_statement_binds_are_all_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_store, "_GROUPS_PER_STATEMENT", 3)
    store = SqliteStore(tmp_path, ttl_s=60, max_rows=10_000)
    await store.record_intent([Row(f"k{i}", "fp", INTENT, f"a{i}", '["d1"]', 1.0) for i in range(10)])
    found = await store.lookup([f"k{i}" for i in range(10)])
    await store.close()
    assert sorted(found) == sorted(f"k{i}" for i in range(10))


async def test_rows_come_back_in_the_order_written_whatever_their_times(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path, ttl_s=60, max_rows=1000)
    await store.record_intent([Row("k1", "fp", INTENT, "b", '["d1"]', 200.0)])  # a host whose clock runs ahead
    await store.record_outcome([Row("k1", "fp", OUTCOME, "b", "[]", 200.0)])
    await store.record_intent([Row("k1", "fp", INTENT, "a", '["d1"]', 100.0)])
    await store.record_outcome([Row("k1", "fp", OUTCOME, "a", "[]", 100.0)])
    found = await store.lookup(["k1"])
    await store.close()
    assert [(r.attempt, r.kind) for r in found["k1"]] == [("b", INTENT), ("b", OUTCOME), ("a", INTENT), ("a", OUTCOME)]


async def test_an_outcome_given_before_its_intent_in_one_write_comes_back_after_it(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path, ttl_s=60, max_rows=1000)
    await store.record_outcome([Row("k1", "fp", OUTCOME, "a", "[]", 1.0), Row("k1", "fp", INTENT, "a", "[]", 1.0)])
    found = await store.lookup(["k1"])
    await store.close()
    assert [r.kind for r in found["k1"]] == [INTENT, OUTCOME]


async def test_a_file_of_a_newer_schema_is_refused_and_kept(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path, ttl_s=60, max_rows=1000)
    await store.record_intent([row("k1")])
    await store.close()
    with sqlite3.connect(store.path) as conn:
        conn.execute(f"PRAGMA user_version={sqlite_store.SCHEMA_VERSION + 1}")
    newer = SqliteStore(tmp_path, ttl_s=60, max_rows=1000)
    with pytest.raises(StoreUnavailable, match=f"version {sqlite_store.SCHEMA_VERSION + 1}.*newer"):
        await newer.lookup(["k1"])
    await newer.close()
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == sqlite_store.SCHEMA_VERSION + 1
        assert conn.execute("SELECT count(*) FROM idem_call").fetchone()[0] == 1


async def test_a_call_that_cannot_be_read_is_doubtful_for_its_own_keys_alone(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path, ttl_s=60, max_rows=1000)
    await store.record_intent([row("k1"), row("k2")])
    await store.record_intent([Row("k3", "fp", INTENT, "a2", '["d3"]', 1.0)])
    with sqlite3.connect(store.path) as conn:
        conn.execute("UPDATE idem_call SET body = '[[not json' WHERE id = 1")
    found = await store.lookup(["k1", "k3"])
    await store.close()
    assert [r.kind for r in found["k1"]] == [UNREADABLE]
    assert [(r.kind, r.body) for r in found["k3"]] == [(INTENT, '["d3"]')]


async def test_a_request_entry_with_more_fields_than_this_version_knows_is_read(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path, ttl_s=60, max_rows=1000)
    await store.record_intent([row("k1")])
    with sqlite3.connect(store.path) as conn:  # a newer version's fifth field
        conn.execute("""UPDATE idem_call SET body = '[["k1","fp","[\\"d1\\"]",1.0,{"new":1}]]'""")
    found = await store.lookup(["k1"])
    await store.close()
    assert [(r.kind, r.body, r.at) for r in found["k1"]] == [(INTENT, '["d1"]', 1.0)]


async def test_a_request_entry_that_cannot_be_read_is_doubtful_for_its_key(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path, ttl_s=60, max_rows=1000)
    await store.record_intent([row("k1"), row("k2")])
    with sqlite3.connect(store.path) as conn:
        conn.execute("""UPDATE idem_call SET body = '[["k1","fp"],["k2","fp","[]",1.0]]'""")
    found = await store.lookup(["k1", "k2"])
    await store.close()
    assert [r.kind for r in found["k1"]] == [UNREADABLE]
    assert [r.kind for r in found["k2"]] == [INTENT]

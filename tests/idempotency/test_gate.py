"""Admission: a request under another worker's lease is held, not reconciled; an expired lease is reconciled; a
store that is down holds requests in memory; one request's failure is its own."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any

import pytest

from snapworker.amqp.session import Delivery
from snapworker.contract.intake import Accepted, read_request
from snapworker.contract.models import SnapshotResult
from snapworker.core import BatchingCore, MergeKey
from snapworker.domain.snapshots import Absent, Doubt, Reconciled
from snapworker.errors import StoreUnavailable
from snapworker.idempotency.gate import AdmissionGate
from snapworker.idempotency.health import StoreHealth
from snapworker.idempotency.journal import CallJournal
from snapworker.idempotency.store import INTENT, RequestState, Row, fingerprint, json_strings, state_of
from tests.guard_fakes import FakeSession

NOW = 1_800_000_000.0
LEASE_S = 40.0
DELAY_S = 5.0
HOLD_S = 0.02


class Store:
    """Answers lookups from ``rows`` (per key), after raising StoreUnavailable ``down`` times."""

    def __init__(self, rows: Mapping[str, list[Row]] | None = None, *, down: int = 0) -> None:
        self.rows = dict(rows or {})
        self.down = down
        self.lookups = 0

    async def lookup(self, keys: Sequence[str]) -> dict[str, list[Row]]:
        self.lookups += 1
        if self.down:
            self.down -= 1
            raise StoreUnavailable("down")
        return {k: self.rows[k] for k in keys if k in self.rows}

    async def record_intent(self, rows: Sequence[Row]) -> None:
        pass

    async def record_outcome(self, rows: Sequence[Row]) -> None:
        pass

    async def close(self) -> None:
        pass


class Reconciler:
    """Says every desktop asked about is absent; remembers what it was asked."""

    def __init__(self) -> None:
        self.asked: list[dict[str, Doubt]] = []

    async def check(self, key: MergeKey, doubts: Mapping[str, Doubt]) -> Reconciled:
        self.asked.append(dict(doubts))
        return Reconciled({d: Absent() for d in doubts})


class Harness:
    def __init__(self, store: Store) -> None:
        self.session = FakeSession()
        self.store = store
        self.submitted: list[tuple[Delivery, Accepted]] = []
        self.answered: list[tuple[Delivery, SnapshotResult]] = []
        self.failed: list[tuple[Delivery, str]] = []
        self.tasks: list[asyncio.Task[None]] = []
        health = StoreHealth("test")
        journal = CallJournal(store, BatchingCore(100, 0.25), health, hold_s=HOLD_S)
        self.reconciler = Reconciler()
        self.gate = AdmissionGate(
            store,
            journal,
            health,
            namespace="q",
            hold_s=HOLD_S,
            reconcile_delay_s=DELAY_S,
            lease_s=LEASE_S,
            submit=lambda d, a: self.submitted.append((d, a)),
            answer=lambda d, r: self.answered.append((d, r)),
            spawn=self.spawn,
            fail=lambda ds, exc, doing: self.failed.extend((d, doing) for d in ds),
            wall_clock=lambda: NOW,
        )
        self.gate.reconciler = self.reconciler  # type: ignore[assignment]

    def spawn(self, coro: Coroutine[Any, Any, None], deliveries: Sequence[Delivery]) -> None:
        self.tasks.append(asyncio.ensure_future(coro))

    def admit(self, request_id: str, *desktops: str) -> Delivery:
        body = json.dumps({"project_id": "p1", "desktop_ids": list(desktops), "request_id": request_id}).encode()
        delivery = self.session.delivery(body)
        read = read_request(delivery.envelope, max_bytes=100_000, now=None)  # type: ignore[arg-type]
        assert isinstance(read, Accepted)
        assert self.gate.admit(delivery, read)
        return delivery

    async def run_for(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        await asyncio.gather(*self.tasks)


def intent(request_id: str, desktops: Sequence[str], at: float) -> Row:
    body = json.dumps({"project_id": "p1", "desktop_ids": list(desktops), "request_id": request_id}).encode()
    read = read_request(FakeSession().delivery(body).envelope, max_bytes=100_000, now=None)  # type: ignore[arg-type]
    assert isinstance(read, Accepted)
    return Row(f"q\x1f{request_id}", fingerprint(read.request), INTENT, "a1", json_strings(desktops), at)


async def test_a_request_under_another_workers_unexpired_lease_is_held_and_not_reconciled() -> None:
    h = Harness(Store({"q\x1fr1": [intent("r1", ["d1"], at=NOW - 1.0)]}))
    h.admit("r1", "d1")
    await h.run_for(10 * HOLD_S)
    assert h.reconciler.asked == []
    assert h.submitted == []
    assert h.answered == []
    assert h.session.settled == []
    assert h.store.lookups >= 3  # looked up again while held: the owner's outcome may come meanwhile


async def test_a_request_whose_lease_has_passed_is_reconciled_then_sent() -> None:
    h = Harness(Store({"q\x1fr1": [intent("r1", ["d1"], at=NOW - LEASE_S - DELAY_S - 1.0)]}))
    h.admit("r1", "d1")
    await h.run_for(5 * HOLD_S)
    assert [set(asked) for asked in h.reconciler.asked] == [{"d1"}]
    assert [accepted.request.desktop_ids for _, accepted in h.submitted] == [("d1",)]


async def test_while_the_store_is_down_a_request_is_held_in_memory_and_never_requeued() -> None:
    h = Harness(Store(down=3))
    delivery = h.admit("r1", "d1")
    await h.run_for(10 * HOLD_S)
    assert h.session.settled == []  # a requeue would spend a quorum queue's delivery limit
    assert [d for d, _ in h.submitted] == [delivery]


async def test_a_request_whose_decision_raises_fails_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_for_r1(rows: Sequence[Row], fingerprint_: str) -> RequestState:
        if rows and rows[0].key == "q\x1fr1":
            raise RuntimeError("a bug deciding r1")
        return state_of(rows, fingerprint_)

    monkeypatch.setattr("snapworker.idempotency.gate.state_of", broken_for_r1)
    old = NOW - LEASE_S - DELAY_S - 1.0
    h = Harness(Store({"q\x1fr1": [intent("r1", ["d1"], at=old)], "q\x1fr2": [intent("r2", ["d2"], at=old)]}))
    bad = h.admit("r1", "d1")
    good = h.admit("r2", "d2")
    await h.run_for(5 * HOLD_S)
    assert [d for d, _ in h.submitted] == [good]
    assert h.failed == [(bad, "deciding request r1 from its record")]


async def test_an_unreadable_record_is_reconciled_for_its_key_alone() -> None:
    old = NOW - LEASE_S - DELAY_S - 1.0
    unreadable = intent("r1", ["d1"], at=old)._replace(body="not json")
    h = Harness(Store({"q\x1fr1": [unreadable]}))
    h.admit("r1", "d1")
    h.admit("r2", "d2")
    await h.run_for(5 * HOLD_S)
    [asked] = h.reconciler.asked
    assert set(asked) == {"d1"}
    assert asked["d1"].markers == frozenset()  # its attempt's marker is unknown: only name and time can tell
    assert sorted(a.request.desktop_ids for _, a in h.submitted) == [("d1",), ("d2",)]  # d1 found absent


async def test_a_renewed_intent_holds_the_request_from_its_last_renewal() -> None:
    first = intent("r1", ["d1"], at=NOW - 100.0)
    renewal = first._replace(at=NOW - 1.0)
    h = Harness(Store({"q\x1fr1": [first, renewal]}))
    h.admit("r1", "d1")
    await h.run_for(5 * HOLD_S)
    assert h.reconciler.asked == []
    assert h.submitted == []


async def test_a_lapsed_renewed_intent_is_reconciled_from_its_first_write() -> None:
    first = intent("r1", ["d1"], at=NOW - 300.0)
    renewal = first._replace(at=NOW - LEASE_S - DELAY_S - 1.0)
    h = Harness(Store({"q\x1fr1": [first, renewal]}))
    h.admit("r1", "d1")
    await h.run_for(5 * HOLD_S)
    [asked] = h.reconciler.asked
    assert asked["d1"].since == NOW - 300.0  # a snapshot its first try made still counts

"""The call journal: a batch whose requests nobody holds any more is not sent (and is recorded so); every
sending, however it ends, leaves nothing counted in flight; an intent is a lease, renewed before a late try."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

import pytest

from snapworker.cloud.lease import CallLease
from snapworker.cloud.limiter import Grant, RateLimiter
from snapworker.contract.models import ResultError
from snapworker.core import Batch, BatchingCore, MergeKey
from snapworker.domain.jobs import CreatedJob
from snapworker.errors import StoreUnavailable
from snapworker.idempotency.health import StoreHealth
from snapworker.idempotency.journal import RENEW_AFTER_S, TRY_WINDOW_S, CallJournal, Keyed
from snapworker.idempotency.store import OUTCOME, Row
from snapworker.runtime.calls import BatchCaller
from tests.core.helpers import request


class RecordingStore:
    """Keeps every intent written; ``during_intent`` runs while the first intent is being written."""

    def __init__(self) -> None:
        self.intents: list[Row] = []
        self.outcomes: list[Row] = []
        self.during_intent: list[object] = []
        self.down = False

    async def lookup(self, keys: Sequence[str]) -> dict[str, list[Row]]:
        return {}

    async def record_intent(self, rows: Sequence[Row]) -> None:
        if self.down:
            raise StoreUnavailable("down")
        self.intents += rows
        for action in self.during_intent:
            action()  # type: ignore[operator]
        await asyncio.sleep(0)

    async def record_outcome(self, rows: Sequence[Row]) -> None:
        self.outcomes += [row for row in rows if row.kind == OUTCOME]

    async def close(self) -> None:
        pass


def cut(core: BatchingCore) -> Batch:
    core.submit("t1", request("p1", "d1"), "r1", None, 0.0)
    core.close()
    batch = core.take(1.0)
    assert batch is not None
    return batch


def journal(core: BatchingCore, store: RecordingStore) -> CallJournal:
    made = CallJournal(store, core, StoreHealth("test"), hold_s=0.1)
    made.register("t1", Keyed("q\x1fr1", "fp"))
    return made


async def test_a_batch_whose_requests_were_given_back_is_not_sent_and_no_intent_is_written() -> None:
    core, store = BatchingCore(100, 0.25), RecordingStore()
    batch = cut(core)
    core.drop(["t1"])  # the broker session was lost: the request is redelivered elsewhere
    refused = await journal(core, store).before_call(batch, None, "a1")
    assert refused is not None
    [entry] = refused
    assert isinstance(entry, ResultError)
    assert (entry.error_code, entry.desktop_ids, entry.maybe_created) == ("SNAPWORKER.NOT_SENT", ("d1",), False)
    assert store.intents == []


async def test_requests_given_back_while_the_intent_was_written_are_not_sent_either() -> None:
    core, store = BatchingCore(100, 0.25), RecordingStore()
    batch = cut(core)
    store.during_intent.append(lambda: core.drop(["t1"]))
    refused = await journal(core, store).before_call(batch, None, "a1")
    assert refused is not None
    assert len(store.intents) == 1


async def test_a_batch_given_back_after_its_intent_was_written_is_recorded_as_not_sent() -> None:
    # recorded: a redelivery then neither waits for the intent's lease nor lists snapshots for it
    core, store = BatchingCore(100, 0.25), RecordingStore()
    batch = cut(core)
    store.during_intent.append(lambda: core.drop(["t1"]))
    made = journal(core, store)
    await made.before_call(batch, None, "a1")
    [row] = store.outcomes
    assert (row.key, row.attempt) == ("q\x1fr1", "a1")
    assert _recorded(row) == {"d1": ("SNAPWORKER.NOT_SENT", False)}
    assert made.in_flight("q\x1fr1") is None


async def test_a_batch_someone_waits_for_is_announced_and_sent() -> None:
    core, store = BatchingCore(100, 0.25), RecordingStore()
    batch = cut(core)
    assert await journal(core, store).before_call(batch, None, "a1") is None
    assert [(row.key, row.attempt) for row in store.intents] == [("q\x1fr1", "a1")]


def _recorded(row: Row) -> dict[str, tuple[str, bool]]:
    """An outcome row's errors: desktop -> (error_code, maybe_created)."""
    found = {}
    for body, desktops in json.loads(row.body):
        kind, fields = json.loads(body)
        assert kind == "error"
        found.update(dict.fromkeys(desktops, (fields["error_code"], fields["maybe_created"])))
    return found


class BrokenApi:
    """An API client that raises what no adapter translated (aiohttp's "Session is closed", say), or hangs."""

    def __init__(self, *, hang: bool = False) -> None:
        self.limiter = RateLimiter(rate=1000.0, burst=1000, max_concurrency=100)
        self.hang = hang

    async def batch_create(
        self,
        key: MergeKey,
        desktop_ids: Sequence[str],
        *,
        grant: Grant | None = None,
        deadline: float | None = None,
        marker: str | None = None,
        max_tries: int | None = None,
        lease: CallLease | None = None,
    ) -> CreatedJob:
        if self.hang:
            await asyncio.Event().wait()
        raise RuntimeError("Session is closed")


async def test_a_sending_that_raises_unexpectedly_leaves_nothing_in_flight() -> None:
    core, store = BatchingCore(100, 0.25), RecordingStore()
    batch = cut(core)
    made = journal(core, store)
    await BatchCaller(BrokenApi(), max_extra_calls=0, journal=made).send(batch)
    assert made.in_flight("q\x1fr1") is None  # a redelivery of the key would otherwise wait for ever


async def test_a_sending_that_raises_unexpectedly_is_recorded_as_maybe_created() -> None:
    core, store = BatchingCore(100, 0.25), RecordingStore()
    batch = cut(core)
    outcome = await BatchCaller(BrokenApi(), max_extra_calls=0, journal=journal(core, store)).send(batch)
    [entry] = outcome
    assert isinstance(entry, ResultError)
    assert (entry.error_code, entry.maybe_created, entry.retryable) == ("SNAPWORKER.INTERNAL", True, True)
    [row] = store.outcomes
    assert _recorded(row) == {"d1": ("SNAPWORKER.INTERNAL", True)}


async def test_a_cancelled_sending_leaves_nothing_in_flight() -> None:
    core, store = BatchingCore(100, 0.25), RecordingStore()
    batch = cut(core)
    made = journal(core, store)
    sending = asyncio.create_task(BatchCaller(BrokenApi(hang=True), max_extra_calls=0, journal=made).send(batch))
    for _ in range(100):
        if made.in_flight("q\x1fr1") is not None:
            break
        await asyncio.sleep(0)
    assert made.in_flight("q\x1fr1") is not None
    sending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sending
    assert made.in_flight("q\x1fr1") is None


async def test_a_fresh_intent_is_not_written_again_before_a_try() -> None:
    core, store = BatchingCore(100, 0.25), RecordingStore()
    batch = cut(core)
    made = journal(core, store)
    await made.before_call(batch, None, "a1")
    assert await made.renew(batch)
    assert len(store.intents) == 1


def _age(made: CallJournal, batch: Batch, seconds: float) -> None:
    made._attempts[batch.id].written_at -= seconds  # as if the call had waited that long for the limiter


async def test_an_intent_older_than_renew_after_is_written_again_before_a_try() -> None:
    core, store = BatchingCore(100, 0.25), RecordingStore()
    batch = cut(core)
    made = journal(core, store)
    await made.before_call(batch, None, "a1")
    _age(made, batch, RENEW_AFTER_S + 0.1)
    assert await made.renew(batch)
    assert [(row.key, row.attempt) for row in store.intents] == [("q\x1fr1", "a1")] * 2
    assert store.intents[1].at >= store.intents[0].at


async def test_a_try_goes_under_an_unrenewed_intent_still_inside_its_window() -> None:
    core, store = BatchingCore(100, 0.25), RecordingStore()
    batch = cut(core)
    made = journal(core, store)
    await made.before_call(batch, None, "a1")
    store.down = True
    _age(made, batch, RENEW_AFTER_S + 0.1)
    assert await made.renew(batch)


async def test_no_try_goes_once_the_intent_could_not_be_renewed_for_the_whole_window() -> None:
    core, store = BatchingCore(100, 0.25), RecordingStore()
    batch = cut(core)
    made = journal(core, store)
    await made.before_call(batch, None, "a1")
    store.down = True
    _age(made, batch, TRY_WINDOW_S + 0.1)
    assert not await made.renew(batch)

"""The call journal's guard: a batch whose requests nobody holds any more is not sent."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from snapworker.contract.models import ResultError
from snapworker.core import Batch, BatchingCore
from snapworker.idempotency.health import StoreHealth
from snapworker.idempotency.journal import CallJournal, Keyed
from snapworker.idempotency.store import Row
from tests.core.helpers import request


class RecordingStore:
    """Keeps every intent written; ``during_intent`` runs while the first intent is being written."""

    def __init__(self) -> None:
        self.intents: list[Row] = []
        self.during_intent: list[object] = []

    async def lookup(self, keys: Sequence[str]) -> dict[str, list[Row]]:
        return {}

    async def record_intent(self, rows: Sequence[Row]) -> None:
        self.intents += rows
        for action in self.during_intent:
            action()  # type: ignore[operator]
        await asyncio.sleep(0)

    async def record_outcome(self, rows: Sequence[Row]) -> None:
        pass

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
    assert len(store.intents) == 1  # an intent without a call: a redelivery lists the snapshots and finds none


async def test_a_batch_someone_waits_for_is_announced_and_sent() -> None:
    core, store = BatchingCore(100, 0.25), RecordingStore()
    batch = cut(core)
    assert await journal(core, store).before_call(batch, None, "a1") is None
    assert [(row.key, row.attempt) for row in store.intents] == [("q\x1fr1", "a1")]

"""A look lists the snapshots of the desktops answered from reconciliation (they have no job to read) beside its job
reads; a listing that fails leaves them waiting, with a WARNING."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import cast

import pytest

from snapworker.cloud.jobs import JobReader
from snapworker.cloud.snapshots import SharedListings
from snapworker.domain.jobs import JobView
from snapworker.settings import Settings
from snapworker.tracking.loop import Tracker
from snapworker.tracking.state import TrackingUnit, start_unit
from tests.idempotency.test_reconcile import MINE, FakeSource
from tests.tracking.test_state import result, view

SETTINGS = Settings(api_url="http://127.0.0.1:9", auth_token="t", completion_queue="c")


class _Reader:
    """Jobs all ended well; snapshots listed by ``source``."""

    reads = 0

    def __init__(self, source: FakeSource) -> None:
        self.source = source
        self.listings = SharedListings(source)

    async def read(self, project_id: str, job_id: str) -> JobView:
        self.reads += 1
        return view(job_id, "SUCCESS", {"d2": "SUCCESS"})


async def _look(source: FakeSource) -> tuple[TrackingUnit, _Reader]:
    reader = _Reader(source)
    unit = start_unit([(result("r1", ("reconciled:s-d1", ("d1",)), ("j2", ("d2",))), None)], datetime.now(UTC))
    assert unit is not None
    await Tracker(SETTINGS, cast(JobReader, reader))._look(unit)
    return unit, reader


async def test_a_look_reads_the_jobs_and_lists_the_reconciled_desktops_snapshots() -> None:
    unit, reader = await _look(FakeSource({"d1": MINE}))
    [(completion, _)] = unit.take_completions(datetime.now(UTC))
    assert completion.status == "succeeded"
    assert {d.desktop_id: d.job_id for d in completion.desktops} == {"d1": "reconciled:s-d1", "d2": "j2"}
    assert (reader.reads, reader.source.listings) == (1, [("d1",)])


async def test_a_listing_that_fails_leaves_the_desktop_waiting_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        unit, _ = await _look(FakeSource(failing=frozenset({"d1"})))
    assert unit.take_completions(datetime.now(UTC)) == []
    assert unit.snapshots_to_read() == {"p1": ["d1"]}
    assert any("listing the snapshots of project p1 failed" in r.getMessage() for r in caplog.records)

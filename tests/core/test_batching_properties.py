"""Invariants of the batching core, checked on random workloads with hypothesis."""

from __future__ import annotations

import math
from collections import defaultdict

from hypothesis import given, settings
from hypothesis import strategies as st

from snapworker.core import Batch, BatchingCore, Finished, MergeKey
from snapworker.models import JobEntry, ResultError, SnapshotRequest

LINGER = 0.25

desktop = st.sampled_from([f"d{i}" for i in range(40)])
requests = st.builds(
    lambda project, desktops, disk: SnapshotRequest(project_id=project, desktop_ids=tuple(desktops), disk_type=disk),
    st.sampled_from(["p1", "p2", "p3"]),
    st.lists(desktop, min_size=1, max_size=60),
    st.sampled_from([None, "ALL"]),
)
# each step: a request arriving after a pause (seconds)
workloads = st.lists(st.tuples(requests, st.floats(min_value=0, max_value=0.2)), min_size=1, max_size=40)


def _outcome(batch: Batch) -> tuple[JobEntry | ResultError, ...]:
    # Fail every batch whose id is divisible by 3, so results mix jobs and errors.
    if batch.id % 3 == 0:
        return (
            ResultError(desktop_ids=batch.desktop_ids, http_status=500, error_code="E", error_msg="x", retryable=True),
        )
    return (JobEntry(job_id=f"job-{batch.id}", desktop_ids=batch.desktop_ids),)


def _drive(
    workload: list[tuple[SnapshotRequest, float]], max_batch: int, complete_immediately: bool
) -> tuple[list[Batch], list[Finished], list[float]]:
    """Run a workload, honouring every deadline; return batches, finished requests and each batch's wait."""
    core = BatchingCore(max_batch=max_batch, linger_s=LINGER)
    sent: list[Batch] = []
    finished: list[Finished] = []
    waits: list[float] = []
    now = 0.0

    def handle(batches: list[Batch], at: float) -> None:
        for batch in batches:
            sent.append(batch)
            waits.append(at - batch.opened_at)
            if complete_immediately:
                finished.extend(core.complete(batch.id, _outcome(batch), now=at))

    for ticket, (req, pause) in enumerate(workload):
        target = now + pause
        # the runtime sleeps until each deadline before the next arrival
        while (deadline := core.next_deadline()) is not None and deadline <= target:
            now = max(now, deadline)
            handle(core.due(now), now)
        now = target
        handle(core.submit(ticket, req, f"r{ticket}", None, now), now)
    handle(core.flush_all(), now)
    if not complete_immediately:
        for batch in sent:
            finished.extend(core.complete(batch.id, _outcome(batch), now=now + 1))
    assert core.open_requests == 0
    assert core.batches_in_flight == 0
    return sent, finished, waits


@settings(max_examples=200, deadline=None)
@given(workloads, st.integers(min_value=1, max_value=100), st.booleans())
def test_every_request_gets_exactly_one_result(
    workload: list[tuple[SnapshotRequest, float]], max_batch: int, complete_immediately: bool
) -> None:
    _, finished, _ = _drive(workload, max_batch, complete_immediately)
    assert sorted(f.ticket for f in finished) == list(range(len(workload)))  # type: ignore[type-var]


@settings(max_examples=200, deadline=None)
@given(workloads, st.integers(min_value=1, max_value=100), st.booleans())
def test_every_request_desktop_is_covered_exactly_once(
    workload: list[tuple[SnapshotRequest, float]], max_batch: int, complete_immediately: bool
) -> None:
    _, finished, _ = _drive(workload, max_batch, complete_immediately)
    for done in finished:
        assert isinstance(done.ticket, int)
        req, _ = workload[done.ticket]
        covered = [d for j in done.result.jobs for d in j.desktop_ids]
        covered += [d for e in done.result.errors for d in e.desktop_ids]
        assert sorted(covered) == sorted(req.desktop_ids)


@settings(max_examples=200, deadline=None)
@given(workloads, st.integers(min_value=1, max_value=100), st.booleans())
def test_no_batch_exceeds_max_mixes_keys_or_repeats_a_desktop(
    workload: list[tuple[SnapshotRequest, float]], max_batch: int, complete_immediately: bool
) -> None:
    sent, _, _ = _drive(workload, max_batch, complete_immediately)
    for batch in sent:
        assert 1 <= len(batch.desktop_ids) <= max_batch
        assert len(set(batch.desktop_ids)) == len(batch.desktop_ids)
        assert [d for seg in batch.segments for d in seg] == list(batch.desktop_ids)
    # merge keys: a batch's desktops all came from requests of its key
    wanted: dict[MergeKey, set[str]] = defaultdict(set)
    for req, _ in workload:
        wanted[MergeKey.of(req)].update(req.desktop_ids)
    for batch in sent:
        assert set(batch.desktop_ids) <= wanted[batch.key]


@settings(max_examples=200, deadline=None)
@given(workloads, st.integers(min_value=1, max_value=100))
def test_no_entry_waits_longer_than_linger_when_deadlines_are_honoured(
    workload: list[tuple[SnapshotRequest, float]], max_batch: int
) -> None:
    _, _, waits = _drive(workload, max_batch, complete_immediately=True)
    assert all(wait <= LINGER + 1e-9 for wait in waits)


@settings(max_examples=200, deadline=None)
@given(st.lists(requests, min_size=1, max_size=40), st.integers(min_value=1, max_value=100))
def test_a_steady_backlog_costs_the_minimum_number_of_calls(backlog: list[SnapshotRequest], max_batch: int) -> None:
    """All requests arrive before any deadline: calls = sum over keys of ceil(distinct desktops / MAX_BATCH)."""
    sent, _, _ = _drive([(req, 0.0) for req in backlog], max_batch, complete_immediately=False)
    distinct: dict[MergeKey, set[str]] = defaultdict(set)
    for req in backlog:
        distinct[MergeKey.of(req)].update(req.desktop_ids)
    assert len(sent) == sum(math.ceil(len(ds) / max_batch) for ds in distinct.values())

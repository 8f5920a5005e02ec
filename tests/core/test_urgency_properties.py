"""Invariants of urgency on random workloads (hypothesis): urgent requests change the order of calls, never what
is answered nor how many calls a backlog costs; once urgent work is answered, the core batches as if it had never
seen any."""

from __future__ import annotations

import math
from collections import defaultdict

from hypothesis import given, settings
from hypothesis import strategies as st

from snapworker.contract.models import SnapshotRequest
from snapworker.core import Batch, BatchingCore, Finished, MergeKey
from tests.core.helpers import LINGER, job_for
from tests.core.test_batching_properties import FakeLimiter, requests

# each step: a request, the pause before it (seconds), whether it is urgent
steps = st.lists(st.tuples(requests, st.floats(min_value=0, max_value=0.2), st.booleans()), min_size=1, max_size=40)
Workload = list[tuple[SnapshotRequest, float, bool]]


def _drive(
    workload: Workload, max_batch: int, *, rate: float | None = None, core: BatchingCore | None = None
) -> tuple[list[Batch], list[Finished], BatchingCore]:
    """Submit at each arrival; take a batch whenever the core has one and the limiter grants a call; answer each
    call a grant later. Returns the batches, the finished requests and the core (drained)."""
    if core is None:
        core = BatchingCore(max_batch, LINGER, hold_s=2.0, starve_s=3.0, calls_at_once=1)
    limiter = FakeLimiter(rate)
    sent: list[Batch] = []
    finished: list[Finished] = []
    urgent_open: set[object] = set()
    now = 0.0

    def grant_all(until: float) -> float:
        t = now
        while True:
            if core.sendable(t):
                at = limiter.next_grant(t)
                if at > until:
                    return until
                t = at
                limiter.take(t)
                batch = core.take(t)
                assert batch is not None
                sent.append(batch)
                done = core.complete(batch.id, job_for(batch), now=t)
                urgent_open.difference_update(f.ticket for f in done)
                finished.extend(done)
                assert core.urgent_waiting == len(urgent_open)
                continue
            deadline = core.next_deadline(t)
            if deadline is None or deadline > until:
                return until
            t = max(t, deadline)

    for ticket, (req, pause, urgent) in enumerate(workload):
        now = grant_all(now + pause)
        core.submit(ticket, req, f"r{ticket}", None, now, urgent=urgent)
        if urgent:
            urgent_open.add(ticket)
    grant_all(now + 3600.0)
    assert core.buffered_desktops == 0, "something pending was never sent"
    assert core.open_requests == 0
    assert core.urgent_waiting == 0
    return sent, finished, core


@settings(max_examples=200, deadline=None)
@given(steps, st.integers(min_value=1, max_value=100), st.sampled_from([None, 2.0]))
def test_with_urgent_requests_every_request_gets_exactly_its_desktops_answered_once(
    workload: Workload, max_batch: int, rate: float | None
) -> None:
    _, finished, _ = _drive(workload, max_batch, rate=rate)
    assert sorted(f.ticket for f in finished) == list(range(len(workload)))  # type: ignore[type-var]
    for done in finished:
        assert isinstance(done.ticket, int)
        covered = [d for j in done.result.jobs for d in j.desktop_ids]
        assert sorted(covered) == sorted(workload[done.ticket][0].desktop_ids)


@settings(max_examples=200, deadline=None)
@given(steps, st.integers(min_value=1, max_value=100), st.sampled_from([None, 2.0]))
def test_with_urgent_requests_batches_stay_within_max_and_segments_split_them(
    workload: Workload, max_batch: int, rate: float | None
) -> None:
    sent, _, _ = _drive(workload, max_batch, rate=rate)
    for batch in sent:
        assert 1 <= len(batch.desktop_ids) <= max_batch
        assert len(set(batch.desktop_ids)) == len(batch.desktop_ids)
        assert [d for seg in batch.segments for d in seg] == list(batch.desktop_ids)
        assert all(batch.segments)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(requests, st.booleans()), min_size=1, max_size=40), st.integers(min_value=1, max_value=100))
def test_urgent_requests_in_a_steady_backlog_cost_no_extra_call(
    backlog: list[tuple[SnapshotRequest, bool]], max_batch: int
) -> None:
    core = BatchingCore(max_batch, LINGER, hold_s=2.0, starve_s=3.0, calls_at_once=1)
    for ticket, (req, urgent) in enumerate(backlog):  # all in before the first grant
        core.submit(ticket, req, f"r{ticket}", None, 0.0, urgent=urgent)
    sent: list[Batch] = []
    now: float | None = 0.0
    while now is not None:
        while (batch := core.take(now)) is not None:
            sent.append(batch)
        now = core.next_deadline(now)
    assert core.buffered_desktops == 0
    distinct: dict[MergeKey, set[str]] = defaultdict(set)
    for req, _ in backlog:
        distinct[MergeKey.of(req)].update(req.desktop_ids)
    assert len(sent) == sum(math.ceil(len(ds) / max_batch) for ds in distinct.values())


def _shape(batches: list[Batch]) -> list[tuple[object, ...]]:
    return [(b.key, b.desktop_ids, b.segments, b.reason, b.opened_at) for b in batches]


@settings(max_examples=200, deadline=None)
@given(steps, st.integers(min_value=1, max_value=100), st.sampled_from([None, 2.0]))
def test_once_urgent_work_is_answered_the_core_batches_as_if_it_had_never_seen_any(
    workload: Workload, max_batch: int, rate: float | None
) -> None:
    bulk: Workload = [(req, pause, False) for req, pause, _ in workload]
    never, _, _ = _drive(bulk, max_batch, rate=rate)
    # the same workload on a core that first served urgent requests of another project, some cut short
    seen = BatchingCore(max_batch, LINGER, hold_s=2.0, starve_s=3.0, calls_at_once=1)
    for ticket, desktops in enumerate([("u1", "u2"), ("u3",), ("u4",)]):
        seen.submit(f"u{ticket}", SnapshotRequest(project_id="px", desktop_ids=desktops), "ru", None, 0.0, urgent=True)
    batch = seen.take(0.0)
    assert batch is not None
    seen.complete(batch.id, job_for(batch), now=0.0)
    seen.drop(["u0", "u1", "u2"])  # (those still open)
    assert seen.urgent_waiting == 0
    assert seen.buffered_desktops == 0
    after, _, _ = _drive(bulk, max_batch, rate=rate, core=seen)
    assert _shape(after) == _shape(never)

"""Invariants of the batching core, checked on random workloads with hypothesis."""

from __future__ import annotations

import math
from collections import defaultdict

from hypothesis import given, settings
from hypothesis import strategies as st

from snapworker.contract.models import JobEntry, ResultError, SnapshotRequest
from snapworker.core import Batch, BatchingCore, Finished, MergeKey
from tests.core.helpers import LINGER

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


class FakeLimiter:
    """Grants calls at ``rate`` per second with ``burst`` saved up, on the test's clock (None: unlimited)."""

    def __init__(self, rate: float | None, burst: int = 1) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.at = float(burst), 0.0

    def next_grant(self, now: float) -> float:
        if self.rate is None:
            return now
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        return now if self.tokens >= 1 - 1e-9 else now + (1 - self.tokens) / self.rate

    def take(self, now: float) -> None:
        if self.rate is not None:
            self.next_grant(now)
            self.tokens -= 1


def _drive(
    workload: list[tuple[SnapshotRequest, float]],
    max_batch: int,
    complete_immediately: bool,
    *,
    rate: float | None = None,
    hold_s: float = 0.0,
    starve_s: float = math.inf,
    calls_at_once: float = math.inf,
    carried: list[tuple[int, int]] | None = None,
) -> tuple[list[Batch], list[Finished], list[float]]:
    """Run a workload as the worker does: submit at each arrival; whenever the core has something to send and the
    limiter grants a call, take a batch. Return batches, finished requests and each batch's wait (cut - opened).
    ``carried`` collects (desktops carried, desktops of that key pending just before) per grant."""
    core = BatchingCore(
        max_batch=max_batch, linger_s=LINGER, hold_s=hold_s, starve_s=starve_s, calls_at_once=calls_at_once
    )
    limiter = FakeLimiter(rate)
    sent: list[Batch] = []
    finished: list[Finished] = []
    waits: list[float] = []
    now = 0.0

    def grant_all(until: float) -> float:
        """Send what may go up to ``until``; return the time reached."""
        t = now
        while True:
            if core.sendable(t):
                at = limiter.next_grant(t)
                if at > until:
                    return until
                t = at
                if not core.sendable(t):
                    continue
                limiter.take(t)
                pending = {k: core.pending_desktops(k) for k in _keys(workload)}
                batch = core.take(t)
                assert batch is not None
                if carried is not None:
                    carried.append((len(batch.desktop_ids), pending[batch.key]))
                sent.append(batch)
                waits.append(t - batch.opened_at)
                if complete_immediately:
                    finished.extend(core.complete(batch.id, _outcome(batch), now=t))
                continue
            deadline = core.next_deadline(t)
            if deadline is None or deadline > until:
                return until
            t = max(t, deadline)

    for ticket, (req, pause) in enumerate(workload):
        now = grant_all(now + pause)
        core.submit(ticket, req, f"r{ticket}", None, now)
    core_time = grant_all(now + 3600.0)  # long enough for every linger, hold and grant
    assert core.buffered_desktops == 0, "something pending was never sent"
    if not complete_immediately:
        for batch in sent:
            finished.extend(core.complete(batch.id, _outcome(batch), now=core_time))
    assert core.open_requests == 0
    assert core.batches_in_flight == 0
    return sent, finished, waits


def _keys(workload: list[tuple[SnapshotRequest, float]]) -> set[MergeKey]:
    return {MergeKey.of(req) for req, _ in workload}


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
    assert len(sent) == _minimum_calls(backlog, max_batch)


def _minimum_calls(backlog: list[SnapshotRequest], max_batch: int) -> int:
    distinct: dict[MergeKey, set[str]] = defaultdict(set)
    for req in backlog:
        distinct[MergeKey.of(req)].update(req.desktop_ids)
    return sum(math.ceil(len(ds) / max_batch) for ds in distinct.values())


# a backlog arriving faster than calls are granted: within one linger, under a rate of one call a second
backlogs = st.lists(st.tuples(requests, st.floats(min_value=0, max_value=0.005)), min_size=1, max_size=40)


@settings(max_examples=200, deadline=None)
@given(backlogs, st.integers(min_value=1, max_value=100))
def test_under_a_binding_rate_a_backlog_costs_the_minimum_number_of_calls(
    backlog: list[tuple[SnapshotRequest, float]], max_batch: int
) -> None:
    # calls answer after the backlog is in (a desktop asked for again after its answer is rightly sent again)
    sent, _, _ = _drive(backlog, max_batch, False, rate=1.0, hold_s=5.0, calls_at_once=1)
    assert len(sent) == _minimum_calls([req for req, _ in backlog], max_batch)


@settings(max_examples=200, deadline=None)
@given(workloads, st.integers(min_value=1, max_value=100))
def test_a_granted_key_carries_max_batch_or_everything_it_has_pending(
    workload: list[tuple[SnapshotRequest, float]], max_batch: int
) -> None:
    carried: list[tuple[int, int]] = []
    _drive(workload, max_batch, True, rate=2.0, hold_s=2.0, calls_at_once=1, carried=carried)
    assert carried
    assert all(n == min(max_batch, pending) for n, pending in carried)


@settings(max_examples=200, deadline=None)
@given(workloads, st.integers(min_value=40, max_value=100))
def test_no_ready_key_waits_forever_while_calls_are_granted(
    workload: list[tuple[SnapshotRequest, float]], max_batch: int
) -> None:
    """Every batch leaves within the starvation bound + one grant per merge key. (max_batch >= the 40 distinct
    desktops, so no key ever needs two calls at once and the bound is about turns, not throughput.)"""
    rate, hold, starve = 2.0, 2.0, 3.0
    _, _, waits = _drive(workload, max_batch, True, rate=rate, hold_s=hold, starve_s=starve, calls_at_once=1)
    keys = 6  # 3 projects x 2 disk types
    assert max(waits) <= starve + (keys + 1) / rate + 1e-6

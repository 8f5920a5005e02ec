"""Sending one batch without a broker: isolation down to the desktop, its budget, busy desktops, and the
partial result it makes. A fake API answers as the real one does (Huawei error bodies through
error_from_response); a fake clock makes the busy waits instant."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping, Sequence

import pytest
from multidict import CIMultiDict

from snapworker.cloud.lease import CallLease
from snapworker.cloud.limiter import Grant, RateLimiter
from snapworker.cloud.responses import error_from_response
from snapworker.contract.models import JobEntry, ResultError, SnapshotResult
from snapworker.core import Batch, BatchingCore, MergeKey, Outcome
from snapworker.domain.jobs import CreatedJob
from snapworker.domain.snapshots import Absent, Created, Doubt, Reconciled, Unknown, Verdict
from snapworker.errors import ApiResponseLost, ApiStatusError
from snapworker.runtime.calls import BatchCaller
from tests.core.helpers import request

KEY = MergeKey("p1", None, None, None)
#: answers a call: None creates a job, an error rejects it
Answer = Callable[[Sequence[str]], ApiStatusError | None]


def huawei_error(status: int, code: str, msg: str, detail: str | None = None) -> ApiStatusError:
    body = json.dumps({"error_code": code, "error_msg": msg, "error_detail": detail}).encode()
    return error_from_response(status, None, CIMultiDict({"X-Request-Id": "rid"}), body)


def unknown(ghost: str, *, named: bool) -> Answer:
    """The real API's answer to a call holding an unknown desktop: 404 WKS.0202, naming it or not."""

    def answer(desktop_ids: Sequence[str]) -> ApiStatusError | None:
        if ghost not in desktop_ids:
            return None
        if named:
            return huawei_error(404, "WKS.0202", f"The desktop does not exist: {ghost}", ghost)
        return huawei_error(404, "WKS.0202", "The desktop does not exist.")

    return answer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await asyncio.sleep(0)  # let others run meanwhile, as a real wait would
        self.now += seconds


class FakeApi:
    def __init__(self, answer: Answer, clock: Clock | None = None) -> None:
        self.limiter = RateLimiter(rate=1000.0, burst=1000, max_concurrency=100)
        self.answer = answer
        self.clock = clock
        self.calls: list[tuple[str, ...]] = []
        self.called_at: list[float] = []

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
        self.calls.append(tuple(desktop_ids))
        if self.clock is not None:
            self.called_at.append(self.clock.now)
        error = self.answer(desktop_ids)
        if error is not None:
            raise error
        return CreatedJob(f"job-{len(self.calls)}", None)


def batch(*segments: tuple[str, ...]) -> Batch:
    return Batch(1, KEY, tuple(d for s in segments for d in s), tuple(segments), 0.0, "linger")


def settled(outcome: Outcome) -> dict[str, str]:
    """Each desktop -> the job id or the error code that settled it; checks every desktop is settled once."""
    seen: dict[str, str] = {}
    for entry in outcome:
        for desktop_id in entry.desktop_ids:
            assert desktop_id not in seen, f"{desktop_id} settled twice"
            seen[desktop_id] = entry.job_id if isinstance(entry, JobEntry) else entry.error_code
    return seen


def errors(outcome: Outcome) -> list[ResultError]:
    return [entry for entry in outcome if isinstance(entry, ResultError)]


async def send(
    api: FakeApi,
    b: Batch,
    *,
    budget: int = 16,
    clock: Clock | None = None,
    deadline: float | None = None,
    busy_retry_max_s: float | None = None,
) -> Outcome:
    clock = clock if clock is not None else Clock()
    sender = BatchCaller(api, max_extra_calls=budget, busy_retry_max_s=busy_retry_max_s, clock=clock, sleep=clock.sleep)
    return await sender.send(b, deadline=deadline)


# -- unknown desktops


async def test_a_named_culprit_is_dropped_and_the_rest_sent_again() -> None:
    api = FakeApi(unknown("ghost", named=True))
    outcome = await send(api, batch(("d1", "d2", "ghost")))
    assert api.calls == [("d1", "d2", "ghost"), ("d1", "d2")]
    assert settled(outcome) == {"d1": "job-2", "d2": "job-2", "ghost": "WKS.0202"}
    [error] = errors(outcome)
    assert (error.desktop_ids, error.http_status, error.retryable) == (("ghost",), 404, False)


async def test_an_unnamed_culprit_is_bisected_inside_its_request() -> None:
    api = FakeApi(unknown("ghost", named=False))
    outcome = await send(api, batch(("d1", "d2", "ghost")))
    # 1 call, then [d1] | [d2, ghost], then [d2] | [ghost]
    assert api.calls == [("d1", "d2", "ghost"), ("d1",), ("d2", "ghost"), ("d2",), ("ghost",)]
    assert settled(outcome) == {"d1": "job-2", "d2": "job-4", "ghost": "WKS.0202"}


async def test_an_unnamed_culprit_is_bisected_along_requests_first() -> None:
    api = FakeApi(unknown("ghost", named=False))
    outcome = await send(api, batch(("a1", "a2"), ("b1", "ghost")))
    assert api.calls[1:3] == [("a1", "a2"), ("b1", "ghost")]  # the first split keeps requests whole
    assert settled(outcome) == {"a1": "job-2", "a2": "job-2", "b1": "job-4", "ghost": "WKS.0202"}


async def test_the_isolation_budget_is_respected() -> None:
    api = FakeApi(unknown("d5", named=False))
    outcome = await send(api, batch(*((f"d{i}",) for i in range(8))), budget=2)
    assert len(api.calls) == 1 + 2  # one split, then the budget is spent
    assert settled(outcome) == {f"d{i}": ("job-2" if i < 4 else "WKS.0202") for i in range(8)}


async def test_with_no_budget_nothing_is_sent_again() -> None:
    api = FakeApi(unknown("ghost", named=False))
    outcome = await send(api, batch(("d1",), ("ghost",)), budget=0)
    assert len(api.calls) == 1
    assert settled(outcome) == {"d1": "WKS.0202", "ghost": "WKS.0202"}


async def test_innocent_desktops_left_unsent_for_want_of_budget_are_retryable() -> None:
    api = FakeApi(unknown("ghost", named=True))
    outcome = await send(api, batch(("d1", "ghost")), budget=0)
    assert len(api.calls) == 1
    by_desktops = {e.desktop_ids: e.retryable for e in errors(outcome)}
    assert by_desktops == {("ghost",): False, ("d1",): True}


async def test_several_named_culprits_are_dropped_one_call_each() -> None:
    def answer(desktop_ids: Sequence[str]) -> ApiStatusError | None:
        ghost = next((d for d in desktop_ids if d.startswith("ghost")), None)  # the API names the first
        return huawei_error(404, "WKS.0202", f"The desktop does not exist: {ghost}", ghost) if ghost else None

    api = FakeApi(answer)
    outcome = await send(api, batch(("d1", "ghost1"), ("ghost2", "d2")))
    assert api.calls == [("d1", "ghost1", "ghost2", "d2"), ("d1", "ghost2", "d2"), ("d1", "d2")]
    assert settled(outcome) == {"d1": "job-3", "d2": "job-3", "ghost1": "WKS.0202", "ghost2": "WKS.0202"}


# -- what is never split


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (401, "APIG.0301"),
        (403, "WKS.00010099"),
        (429, "APIG.0308"),
        (500, "WKS.0005"),
        (502, "APIG.0201"),
        (503, "APIG.0201"),
    ],
)
async def test_401_403_429_and_5xx_are_never_split(status: int, code: str) -> None:
    # the answer even names a desktop: still not its fault
    api = FakeApi(lambda ids: huawei_error(status, code, f"no: {ids[0]}", ids[0]))
    outcome = await send(api, batch(("d1", "d2"), ("d3",)))
    assert api.calls == [("d1", "d2", "d3")]
    assert settled(outcome) == dict.fromkeys(("d1", "d2", "d3"), code)


# -- busy desktops


def busy(desktop: str, *, times: int | None, named: bool = True) -> Answer:
    """409 WKS.0110 for calls holding ``desktop``, the first ``times`` times (None: always)."""
    refused = [0]

    def answer(desktop_ids: Sequence[str]) -> ApiStatusError | None:
        if desktop not in desktop_ids or (times is not None and refused[0] >= times):
            return None
        refused[0] += 1
        msg = "The desktop is being operated by another task, try again later"
        return huawei_error(409, "WKS.0110", f"{msg}: {desktop}" if named else msg, desktop if named else None)

    return answer


async def test_a_busy_desktop_is_retried_alone_after_a_delay() -> None:
    clock = Clock()
    api = FakeApi(busy("b", times=2), clock)
    outcome = await send(api, batch(("d1", "b")), clock=clock, deadline=clock.now + 600)
    start = api.called_at[0]
    assert list(zip(api.calls, api.called_at, strict=True)) == [
        (("d1", "b"), start),
        (("d1",), start),  # the rest went at once
        (("b",), start + 5),  # the busy one waited, longer each time
        (("b",), start + 15),
    ]
    assert settled(outcome) == {"d1": "job-2", "b": "job-4"}


async def test_a_desktop_still_busy_at_the_deadline_is_reported_retryable() -> None:
    clock = Clock()
    api = FakeApi(busy("b", times=None), clock)
    start = clock.now
    outcome = await send(api, batch(("b",)), clock=clock, deadline=start + 30)
    assert clock.sleeps == [5.0, 10.0]  # a third wait (20 s) would end past the deadline
    assert all(at < start + 30 for at in api.called_at)
    [error] = errors(outcome)
    assert (error.desktop_ids, error.http_status, error.error_code, error.retryable) == (
        ("b",),
        409,
        "WKS.0110",
        True,
    )


async def test_busy_retries_stop_after_busy_retry_max_s_before_the_deadline() -> None:
    clock = Clock()
    api = FakeApi(busy("b", times=None), clock)
    await send(api, batch(("b",)), clock=clock, deadline=clock.now + 1500, busy_retry_max_s=60)
    assert clock.sleeps == [5.0, 10.0, 20.0]  # 35 s; the next 40 s would pass 60 s


async def test_without_a_deadline_a_busy_desktop_is_reported_at_once() -> None:
    api = FakeApi(busy("b", times=None))
    outcome = await send(api, batch(("b", "d1")))
    assert api.calls == [("b", "d1"), ("d1",)]
    assert settled(outcome) == {"b": "WKS.0110", "d1": "job-2"}


async def test_an_unnamed_busy_desktop_is_found_by_bisection_then_retried() -> None:
    clock = Clock()
    api = FakeApi(busy("b", times=3, named=False), clock)
    outcome = await send(api, batch(("d1", "b")), clock=clock, deadline=clock.now + 600)
    assert api.calls == [("d1", "b"), ("d1",), ("b",), ("b",), ("b",)]
    assert settled(outcome) == {"d1": "job-2", "b": "job-5"}


async def test_busy_retries_do_not_spend_the_isolation_budget() -> None:
    clock = Clock()
    api = FakeApi(busy("b", times=3), clock)
    outcome = await send(api, batch(("d1", "b")), clock=clock, budget=1, deadline=clock.now + 600)
    assert settled(outcome) == {"d1": "job-2", "b": "job-5"}


# -- the result


async def test_a_request_with_one_unknown_desktop_gets_a_partial_result() -> None:
    core = BatchingCore(100, 0.0)
    core.submit("t1", request("p1", "d1", "d2", "ghost"), "r1", "c1", 0.0)
    core.submit("t2", request("p1", "d3"), "r2", None, 0.0)
    cut = core.take(1.0)
    assert cut is not None
    outcome = await BatchCaller(FakeApi(unknown("ghost", named=True)), max_extra_calls=16).send(cut)
    results = {f.result.request_id: f.result for f in core.complete(cut.id, outcome, 2.0)}
    partial = results["r1"]
    assert partial.status == "partial"
    [job] = partial.jobs
    assert job.desktop_ids == ("d1", "d2")  # only the request's own desktops, though the job has d3 too
    [error] = partial.errors
    assert (error.desktop_ids, error.http_status, error.error_code, error.retryable) == (
        ("ghost",),
        404,
        "WKS.0202",
        False,
    )
    assert error.error_msg == "The desktop does not exist: ghost"
    assert results["r2"].status == "accepted"
    assert SnapshotResult.model_validate_json(partial.model_dump_json()) == partial  # the contract's shape


# -- answers lost in flight: reconciled before anything is sent again


class LossyApi(FakeApi):
    """Loses the answer of its first ``losses`` calls; ``processed`` says whether the API made their snapshots.
    ``made``: desktop -> the marker the call that snapshotted it wrote."""

    def __init__(self, *, losses: int, processed: bool) -> None:
        super().__init__(lambda ids: None)
        self.losses, self.processed = losses, processed
        self.made: dict[str, str | None] = {}
        self.markers: list[str | None] = []

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
        created = await super().batch_create(
            key, desktop_ids, grant=grant, deadline=deadline, marker=marker, max_tries=max_tries
        )
        self.markers.append(marker)
        if self.losses > 0:
            self.losses -= 1
            if self.processed:
                self.made.update(dict.fromkeys(desktop_ids, marker))
            raise ApiResponseLost("the connection broke after the request was sent")
        self.made.update(dict.fromkeys(desktop_ids, marker))
        return created


class FakeReconciler:
    """Answers from what ``api`` made: a desktop is created when its snapshot carries one of the doubt's markers;
    ``unknown`` desktops cannot be told."""

    def __init__(self, api: LossyApi, clock: Clock, unknown: frozenset[str] = frozenset()) -> None:
        self.api, self.clock, self.unknown = api, clock, unknown
        self.asked: list[tuple[float, tuple[str, ...]]] = []

    async def check(self, key: MergeKey, doubts: Mapping[str, Doubt]) -> Reconciled:
        self.asked.append((self.clock.now, tuple(doubts)))
        verdicts: dict[str, Verdict] = {}
        for desktop_id, doubt in doubts.items():
            if desktop_id in self.unknown:
                verdicts[desktop_id] = Unknown("the listing failed")
            elif self.api.made.get(desktop_id) in doubt.markers:
                verdicts[desktop_id] = Created(f"snap-{desktop_id}")
            else:
                verdicts[desktop_id] = Absent()
        return Reconciled(verdicts)


async def recover(
    api: LossyApi, b: Batch, *, unknown: frozenset[str] = frozenset(), deadline: float | None = None
) -> tuple[Outcome, FakeReconciler, Clock]:
    clock = Clock()
    reconciler = FakeReconciler(api, clock, unknown)
    sender = BatchCaller(
        api,
        max_extra_calls=16,
        max_tries=3,
        clock=clock,
        sleep=clock.sleep,
        wall_clock=clock,
        reconciler=reconciler,
        reconcile_delay_s=5.0,
    )
    return await sender.send(b, deadline=deadline), reconciler, clock


async def test_a_lost_answer_whose_call_made_the_snapshots_is_answered_with_them_and_not_sent_again() -> None:
    api = LossyApi(losses=1, processed=True)
    outcome, _reconciler, _ = await recover(api, batch(("d1", "d2")))
    assert api.calls == [("d1", "d2")]
    assert settled(outcome) == {"d1": "reconciled:snap-d1", "d2": "reconciled:snap-d2"}
    assert not errors(outcome)


async def test_a_lost_answer_whose_call_made_nothing_is_sent_again_once() -> None:
    api = LossyApi(losses=1, processed=False)
    outcome, _, _ = await recover(api, batch(("d1",), ("d2",)))
    assert api.calls == [("d1", "d2"), ("d1", "d2")]
    assert settled(outcome) == {"d1": "job-2", "d2": "job-2"}


async def test_the_listing_waits_reconcile_delay_s_after_the_loss() -> None:
    api = LossyApi(losses=1, processed=True)
    _, reconciler, clock = await recover(api, batch(("d1",)))
    assert clock.sleeps == [5.0]
    assert reconciler.asked == [(1005.0, ("d1",))]


async def test_a_desktop_the_listing_cannot_tell_fails_maybe_created_and_is_not_sent_again() -> None:
    api = LossyApi(losses=1, processed=False)
    outcome, _, _ = await recover(api, batch(("d1", "d2")), unknown=frozenset({"d2"}))
    assert api.calls == [("d1", "d2"), ("d1",)]
    [error] = errors(outcome)
    assert (error.desktop_ids, error.error_code, error.maybe_created) == (("d2",), "SNAPWORKER.UNRECONCILED", True)


async def test_the_tries_before_and_after_each_loss_share_the_batchs_max_tries() -> None:
    api = LossyApi(losses=10, processed=False)
    outcome, reconciler, _ = await recover(api, batch(("d1",)))
    assert len(api.calls) == 3  # max_tries
    assert len(reconciler.asked) == 3  # the last loss is listed too: found ones would still be answered
    [error] = errors(outcome)
    assert (error.error_code, error.maybe_created) == ("SNAPWORKER.RESPONSE_LOST", False)  # listed: not created


async def test_no_recovery_starts_when_the_deadline_leaves_no_room() -> None:
    api = LossyApi(losses=1, processed=True)
    outcome, reconciler, _ = await recover(api, batch(("d1",)), deadline=1003.0)
    assert reconciler.asked == []
    assert errors(outcome)[0].maybe_created


async def test_without_a_reconciler_a_lost_answer_fails_maybe_created() -> None:
    api = LossyApi(losses=1, processed=True)
    outcome = await send(api, batch(("d1",)))
    assert api.calls == [("d1",)]
    assert errors(outcome)[0].maybe_created


async def test_every_call_of_a_batch_writes_its_attempts_marker_and_batches_differ() -> None:
    api = LossyApi(losses=1, processed=False)
    await recover(api, batch(("d1",)))
    await recover(api, batch(("d2",)))
    first, again, other = api.markers
    assert first == again
    assert first is not None
    assert first.startswith("snapworker:")
    assert other != first

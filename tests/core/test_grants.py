"""Which key a granted call goes to, and when: late binding, holding while calls are scarce, fairness, pressure.

Time is a number passed in; nothing sleeps.
"""

from __future__ import annotations

import pytest

from snapworker.core import BatchingCore, WindowPolicy
from tests.core.helpers import LINGER, job_for, request, take_all

HOLD = 5.0
STARVE = 60.0


def ids(n: int, prefix: str = "d") -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def scarce_core(calls_at_once: float = 2, window: int | None = None) -> BatchingCore:
    return BatchingCore(100, LINGER, hold_s=HOLD, calls_at_once=calls_at_once, window=window)


def submit_each(c: BatchingCore, project: str, desktops: list[str], now: float, prefix: str = "t") -> None:
    for d in desktops:
        c.submit(f"{prefix}-{project}-{d}", request(project, d), f"r-{project}-{d}", None, now)


def test_a_ready_batch_keeps_absorbing_desktops_until_a_call_is_granted() -> None:
    c = BatchingCore(100, LINGER)
    c.submit("t1", request("p1", "a"), "r1", None, now=0.0)
    assert c.sendable(LINGER)
    c.submit("t2", request("p1", "b"), "r2", None, now=0.4)  # while the call is awaited
    batch = c.take(0.5)
    assert batch is not None
    assert batch.desktop_ids == ("a", "b")


def test_a_granted_key_carries_max_batch_and_the_rest_stays_pending() -> None:
    c = BatchingCore(100, LINGER)
    c.submit("t1", request("p1", *ids(130)), "r1", None, now=0.0)
    batch = c.take(0.0)
    assert batch is not None
    assert len(batch.desktop_ids) == 100
    assert c.buffered_desktops == 30
    assert not c.sendable(0.0)  # the rest is a partial batch again: it waits for linger
    assert c.sendable(LINGER)


def test_take_returns_none_when_nothing_is_pending() -> None:
    assert BatchingCore(100, LINGER).take(10.0) is None


def test_a_full_batch_goes_before_an_older_partial_one() -> None:
    c = BatchingCore(100, LINGER)
    c.submit("t1", request("p1", "old", disk_type="ALL"), "r1", None, now=0.0)
    c.submit("t2", request("p1", *ids(100)), "r2", None, now=0.1)
    first = c.take(1.0)
    assert first is not None
    assert first.reason == "full"


def test_full_batches_take_turns_between_projects() -> None:
    c = BatchingCore(100, LINGER)
    c.submit("big", request("p1", *ids(300)), "r1", None, now=0.0)
    c.submit("other", request("p2", *ids(200, "e")), "r2", None, now=0.1)
    order = [b.key.project_id for b in take_all(c, now=0.1)]
    assert order == ["p1", "p2", "p1", "p2", "p1"]


def test_while_calls_are_scarce_a_partial_batch_waits_while_any_batch_is_full() -> None:
    c = scarce_core(calls_at_once=1)
    c.submit("small", request("p2", "x"), "r2", None, now=0.0)
    c.submit("big", request("p1", *ids(300)), "r1", None, now=0.0)
    taken = [c.take(10.0) for _ in range(3)]
    assert [b.key.project_id for b in taken if b is not None] == ["p1", "p1", "p1"]
    last = c.take(10.0)
    assert last is not None
    assert last.desktop_ids == ("x",)


def test_a_partial_batch_is_not_starved_by_full_ones() -> None:
    c = BatchingCore(100, LINGER, hold_s=HOLD, starve_s=STARVE, calls_at_once=1)
    c.submit("small", request("p2", "x"), "r2", None, now=0.0)
    c.submit("big", request("p1", *ids(300)), "r1", None, now=0.0)
    first = c.take(STARVE)
    assert first is not None
    assert first.desktop_ids == ("x",)


def test_when_calls_are_not_scarce_a_ready_batch_goes_at_linger() -> None:
    c = scarce_core(calls_at_once=5)
    submit_each(c, "p1", ids(30), now=0.0)
    assert not c.sendable(LINGER - 0.01)
    assert c.sendable(LINGER)


def test_while_calls_are_scarce_a_batch_still_filling_fast_is_held() -> None:
    c = scarce_core(calls_at_once=2)
    for p in ("p1", "p2", "p3"):
        submit_each(c, p, ids(20, p), now=0.0)
    assert not c.sendable(LINGER)
    # 20 of 100 desktops: held until HOLD * 20 / 100 after its first desktop, unless it fills first
    assert c.next_deadline(LINGER) == pytest.approx(HOLD * 0.2)


def test_a_held_batch_goes_once_it_stops_filling() -> None:
    c = scarce_core(calls_at_once=2)
    for p in ("p1", "p2", "p3"):
        submit_each(c, p, ids(20, p), now=0.0)
    assert c.sendable(HOLD * 0.2)


def test_a_held_batch_that_fills_goes_full() -> None:
    c = scarce_core(calls_at_once=2)
    for p in ("p1", "p2", "p3"):
        submit_each(c, p, ids(20, p), now=0.0)
    submit_each(c, "p1", ids(80, "more"), now=0.5)
    batch = c.take(0.5)
    assert batch is not None
    assert (batch.key.project_id, len(batch.desktop_ids), batch.reason) == ("p1", 100, "full")


def test_a_batch_still_filling_is_never_held_past_hold() -> None:
    c = scarce_core(calls_at_once=2)
    for p in ("p1", "p2", "p3"):
        submit_each(c, p, ids(1, p), now=0.0)
        for step in range(1, 99):  # one more desktop every 0.05 s: on pace to fill, but slowly
            submit_each(c, p, [f"{p}-{step}"], now=step * 0.05, prefix=f"s{step}")
    assert c.sendable(HOLD)


def test_a_full_window_with_nothing_in_flight_sends_the_fullest_batch_at_once() -> None:
    c = BatchingCore(100, LINGER, window=3)
    c.submit("t1", request("p1", "a"), "r1", None, now=0.0)
    c.submit("t2", request("p2", "b"), "r2", None, now=0.0)
    assert c.submit("t3", request("p2", "c"), "r3", None, now=0.0) is True
    assert c.sendable(0.0)
    batch = c.take(0.0)
    assert batch is not None
    assert (batch.key.project_id, batch.reason) == ("p2", "pressure")


def test_a_full_window_waits_for_linger_while_a_call_is_in_flight() -> None:
    c = BatchingCore(100, LINGER, window=2)
    c.submit("t1", request("p1", "a"), "r1", None, now=0.0)
    in_flight = c.take(LINGER)
    assert in_flight is not None
    c.submit("t2", request("p1", "b"), "r2", None, now=LINGER)
    c.submit("t3", request("p2", "c"), "r3", None, now=LINGER)
    assert not c.sendable(LINGER)
    c.complete(in_flight.id, job_for(in_flight), now=LINGER)
    assert c.sendable(LINGER)


def test_after_close_everything_pending_may_go_at_once() -> None:
    c = scarce_core()
    submit_each(c, "p1", ids(3), now=0.0)
    c.close()
    [batch] = take_all(c, now=0.0)
    assert batch.reason == "shutdown"


def test_the_window_grows_with_the_active_merge_keys() -> None:
    policy = WindowPolicy(floor=1000, ceiling=20_000, max_batch=100, desktops_per_s=150, budget_s=750)
    assert policy.size(active_keys=1, desktops_per_request=1) == 1000
    assert policy.size(active_keys=24, desktops_per_request=1) == 4800
    assert policy.size(active_keys=200, desktops_per_request=1) == 20_000


def test_the_window_never_holds_more_than_the_api_can_send_within_the_budget() -> None:
    policy = WindowPolicy(floor=10, ceiling=20_000, max_batch=100, desktops_per_s=150, budget_s=750)
    # 100 desktops a request: 1,125 requests take 750 s at 1.5 calls a second
    assert policy.size(active_keys=24, desktops_per_request=100) == 48
    assert policy.size(active_keys=2000, desktops_per_request=100) == 1125


def test_the_window_never_shrinks_below_prefetch() -> None:
    policy = WindowPolicy(floor=500, ceiling=20_000, max_batch=100, desktops_per_s=150, budget_s=1)
    assert policy.size(active_keys=50, desktops_per_request=100) == 500

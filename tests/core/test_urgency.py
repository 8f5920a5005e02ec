"""Urgent requests (a person waits): their key takes the next call, their desktops ride first, and the backlog still
gets its share. Time is a number passed in; nothing sleeps."""

from __future__ import annotations

from snapworker.core import Batch, BatchingCore
from tests.core.helpers import LINGER, job_for, request

HOLD = 5.0
STARVE = 60.0


def ids(n: int, prefix: str = "d") -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def scarce_core(max_batch: int = 100) -> BatchingCore:
    """Calls are scarce (one at a time), partial batches are held, and starve after STARVE."""
    return BatchingCore(max_batch, LINGER, hold_s=HOLD, starve_s=STARVE, calls_at_once=1)


def take(core: BatchingCore, now: float) -> Batch:
    batch = core.take(now)
    assert batch is not None
    return batch


def test_an_urgent_request_is_sendable_at_once_without_linger_or_hold() -> None:
    c = scarce_core()
    c.submit("bulk", request("p1", *ids(300)), "r1", None, now=0.0)  # full batches: calls are scarce
    c.submit("u", request("p2", "x"), "r2", None, now=0.0, urgent=True)
    assert c.sendable(0.0)
    assert c.next_deadline(0.0) is None  # nothing else turns sendable later: the full p1 keys are sendable already


def test_a_lone_urgent_request_does_not_wait_for_linger() -> None:
    c = BatchingCore(100, LINGER)
    c.submit("u", request("p1", "x"), "r1", None, now=0.0, urgent=True)
    assert c.sendable(0.0)
    assert take(c, 0.0).desktop_ids == ("x",)


def test_an_urgent_key_takes_the_next_call_ahead_of_full_and_starving_keys() -> None:
    c = scarce_core()
    c.submit("starving", request("p3", "s"), "r3", None, now=0.0)
    c.submit("bulk", request("p1", *ids(300)), "r1", None, now=STARVE)
    c.submit("u", request("p2", "x"), "r2", None, now=STARVE + 1, urgent=True)
    batch = take(c, STARVE + 1)
    assert (batch.key.project_id, batch.desktop_ids, batch.reason) == ("p2", ("x",), "urgent")
    assert take(c, STARVE + 1).key.project_id == "p3"  # then the usual order: starving first


def test_an_urgent_call_carries_the_urgent_desktops_first_then_the_oldest_backlog_up_to_max_batch() -> None:
    c = scarce_core(max_batch=5)
    for i, d in enumerate(ids(6, "b")):
        c.submit(f"bulk{i}", request("p1", d), f"r{i}", None, now=float(i))
    c.submit("u", request("p1", "u1", "u2"), "ru", None, now=10.0, urgent=True)
    batch = take(c, 10.0)
    assert batch.desktop_ids == ("u1", "u2", "b0", "b1", "b2")
    assert batch.opened_at == 0.0  # its oldest desktop arrived then (the runtime's deadline counts from it)
    assert c.pending_desktops(batch.key) == 3
    assert take(c, 10.0).desktop_ids == ("b3", "b4", "b5")


def test_urgent_desktops_beyond_max_batch_take_the_following_calls() -> None:
    c = scarce_core(max_batch=2)
    c.submit("bulk", request("p1", "old"), "r1", None, now=0.0)
    c.submit("u", request("p1", "u1", "u2", "u3"), "ru", None, now=1.0, urgent=True)
    assert [take(c, 1.0).desktop_ids for _ in range(2)] == [("u1", "u2"), ("u3", "old")]


def test_two_urgent_requests_of_one_key_ride_in_one_call() -> None:
    c = scarce_core()
    c.submit("u1", request("p1", "a"), "r1", None, now=0.0, urgent=True)
    c.submit("u2", request("p1", "b"), "r2", None, now=0.1, urgent=True)
    batch = take(c, 0.1)
    assert batch.desktop_ids == ("a", "b")
    assert c.take(0.1) is None
    assert {f.ticket for f in c.complete(batch.id, job_for(batch), now=1.0)} == {"u1", "u2"}


def test_a_pending_desktop_an_urgent_request_names_becomes_urgent_and_rides_first() -> None:
    c = scarce_core(max_batch=3)
    c.submit("bulk1", request("p1", "a", "b", "c"), "r1", None, now=0.0)
    c.submit("bulk2", request("p1", "d", "e"), "r2", None, now=1.0)
    c.submit("u", request("p1", "e"), "ru", None, now=2.0, urgent=True)
    batch = take(c, 2.0)
    assert batch.desktop_ids == ("e", "a", "b")  # e before the older a, b, c; filled with the oldest
    finished = c.complete(batch.id, job_for(batch), now=3.0)
    assert [f.ticket for f in finished] == ["u"]  # the urgent request is answered; the bulk ones wait for c, d
    assert c.urgent_waiting == 0


def test_segments_keep_one_run_per_request_when_urgent_desktops_are_moved_first() -> None:
    c = scarce_core()
    c.submit("bulk", request("p1", "a", "b", "c"), "r1", None, now=0.0)
    c.submit("other", request("p1", "y"), "r2", None, now=0.5)
    c.submit("u", request("p1", "x", "c", "y"), "ru", None, now=1.0, urgent=True)  # x new; c, y promoted
    batch = take(c, 1.0)
    # urgent x, c, y are taken first, a and b fill up; each request's desktops stay in one segment
    assert batch.segments == (("x",), ("c", "a", "b"), ("y",))
    assert batch.desktop_ids == ("x", "c", "a", "b", "y")


def test_desktops_of_an_urgent_request_already_in_a_call_are_not_sent_again() -> None:
    c = scarce_core()
    c.submit("bulk", request("p1", "a"), "r1", None, now=0.0)
    sent = take(c, HOLD)
    c.submit("u", request("p1", "a"), "ru", None, now=HOLD + 1, urgent=True)
    assert not c.sendable(HOLD + 1)
    assert {f.ticket for f in c.complete(sent.id, job_for(sent), now=HOLD + 2)} == {"bulk", "u"}


def test_among_urgent_keys_the_one_urgent_the_longest_goes_first() -> None:
    c = scarce_core()
    c.submit("u-late-project", request("p2", "x"), "r2", None, now=0.0, urgent=True)
    c.submit("u-early-project", request("p1", "y"), "r1", None, now=1.0, urgent=True)
    assert [take(c, 1.0).key.project_id for _ in range(2)] == ["p2", "p1"]


def test_the_backlog_gets_one_call_in_four_under_a_stream_of_urgent_requests() -> None:
    c = scarce_core()
    for part in range(2):
        c.submit(f"bulk{part}", request("p1", *ids(1000, f"d{part}-")), f"r{part}", None, now=0.0)
    served: list[str] = []
    for i in range(20):
        now = 1.0 + i
        c.submit(f"u{i}", request("p2", f"x{i}"), f"ru{i}", None, now=now, urgent=True)
        served.append(take(c, now).key.project_id)
    assert served == ["p2", "p2", "p2", "p1"] * 5


def test_urgent_calls_count_against_the_backlog_only_while_it_is_ready() -> None:
    c = scarce_core()
    for i in range(3):  # nothing else pending: these three pass nobody over
        c.submit(f"u{i}", request("p2", f"x{i}"), f"ru{i}", None, now=float(i), urgent=True)
        take(c, float(i))
    c.submit("bulk", request("p1", *ids(300)), "r1", None, now=3.0)
    served = []
    for i in range(4):
        c.submit(f"v{i}", request("p2", f"y{i}"), f"rv{i}", None, now=3.0, urgent=True)
        served.append(take(c, 3.0).key.project_id)
    assert served == ["p2", "p2", "p2", "p1"]


def test_the_urgent_run_starts_afresh_once_nothing_urgent_is_pending() -> None:
    c = scarce_core()
    c.submit("bulk", request("p1", *ids(1000)), "r1", None, now=0.0)
    for i in range(2):  # two urgent calls pass the backlog over
        c.submit(f"u{i}", request("p2", f"x{i}"), f"ru{i}", None, now=1.0, urgent=True)
        take(c, 1.0)
    assert take(c, 1.0).key.project_id == "p1"  # nothing urgent: the backlog
    served = []
    for i in range(4):
        c.submit(f"v{i}", request("p2", f"y{i}"), f"rv{i}", None, now=2.0, urgent=True)
        served.append(take(c, 2.0).key.project_id)
    assert served == ["p2", "p2", "p2", "p1"]  # a fresh run of three, not the one left over


def test_urgent_waiting_counts_urgent_requests_until_answered_or_dropped() -> None:
    c = scarce_core()
    c.submit("u1", request("p1", "a"), "r1", None, now=0.0, urgent=True)
    c.submit("u2", request("p2", "b"), "r2", None, now=0.0, urgent=True)
    c.submit("bulk", request("p1", "c"), "r3", None, now=0.0)
    assert c.urgent_waiting == 2
    batch = take(c, 0.0)
    c.complete(batch.id, job_for(batch), now=1.0)
    assert c.urgent_waiting == 1
    c.drop(["u2"])
    assert c.urgent_waiting == 0


def test_a_dropped_urgent_request_leaves_its_promoted_desktops_to_wait_as_usual() -> None:
    c = scarce_core()
    c.submit("bulk", request("p1", "a"), "r1", None, now=0.0)
    c.submit("u", request("p1", "a"), "ru", None, now=0.0, urgent=True)
    c.drop(["u"])
    assert not c.sendable(0.0)  # a waits for linger again: only a bulk request wants it
    assert c.sendable(LINGER)


def test_a_promoted_desktop_stays_urgent_while_another_urgent_request_waits_for_it() -> None:
    c = scarce_core()
    c.submit("bulk", request("p1", "a"), "r1", None, now=0.0)
    c.submit("u1", request("p1", "a"), "ru1", None, now=0.0, urgent=True)
    c.submit("u2", request("p1", "a"), "ru2", None, now=0.0, urgent=True)
    c.drop(["u1"])
    assert c.sendable(0.0)

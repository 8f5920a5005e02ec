"""The request lifecycle: each delivery in one state, ownership passed on, orphans settled once by the sweep."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from snapworker.core.lifecycle import Lifecycle, Orphan, State

# -- one behaviour each


def test_a_received_delivery_is_held_by_its_reader() -> None:
    life = Lifecycle()
    life.receive("d1", "s1", owner="intake")
    assert (life.state("d1"), life.owner("d1")) == (State.HELD, "intake")


def test_ownership_passes_with_each_move() -> None:
    life = Lifecycle()
    life.receive("d1", "s1", owner="intake")
    assert life.move("d1", State.BATCHED, owner="core")
    assert life.move("d1", State.IN_CALL, owner="call 7")
    assert (life.state("d1"), life.owner("d1")) == (State.IN_CALL, "call 7")


def test_a_delivery_handed_to_a_task_keeps_its_state() -> None:
    life = Lifecycle()
    life.receive("d1", "s1", owner="intake")
    life.move("d1", State.ANSWERED, owner="outcomes")
    assert life.hand("d1", owner="publish task")
    assert (life.state("d1"), life.owner("d1")) == (State.ANSWERED, "publish task")


def test_a_move_that_skips_the_order_changes_nothing() -> None:
    life = Lifecycle()
    life.receive("d1", "s1", owner="intake")
    assert not life.move("d1", State.IN_CALL, owner="call 1")  # never batched
    assert life.state("d1") is State.HELD


def test_a_delivery_is_settled_exactly_once() -> None:
    life = Lifecycle()
    life.receive("d1", "s1", owner="intake")
    assert life.settle("d1")
    assert not life.settle("d1")
    assert life.state("d1") is None


def test_a_lost_sessions_deliveries_are_returned_and_never_settled() -> None:
    life = Lifecycle()
    life.receive("d1", "s1", owner="intake")
    life.receive("d2", "s2", owner="intake")
    assert life.session_lost("s1") == ["d1"]
    assert not life.settle("d1")
    assert life.state("d2") is State.HELD


def test_an_owner_that_ends_leaves_what_it_still_owned_to_the_sweep() -> None:
    life = Lifecycle()
    life.receive("d1", "s1", owner="intake")
    life.receive("d2", "s1", owner="intake")
    life.move("d2", State.BATCHED, owner="core")  # passed on before the reader raised
    assert life.release("intake", ["d1", "d2"], "boom", transient=False) == 1
    assert life.sweep() == [Orphan("d1", "boom", requeue=False)]
    assert life.state("d2") is State.BATCHED


def test_a_cancelled_owners_orphans_are_requeued() -> None:
    life = Lifecycle()
    life.receive("d1", "s1", owner="call 1")
    life.release("call 1", ["d1"], "cancelled", transient=True)
    assert life.sweep() == [Orphan("d1", "cancelled", requeue=True)]


def test_an_orphan_is_swept_once() -> None:
    life = Lifecycle()
    life.receive("d1", "s1", owner="t")
    life.release("t", ["d1"], "boom", transient=False)
    assert len(life.sweep()) == 1
    assert life.sweep() == []


def test_an_orphan_whose_session_was_lost_is_not_swept() -> None:
    life = Lifecycle()
    life.receive("d1", "s1", owner="t")
    life.release("t", ["d1"], "boom", transient=False)
    life.session_lost("s1")
    assert life.sweep() == []


# -- any sequence of events

N = 6
tickets = st.integers(min_value=0, max_value=N - 1)
owners = st.sampled_from(["intake", "gate", "core", "call 1", "call 2", "publish"])
states = st.sampled_from([State.LOOKED_UP, State.BATCHED, State.IN_CALL, State.ANSWERED])
events = st.lists(
    st.one_of(
        st.tuples(st.just("move"), tickets, states, owners),
        st.tuples(st.just("hand"), tickets, owners),  # a task is spawned to carry it
        st.tuples(st.just("settle"), tickets),  # its owner settles it (acked after publishing, requeued, ...)
        st.tuples(st.just("raise"), owners),  # an owner raises at this step
        st.tuples(st.just("cancel"), owners),  # an owner is cancelled at this step
        st.tuples(st.just("lose"), st.sampled_from(["s0", "s1"])),  # a session is lost at this step
        st.tuples(st.just("sweep")),
    ),
    max_size=60,
)


def _settle_orphans(life: Lifecycle, settles: Counter[int]) -> None:
    for orphan in life.sweep():
        if life.settle(orphan.ticket):
            settles[orphan.ticket] += 1  # type: ignore[index]


@settings(max_examples=400, deadline=None)
@given(events)
def test_every_delivery_ends_settled_exactly_once_or_returned_with_its_session(steps: list[tuple[object, ...]]) -> None:
    life = Lifecycle()
    settles: Counter[int] = Counter()
    lost: set[str] = set()
    session_of = {t: f"s{t % 2}" for t in range(N)}
    for t in range(N):
        life.receive(t, session_of[t], owner="intake")
    for step in steps:
        match step:
            case ("move", int(t), State() as state, str(owner)):
                if life.owner(t) is not None:  # only whoever holds a delivery passes it on
                    life.move(t, state, owner=owner)
            case ("hand", int(t), str(owner)):
                if life.owner(t) is not None:
                    life.hand(t, owner)
            case ("settle", int(t)):
                if life.state(t) is not None and life.settle(t):
                    settles[t] += 1
            case ("raise" | "cancel" as how, str(owner)):
                life.release(owner, range(N), f"{owner} {how}", transient=how == "cancel")
            case ("lose", str(session)):
                lost.add(session)
                life.session_lost(session)
            case ("sweep",):
                _settle_orphans(life, settles)
        # at every step each delivery is in one state at most, and settled at most once
        assert all(count == 1 for count in settles.values())
    # the worker stops: every owner ends (cancelled), and the sweep settles what they held
    for owner in ["intake", "gate", "core", "call 1", "call 2", "publish"]:
        life.release(owner, range(N), "stopping", transient=True)
    _settle_orphans(life, settles)
    assert len(life) == 0
    for t in range(N):
        assert settles[t] == 1 or (settles[t] == 0 and session_of[t] in lost)

"""The pause after a throttle answer: jittered, doubled for each overload in a row, reset by calm."""

from __future__ import annotations

import random

import pytest

from snapworker.cloud.pause import ThrottlePause


def pauses() -> ThrottlePause:
    return ThrottlePause((2.0, 5.0), max_pause_s=60.0, calm_s=10.0, rng=random.Random(1))


def test_a_first_throttle_pauses_two_to_five_seconds() -> None:
    assert 2.0 <= pauses().pause(0.0, None, new_overload=True) <= 5.0


def test_each_overload_soon_after_the_last_pause_doubles_the_pause() -> None:
    p = pauses()
    first = p.pause(0.0, None, new_overload=True)
    second = p.pause(first + 1.0, None, new_overload=True)
    assert 4.0 <= second <= 10.0
    third = p.pause(first + 1.0 + second + 1.0, None, new_overload=True)
    assert 8.0 <= third <= 20.0


def test_throttles_of_the_same_overload_do_not_escalate() -> None:
    p = pauses()
    p.pause(0.0, None, new_overload=True)
    assert 2.0 <= p.pause(0.1, None, new_overload=False) <= 5.0


def test_a_calm_period_resets_the_pause() -> None:
    p = pauses()
    first = p.pause(0.0, None, new_overload=True)
    p.pause(first + 1.0, None, new_overload=True)
    assert 2.0 <= p.pause(1000.0, None, new_overload=True) <= 5.0


def test_the_pause_never_exceeds_its_maximum() -> None:
    p = pauses()
    now = 0.0
    for _ in range(20):
        now += p.pause(now, None, new_overload=True)
    assert p.pause(now, None, new_overload=True) == 60.0


@pytest.mark.parametrize("retry_after", [0.0, 7.5, 30.0])
def test_retry_after_is_obeyed_as_it_is(retry_after: float) -> None:
    assert pauses().pause(0.0, retry_after, new_overload=True) == retry_after

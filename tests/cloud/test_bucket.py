"""The pure token bucket: plain numbers in, seconds to wait out."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from snapworker.cloud.bucket import TokenBucket


def test_a_new_bucket_grants_its_whole_capacity_at_once() -> None:
    bucket = TokenBucket(rate=1.0, capacity=3, now=0.0)
    assert [bucket.try_take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.try_take(0.0) == pytest.approx(1.0)


def test_an_empty_bucket_says_how_long_until_the_next_token() -> None:
    bucket = TokenBucket(rate=4.0, capacity=1, now=0.0)
    assert bucket.try_take(0.0) == 0.0
    assert bucket.try_take(0.1) == pytest.approx(0.15)
    assert bucket.try_take(0.25) == 0.0


def test_a_refused_take_takes_nothing() -> None:
    bucket = TokenBucket(rate=1.0, capacity=1, now=0.0)
    bucket.try_take(0.0)
    for _ in range(5):
        assert bucket.try_take(0.5) == pytest.approx(0.5)
    assert bucket.try_take(1.0) == 0.0


def test_delay_looks_without_taking() -> None:
    bucket = TokenBucket(rate=1.0, capacity=1, now=0.0)
    assert bucket.delay(0.0) == 0.0
    assert bucket.delay(0.0) == 0.0
    assert bucket.tokens(0.0) == 1.0


def test_refill_stops_at_capacity() -> None:
    bucket = TokenBucket(rate=10.0, capacity=2, now=0.0)
    bucket.try_take(0.0)
    bucket.try_take(0.0)
    assert bucket.tokens(100.0) == 2.0


def test_set_rate_keeps_what_dripped_before_the_change() -> None:
    bucket = TokenBucket(rate=1.0, capacity=5, now=0.0)
    for _ in range(5):
        bucket.try_take(0.0)
    bucket.set_rate(10.0, now=2.0)  # 2 tokens dripped at the old rate
    assert bucket.tokens(2.0) == pytest.approx(2.0)
    assert bucket.tokens(2.1) == pytest.approx(3.0)


def test_block_until_refuses_until_then() -> None:
    bucket = TokenBucket(rate=100.0, capacity=5, now=0.0)
    bucket.block_until(3.0, now=0.0)
    assert bucket.try_take(1.0) == pytest.approx(2.0)
    assert bucket.try_take(3.0) == 0.0


def test_a_block_ends_with_one_token_not_a_saved_up_burst() -> None:
    bucket = TokenBucket(rate=1.0, capacity=5, now=0.0)
    bucket.block_until(10.0, now=0.0)
    assert bucket.tokens(10.0) == pytest.approx(1.0)
    assert bucket.tokens(12.0) == pytest.approx(3.0)


def test_after_a_block_the_next_calls_follow_at_the_rate() -> None:
    bucket = TokenBucket(rate=0.1, capacity=5, now=0.0)
    bucket.block_until(2.0, now=0.0)
    assert bucket.delay(0.0) == pytest.approx(2.0)
    assert bucket.try_take(2.0) == 0.0
    assert bucket.delay(2.0) == pytest.approx(10.0)


def test_an_earlier_block_does_not_shorten_a_later_one() -> None:
    bucket = TokenBucket(rate=100.0, capacity=1, now=0.0)
    bucket.block_until(5.0, now=0.0)
    bucket.block_until(1.0, now=0.0)
    assert bucket.blocked_until == 5.0
    assert bucket.delay(2.0) == pytest.approx(3.0)


def test_a_clock_stepping_back_removes_no_tokens() -> None:
    bucket = TokenBucket(rate=1.0, capacity=3, now=10.0)
    assert bucket.tokens(5.0) == 3.0
    assert bucket.try_take(5.0) == 0.0
    assert bucket.tokens(10.0) == pytest.approx(2.0)


@pytest.mark.parametrize(("rate", "capacity"), [(0.0, 1), (-1.0, 1), (1.0, 0)])
def test_unusable_rate_or_capacity_is_refused(rate: float, capacity: int) -> None:
    with pytest.raises(ValueError, match="must be"):
        TokenBucket(rate=rate, capacity=capacity, now=0.0)


@given(
    rate=st.floats(min_value=0.5, max_value=50.0),
    capacity=st.integers(min_value=1, max_value=10),
    gaps=st.lists(st.floats(min_value=0.0, max_value=0.5), min_size=1, max_size=300),
)
def test_no_one_second_window_holds_more_than_rate_plus_capacity_takes(
    rate: float, capacity: int, gaps: list[float]
) -> None:
    bucket = TokenBucket(rate=rate, capacity=capacity, now=0.0)
    now, taken = 0.0, []
    for gap in gaps:
        now += gap
        if bucket.try_take(now) == 0.0:
            taken.append(now)
    for i, start in enumerate(taken):
        in_window = sum(1 for t in taken[i:] if t < start + 1.0)
        assert in_window <= rate + capacity + 1e-6

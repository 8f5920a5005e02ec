"""A token bucket that never reads a clock: ``now`` goes in, the seconds to wait come out.

Tokens drip in at ``rate`` per second up to ``capacity``; each call takes one. Over any window of ``T``
seconds at most ``capacity + rate * T`` calls pass, so the peak in any one second is ``capacity + rate``.
Being pure, it is tested with plain numbers and driven by whatever clock the async limiter is given.
"""

from __future__ import annotations

import math

__all__ = ["TokenBucket"]

# Float drift: (1 - tokens) / rate seconds later, the refill may land a hair below 1.0. Count that as a token,
# or a waiter woken on time would find "0.9999999" and sleep again for a nanosecond.
_EPSILON = 1e-9


class TokenBucket:
    """``rate`` tokens per second, at most ``capacity`` saved up; starts full.

    ``block_until`` (for a throttle's pause) grants nothing until a given time, and then one token: the bucket
    and the pause cannot disagree about when the next call may go.
    """

    __slots__ = ("_blocked_until", "_capacity", "_rate", "_tokens", "_updated")

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self._rate = rate
        self._capacity = float(capacity)
        self._tokens = float(capacity)
        self._updated = now
        self._blocked_until = -math.inf

    @property
    def rate(self) -> float:
        return self._rate

    @property
    def capacity(self) -> float:
        return self._capacity

    @property
    def blocked_until(self) -> float:
        return self._blocked_until

    def tokens(self, now: float) -> float:
        """Tokens saved up at ``now`` (a fraction means the next one is on its way)."""
        self._refill(now)
        return self._tokens

    def set_rate(self, rate: float, now: float) -> None:
        """Change the drip rate from ``now`` on; what dripped before ``now`` is kept."""
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        self._refill(now)  # settle the past at the old rate before the new one applies
        self._rate = rate

    def delay(self, now: float) -> float:
        """Seconds from ``now`` until a token may be taken (0.0: one is there now). Takes nothing."""
        self._refill(now)
        token_wait = 0.0 if self._tokens >= 1.0 - _EPSILON else (1.0 - self._tokens) / self._rate
        # Tokens keep dripping while blocked, so the two waits overlap rather than add up.
        return max(token_wait, self._blocked_until - now, 0.0)

    def try_take(self, now: float) -> float:
        """Take a token if one may be taken at ``now`` and return 0.0; else take nothing and return the wait."""
        wait = self.delay(now)
        if wait == 0.0:
            self._tokens = max(self._tokens - 1.0, 0.0)
        return wait

    def block_until(self, until: float, now: float) -> None:
        """Grant nothing before ``until`` (later blocks win; earlier ones change nothing); then one token.

        What would have dripped meanwhile is dropped: a saved-up burst fired the moment a throttle's pause ends
        hits the gateway's limit again at once (measured: four 429s in the same millisecond). So the first call
        after the pause probes alone, and the rest follow at the rate.
        """
        self._refill(now)
        self._blocked_until = max(self._blocked_until, until)
        self._tokens = min(1.0, self._capacity)
        self._updated = max(self._updated, self._blocked_until)

    def _refill(self, now: float) -> None:
        # A clock that steps back (or a caller passing an older ``now``) must not remove tokens.
        elapsed = now - self._updated
        if elapsed > 0:
            self._tokens = min(self._capacity, self._tokens + elapsed * self._rate)
            self._updated = now

"""When to try an API call again, and after how long. Pure: the caller passes the elapsed time and jitter.

Exponential backoff with full jitter (``backoff.expo`` + ``backoff.full_jitter``), bounded by
RETRY_MAX_TRIES tries and RETRY_MAX_TIME_S seconds. ``backoff``'s decorators are not used: a retry must
first wait for the rate limiter (which must not count as a try), honour ``Retry-After`` from the error, and
feed throttles back into the limiter, none of which the decorator's hooks can do; its wait generator and
jitter are used as they are.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import cast

import backoff

from snapworker.cloud.responses import is_busy
from snapworker.errors import ApiCredentialRefused, ApiError, ApiStatusError
from snapworker.settings import Settings

__all__ = ["RetryPolicy"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """The retry rules of one call (see :meth:`next_delay`)."""

    max_tries: int
    max_time_s: float
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(max_tries=settings.retry_max_tries, max_time_s=settings.retry_max_time_s)

    def backoff_delays(self) -> Iterator[float]:
        """Un-jittered waits: base, 2*base, 4*base, ... capped at ``max_delay_s``; one iterator per call."""
        waits = backoff.expo(base=2, factor=self.base_delay_s, max_value=self.max_delay_s)
        next(waits)  # backoff's generators yield None first (they are primed with send(None))
        return cast(Iterator[float], waits)

    def next_delay(
        self, error: ApiError, *, attempt: int, elapsed_s: float, backoff_s: float, idempotent: bool
    ) -> float | None:
        """Seconds to wait before the next try, or None to give up and raise ``error``.

        ``attempt`` is the number of tries made (1 after the first); ``elapsed_s`` the time since the first try
        started; ``backoff_s`` the jittered backoff for this retry. Give up when the error is permanent; on a
        busy desktop (409: retryable, but the sender retries it alone, so the rest of the batch need not wait);
        when the credential was refused (the worker waits for a working one, see ApiCredentialRefused);
        when a non-idempotent call may have been processed (``maybe_created``: the sender reconciles it against
        the API's snapshots before anything is sent again); after ``max_tries`` tries; when the time budget is
        spent; or when ``Retry-After`` asks for more than the budget has left (a retry before then is refused
        again). Otherwise wait the backoff, at least Retry-After, at most what the budget has left.
        """
        if not error.retryable or is_busy(error):
            return None
        if isinstance(error, ApiCredentialRefused):
            return None  # retryable, but not by this call: the worker pauses until the credential works again
        if error.maybe_created and not idempotent:
            return None
        if attempt >= self.max_tries:
            return None
        remaining = self.max_time_s - elapsed_s
        if remaining <= 0:
            return None
        wait = max(backoff_s, 0.0)
        retry_after = error.retry_after_s if isinstance(error, ApiStatusError) else None
        if retry_after is not None:
            if retry_after > remaining:
                return None
            wait = max(wait, retry_after)
        return min(wait, remaining)  # >= retry_after, as retry_after <= remaining

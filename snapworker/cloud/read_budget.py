"""A credential's read budget: every GET (job tracking's reads, reconciliation's snapshot listings) waits for it.

Reads are paced at 90 % of READ_RATE_LIMIT (see the client's headroom), READ_RATE_BURST saved up, at most
MAX_CONCURRENCY in flight, never spending batch-create's budget. :func:`build_read_limiter` picks where the
budget lives:

* with REDIS_URL, in Redis, shared by every worker of the fleet that reads with the credential, exactly as
  batch-create's budget is (:class:`~snapworker.cloud.shared_limiter.SharedRateLimiter`, on keys of its own:
  ``snapworker:read:<credential_id>``), so every worker sets the credential's whole READ_RATE_LIMIT;
* without it, in the process: each worker has its own budget, so each is given its share (budget / N).

With ACCOUNTS_FILE each account's client gets its own, from the account's settings: one read budget per
credential.
"""

from __future__ import annotations

# the pacing of the client's own default read budget: one figure for both (moving it here would need client.py)
from snapworker.cloud.client import _READ_HEADROOM as READ_HEADROOM
from snapworker.cloud.limiter import RateLimiter
from snapworker.cloud.shared_limiter import Loops, SharedRateLimiter, settings_credential_id
from snapworker.settings import Settings

__all__ = ["READ_BUDGET", "build_read_limiter"]

#: The name of the reads' budget in Redis keys (batch-create's is ``rate``).
READ_BUDGET = "read"


def build_read_limiter(settings: Settings, *, loops: Loops | None = None) -> RateLimiter | SharedRateLimiter:
    """The read budget of the credential ``settings`` call with: shared through REDIS_URL if set (its loops run
    by ``loops``, if given), else this process's own."""
    rate, burst = settings.read_rate_limit * READ_HEADROOM, settings.read_rate_burst
    if settings.redis_url is None:
        return RateLimiter(rate, burst, settings.max_concurrency)
    return SharedRateLimiter(
        settings.redis_url.get_secret_value(),
        settings_credential_id(settings),
        rate,
        burst,
        settings.max_concurrency,
        budget=READ_BUDGET,
        loops=loops,
    )

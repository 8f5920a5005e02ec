"""How long urgent requests take in a worker: from the moment it holds one to its result confirmed by the broker.

The intake calls :meth:`UrgentLatency.arrived` for an urgent request as it hands it to the batching core; the
result publisher calls :meth:`UrgentLatency.answered` with the requests whose results the broker confirmed. Only
urgent requests are timed: a bulk request costs one test of an empty dict, nothing more. The figures are a
Prometheus histogram's (cumulative bucket counts, a sum and a count), read at scrape time by
:mod:`snapworker.ops.metrics` as ``snapworker_urgent_request_seconds``.

A request that leaves without its result being published by this worker (its broker session lost, requeued as the
worker stops) is not timed: it is forgotten once it is settled or its session is gone (checked when the number of
requests timed has doubled, so the cost stays O(1) per request on average).
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left
from collections.abc import Iterable
from typing import Protocol

__all__ = ["URGENT_BUCKETS_S", "UrgentLatency"]

#: Upper bounds (seconds) of the histogram's buckets: the promise is "within seconds", so the resolution is there.
URGENT_BUCKETS_S = (0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 300.0)
_FIRST_PRUNE = 64


class _Session(Protocol):
    @property
    def lost(self) -> asyncio.Event: ...


class Held(Protocol):
    """A request message the worker holds (a :class:`~snapworker.amqp.session.Delivery`)."""

    @property
    def settled(self) -> bool: ...
    @property
    def session(self) -> _Session: ...


class UrgentLatency:
    """Arrival times of the urgent requests held, and the histogram of the latencies of those answered."""

    def __init__(self) -> None:
        self._since: dict[Held, float] = {}
        self._prune_at = _FIRST_PRUNE
        #: requests observed per bucket (not cumulative; the last counts those above every bound)
        self.counts = [0] * (len(URGENT_BUCKETS_S) + 1)
        self.count = 0
        self.sum_s = 0.0

    @property
    def timing(self) -> int:
        """Urgent requests being timed now (0 in the normal case: test it before calling :meth:`answered`)."""
        return len(self._since)

    def arrived(self, request: Held, now: float) -> None:
        """``request`` is urgent and held from ``now`` (the event loop's clock)."""
        self._since[request] = now
        if len(self._since) >= self._prune_at:
            self._prune()

    def answered(self, requests: Iterable[Held], now: float) -> None:
        """Their results were confirmed at ``now``: observe those that were timed."""
        for request in requests:
            since = self._since.pop(request, None)
            if since is not None:
                seconds = max(now - since, 0.0)
                self.counts[bisect_left(URGENT_BUCKETS_S, seconds)] += 1
                self.count += 1
                self.sum_s += seconds

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative ``(le, count)`` pairs, ``+Inf`` last, as a Prometheus histogram has them."""
        out: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip(URGENT_BUCKETS_S, self.counts, strict=False):
            running += n
            out.append((f"{bound:g}", running))
        out.append(("+Inf", self.count))
        return out

    def _prune(self) -> None:
        # settled without a result of ours, or its session gone (the broker redelivers it): it will never be
        # answered here, and keeping it would keep its dead session alive
        self._since = {r: t for r, t in self._since.items() if not r.settled and not r.session.lost.is_set()}
        self._prune_at = max(_FIRST_PRUNE, 2 * len(self._since))

"""How many requests a worker should hold at once: the AMQP prefetch window, sized from what it is batching.

With late binding a batch can only be as full as the window lets it be: with ``K`` merge keys active and one
desktop per request, full batches need about ``max_batch * K`` requests held, and a second batch's worth per key
lets the next batch fill while the previous one waits for its call. So the window grows to
``2 * max_batch * K / desktops_per_request`` requests, between ``floor`` (PREFETCH) and ``ceiling``
(PREFETCH_MAX, for memory).

It never grows past what the API can send within ``budget_s`` at ``desktops_per_s`` (rate limit x max_batch):
a request held longer than the broker's acknowledgement timeout is redelivered, and many-desktop requests would
otherwise fill a window that takes hours to send.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["WindowPolicy"]


@dataclass(frozen=True, slots=True)
class WindowPolicy:
    """``size(...)``: the window wanted now. Pure arithmetic; the runtime applies it to the channel."""

    floor: int
    ceiling: int
    max_batch: int
    desktops_per_s: float
    budget_s: float

    def size(self, active_keys: int, desktops_per_request: float) -> int:
        per_request = max(desktops_per_request, 1.0)
        wanted = math.ceil(2 * self.max_batch * max(active_keys, 1) / per_request)
        sendable_in_budget = math.floor(self.desktops_per_s * self.budget_s / per_request)
        return max(self.floor, min(wanted, self.ceiling, sendable_in_budget))

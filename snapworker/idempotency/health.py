"""The idempotency store's health and counters, for /readyz, metrics and logs."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TypeVar

from snapworker.errors import StoreUnavailable

__all__ = ["StoreHealth"]

log = logging.getLogger("snapworker.idempotency")

T = TypeVar("T")


@dataclass(slots=True)
class StoreHealth:
    """``available`` turns False at the first failed store call and True again at the next one that succeeds
    (each change is logged once). Counters only grow."""

    backend: str
    available: bool = True
    calls: int = 0
    seconds: float = 0.0  # wall time the loop waited on store calls, summed
    failures: int = 0
    held: int = 0  # messages requeued because the store could not be read
    from_record: int = 0  # requests answered from their record, without calling the API
    reconciled: dict[str, int] = field(default_factory=lambda: {"created": 0, "absent": 0, "unknown": 0})

    async def timed(self, call: Awaitable[T]) -> T:
        """Await a store call, counting its time and tracking availability."""
        started = time.perf_counter()
        try:
            result = await call
        except StoreUnavailable as exc:
            self.failures += 1
            if self.available:
                self.available = False
                log.error(
                    "idempotency store (%s) unavailable: %s; requests are held, none sent blindly", self.backend, exc
                )
            raise
        finally:
            self.calls += 1
            self.seconds += time.perf_counter() - started
        if not self.available:
            self.available = True
            log.warning("idempotency store (%s) available again: resuming", self.backend)
        return result

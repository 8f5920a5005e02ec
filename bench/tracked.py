"""A measured worker's tracking queues: named after its fresh queues, waited on, deleted afterwards.

A worker "as users run it" tracks the jobs it creates and publishes one completion per request that asked for
it. The bench asks for every completion (SNAPWORKER_COMPLETION_QUEUE set) and gives each run its own tracking
and completion queues, so no run sees another's tracking messages.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from bench.broker import Broker, Queues
from bench.procs import Measured
from snapworker.settings import Settings
from snapworker.tracking.topology import tracking_queues

__all__ = ["TrackingQueues"]

_POLL_S = 0.1


@dataclass(frozen=True)
class TrackingQueues:
    tracking: str
    completions: str

    @classmethod
    def of(cls, queues: Queues) -> TrackingQueues:
        prefix = queues.request.removesuffix(".requests")
        return cls(f"{prefix}.tracking", f"{prefix}.completions")

    def settings(self) -> dict[str, str]:
        """As SNAPWORKER_* settings (without the prefix): tracking on, every completion asked for."""
        return {
            "track_jobs": "true",
            "tracking_queue": self.tracking,
            "completion_queue": self.completions,
            # unbounded, so that the bench can count every completion (the default bound keeps the last 100,000)
            "completion_queue_max_length": "0",
        }

    def names(self) -> list[str]:
        return tracking_queues(Settings(tracking_queue=self.tracking, completion_queue=self.completions))

    async def wait_for_completions(self, broker: Broker, proc: Measured, n: int, timeout_s: float) -> dict[str, Any]:
        """Poll until the completion queue holds ``n`` completions (or the timeout, or the process died); the
        seconds from spawn and the process's CPU then, everything tracking did included."""
        deadline = time.perf_counter() + timeout_s
        count = 0
        while time.perf_counter() < deadline and proc.alive():
            ((count, _),) = await broker.counts([self.completions])
            if count >= n:
                break
            await asyncio.sleep(_POLL_S)
        cpu = proc.cpu_s()
        return {
            "completions": count,
            "all_completed_s": round(time.perf_counter() - proc.started, 2) if count >= n else None,
            "cpu_s_all": cpu,
            "cpu_s_per_1k_all": cpu / n * 1000 if cpu is not None and count >= n else None,
            "vm_hwm_mb_all": proc.hwm_mb(),  # the peak until the last completion, tracking's looks included
        }

    async def delete(self, broker: Broker) -> None:
        await broker.delete_named(self.names())

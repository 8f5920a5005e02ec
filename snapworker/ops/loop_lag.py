"""How late the event loop runs timers: the health check's measure of a loop that is alive but not keeping up.

A timer set for ``interval`` seconds fires late by however long the loop was busy elsewhere (a blocking call, a
CPU-bound burst). That drift is what a liveness probe should see; timing ``await asyncio.sleep(0)`` inside the
probe's own handler measures nothing, because the handler only runs once the loop is free again.
"""

from __future__ import annotations

import asyncio
from collections import deque

__all__ = ["LoopLagMonitor"]


class LoopLagMonitor:
    """Samples timer drift every ``interval_s``; ``lag_s`` is the worst drift of the last ``window`` samples."""

    def __init__(self, interval_s: float = 0.25, window: int = 20) -> None:
        self._interval_s = interval_s
        self._samples: deque[float] = deque(maxlen=window)
        self._task: asyncio.Task[None] | None = None

    @property
    def lag_s(self) -> float:
        return max(self._samples, default=0.0)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._sample())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _sample(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            expected = loop.time() + self._interval_s
            await asyncio.sleep(self._interval_s)
            self._samples.append(max(0.0, loop.time() - expected))

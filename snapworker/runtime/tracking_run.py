"""The tracking loop's life inside a worker: when it connects, and when it closes.

It connects once the first broker session consumes: results (and so tracking) need a session, and a start the
broker refuses then ends with one line of its own, not with a tracking connection retrying beside it. It closes
after the drain (the results the drain published started their tracking), within what is left of the one shutdown
budget, so a SIGTERM never takes more than SHUTDOWN_TIMEOUT_S plus the last round trips.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

from snapworker.runtime.sessions import Sessions
from snapworker.runtime.supervisor import Supervisor
from snapworker.tracking.loop import Tracker

__all__ = ["TrackingRun"]


class TrackingRun:
    """Runs ``tracker`` under the worker's supervisor (see the module). ``stopping`` is the worker's."""

    def __init__(
        self, tracker: Tracker, sessions: Sessions, *, consuming: asyncio.Event, stopping: asyncio.Event
    ) -> None:
        self._tracker = tracker
        self._sessions = sessions
        self._consuming = consuming
        self._stopping = stopping

    def start(self, loops: Supervisor, stack: AsyncExitStack) -> None:
        loops.start("tracking", self._run_once_consuming)
        stack.push_async_callback(self._close, loops)

    async def _run_once_consuming(self) -> None:
        consuming = asyncio.ensure_future(self._consuming.wait())
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({consuming, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            consuming.cancel()
            stopping.cancel()
        if self._sessions.served:
            await self._tracker.run()

    async def _close(self, loops: Supervisor) -> None:
        self._stopping.set()  # the sessions ended, also when the start failed: tracking that never began ends too
        await self._tracker.close(deadline=self._sessions.shutdown_deadline)
        await loops.retire("tracking")

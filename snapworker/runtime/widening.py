"""Widening the prefetch window as more merge keys are busy, so that each key's batches can still fill.

The window (the broker's prefetch) bounds how many requests the worker holds. With one busy merge key, a small
window fills whole batches; with many, each key gets a few requests per window and every batch goes out small.
:class:`~snapworker.core.WindowPolicy` says how wide the window should be for the keys active now; this widens
the session's consumer to it (never narrows: a narrower window comes with the next session).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from snapworker.amqp.session import AmqpSession
from snapworker.core import BatchingCore, WindowPolicy
from snapworker.errors import BrokerError
from snapworker.runtime.tasks import WorkerTasks

__all__ = ["WindowWidener"]

log = logging.getLogger("snapworker.worker")


class WindowWidener:
    """``session()``: the broker session being served now (None between sessions)."""

    def __init__(
        self,
        core: BatchingCore,
        policy: WindowPolicy,
        tasks: WorkerTasks,
        session: Callable[[], AmqpSession | None],
    ) -> None:
        self._core = core
        self._policy = policy
        self._tasks = tasks
        self._session = session
        self._widening = False

    def maybe_widen(self) -> None:
        """Widen if the window is nearly full and the keys it holds want a wider one (cheap: called often)."""
        window = self._core.window
        session = self._session()
        # Looked at only when the window is nearly full: then what it holds shows how many keys are busy.
        if window is None or self._core.open_requests < 0.9 * window or session is None or not session.consuming:
            return
        wanted = self._policy.size(self._core.active_keys, self._core.desktops_per_request)
        if wanted < window * 1.1:
            return  # not worth a consumer swap
        # The core counts with the wider window at once: a window about to grow is not full, and flushing under
        # "pressure" meanwhile would cut small batches that the next deliveries would have filled.
        self._core.window = wanted
        if not self._widening:
            self._widening = True
            self._tasks.spawn(self._widen(session))

    async def _widen(self, session: AmqpSession) -> None:
        try:
            while self._session() is session and session.prefetch < (target := self._core.window or 0):
                await session.widen(target)
                log.info(
                    "prefetch window widened to %d requests (%d merge keys active)", target, self._core.active_keys
                )
        except BrokerError as exc:
            log.warning("%s", exc)
        finally:
            self._widening = False
            if self._session() is session:
                self._core.window = session.prefetch

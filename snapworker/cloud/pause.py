"""How long every call pauses after a throttle answer. Pure: the caller passes ``now``.

Huawei advises waiting 2-5 s after APIG.0308; jitter keeps workers sharing a credential from coming back
together. But the gateway counts calls per minute: once over, it refuses for most of a minute, and pausing 2-5 s
again and again only collects 429s (measured: 12% of calls at five times the limit). So each new overload that
follows the previous pause within ``calm_s`` doubles the pause, up to ``max_pause_s``; a calm period resets it.
A Retry-After answer is obeyed as it is.
"""

from __future__ import annotations

import math
import random

__all__ = ["ThrottlePause"]


class ThrottlePause:
    """``pause(now, retry_after_s, new_overload)``: the seconds to pause every call from ``now``."""

    def __init__(
        self,
        pause_range_s: tuple[float, float] = (2.0, 5.0),
        *,
        max_pause_s: float = 60.0,
        calm_s: float = 10.0,
        rng: random.Random | None = None,
    ) -> None:
        self._range = pause_range_s
        self._max = max_pause_s
        self._calm_s = calm_s
        self._rng = rng or random.Random()
        self._streak = 0
        self._last_end = -math.inf

    def pause(self, now: float, retry_after_s: float | None, *, new_overload: bool) -> float:
        if new_overload:
            self._streak = self._streak + 1 if now < self._last_end + self._calm_s else 0
        if retry_after_s is not None:
            pause = retry_after_s
        else:
            pause = self._rng.uniform(*self._range) * 2 ** min(self._streak, 16)
        pause = min(max(pause, 0.0), self._max)
        self._last_end = max(self._last_end, now + pause)
        return pause

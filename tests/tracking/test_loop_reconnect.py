"""The tracking loop survives a lost broker connection (found by the chaos soak, bench/soak.py): before, the
``BrokerError`` its session raises when the connection drops ended ``Tracker.run`` for good, and every later
result waited ``_READY_WAIT_S`` before its ack and got no completion."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import aio_pika
import pytest

from snapworker.cloud.jobs import JobReader
from snapworker.errors import BrokerError
from snapworker.settings import Settings
from snapworker.tracking.loop import Tracker


class _Reader:
    reads = 0  # what run() reports in its totals


class _Conn:
    async def close(self) -> None:
        pass


async def test_a_lost_tracking_connection_starts_a_new_session_instead_of_ending_the_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tracker = Tracker(Settings(api_url="http://127.0.0.1:9", auth_token="t"), cast(JobReader, _Reader()))
    sessions = 0

    async def connect(*_args: Any, **_kwargs: Any) -> _Conn:
        return _Conn()

    async def serve(_conn: Any) -> None:
        nonlocal sessions
        sessions += 1
        if sessions == 1:
            raise BrokerError("the tracking connection was lost")  # what _serve raises when the broker goes away
        await tracker.close()

    monkeypatch.setattr(aio_pika, "connect", connect)
    monkeypatch.setattr(tracker, "_serve", serve)
    await asyncio.wait_for(tracker.run(), timeout=10)
    assert sessions == 2

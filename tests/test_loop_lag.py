"""The health check's loop-lag measure: timer drift, seen after the loop was blocked, and /healthz that can fail."""

from __future__ import annotations

import asyncio
import time

import aiohttp
from prometheus_client import CollectorRegistry

from snapworker.ops.health import HealthServer
from snapworker.ops.loop_lag import LoopLagMonitor


def block_the_loop(seconds: float) -> None:
    """Block the event loop, as a synchronous call in a handler would (the point of these tests)."""
    time.sleep(seconds)


async def test_a_loop_that_runs_freely_shows_almost_no_lag() -> None:
    monitor = LoopLagMonitor(interval_s=0.02)
    monitor.start()
    await asyncio.sleep(0.2)
    await monitor.stop()
    assert monitor.lag_s < 0.05


async def test_a_blocked_loop_shows_the_time_it_was_blocked() -> None:
    monitor = LoopLagMonitor(interval_s=0.02)
    monitor.start()
    await asyncio.sleep(0.05)
    block_the_loop(0.3)
    await asyncio.sleep(0.05)
    await monitor.stop()
    assert monitor.lag_s >= 0.25


async def test_the_lag_is_forgotten_after_its_window() -> None:
    monitor = LoopLagMonitor(interval_s=0.02, window=3)
    monitor.start()
    await asyncio.sleep(0.03)
    block_the_loop(0.2)
    await asyncio.sleep(0.2)  # more than 3 samples since
    await monitor.stop()
    assert monitor.lag_s < 0.1


async def _healthz(server: HealthServer) -> tuple[int, dict[str, object]]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{server.port}/healthz") as response,
    ):
        return response.status, await response.json()


async def test_healthz_is_unhealthy_after_the_loop_was_blocked_past_the_limit() -> None:
    server = HealthServer(
        CollectorRegistry(), lambda: True, host="127.0.0.1", port=0, lag=LoopLagMonitor(0.02), max_lag_s=0.1
    )
    await server.start()
    try:
        assert (await _healthz(server))[0] == 200
        block_the_loop(0.3)
        await asyncio.sleep(0.05)
        status, body = await _healthz(server)
    finally:
        await server.stop()
    assert status == 503
    assert body["status"] == "event loop lagging"
    assert float(str(body["loop_lag_ms"])) >= 250

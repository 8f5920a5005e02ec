"""Integration fixtures: a real RabbitMQ (fail, not skip, under CI), the simulator, and a running worker."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import urlsplit

import pytest

from snapworker.runtime.worker import Worker
from snapworker.settings import Settings, load_settings
from snapworker.simulator.app import Simulator
from tests.conftest import AMQP_URL, SIM_TOKEN
from tests.integration.harness import BrokerProbe


def _broker_answers(url: str) -> bool:
    parts = urlsplit(url)
    try:
        socket.create_connection((parts.hostname or "localhost", parts.port or 5672), timeout=2).close()
    except OSError:
        return False
    return True


@pytest.fixture
def amqp_url() -> str:
    """The broker URL; under CI a missing broker fails the test instead of skipping it."""
    if not _broker_answers(AMQP_URL):
        message = f"RabbitMQ does not answer at {AMQP_URL}"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return AMQP_URL


@pytest.fixture
def settings(amqp_url: str, simulator: Simulator, unique_name: str) -> Settings:
    """Settings with this test's own queues, the simulator as the API, and short timers."""
    return load_settings(
        amqp_url=amqp_url,
        api_url=simulator.url,
        auth_token=SIM_TOKEN,
        request_queue=f"{unique_name}.requests",
        result_queue=f"{unique_name}.results",
        error_queue=f"{unique_name}.errors",
        dead_letter_queue=f"{unique_name}.dead-letter",
        # tracking is off here (its tests turn it on): completions would land among other tests' results
        track_jobs=False,
        tracking_queue=f"{unique_name}.tracking",
        completion_queue=f"{unique_name}.completions",
        linger_ms=50,
        rate_limit=200.0,
        rate_burst=50,
        retry_max_time_s=5.0,
        retry_max_tries=3,
        read_timeout_s=5.0,
        reconcile_delay_s=1.0,
        shutdown_timeout_s=5.0,
        consumer_check_s=0.5,
    )


@pytest.fixture
async def probe(settings: Settings) -> AsyncIterator[BrokerProbe]:
    """Publishes test requests and collects results; deletes every queue of the test at the end."""
    async with BrokerProbe(settings) as p:
        yield p


@pytest.fixture
async def worker(settings: Settings, probe: BrokerProbe) -> AsyncIterator[Worker]:
    """A Worker running in this event loop, consuming; closed (drained) at the end."""
    w = Worker(settings)
    task = asyncio.create_task(w.run())
    await asyncio.wait_for(w.consuming.wait(), timeout=10)
    try:
        yield w
    finally:
        await w.close()
        await asyncio.wait_for(task, timeout=30)


@pytest.fixture
async def start_worker(settings: Settings, probe: BrokerProbe) -> AsyncIterator[Callable[..., Awaitable[Worker]]]:
    """Starts workers with settings overrides (``await start_worker(linger_ms=1000)``); closes them at the end."""
    started: list[tuple[Worker, asyncio.Task[None]]] = []

    async def start(**overrides: object) -> Worker:
        w = Worker(settings.model_copy(update=overrides))
        task = asyncio.create_task(w.run())
        started.append((w, task))
        await asyncio.wait_for(w.consuming.wait(), timeout=10)
        return w

    try:
        yield start
    finally:
        for w, task in started:
            await w.close()
            await asyncio.wait_for(task, timeout=30)

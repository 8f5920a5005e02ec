"""Metrics, health and logs of a running worker, on the real broker and the simulator."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest

from snapworker.ops.logs import configure_logging
from snapworker.runtime.worker import Worker
from snapworker.settings import Settings
from tests.helpers import unused_loopback_port
from tests.integration.harness import BrokerProbe

pytestmark = pytest.mark.broker


@pytest.fixture
async def observed(settings: Settings, probe: BrokerProbe) -> AsyncIterator[tuple[Worker, str]]:
    """A worker serving metrics and health; yields it and the endpoint's base URL."""
    port = unused_loopback_port()
    # unpartitioned: one consumer on the request queue, whose loss /readyz must show (a partitioned worker's router
    # loses its session at once and reconnects, see test_partitions.py)
    update = {"metrics_port": port, "consumer_check_s": 60.0, "partitions": 0}
    worker = Worker(settings.model_copy(update=update))
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(worker.consuming.wait(), timeout=10)
    try:
        yield worker, f"http://127.0.0.1:{port}"
    finally:
        await worker.close()
        await asyncio.wait_for(task, timeout=30)


async def _get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        return response.status, await response.text()


async def test_healthz_answers_while_the_loop_runs(observed: tuple[Worker, str]) -> None:
    _, base = observed
    status, body = await _get(f"{base}/healthz")
    assert status == 200
    assert json.loads(body)["status"] == "ok"


async def test_readyz_is_ready_while_consuming(observed: tuple[Worker, str]) -> None:
    _, base = observed
    status, _ = await _get(f"{base}/readyz")
    assert status == 200


async def test_readyz_is_not_ready_when_connected_but_not_consuming(
    observed: tuple[Worker, str], probe: BrokerProbe, settings: Settings
) -> None:
    _, base = observed
    # deleting the queue makes the broker cancel our consumer while the connection stays up
    await probe.channel.queue_delete(settings.request_queue)
    for _ in range(50):
        status, body = await _get(f"{base}/readyz")
        if status == 503:
            break
        await asyncio.sleep(0.05)
    assert status == 503
    assert "not consuming" in body


async def test_metrics_count_requests_batches_and_api_calls(observed: tuple[Worker, str], probe: BrokerProbe) -> None:
    _, base = observed
    await probe.publish_many([{"project_id": "p1", "desktop_ids": [f"d{i}"]} for i in range(5)])
    await probe.publish(b"not json")
    await probe.wait_for(6)
    await asyncio.sleep(0.2)  # the last ack and counters follow the confirm
    status, text = await _get(f"{base}/metrics")
    assert status == 200
    lines = set(text.splitlines())
    assert 'snapworker_requests_total{status="accepted"} 5.0' in lines
    assert 'snapworker_requests_total{status="invalid"} 1.0' in lines
    assert "snapworker_dead_lettered_total 1.0" in lines
    assert 'snapworker_batches_total{reason="linger"} 1.0' in lines
    assert 'snapworker_batch_fill_desktops_bucket{le="5"} 1.0' in lines
    assert 'snapworker_api_call_seconds_count{status_class="2xx"} 1.0' in lines
    assert any(line.startswith("snapworker_limiter_rate_calls_per_second ") for line in lines)
    # bounded label sets: no request or desktop IDs anywhere
    assert "d0" not in text
    assert "p1" not in text


@pytest.fixture
def secret_password() -> Iterator[tuple[str, str]]:
    """A RabbitMQ user with a password no test prints; removed afterwards."""
    user, password = f"sw-{uuid.uuid4().hex[:8]}", f"pw-{uuid.uuid4().hex}"
    subprocess.run(["rabbitmqctl", "add_user", user, password], check=True, capture_output=True)
    subprocess.run(["rabbitmqctl", "set_permissions", user, ".*", ".*", ".*"], check=True, capture_output=True)
    try:
        yield user, password
    finally:
        subprocess.run(["rabbitmqctl", "delete_user", user], check=False, capture_output=True)


async def _logged_flow(flow: Settings, probe: BrokerProbe, *messages: dict[str, object] | bytes) -> str:
    """Run a worker with ``flow``'s logging until every message is answered; return what it logged."""
    captured = io.StringIO()
    handler = configure_logging(flow, stream=captured)
    try:
        worker = Worker(flow)
        task = asyncio.create_task(worker.run())
        await asyncio.wait_for(worker.consuming.wait(), timeout=10)
        for message in messages:
            await probe.publish(message, correlation_id="c1")
        await probe.wait_for(len(messages))
        await worker.close()
        await task
    finally:
        logging.getLogger().removeHandler(handler)
    return captured.getvalue()


async def test_no_secret_appears_in_debug_logs_of_a_whole_flow(
    settings: Settings, probe: BrokerProbe, secret_password: tuple[str, str]
) -> None:
    user, password = secret_password
    token = settings.auth_token
    assert token is not None
    flow = settings.model_copy(
        update={"amqp_url": type(settings.amqp_url)(f"amqp://{user}:{password}@127.0.0.1:5672/"), "log_level": "DEBUG"}
    )
    output = await _logged_flow(flow, probe, {"project_id": "p1", "desktop_ids": ["d1"]}, b"not json")
    assert "result accepted published" in output  # the flow really logged at DEBUG
    assert password not in output
    assert token.get_secret_value() not in output


async def test_json_logs_carry_request_and_project_ids(settings: Settings, probe: BrokerProbe) -> None:
    flow = settings.model_copy(update={"log_level": "DEBUG", "log_format": "json"})
    output = await _logged_flow(flow, probe, {"project_id": "p1", "desktop_ids": ["d1"], "request_id": "r-77"})
    entries = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    published = [e for e in entries if e["message"].startswith("result accepted published")]
    assert published
    assert published[0]["request_id"] == "r-77"
    assert published[0]["project_id"] == "p1"
    assert published[0]["job_id"]

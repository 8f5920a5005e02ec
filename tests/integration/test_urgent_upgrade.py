"""Upgrading a deployment to urgent queues loses nothing: the request queue keeps its declaration (no new argument,
so no PRECONDITION_FAILED), the new queues are new, and the requests already waiting are all answered.

The request queue is declared here as the version before urgent queues did (and unpartitioned, its old default),
with requests in it; then a worker of this version starts on it with its defaults.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import aio_pika
import pytest

from snapworker.amqp.partitioning import request_queues, urgent_queue
from snapworker.client import SnapshotClient
from snapworker.runtime.worker import Worker
from snapworker.settings import Settings
from tests.integration.harness import BrokerProbe

pytestmark = pytest.mark.broker

WAITING = 200


def _old_request_queue_arguments(settings: Settings) -> dict[str, Any]:
    """What the version before urgent queues declared the request queue with (kept the same since)."""
    arguments: dict[str, Any] = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": settings.dead_letter_queue}
    if settings.queue_type == "quorum":
        arguments |= {"x-queue-type": "quorum", "x-delivery-limit": settings.delivery_limit}
    return arguments


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
async def test_a_worker_with_urgent_queues_takes_over_an_existing_request_queue_and_loses_nothing(
    queue_type: str,
    settings: Settings,
    probe: BrokerProbe,
    unique_name: str,
    start_worker: Callable[..., Awaitable[Worker]],
) -> None:
    # a request queue of its own: the probe declared the test's usual one already, as a classic queue
    old = settings.model_copy(update={"queue_type": queue_type, "request_queue": f"{unique_name}.old-requests"})
    for queue in request_queues(old.request_queue, old.partitions):
        probe.forget_at_exit(queue)  # deleted at the end, the new ones included
    ids = [f"old-{i}" for i in range(WAITING)]
    async with await aio_pika.connect(old.amqp_url.get_secret_value()) as conn:
        channel = await conn.channel(publisher_confirms=True)
        await channel.declare_queue(old.request_queue, durable=True, arguments=_old_request_queue_arguments(old))
        for i, request_id in enumerate(ids):
            body = json.dumps({"project_id": f"p{i % 3}", "desktop_ids": [f"d{i}"]}).encode()
            message = aio_pika.Message(body, content_type="application/json", message_id=request_id)
            await channel.default_exchange.publish(message, routing_key=old.request_queue)
    assert await probe.queue_depth(old.request_queue) == WAITING

    await start_worker(queue_type=queue_type, request_queue=old.request_queue)  # defaults: partitioned, urgent queues
    answered = await probe.wait_for_requests(ids, timeout=60)
    assert set(answered.values()) == {1}
    assert {r.status for r in probe.results()} == {"accepted"}

    # the urgent queue exists now, of the request queue's type, and serves
    async with SnapshotClient(old) as client:
        result = await client.create_snapshots("p9", ["urgent-1"], priority="urgent", timeout=30)
    assert result.status == "accepted"
    assert await probe.queue_depth(urgent_queue(old.request_queue)) == 0

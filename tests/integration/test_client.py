"""SnapshotClient on the real broker: request/reply with a running worker, fire and forget, refusals, timeouts."""

from __future__ import annotations

import asyncio

import pytest

from snapworker.client import SnapshotClient
from snapworker.contract.models import SnapshotRequest
from snapworker.errors import BrokerError, InvalidMessage, ResultTimeout
from snapworker.runtime.worker import Worker
from snapworker.settings import Settings, load_settings
from tests.integration.harness import BrokerProbe

pytestmark = pytest.mark.broker


async def test_create_snapshots_returns_the_accepted_result(worker: Worker, settings: Settings) -> None:
    async with SnapshotClient(settings) as client:
        result = await client.create_snapshots("p1", ["d1", "d2"], request_id="r-1", timeout=30)
    assert (result.status, result.request_id, result.project_id) == ("accepted", "r-1", "p1")
    assert [job.desktop_ids for job in result.jobs] == [("d1", "d2")]


async def test_concurrent_calls_each_get_their_own_result(worker: Worker, settings: Settings) -> None:
    async with SnapshotClient(settings) as client:
        results = await asyncio.gather(
            *(client.create_snapshots("p1", [f"d{i}"], request_id=f"r-{i}", timeout=30) for i in range(20))
        )
    assert [r.request_id for r in results] == [f"r-{i}" for i in range(20)]
    assert [r.jobs[0].desktop_ids for r in results] == [(f"d{i}",) for i in range(20)]


async def test_a_published_request_is_confirmed_and_its_result_reaches_the_result_queue(
    worker: Worker, probe: BrokerProbe, settings: Settings
) -> None:
    async with SnapshotClient(settings) as client:
        correlation_id = await client.publish(SnapshotRequest(project_id="p1", desktop_ids=("d1",)))
    [received] = await probe.wait_for(1, timeout=30)
    assert received.queue == settings.result_queue
    assert received.correlation_id == correlation_id
    assert (received.result.status, received.result.request_id) == ("accepted", correlation_id)


async def test_no_result_in_time_raises_result_timeout(probe: BrokerProbe, settings: Settings) -> None:
    # no worker fixture: nobody consumes the request queue
    async with SnapshotClient(settings) as client:
        with pytest.raises(ResultTimeout) as caught:
            await client.create_snapshots("p1", ["d1"], timeout=0.5)
    assert caught.value.timeout_s == 0.5
    assert await probe.queue_depth(settings.request_queue) == 1


async def test_invalid_arguments_are_refused_before_publishing(probe: BrokerProbe, settings: Settings) -> None:
    async with SnapshotClient(settings) as client:
        with pytest.raises(InvalidMessage, match="project_id"):
            await client.create_snapshots("p/../x", ["d1"], timeout=5)
        with pytest.raises(InvalidMessage, match="desktop_ids"):
            await client.create_snapshots("p1", [], timeout=5)
    assert await probe.queue_depth(settings.request_queue) == 0


async def test_an_unvalidated_request_object_is_refused_before_publishing(
    probe: BrokerProbe, settings: Settings
) -> None:
    forged = SnapshotRequest.model_construct(project_id="p1", desktop_ids=())
    async with SnapshotClient(settings) as client:
        with pytest.raises(InvalidMessage, match="desktop_ids"):
            await client.publish(forged)
    assert await probe.queue_depth(settings.request_queue) == 0


async def test_publishing_to_a_missing_request_queue_raises_broker_error(amqp_url: str, unique_name: str) -> None:
    settings = load_settings(amqp_url=amqp_url, request_queue=f"{unique_name}.nobody-declared-this")
    async with SnapshotClient(settings) as client:
        with pytest.raises(BrokerError, match="nothing was queued"):
            await client.publish(SnapshotRequest(project_id="p1", desktop_ids=("d1",)))


async def test_closing_the_client_fails_a_call_waiting_for_its_result(probe: BrokerProbe, settings: Settings) -> None:
    client = SnapshotClient(settings)
    waiting = asyncio.create_task(client.create_snapshots("p1", ["d1"], timeout=30))
    await _until_queued(probe, settings)
    await client.close()
    with pytest.raises(BrokerError, match="closed"):
        await asyncio.wait_for(waiting, timeout=5)


async def test_an_unreachable_broker_raises_broker_error(unused_tcp_port: int) -> None:
    client = SnapshotClient(f"amqp://guest:guest@127.0.0.1:{unused_tcp_port}/")
    with pytest.raises(BrokerError, match="cannot reach RabbitMQ"):
        await client.connect()


async def _until_queued(probe: BrokerProbe, settings: Settings) -> None:
    """Until a request is on the request queue (published: from then on its caller waits for the result)."""
    async with asyncio.timeout(10):
        # Polled: the broker signals an arrival only to a consumer, and consuming would take the request.
        while await probe.queue_depth(settings.request_queue) == 0:  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def _lose_connection(client: SnapshotClient) -> None:
    # What a broker restart or a network failure does to the client, without disturbing other tests' connections.
    conn = client._conn
    assert conn is not None
    await conn.close(ConnectionResetError("test: connection lost"))


async def test_a_lost_connection_fails_the_calls_waiting_for_results(probe: BrokerProbe, settings: Settings) -> None:
    async with SnapshotClient(settings) as client:
        waiting = asyncio.create_task(client.create_snapshots("p1", ["d1"], timeout=30))
        await _until_queued(probe, settings)
        await _lose_connection(client)
        with pytest.raises(BrokerError, match="lost the broker connection"):
            await asyncio.wait_for(waiting, timeout=5)


async def test_the_next_call_after_a_lost_connection_reconnects(worker: Worker, settings: Settings) -> None:
    async with SnapshotClient(settings) as client:
        await client.create_snapshots("p1", ["d1"], timeout=30)
        await _lose_connection(client)
        result = await client.create_snapshots("p1", ["d2"], timeout=30)
    assert result.status == "accepted"

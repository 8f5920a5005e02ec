"""SnapshotClient's priority on the real broker: the body field and the AMQP priority property, both set, so the
worker and a priority-enabled queue read the same urgency. No worker consumes unless a test asks for one."""

from __future__ import annotations

import json

import pytest
from aio_pika.abc import AbstractIncomingMessage

from snapworker.amqp.partitioning import urgent_queue
from snapworker.client import SnapshotClient
from snapworker.contract.models import SnapshotRequest
from snapworker.contract.priority import is_urgent
from snapworker.errors import ResultTimeout
from snapworker.runtime.worker import Worker
from snapworker.settings import Settings
from tests.integration.harness import BrokerProbe
from tests.integration.test_tools import _env, _snapworker

pytestmark = pytest.mark.broker


async def _queued(probe: BrokerProbe, queue: str) -> AbstractIncomingMessage:
    return await (await probe.channel.get_queue(queue)).get(no_ack=True)


def _urgent(message: AbstractIncomingMessage) -> bool:
    return is_urgent(SnapshotRequest.model_validate_json(message.body).priority, message.priority)


async def test_publish_sends_an_urgent_request_with_the_field_and_priority_9(
    probe: BrokerProbe, settings: Settings
) -> None:
    async with SnapshotClient(settings) as client:
        await client.publish(SnapshotRequest(project_id="p1", desktop_ids=("d1",), priority="urgent"))
    queued = await _queued(probe, urgent_queue(settings.request_queue))  # the urgent queue: see docs/urgent.md
    assert json.loads(queued.body)["priority"] == "urgent"
    assert queued.priority == 9
    assert _urgent(queued)


async def test_publish_sends_a_normal_request_with_the_field_and_priority_0(
    probe: BrokerProbe, settings: Settings
) -> None:
    async with SnapshotClient(settings) as client:
        await client.publish(SnapshotRequest(project_id="p1", desktop_ids=("d1",), priority="normal"))
    queued = await _queued(probe, settings.request_queue)
    assert (json.loads(queued.body)["priority"], queued.priority) == ("normal", 0)
    assert not _urgent(queued)


async def test_a_request_without_a_priority_is_sent_as_before_and_is_normal(
    probe: BrokerProbe, settings: Settings
) -> None:
    async with SnapshotClient(settings) as client:
        await client.publish(SnapshotRequest(project_id="p1", desktop_ids=("d1",)))
    queued = await _queued(probe, settings.request_queue)
    assert "priority" not in json.loads(queued.body)
    assert queued.priority in (None, 0)  # aio-pika sends 0 when none is given, as it always did
    assert not _urgent(queued)


async def test_create_snapshots_sends_its_priority_as_field_and_property(
    probe: BrokerProbe, settings: Settings
) -> None:
    async with SnapshotClient(settings) as client:
        with pytest.raises(ResultTimeout):  # nobody consumes: only what was queued matters here
            await client.create_snapshots("p1", ["d1"], priority="urgent", timeout=0.5)
    queued = await _queued(probe, urgent_queue(settings.request_queue))
    assert (json.loads(queued.body)["priority"], queued.priority) == ("urgent", 9)


async def test_the_worker_accepts_an_urgent_request(worker: Worker, settings: Settings) -> None:
    async with SnapshotClient(settings) as client:
        result = await client.create_snapshots("p1", ["d1"], priority="urgent", timeout=30)
    assert result.status == "accepted"


async def test_publish_file_sets_each_lines_priority_as_the_amqp_property(
    probe: BrokerProbe, settings: Settings
) -> None:
    lines = [
        {"project_id": "p1", "desktop_ids": ["d1"], "priority": "urgent"},
        {"project_id": "p1", "desktop_ids": ["d2"]},
    ]
    stdin = "".join(json.dumps(line) + "\n" for line in lines).encode()
    ran = await _snapworker("publish", "--file", "-", "--in-flight", "1", env=_env(settings), stdin=stdin)
    assert ran.code == 0, ran.err
    urgent = await _queued(probe, urgent_queue(settings.request_queue))
    bulk = await _queued(probe, settings.request_queue)
    assert [(json.loads(m.body).get("priority"), m.priority) for m in (urgent, bulk)] == [("urgent", 9), (None, 0)]

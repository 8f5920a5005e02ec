"""``publish --dry-run`` prints what ``publish`` really queues: compared against the broker's copy (no worker)."""

from __future__ import annotations

import json

import pytest

from snapworker.amqp.partitioning import urgent_queue
from snapworker.settings import Settings
from tests.integration.harness import BrokerProbe
from tests.integration.test_tools import _env, _snapworker

pytestmark = pytest.mark.broker

OPTIONS = (
    "--project", "p1", "--desktop", "d1", "--desktop", "d2", "--request-id", "up-7",
    "--snapshot-name", "pre-upgrade", "--description", "nightly", "--disk-type", "ALL", "--reply-to", "mine",
)  # fmt: skip


async def test_dry_run_prints_the_body_and_properties_that_publish_queues(
    probe: BrokerProbe, settings: Settings
) -> None:
    dry = await _snapworker("publish", *OPTIONS, "--dry-run", env=_env(settings))
    assert dry.code == 0, dry.err
    assert await probe.queue_depth(settings.request_queue) == 0
    printed = dict(line.split(": ", 1) for line in dry.out.splitlines())
    ran = await _snapworker("publish", *OPTIONS, env=_env(settings))
    assert ran.code == 0, ran.err
    queued = await (await probe.channel.get_queue(settings.request_queue)).get(no_ack=True)
    assert queued.body.decode() == printed["body"]
    properties = json.loads(printed["properties"])
    assert properties["correlation_id"] != queued.correlation_id  # a new one each time
    assert properties == {
        "content_type": queued.content_type,
        "delivery_mode": int(queued.delivery_mode or 0),
        "message_id": queued.message_id,
        "correlation_id": properties["correlation_id"],
        "reply_to": queued.reply_to,
    }


async def test_dry_run_of_an_urgent_request_prints_the_field_and_the_priority_that_publish_queues(
    probe: BrokerProbe, settings: Settings
) -> None:
    options = ("--project", "p1", "--desktop", "d1", "--priority", "urgent")
    dry = await _snapworker("publish", *options, "--dry-run", env=_env(settings))
    assert dry.code == 0, dry.err
    printed = dict(line.split(": ", 1) for line in dry.out.splitlines())
    assert json.loads(printed["body"])["priority"] == "urgent"
    assert json.loads(printed["properties"])["priority"] == 9
    ran = await _snapworker("publish", *options, env=_env(settings))
    assert ran.code == 0, ran.err
    queued = await (await probe.channel.get_queue(urgent_queue(settings.request_queue))).get(no_ack=True)
    assert (queued.body.decode(), queued.priority) == (printed["body"], 9)

"""``snapworker replay`` as a user runs it, against the real broker with this test's own queues (no worker)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from snapworker.amqp.partitioning import request_queues
from snapworker.amqp.session import REASON_HEADER
from snapworker.amqp.topology import declare_topology
from snapworker.settings import Settings
from snapworker.tools.replay import REPLAYED_HEADER
from tests.integration.test_tools import _env, _snapworker

pytestmark = pytest.mark.broker


@pytest.fixture
async def channel(settings: Settings) -> AsyncIterator[AbstractChannel]:
    """A channel to the test's queues, declared as a worker would (and deleted at the end); nobody consumes."""
    conn = await aio_pika.connect(settings.amqp_url.get_secret_value())
    try:
        ch = await conn.channel()
        await declare_topology(ch, settings)
        yield ch
        for name in (settings.result_queue, settings.error_queue, settings.dead_letter_queue):
            await ch.queue_delete(name)
        for name in request_queues(settings.request_queue, settings.partitions):  # partitions and urgent twins
            await ch.queue_delete(name)
    finally:
        await conn.close()


async def _dead(channel: AbstractChannel, settings: Settings, project: str, reason: str, **headers: Any) -> None:
    body = json.dumps({"project_id": project, "desktop_ids": ["d1"]}).encode()
    message = aio_pika.Message(
        body,
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=f"m-{project}-{reason}",
        correlation_id=f"c-{project}",
        reply_to="someone.replies",
        headers={REASON_HEADER: reason, **headers},
    )
    await channel.default_exchange.publish(message, routing_key=settings.dead_letter_queue)


async def _drain(channel: AbstractChannel, queue: str) -> list[AbstractIncomingMessage]:
    got = []
    source = await channel.get_queue(queue)
    while (message := await source.get(no_ack=True, fail=False)) is not None:
        got.append(message)
    return got


async def test_replay_moves_the_dead_letters_whose_reason_matches_and_leaves_the_others(
    channel: AbstractChannel, settings: Settings
) -> None:
    await _dead(channel, settings, "p1", "SNAPWORKER.INTERNAL: boom")
    await _dead(channel, settings, "p2", "SNAPWORKER.INVALID_REQUEST: desktop_ids: Field required")
    await _dead(channel, settings, "p3", "snapworker.internal: again")
    ran = await _snapworker("replay", "--reason-contains", "internal", env=_env(settings))
    assert ran.code == 0, ran.err
    assert ran.out.splitlines()[-1] == "moved 2 of 3 dead letters looked at; 1 left in the dead-letter queue"
    moved = await _drain(channel, settings.request_queue)
    assert sorted(m.message_id or "" for m in moved) == [
        "m-p1-SNAPWORKER.INTERNAL: boom",
        "m-p3-snapworker.internal: again",
    ]
    assert [m.message_id for m in await _drain(channel, settings.dead_letter_queue)] == [
        "m-p2-SNAPWORKER.INVALID_REQUEST: desktop_ids: Field required"
    ]


async def test_a_replayed_copy_keeps_body_and_properties_without_the_reason_and_counts_the_replay(
    channel: AbstractChannel, settings: Settings
) -> None:
    await _dead(channel, settings, "p1", "SNAPWORKER.INTERNAL: boom", **{REPLAYED_HEADER: 1, "x-other": "kept"})
    ran = await _snapworker("replay", env=_env(settings))
    assert ran.code == 0, ran.err
    [copy] = await _drain(channel, settings.request_queue)
    assert json.loads(copy.body) == {"project_id": "p1", "desktop_ids": ["d1"]}
    assert (copy.content_type, copy.correlation_id, copy.reply_to) == ("application/json", "c-p1", "someone.replies")
    assert copy.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert REASON_HEADER not in copy.headers
    assert copy.headers[REPLAYED_HEADER] == 2
    assert copy.headers["x-other"] in ("kept", b"kept")


async def test_replay_with_project_moves_only_that_projects_dead_letters(
    channel: AbstractChannel, settings: Settings
) -> None:
    for project in ("p1", "p2", "p1"):
        await _dead(channel, settings, project, "r")
    ran = await _snapworker("replay", "--project", "p1", env=_env(settings))
    assert ran.code == 0, ran.err
    assert [json.loads(m.body)["project_id"] for m in await _drain(channel, settings.request_queue)] == ["p1", "p1"]
    assert len(await _drain(channel, settings.dead_letter_queue)) == 1


async def test_replay_dry_run_prints_what_would_move_and_moves_nothing(
    channel: AbstractChannel, settings: Settings
) -> None:
    await _dead(channel, settings, "p1", "SNAPWORKER.INTERNAL: boom")
    await _dead(channel, settings, "p2", "other")
    ran = await _snapworker("replay", "--dry-run", "--reason-contains", "INTERNAL", env=_env(settings))
    assert ran.code == 0, ran.err
    assert ran.out.splitlines() == [
        "would move  m-p1-SNAPWORKER.INTERNAL: boom  project=p1  reason=SNAPWORKER.INTERNAL: boom",
        "would move 1 of 2 dead letters looked at; 2 left in the dead-letter queue",
    ]
    assert await _drain(channel, settings.request_queue) == []
    assert [m.message_id for m in await _drain(channel, settings.dead_letter_queue)] == [
        "m-p1-SNAPWORKER.INTERNAL: boom",
        "m-p2-other",
    ]


async def test_replay_moves_no_more_than_limit(channel: AbstractChannel, settings: Settings) -> None:
    for project in ("p1", "p2", "p3"):
        await _dead(channel, settings, project, "r")
    ran = await _snapworker("replay", "--limit", "2", env=_env(settings))
    assert ran.code == 0, ran.err
    assert len(await _drain(channel, settings.request_queue)) == 2
    assert [m.message_id for m in await _drain(channel, settings.dead_letter_queue)] == ["m-p3-r"]


async def test_replay_ends_when_no_dead_letter_matches(channel: AbstractChannel, settings: Settings) -> None:
    for project in ("p1", "p2"):
        await _dead(channel, settings, project, "r")
    ran = await _snapworker("replay", "--project", "nobody", env=_env(settings), timeout=20)
    assert ran.code == 0, ran.err
    assert ran.out.strip() == "moved 0 of 2 dead letters looked at; 2 left in the dead-letter queue"
    assert len(await _drain(channel, settings.dead_letter_queue)) == 2


async def test_replay_without_a_request_queue_says_so_and_moves_nothing(settings: Settings) -> None:
    # no channel fixture: none of this test's queues exist
    ran = await _snapworker("replay", env=_env(settings))
    assert ran.code == 1
    assert ran.err.strip() == (
        f"snapworker replay: the request queue {settings.request_queue!r} does not exist "
        "(snapworker check --declare creates it)"
    )

"""publish_confirmed against a real RabbitMQ: what its confirms say is what the broker did.

The fast path keeps aiormq's per-channel delivery-tag counter itself; if it ever ran ahead of the broker's (a
cancellation or an error midway), the confirms of later publishes on the same channel would resolve the wrong
futures. So after each way a group can go wrong, :func:`_assert_confirms_tell_the_truth` publishes to a queue
that takes only three messages and nacks the rest, and compares what the futures said with what arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import cast

import aiormq
import pytest
from aiormq.abc import AbstractConnection
from pamqp import commands as spec
from pamqp.common import FieldTable

from snapworker.amqp.publish import MAX_BODY_BYTES, Outgoing, publish_confirmed
from snapworker.errors import MessageTooLarge

pytestmark = pytest.mark.broker

Declare = Callable[..., Awaitable[str]]

# a queue of at most this many messages, nacking further publishes (x-overflow reject-publish)
_TRUTH_QUEUE_LENGTH = 3


@pytest.fixture
async def connection(amqp_url: str) -> AsyncIterator[AbstractConnection]:
    conn = await aiormq.connect(amqp_url)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def channel(connection: AbstractConnection) -> aiormq.Channel:
    """A publishing channel set up as AmqpSession sets up its own: confirms on, returns raising."""
    return cast(aiormq.Channel, await connection.channel(publisher_confirms=True, on_return_raises=True))


@pytest.fixture
async def declare(amqp_url: str, connection: AbstractConnection, unique_name: str) -> AsyncIterator[Declare]:
    """Declares this test's queues (``await declare("suffix", **arguments)`` gives the name); deletes them after."""
    admin = await connection.channel()
    names: list[str] = []

    async def declare(suffix: str, **arguments: object) -> str:
        name = f"{unique_name}.{suffix}"
        await admin.queue_declare(name, arguments=cast(aiormq.abc.ArgumentsType, arguments) or None)
        names.append(name)
        return name

    yield declare
    # over a connection of its own: the test's one may be gone when the code under test broke it
    cleanup = await aiormq.connect(amqp_url)
    try:
        cleanup_channel = await cleanup.channel()
        for name in names:
            await cleanup_channel.queue_delete(name)
    finally:
        await cleanup.close()


def _message(queue: str, body: bytes, headers: FieldTable | None = None) -> Outgoing:
    return Outgoing(body, queue, spec.Basic.Properties(delivery_mode=2, headers=headers))


async def _publish(channel: aiormq.Channel, messages: list[Outgoing], **kwargs: int) -> list[BaseException | None]:
    # a confirm resolved onto the wrong future leaves another waiting forever: bound every wait
    return await asyncio.wait_for(publish_confirmed(channel, messages, **kwargs), timeout=10)


async def _arrived(connection: AbstractConnection, queue: str) -> list[bytes]:
    """Every body in ``queue`` (taken out of it), in queue order."""
    reader = await connection.channel()
    bodies = []
    while isinstance((got := await reader.basic_get(queue, no_ack=True)).delivery, spec.Basic.GetOk):
        bodies.append(got.body)
    await reader.close()
    return bodies


async def _assert_confirms_tell_the_truth(
    connection: AbstractConnection, channel: aiormq.Channel, declare: Declare
) -> None:
    """Publish 6 messages on ``channel`` to a queue that takes 3: exactly those that arrived are confirmed."""
    queue = await declare("truth", **{"x-max-length": _TRUTH_QUEUE_LENGTH, "x-overflow": "reject-publish"})
    bodies = [f"truth-{i}".encode() for i in range(2 * _TRUTH_QUEUE_LENGTH)]
    try:
        outcomes = await _publish(channel, [_message(queue, body) for body in bodies])
    except TimeoutError:
        pytest.fail("confirms stopped resolving the futures they belong to")
    confirmed = [body for body, outcome in zip(bodies, outcomes, strict=True) if outcome is None]
    nacked = [
        body
        for body, outcome in zip(bodies, outcomes, strict=True)
        if isinstance(outcome, aiormq.exceptions.DeliveryError)
    ]
    assert (confirmed, nacked) == (bodies[:_TRUTH_QUEUE_LENGTH], bodies[_TRUTH_QUEUE_LENGTH:])
    assert await _arrived(connection, queue) == confirmed


async def test_the_truth_check_passes_on_a_fresh_channel(
    connection: AbstractConnection, channel: aiormq.Channel, declare: Declare
) -> None:
    await _assert_confirms_tell_the_truth(connection, channel, declare)


async def test_a_group_is_confirmed_and_arrives_whole_in_order(
    connection: AbstractConnection, channel: aiormq.Channel, declare: Declare
) -> None:
    queue = await declare("plain")
    bodies = [f"m{i}".encode() for i in range(50)]

    outcomes = await _publish(channel, [_message(queue, body) for body in bodies])

    assert outcomes == [None] * len(bodies)
    assert await _arrived(connection, queue) == bodies


async def test_a_message_to_a_missing_queue_is_returned_and_the_rest_confirmed(
    channel: aiormq.Channel, declare: Declare, unique_name: str
) -> None:
    queue = await declare("plain")

    outcomes = await _publish(
        channel, [_message(queue, b"a"), _message(f"{unique_name}.missing", b"b"), _message(queue, b"c")]
    )

    assert [type(outcome) for outcome in outcomes] == [type(None), aiormq.exceptions.PublishError, type(None)]


async def test_a_body_over_one_frame_arrives_whole(
    connection: AbstractConnection, channel: aiormq.Channel, declare: Declare
) -> None:
    queue = await declare("plain")
    body = os.urandom(2 * channel.max_content_size + 5)

    assert await _publish(channel, [_message(queue, body)]) == [None]
    assert await _arrived(connection, queue) == [body]


async def test_an_oversized_body_is_refused_and_the_rest_of_its_group_published(
    connection: AbstractConnection, channel: aiormq.Channel, declare: Declare
) -> None:
    queue = await declare("plain")
    group = [_message(queue, b"a"), _message(queue, b"x" * 2048), _message(queue, b"c")]

    outcomes = await _publish(channel, group, max_body_bytes=1024)

    assert [type(outcome) for outcome in outcomes] == [type(None), MessageTooLarge, type(None)]
    assert await _arrived(connection, queue) == [b"a", b"c"]


async def test_a_body_over_the_default_limit_is_refused(channel: aiormq.Channel, declare: Declare) -> None:
    queue = await declare("plain")

    [outcome] = await _publish(channel, [_message(queue, bytes(MAX_BODY_BYTES + 1))])

    assert isinstance(outcome, MessageTooLarge)


async def test_after_an_oversized_body_later_confirms_tell_the_truth(
    connection: AbstractConnection, channel: aiormq.Channel, declare: Declare
) -> None:
    queue = await declare("plain")
    group = [_message(queue, b"a"), _message(queue, bytes(MAX_BODY_BYTES + 1)), _message(queue, b"c")]
    with contextlib.suppress(Exception):  # whatever the outcome, the channel must stay in step
        await _publish(channel, group)

    await _assert_confirms_tell_the_truth(connection, channel, declare)


async def test_properties_over_one_frame_are_refused_and_the_connection_lives_on(
    connection: AbstractConnection, channel: aiormq.Channel, declare: Declare
) -> None:
    queue = await declare("plain")
    # RabbitMQ closes the whole connection for a content header frame over frame_max
    huge_headers: FieldTable = {"x-padding": "p" * (channel.max_content_size + 1)}

    [outcome] = await _publish(channel, [_message(queue, b"a", headers=huge_headers)])

    assert isinstance(outcome, MessageTooLarge)
    await _assert_confirms_tell_the_truth(connection, channel, declare)


async def test_cancelling_groups_behind_a_full_write_queue_leaves_later_confirms_truthful(
    connection: AbstractConnection, channel: aiormq.Channel, declare: Declare
) -> None:
    # What the worker's drain does to result publishing: cancel every group in flight. The connection queues
    # at most 10 writes; its writer has not run yet, so the 11th group waits in the queue's put, tags taken.
    queue = await declare("plain")
    groups = [[_message(queue, f"g{g}-{i}".encode()) for i in range(5)] for g in range(30)]
    tasks = [asyncio.create_task(publish_confirmed(channel, group)) for group in groups]
    await asyncio.sleep(0)
    assert channel.write_queue.full()
    assert not any(task.done() for task in tasks)

    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)

    await _assert_confirms_tell_the_truth(connection, channel, declare)


async def test_cancelling_a_group_waiting_for_its_confirms_leaves_later_confirms_truthful(
    connection: AbstractConnection, channel: aiormq.Channel, declare: Declare
) -> None:
    queue = await declare("plain")
    task = asyncio.create_task(publish_confirmed(channel, [_message(queue, f"m{i}".encode()) for i in range(5)]))
    await asyncio.sleep(0)  # written, not yet confirmed

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    await _assert_confirms_tell_the_truth(connection, channel, declare)


class _FailingWrites(asyncio.Queue[object]):
    """A connection write queue that refuses every write, as one whose connection just broke might."""

    async def put(self, item: object) -> None:
        raise ConnectionResetError("injected: the write was refused")


async def test_a_group_whose_write_fails_raises_and_leaves_later_confirms_truthful(
    connection: AbstractConnection, channel: aiormq.Channel, declare: Declare
) -> None:
    queue = await declare("plain")
    channel.write_queue = _FailingWrites()
    try:
        with pytest.raises(ConnectionResetError):
            await _publish(channel, [_message(queue, f"m{i}".encode()) for i in range(5)])
    finally:
        channel.write_queue = cast(aiormq.Connection, connection).write_queue

    await _assert_confirms_tell_the_truth(connection, channel, declare)

"""What a look publishes: a tracking message waits exactly its delay (in milliseconds, never 0), is persistent and
typed; the publisher reports a returned message as Unroutable for that message alone."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

import aiormq
import pytest
from pamqp.commands import Basic
from pamqp.header import ContentHeader

from snapworker.amqp.publish import Outgoing
from snapworker.errors import BrokerError
from snapworker.tracking import publisher
from snapworker.tracking.publisher import TRACKING_TYPE, TrackingPublisher, Unroutable, tracking_message
from snapworker.tracking.state import start_unit
from tests.tracking.test_state import result


def unit() -> Any:
    made = start_unit([(result("r1", ("job-1", ("desk-1",))), "replies")], datetime.now(UTC))
    assert made is not None
    return made


def test_a_tracking_message_expires_after_its_delay_in_milliseconds() -> None:
    message = tracking_message(unit(), "wait.10000ms", 8.2504)
    assert (message.queue, message.properties.expiration) == ("wait.10000ms", "8250")


def test_a_tracking_message_due_now_still_expires_after_one_millisecond() -> None:
    assert tracking_message(unit(), "wait.10000ms", 0.0).properties.expiration == "1"  # "0" would never expire


def test_a_tracking_message_is_persistent_and_typed() -> None:
    properties = tracking_message(unit(), "wait", 10.0).properties
    assert (properties.delivery_mode, properties.message_type) == (2, TRACKING_TYPE)


def _returned(queue: str) -> aiormq.exceptions.PublishError:
    returned = Basic.Return(reply_code=312, reply_text="NO_ROUTE", exchange="", routing_key=queue)
    delivered = aiormq.abc.DeliveredMessage(returned, ContentHeader(), b"", cast(Any, None))
    return aiormq.exceptions.PublishError(delivered, returned)


async def test_a_returned_message_is_unroutable_and_the_others_confirmed(monkeypatch: pytest.MonkeyPatch) -> None:
    async def confirmed(_channel: Any, messages: list[Outgoing]) -> list[BaseException | None]:
        return [_returned(m.queue) if m.queue == "gone" else None for m in messages]

    monkeypatch.setattr(publisher, "publish_confirmed", confirmed)
    messages = [tracking_message(unit(), queue, 1.0) for queue in ("wait", "gone")]
    first, second = await TrackingPublisher(cast(aiormq.Channel, None)).publish(messages)
    assert first is None
    assert isinstance(second, Unroutable)


async def test_a_channel_that_fails_under_the_write_raises_broker_error(monkeypatch: pytest.MonkeyPatch) -> None:
    async def closed(_channel: Any, _messages: list[Outgoing]) -> list[BaseException | None]:
        raise aiormq.exceptions.ChannelInvalidStateError("closed")

    monkeypatch.setattr(publisher, "publish_confirmed", closed)
    with pytest.raises(BrokerError):
        await TrackingPublisher(cast(aiormq.Channel, None)).publish([tracking_message(unit(), "wait", 1.0)])

"""Results never wait for tracking: ``Tracker.start`` with the tracking connection down keeps the unit in a
backlog and returns at once; the tracker publishes the backlog once its connection is ready, and on close.
Before, ``start`` waited up to 10 s for the connection (every result 10 s late) and then gave up on the unit."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, cast

import aio_pika
import aiormq
import pytest
from pamqp.commands import Basic
from pamqp.header import ContentHeader

from snapworker.amqp.publish import Outgoing
from snapworker.cloud.jobs import JobReader
from snapworker.settings import Settings
from snapworker.tracking import publisher
from snapworker.tracking.loop import Tracker
from snapworker.tracking.state import TrackingUnit
from snapworker.tracking.topology import wait_queue
from tests.tracking.test_state import result

# a completion queue named: these requests have no reply_to, and would not be tracked without one
SETTINGS = Settings(
    api_url="http://127.0.0.1:9", auth_token="t", track_first_poll_s=10.0, completion_queue="snapworker.completions"
)
FIRST_WAIT_QUEUE = wait_queue(SETTINGS, 10.0)


class _Reader:
    reads = 0  # what run() reports in its totals


class FakeBroker:
    """What the tracker uses of aio-pika and ``publish_confirmed``. ``connect`` waits until ``up`` is set (no
    backoff sleeps in tests);
    the next ``fail_publishes`` publishes fail as a closed channel does; a publish to a queue in ``missing`` is
    returned as unroutable. ``on_message``: the tracker's consumer, to deliver tracking messages to."""

    def __init__(self) -> None:
        self.up = asyncio.Event()
        self.fail_publishes = 0
        self.missing: set[str] = set()
        self.published: list[tuple[str, Outgoing]] = []
        self.writes: list[int] = []  # messages per publish_confirmed call: one write each
        self.consuming = False
        self.on_message: Callable[[Any], Any] | None = None

    async def connect(self, *_args: Any, **_kwargs: Any) -> _Conn:
        await self.up.wait()
        return _Conn(self)

    async def publish_confirmed(self, _channel: Any, messages: list[Outgoing]) -> list[BaseException | None]:
        if self.fail_publishes > 0:
            self.fail_publishes -= 1
            raise aio_pika.exceptions.ChannelInvalidStateError("channel closed")
        self.writes.append(len(messages))
        outcomes: list[BaseException | None] = []
        for message in messages:
            if message.queue in self.missing:
                returned = Basic.Return(reply_code=312, reply_text="NO_ROUTE", exchange="", routing_key=message.queue)
                delivered = aiormq.abc.DeliveredMessage(returned, ContentHeader(), message.body, cast(Any, None))
                outcomes.append(aiormq.exceptions.PublishError(delivered, returned))
            else:
                self.published.append((message.queue, message))
                outcomes.append(None)
        return outcomes

    def units(self) -> list[TrackingUnit]:
        return [TrackingUnit.model_validate_json(m.body) for _, m in self.published]


class _Conn:
    def __init__(self, broker: FakeBroker) -> None:
        self.broker = broker
        self.close_callbacks: set[Callable[..., None]] = set()

    async def channel(self, **_kwargs: Any) -> _Channel:
        return _Channel(self.broker)

    async def close(self) -> None:
        self.broker.consuming = False


class _Channel:
    def __init__(self, broker: FakeBroker) -> None:
        self.broker = broker
        self.default_exchange = self

    async def declare_queue(self, *_args: Any, **_kwargs: Any) -> None:
        pass

    async def set_qos(self, **_kwargs: Any) -> None:
        pass

    async def get_queue(self, _name: str) -> _Channel:
        return self

    async def consume(self, callback: Callable[[Any], Any], **_kwargs: Any) -> str:
        self.broker.consuming = True
        self.broker.on_message = callback
        return "tag"

    async def cancel(self, _tag: str) -> None:
        pass

    async def get_underlay_channel(self) -> _Channel:
        return self


@pytest.fixture
def broker(monkeypatch: pytest.MonkeyPatch) -> FakeBroker:
    fake = FakeBroker()
    monkeypatch.setattr(aio_pika, "connect", fake.connect)
    monkeypatch.setattr(publisher, "publish_confirmed", fake.publish_confirmed)
    return fake


def answered(request_id: str) -> list[tuple[Any, str | None]]:
    return [(result(request_id, (f"job-{request_id}", (f"desk-{request_id}",))), None)]


async def until(what: Callable[[], bool]) -> None:
    """Let the loop run until ``what`` holds (bounded: a test never hangs on it)."""
    for _ in range(1000):
        if what():
            return
        await asyncio.sleep(0)
    raise AssertionError("never happened")


async def stop(tracker: Tracker, running: asyncio.Task[None], seconds: float = 5.0) -> None:
    await tracker.close(deadline=asyncio.get_running_loop().time() + seconds)
    await asyncio.wait_for(running, timeout=seconds + 5)


def new_tracker() -> Tracker:
    return Tracker(SETTINGS, cast(JobReader, _Reader()))


async def test_start_with_the_tracking_connection_down_returns_at_once_and_keeps_the_unit(
    broker: FakeBroker,
) -> None:
    tracker = new_tracker()
    assert await asyncio.wait_for(tracker.start(answered("r1")), timeout=1.0) is False
    assert len(tracker.backlog) == 1


async def test_a_unit_kept_while_the_connection_was_down_is_published_once_it_comes_up(broker: FakeBroker) -> None:
    tracker = new_tracker()
    running = asyncio.create_task(tracker.run())
    await asyncio.wait_for(tracker.start(answered("r1")), timeout=1.0)
    assert broker.published == []
    broker.up.set()
    await until(lambda: len(broker.published) == 1)
    assert broker.published[0][0] == FIRST_WAIT_QUEUE
    assert [r.request_id for r in broker.units()[0].requests] == ["r1"]
    assert (len(tracker.backlog), tracker.units_started) == (0, 1)
    await stop(tracker, running)


async def test_start_with_the_connection_ready_publishes_at_once(broker: FakeBroker) -> None:
    tracker = new_tracker()
    broker.up.set()
    running = asyncio.create_task(tracker.run())
    await until(lambda: broker.consuming)
    assert await tracker.start(answered("r1")) is True
    assert [queue for queue, _ in broker.published] == [FIRST_WAIT_QUEUE]
    await stop(tracker, running)


async def test_a_unit_whose_first_publish_fails_is_published_later_by_the_tracker(broker: FakeBroker) -> None:
    tracker = new_tracker()
    broker.up.set()
    running = asyncio.create_task(tracker.run())
    await until(lambda: broker.consuming)
    broker.fail_publishes = 1
    assert await tracker.start(answered("r1")) is False
    await until(lambda: len(broker.published) == 1)
    assert [r.request_id for r in broker.units()[0].requests] == ["r1"]
    await stop(tracker, running)


async def test_close_publishes_the_backlog_once_the_connection_comes_up_before_the_deadline(
    broker: FakeBroker,
) -> None:
    tracker = new_tracker()
    running = asyncio.create_task(tracker.run())
    for request_id in ("r1", "r2"):
        await tracker.start(answered(request_id))
    await tracker.close(deadline=asyncio.get_running_loop().time() + 5.0)
    broker.up.set()
    await asyncio.wait_for(running, timeout=5.0)
    assert [u.requests[0].request_id for u in broker.units()] == ["r1", "r2"]
    assert len(tracker.backlog) == 0


async def test_close_logs_the_units_left_unpublished_when_the_connection_never_comes_up(
    broker: FakeBroker, caplog: pytest.LogCaptureFixture
) -> None:
    tracker = new_tracker()
    running = asyncio.create_task(tracker.run())
    for request_id in ("r1", "r2"):
        await tracker.start(answered(request_id))
    with caplog.at_level(logging.ERROR, logger="snapworker.tracking"):
        await tracker.close(deadline=asyncio.get_running_loop().time() + 0.05)  # the one real wait here
        await asyncio.wait_for(running, timeout=5.0)
    assert "2 units left unpublished at shutdown" in caplog.text
    assert broker.published == []


async def test_the_tracking_totals_are_a_field_of_the_log_line(caplog: pytest.LogCaptureFixture) -> None:
    tracker = new_tracker()
    await tracker.close()
    with caplog.at_level(logging.INFO, logger="snapworker.tracking"):
        await tracker.run()  # stopped before it began: it only says its totals
    [record] = [r for r in caplog.records if r.getMessage() == "tracking totals"]
    assert record.totals["units_started"] == 0  # type: ignore[attr-defined]

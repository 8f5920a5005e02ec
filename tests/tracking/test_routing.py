"""Where completions go: to a request's reply_to, else to SNAPWORKER_COMPLETION_QUEUE if it is set, else nowhere;
and a request whose completion nobody asked for is not tracked at all (no tracking message, no job read).
Before, every request was tracked and its completion published to a default queue that nobody read."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any, cast

import pytest

from snapworker.cloud.jobs import JobReader
from snapworker.domain.jobs import JobView
from snapworker.tracking.loop import Tracker
from snapworker.tracking.state import TrackingUnit, completion_queue_of, start_unit
from snapworker.tracking.topology import wait_queue
from tests.tracking.test_loop_backlog import SETTINGS, FakeBroker, broker, stop, until
from tests.tracking.test_state import result, view

__all__ = ["broker"]  # the fixture, shared with the backlog tests

COMPLETIONS = "test.completions"
FIRST_WAIT_QUEUE = wait_queue(SETTINGS, 10.0)


class _Reader:
    """Every job has ended, each of its desktops snapshotted; counts the reads."""

    def __init__(self) -> None:
        self.reads = 0

    async def read(self, _project: str, job_id: str) -> JobView:
        self.reads += 1
        return view(job_id, "SUCCESS", {f"desk-{job_id}": "SUCCESS"})


class _Delivery:
    """A tracking message as the tracker's consumer gets it; records how it was settled."""

    def __init__(self, unit: TrackingUnit) -> None:
        self.body = unit.model_dump_json().encode()
        self.message_id = unit.unit_id
        self.settled: str | None = None

    async def ack(self) -> None:
        self.settled = "ack"

    async def nack(self, requeue: bool = True) -> None:
        self.settled = "nack"


def answered(request_id: str, reply_to: str | None) -> tuple[Any, str | None]:
    return (result(request_id, (f"job-{request_id}", (f"desk-job-{request_id}",))), reply_to)


async def running_tracker(broker: FakeBroker, completion_queue: str) -> tuple[Tracker, _Reader, asyncio.Task[None]]:
    reader = _Reader()
    tracker = Tracker(SETTINGS.model_copy(update={"completion_queue": completion_queue}), cast(JobReader, reader))
    broker.up.set()
    running = asyncio.create_task(tracker.run())
    await until(lambda: broker.consuming)
    return tracker, reader, running


async def deliver(broker: FakeBroker, *requests: tuple[Any, str | None]) -> _Delivery:
    """A tracking message whose jobs have all ended, as if its wait were over."""
    unit = start_unit(requests, datetime.now(UTC))
    assert unit is not None
    assert broker.on_message is not None
    message = _Delivery(unit)
    await broker.on_message(message)
    return message


def tracked_requests(broker: FakeBroker) -> list[str]:
    return [r.request_id for unit in broker.units() for r in unit.requests]


# -- the decision, sans I/O


def test_a_completion_goes_to_the_reply_to_of_its_request_first() -> None:
    assert completion_queue_of("replies", COMPLETIONS) == "replies"


def test_without_reply_to_a_completion_goes_to_the_completion_queue_when_one_is_set() -> None:
    assert completion_queue_of(None, COMPLETIONS) == COMPLETIONS


def test_without_reply_to_or_completion_queue_nobody_asked_for_the_completion() -> None:
    assert completion_queue_of(None, "") is None


# -- what the tracker starts


async def test_a_request_without_reply_to_or_completion_queue_is_not_tracked(broker: FakeBroker) -> None:
    tracker, _, running = await running_tracker(broker, completion_queue="")
    assert await tracker.start([answered("r1", None)]) is True
    assert (broker.published, len(tracker.backlog)) == ([], 0)
    assert (tracker.units_started, tracker.requests_untracked) == (0, 1)
    await stop(tracker, running)


async def test_a_request_with_a_reply_to_is_tracked_without_a_completion_queue(broker: FakeBroker) -> None:
    tracker, _, running = await running_tracker(broker, completion_queue="")
    await tracker.start([answered("r1", "replies")])
    assert [queue for queue, _ in broker.published] == [FIRST_WAIT_QUEUE]
    assert tracked_requests(broker) == ["r1"]
    await stop(tracker, running)


async def test_a_request_without_reply_to_is_tracked_when_the_completion_queue_is_set(broker: FakeBroker) -> None:
    tracker, _, running = await running_tracker(broker, completion_queue=COMPLETIONS)
    await tracker.start([answered("r1", None)])
    assert tracked_requests(broker) == ["r1"]
    await stop(tracker, running)


async def test_of_one_batch_only_the_requests_someone_awaits_are_tracked(broker: FakeBroker) -> None:
    tracker, _, running = await running_tracker(broker, completion_queue="")
    await tracker.start([answered("r-reply", "replies"), answered("r-none", None)])
    assert tracked_requests(broker) == ["r-reply"]
    assert [unit.jobs for unit in broker.units()] == [{"job-r-reply": "p1"}]  # no read for the other one's job
    assert tracker.requests_untracked == 1
    await stop(tracker, running)


# -- what the tracker does with a tracking message


async def test_a_unit_made_while_a_completion_queue_was_set_costs_no_read_once_it_is_unset(
    broker: FakeBroker,
) -> None:
    tracker, reader, running = await running_tracker(broker, completion_queue="")
    message = await deliver(broker, answered("r1", None))
    assert (reader.reads, broker.published, message.settled) == (0, [], "ack")
    await stop(tracker, running)


async def test_a_completion_whose_reply_to_is_gone_is_dropped_with_one_warning_without_a_completion_queue(
    broker: FakeBroker, caplog: pytest.LogCaptureFixture
) -> None:
    tracker, _, running = await running_tracker(broker, completion_queue="")
    broker.missing = {"gone"}
    with caplog.at_level(logging.WARNING, logger="snapworker.tracking"):
        message = await deliver(broker, answered("r1", "gone"))
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "'gone'" in warning.getMessage()
    assert "r1" in warning.getMessage()
    assert (broker.published, message.settled) == ([], "ack")
    assert (tracker.completions_undeliverable, tracker.completions_published) == (1, 0)
    await stop(tracker, running)


async def test_a_completion_whose_reply_to_is_gone_goes_to_the_completion_queue_when_one_is_set(
    broker: FakeBroker,
) -> None:
    tracker, _, running = await running_tracker(broker, completion_queue=COMPLETIONS)
    broker.missing = {"gone"}
    await deliver(broker, answered("r1", "gone"))
    [(queue, completion)] = broker.published
    assert queue == COMPLETIONS
    assert (completion.properties.headers or {})["x-snapworker-undeliverable-reply-to"] == "gone"
    assert (tracker.completions_undeliverable, tracker.completions_published) == (0, 1)
    await stop(tracker, running)


async def test_the_completions_of_a_look_go_out_in_one_confirmed_write(broker: FakeBroker) -> None:
    tracker, _, running = await running_tracker(broker, completion_queue=COMPLETIONS)
    message = await deliver(broker, *(answered(f"r{i}", None) for i in range(3)))
    assert broker.writes == [3]
    assert [queue for queue, _ in broker.published] == [COMPLETIONS] * 3
    assert (message.settled, tracker.completions_published) == ("ack", 3)
    await stop(tracker, running)


async def test_a_completion_carries_its_status_type_and_a_message_id_stable_across_looks(broker: FakeBroker) -> None:
    tracker, _, running = await running_tracker(broker, completion_queue=COMPLETIONS)
    await deliver(broker, answered("r1", None))
    [(_, completion)] = broker.published
    properties = completion.properties
    assert (properties.message_type, properties.delivery_mode) == ("snapworker.completion", 2)
    assert (properties.message_id or "").startswith("completion:r1:")
    assert (properties.headers or {})["x-snapworker-status"] == "succeeded"
    await stop(tracker, running)


async def test_a_look_whose_write_fails_is_not_committed(broker: FakeBroker) -> None:
    tracker, _, running = await running_tracker(broker, completion_queue=COMPLETIONS)
    broker.fail_publishes = 1
    message = await deliver(broker, answered("r1", None))
    assert (message.settled, broker.published, tracker.completions_published) == ("nack", [], 0)
    await stop(tracker, running)

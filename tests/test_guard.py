"""The last-resort guard: a message whose handling raises is answered failed and dead-lettered, never left held."""

from __future__ import annotations

import asyncio
import json

import pytest
from prometheus_client import generate_latest

from snapworker.contract.intake import Accepted, Envelope, Rejected
from snapworker.contract.models import SnapshotResult
from snapworker.ops.metrics import build_registry
from snapworker.runtime.guard import INTERNAL_ERROR_CODE
from snapworker.runtime.worker import Worker
from snapworker.settings import Settings
from tests.guard_fakes import FakeSession

REQUEST = json.dumps({"project_id": "p1", "desktop_ids": ["d1", "d2"], "request_id": "r-1"}).encode()


async def _tasks_done(worker: Worker) -> None:
    while pending := [t for t in worker._tasks if not t.done()]:
        await asyncio.gather(*pending, return_exceptions=True)


def _broken_read(envelope: Envelope, *, max_bytes: int, now: object) -> Accepted | Rejected:
    raise RuntimeError("a bug while reading")


async def test_a_message_whose_reading_raises_gets_a_failed_result(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("snapworker.runtime.intake.read_request", _broken_read)
    worker, session = Worker(Settings()), FakeSession()

    worker._intake.on_delivery(session.delivery(REQUEST, message_id="m-1"))
    await _tasks_done(worker)

    [published] = session.published
    result = SnapshotResult.model_validate_json(published.body)
    assert (result.status, result.request_id, result.project_id) == ("failed", "r-1", "p1")
    assert result.errors[0].error_code == INTERNAL_ERROR_CODE
    assert result.errors[0].desktop_ids == ("d1", "d2")
    assert published.queue == worker.settings.error_queue


async def test_a_message_whose_reading_raises_is_dead_lettered_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("snapworker.runtime.intake.read_request", _broken_read)
    worker, session = Worker(Settings()), FakeSession()
    delivery = session.delivery(REQUEST)

    worker._intake.on_delivery(delivery)
    await _tasks_done(worker)

    [(dead, reason)] = session.dead_letters
    assert dead is delivery
    assert reason.startswith(INTERNAL_ERROR_CODE)
    assert "a bug while reading" in reason
    assert worker.stats.failures_by_reason["internal"] == 1


async def test_a_message_the_core_fails_to_hold_is_dead_lettered_and_forgotten(monkeypatch: pytest.MonkeyPatch) -> None:
    worker, session = Worker(Settings()), FakeSession()

    def broken_submit(*args: object) -> bool:
        raise KeyError("a bug in the core")

    monkeypatch.setattr(worker.core, "submit", broken_submit)
    delivery = session.delivery(REQUEST)

    worker._intake.on_delivery(delivery)
    await _tasks_done(worker)

    assert [d for d, _ in session.dead_letters] == [delivery]
    assert worker.core.open_requests == 0


async def test_a_task_that_raises_dead_letters_the_messages_it_handled() -> None:
    worker, session = Worker(Settings()), FakeSession()
    delivery = session.delivery(REQUEST)

    async def broken() -> None:
        raise ValueError("message larger than one frame")

    worker._tasks.spawn(broken(), (delivery,))
    await _tasks_done(worker)

    [(dead, reason)] = session.dead_letters
    assert dead is delivery
    assert "message larger than one frame" in reason


async def test_a_message_already_settled_is_left_alone_when_its_task_fails() -> None:
    worker, session = Worker(Settings()), FakeSession()
    delivery = session.delivery(REQUEST)
    session.settle([delivery], "ack")

    async def broken() -> None:
        raise RuntimeError("after the ack")

    worker._tasks.spawn(broken(), (delivery,))
    await _tasks_done(worker)

    assert (session.published, session.dead_letters) == ([], [])


async def test_guarded_failures_are_a_metric_by_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("snapworker.runtime.intake.read_request", _broken_read)
    worker, session = Worker(Settings()), FakeSession()
    registry, _ = build_registry(worker)

    worker._intake.on_delivery(session.delivery(REQUEST))
    await _tasks_done(worker)

    lines = generate_latest(registry).decode().splitlines()
    assert 'snapworker_delivery_failures_total{reason="internal"} 1.0' in lines
    assert "snapworker_dead_lettered_total 1.0" in lines


async def test_the_requests_of_a_batch_whose_completion_raises_are_dead_lettered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # without the idempotency store, deliveries enter the core at once (a keyed one would first be looked up)
    worker, session = Worker(Settings(idempotency_store="off")), FakeSession()
    first = session.delivery(REQUEST, tag=1)
    second = session.delivery(json.dumps({"project_id": "p1", "desktop_ids": ["d3"]}).encode(), tag=2)
    worker._intake.on_delivery(first)
    worker._intake.on_delivery(second)
    worker.core.close()  # everything pending may go now
    batch = worker.core.take(asyncio.get_running_loop().time())
    assert batch is not None

    def broken_complete(*_: object) -> None:
        raise RuntimeError("a bug while completing")

    monkeypatch.setattr(worker.core, "complete", broken_complete)
    await worker._outcomes.on_outcome(batch, ())
    await _tasks_done(worker)

    assert {id(d) for d, _ in session.dead_letters} == {id(first), id(second)}
    assert all("a bug while completing" in reason for _, reason in session.dead_letters)
    assert worker.core.open_requests == 0  # forgotten: a late outcome cannot answer them twice

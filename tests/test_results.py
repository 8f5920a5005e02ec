"""Publishing results without a broker: every message ends acked after its result, or dead-lettered with a reason."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from snapworker.amqp.session import Message
from snapworker.contract.intake import Envelope, Rejected, read_request
from snapworker.contract.models import JobEntry, SnapshotResult
from snapworker.contract.result_size import RESULT_MAX_BYTES
from snapworker.errors import BrokerError
from snapworker.ops.stats import WorkerStats
from snapworker.runtime.results import ResultPublisher
from snapworker.settings import Settings
from tests.guard_fakes import FakeSession

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _accepted(request_id: str) -> SnapshotResult:
    return SnapshotResult(
        request_id=request_id,
        project_id="p1",
        status="accepted",
        finished_at=NOW,
        jobs=(JobEntry(job_id="j1", desktop_ids=("d1",)),),
    )


def _invalid(body: bytes) -> SnapshotResult:
    read = read_request(Envelope(body), max_bytes=Settings().max_message_bytes, now=NOW)
    assert isinstance(read, Rejected)
    return read.result


async def test_an_oversized_invalid_result_is_published_cut_and_its_message_dead_lettered() -> None:
    session, stats = FakeSession(), WorkerStats()
    body = json.dumps({"project_id": "p1", "desktop_ids": [f"{i:04d}" + "x" * 124 for i in range(1000)]}).encode()
    delivery = session.delivery(body)

    await ResultPublisher(Settings(), stats).publish([(delivery, _invalid(body))], settle="dead-letter")

    [published] = session.published
    assert len(published.body) <= RESULT_MAX_BYTES
    assert SnapshotResult.model_validate_json(published.body).truncated
    assert [d for d, _ in session.dead_letters] == [delivery]
    assert stats.results_truncated == 1


async def test_an_invalid_message_is_dead_lettered_with_its_validation_problems_as_the_reason() -> None:
    session = FakeSession()
    delivery = session.delivery(b'{"project_id": "p1"}')

    await ResultPublisher(Settings(), WorkerStats()).publish(
        [(delivery, _invalid(b'{"project_id": "p1"}'))], settle="dead-letter"
    )

    [(dead, reason)] = session.dead_letters
    assert dead is delivery
    assert reason.startswith("SNAPWORKER.INVALID_REQUEST: ")
    assert "desktop_ids" in reason
    assert session.settled == []  # moved with its reason, not nacked


async def test_a_publish_that_raises_fails_only_its_own_message() -> None:
    def outcome(message: Message) -> BrokerError | None:
        if b"r-bad" in message.body:
            raise RuntimeError("a bug in the publish path")
        return None

    session, stats = FakeSession(outcome), WorkerStats()
    good, bad = session.delivery(b"{}", tag=1), session.delivery(b"{}", tag=2)

    await ResultPublisher(Settings(), stats).publish(
        [(good, _accepted("r-good")), (bad, _accepted("r-bad"))], settle="ack"
    )

    assert session.settled == [(good, "ack")]
    [(dead, reason)] = session.dead_letters
    assert dead is bad
    assert "a bug in the publish path" in reason
    assert stats.failures_by_reason["unpublishable"] == 1


async def test_a_result_the_broker_refuses_on_a_live_session_dead_letters_its_message() -> None:
    session = FakeSession(lambda _: BrokerError("nacked by the broker"))
    delivery = session.delivery(b"{}")

    await ResultPublisher(Settings(), WorkerStats()).publish([(delivery, _accepted("r-1"))], settle="ack")

    [(dead, reason)] = session.dead_letters
    assert dead is delivery
    assert "nacked by the broker" in reason


async def test_a_result_not_published_because_the_session_was_lost_is_left_for_redelivery() -> None:
    session = FakeSession()

    def lose(_: Message) -> BrokerError:
        session.lost.set()
        return BrokerError("connection reset")

    session.outcome = lose
    delivery = session.delivery(b"{}")

    await ResultPublisher(Settings(), WorkerStats()).publish([(delivery, _accepted("r-1"))], settle="ack")

    assert (session.settled, session.dead_letters) == ([], [])
    assert not delivery.settled

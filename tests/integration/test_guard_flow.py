"""Against the real broker: an oversized result is cut and published, a dead-letter copy carries its reason."""

from __future__ import annotations

import json

from snapworker.amqp.session import REASON_HEADER
from snapworker.contract.models import INVALID_REQUEST_CODE
from snapworker.contract.result_size import RESULT_MAX_BYTES
from snapworker.runtime.worker import Worker
from snapworker.settings import Settings
from tests.integration.harness import BrokerProbe


async def _nothing_held(worker: Worker, probe: BrokerProbe, settings: Settings) -> None:
    async def settled() -> bool:
        session = worker._sessions.current
        return session is not None and not session.held() and await probe.requests_waiting() == 0

    await probe.wait_until("the request settled: neither held nor back in the queue", settled, timeout=10)


async def test_an_invalid_request_with_a_result_over_one_frame_is_answered_cut_and_dead_lettered(
    worker: Worker, probe: BrokerProbe, settings: Settings
) -> None:
    # the case: under MAX_MESSAGE_BYTES, but its invalid result echoes 1000 IDs of 128 characters
    body = json.dumps({"project_id": "p1", "desktop_ids": [f"{i:04d}" + "x" * 124 for i in range(1000)]}).encode()
    assert len(body) < settings.max_message_bytes

    await probe.publish(body, correlation_id="big-1")

    [received] = await probe.wait_for(1, queue=settings.error_queue)
    assert len(received.body) <= RESULT_MAX_BYTES
    result = received.result
    assert (result.status, result.truncated, result.correlation_id) == ("invalid", True, "big-1")
    [dead] = await probe.wait_for(1, queue=settings.dead_letter_queue)
    assert dead.body == body
    await _nothing_held(worker, probe, settings)


async def test_the_dead_letter_copy_of_an_invalid_message_carries_its_reason(
    worker: Worker, probe: BrokerProbe, settings: Settings
) -> None:
    await probe.publish({"project_id": "p1", "desktop_ids": ["bad/id"]}, correlation_id="c-9")

    [dead] = await probe.wait_for(1, queue=settings.dead_letter_queue)
    reason = dead.headers[REASON_HEADER]
    assert isinstance(reason, str)
    assert reason.startswith(f"{INVALID_REQUEST_CODE}: desktop_ids.0")
    assert dead.correlation_id == "c-9"
    assert dead.persistent
    await _nothing_held(worker, probe, settings)
    assert worker.stats.dead_lettered == 1


async def test_a_dead_letter_copy_larger_than_one_frame_arrives_whole_with_its_reason(
    worker: Worker, probe: BrokerProbe, settings: Settings
) -> None:
    body = json.dumps({"project_id": "p1", "desktop_ids": ["d1"], "note": "n" * 200_000}).encode()
    assert 131_072 < len(body) < settings.max_message_bytes

    await probe.publish(body)

    [dead] = await probe.wait_for(1, queue=settings.dead_letter_queue)
    assert dead.body == body
    assert "note: Extra inputs are not permitted" in str(dead.headers[REASON_HEADER])
    await _nothing_held(worker, probe, settings)

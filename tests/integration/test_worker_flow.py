"""The worker end to end on the real broker and the simulator: the happy paths and bad input."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from snapworker.contract.models import INVALID_REQUEST_CODE
from snapworker.runtime.worker import Worker
from snapworker.settings import Settings
from snapworker.simulator.app import Simulator
from tests.integration.harness import BrokerProbe

pytestmark = pytest.mark.broker


async def test_a_request_gets_one_accepted_result_on_the_result_queue(
    worker: Worker, probe: BrokerProbe, settings: Settings
) -> None:
    await probe.publish({"project_id": "p1", "desktop_ids": ["d1", "d2"]}, correlation_id="c-1", message_id="m-1")
    [received] = await probe.wait_for(1)
    assert received.queue == settings.result_queue
    assert received.persistent
    assert received.correlation_id == "c-1"
    result = received.result
    assert (result.status, result.request_id, result.correlation_id, result.project_id) == (
        "accepted",
        "m-1",
        "c-1",
        "p1",
    )
    assert [job.desktop_ids for job in result.jobs] == [("d1", "d2")]


async def test_single_desktop_requests_are_merged_into_one_call(
    start_worker: Callable[..., Awaitable[Worker]], probe: BrokerProbe, simulator: Simulator
) -> None:
    # a linger far longer than publishing 60 messages takes, even on a busy machine
    await start_worker(linger_ms=3000)
    await probe.publish_many([{"project_id": "p1", "desktop_ids": [f"d{i}"]} for i in range(60)])
    results = await probe.wait_for(60)
    assert {r.result.status for r in results} == {"accepted"}
    assert simulator.stats()["calls_total"] == 1
    assert len({r.result.jobs[0].job_id for r in results}) == simulator.stats()["jobs_created"]


async def test_a_request_of_250_desktops_spans_three_calls(
    worker: Worker, probe: BrokerProbe, simulator: Simulator
) -> None:
    await probe.publish({"project_id": "p1", "desktop_ids": [f"d{i}" for i in range(250)]})
    [received] = await probe.wait_for(1)
    assert received.result.status == "accepted"
    assert sorted(len(j.desktop_ids) for j in received.result.jobs) == [50, 100, 100]
    assert simulator.stats()["calls_total"] == 3


async def test_a_result_goes_to_reply_to_when_set(worker: Worker, probe: BrokerProbe, unique_name: str) -> None:
    reply = f"{unique_name}.reply"
    await probe.watch(reply)
    await probe.publish({"project_id": "p1", "desktop_ids": ["d1"]}, reply_to=reply)
    [received] = await probe.wait_for(1, queue=reply)
    assert received.result.status == "accepted"


async def test_a_missing_reply_to_queue_sends_the_result_to_the_error_queue(
    worker: Worker, probe: BrokerProbe, settings: Settings, unique_name: str
) -> None:
    await probe.publish({"project_id": "p1", "desktop_ids": ["d1"]}, reply_to=f"{unique_name}.nobody-listens")
    [received] = await probe.wait_for(1)
    assert received.queue == settings.error_queue
    assert received.result.status == "accepted"
    assert received.headers["x-snapworker-undeliverable-reply-to"] == f"{unique_name}.nobody-listens"


@pytest.mark.parametrize(
    ("body", "props", "message"),
    [
        (b"{not json", {}, "Invalid JSON"),
        (b'{"project_id": "p1", "desktop_ids": ["d1"], "extra": 1}', {}, "extra: Extra inputs are not permitted"),
        (b'{"project_id": "p1", "desktop_ids": ["d1"]}', {"content_type": "text/plain"}, "content type"),
        (b'{"project_id": "p1", "desktop_ids": ["' + b"x" * 300_000 + b'"]}', {}, "over the limit"),
    ],
    ids=["not-json", "wrong-schema", "wrong-content-type", "too-large"],
)
async def test_an_invalid_message_gets_an_invalid_result_and_is_dead_lettered(
    worker: Worker, probe: BrokerProbe, settings: Settings, body: bytes, props: dict[str, str], message: str
) -> None:
    await probe.publish(body, correlation_id="bad-1", **props)
    [received] = await probe.wait_for(1)
    assert received.queue == settings.error_queue
    result = received.result
    assert result.status == "invalid"
    assert result.correlation_id == "bad-1"
    assert result.errors[0].error_code == INVALID_REQUEST_CODE
    assert message in result.errors[0].error_msg
    [dead] = await probe.wait_for(1, queue=settings.dead_letter_queue)
    assert dead.body == body


async def test_the_worker_goes_on_after_an_invalid_message(worker: Worker, probe: BrokerProbe) -> None:
    await probe.publish(b"garbage")
    await probe.publish({"project_id": "p1", "desktop_ids": ["d1"]})
    results = await probe.wait_for(2)
    assert sorted(r.result.status for r in results) == ["accepted", "invalid"]


async def test_an_unknown_desktop_fails_only_its_own_request(
    start_worker: Callable[..., Awaitable[Worker]], probe: BrokerProbe, simulator: Simulator
) -> None:
    await start_worker(linger_ms=1000)  # all 8 requests in one merged batch
    simulator.config.unknown_desktops = frozenset({"ghost"})
    bodies = [{"project_id": "p1", "desktop_ids": [f"d{i}"], "request_id": f"r{i}"} for i in range(7)]
    bodies.insert(3, {"project_id": "p1", "desktop_ids": ["ghost"], "request_id": "bad"})
    await probe.publish_many(bodies)
    results = {r.result.request_id: r.result for r in await probe.wait_for(8)}
    assert results["bad"].status == "failed"
    assert results["bad"].errors[0].http_status == 404
    assert results["bad"].errors[0].retryable is False
    assert {rid: r.status for rid, r in results.items() if rid != "bad"} == {f"r{i}": "accepted" for i in range(7)}
    # the answer names the desktop: 1 merged call, then the other 7 sent again
    assert simulator.stats()["calls_total"] == 2


async def test_a_throttled_or_failing_api_is_not_bisected(
    worker: Worker, probe: BrokerProbe, simulator: Simulator
) -> None:
    simulator.config.error_5xx_ratio = 1.0
    await probe.publish_many([{"project_id": "p1", "desktop_ids": [f"d{i}"]} for i in range(8)])
    results = await probe.wait_for(8, timeout=60)
    assert {r.result.status for r in results} == {"failed"}
    assert all(r.result.errors[0].retryable for r in results)
    assert simulator.stats()["calls_total"] == worker.settings.retry_max_tries


async def test_the_same_desktop_in_two_pending_requests_is_snapshotted_once(
    start_worker: Callable[..., Awaitable[Worker]], probe: BrokerProbe, simulator: Simulator
) -> None:
    await start_worker(linger_ms=1000)  # both requests arrive while the desktop is pending
    await probe.publish_many([{"project_id": "p1", "desktop_ids": ["d1"]}, {"project_id": "p1", "desktop_ids": ["d1"]}])
    results = await probe.wait_for(2)
    first, second = (r.result.jobs[0].job_id for r in results)
    assert first == second
    assert simulator.stats()["distinct_desktops"] == 1
    assert simulator.stats()["calls_total"] == 1


async def test_a_full_prefetch_window_flushes_at_once_instead_of_waiting_for_linger(
    start_worker: Callable[..., Awaitable[Worker]], probe: BrokerProbe
) -> None:
    # 5 requests of p0, then 10 of p1, one at a time so they arrive in this order
    for i in range(15):
        await probe.publish({"project_id": "p0" if i < 5 else "p1", "desktop_ids": [f"d{i}"]})
    # 10 held (5 + 5) fill the window: p0's batch goes at once; its acks let p1's last 5 in, which fill p1's batch
    # one queue: partitions would split the window into a share per partition, and no share would fill it
    worker = await start_worker(max_batch=10, prefetch=10, prefetch_max=10, linger_ms=60_000, partitions=0)
    results = await probe.wait_for(15, timeout=20)  # far below the 60 s linger
    assert {r.result.status for r in results} == {"accepted"}
    assert worker.stats.batches_by_reason["pressure"] == 1
    assert worker.stats.batches_by_reason["full"] == 1

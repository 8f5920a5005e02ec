"""The worker under faults, on the real broker and the simulator: what breaks, and that no request is lost.

Each test provokes one failure: the API down beyond the retry budget, a broker restart mid-stream, ``kill -9``
of the worker process, SIGTERM (graceful drain, and drain past its timeout), the broker cancelling or refusing
the consumer; and the quorum-queue topology. Delivery is at least once: a request may be answered twice after a
crash (the tests count and print the duplicates), but every request must get a result, and the worker must
carry on.

The broker-restart test stops and starts the local RabbitMQ app with ``rabbitmqctl`` (so it disturbs anything
else using that broker for a few seconds); it and the quorum test are skipped when the broker is not on
loopback or ``rabbitmqctl`` does not work here, and the app is always started again. Set
``SNAPWORKER_TEST_NO_BROKER_RESTART=1`` to skip the restart while something else uses the broker (benchmarks).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from aio_pika.abc import AbstractIncomingMessage

from snapworker.idempotency.journal import lease_s as lease_s_of
from snapworker.runtime.worker import Worker
from snapworker.settings import Settings
from snapworker.simulator.app import SimConfig, Simulator
from tests.conftest import SIM_TOKEN
from tests.helpers import unused_loopback_port
from tests.integration.harness import BrokerProbe, WorkerProcess

pytestmark = pytest.mark.broker

# What a settle of a delivery of a dead channel on a new one would make the broker say (channel closed).
_FOREIGN_ACK_SIGNS = ("PRECONDITION_FAILED", "unknown delivery tag")


def requests(n: int, *, projects: int, prefix: str = "r") -> list[dict[str, Any]]:
    """``n`` one-desktop requests spread over ``projects`` projects; request_id ``{prefix}{i}``, desktop ``d{i}``."""
    return [
        {"project_id": f"p{i % projects}", "desktop_ids": [f"d{i}"], "request_id": f"{prefix}{i}"} for i in range(n)
    ]


@contextlib.asynccontextmanager
async def running_worker(settings: Settings) -> AsyncIterator[Worker]:
    """An in-process Worker, consuming on entry; closed (drained) on exit, and its run() must end cleanly."""
    worker = Worker(settings)
    task = asyncio.create_task(worker.run())
    try:
        consuming = asyncio.create_task(worker.consuming.wait())
        done, _ = await asyncio.wait({task, consuming}, timeout=15, return_when=asyncio.FIRST_COMPLETED)
        consuming.cancel()
        if task in done:
            task.result()  # raise what stopped it
        assert worker.consuming.is_set(), "the worker did not start consuming within 15 s"
        yield worker
    finally:
        await asyncio.wait_for(worker.close(), timeout=30)
        await asyncio.wait_for(task, timeout=5)


async def wait_consumers(probe: BrokerProbe, count: int, *, timeout: float = 20.0) -> None:
    """Until the broker counts ``count`` consumers on the request queue (a child worker is consuming)."""
    queue = probe.settings.request_queue

    async def counted() -> bool:
        return await probe.consumers(queue) == count

    await probe.wait_until(f"{count} consumer(s) on {queue}", counted, timeout=timeout)


def _async(check: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    """A plain check as the async one ``BrokerProbe.wait_until`` polls."""

    async def wrapped() -> bool:
        return check()

    return wrapped


def log_problems(records: list[logging.LogRecord]) -> list[str]:
    """Log lines that betray a settle on the wrong channel or an unexpected exception in the worker."""
    problems = []
    for record in records:
        text = record.getMessage()
        ours_failed = record.name.startswith("snapworker") and (record.exc_info or "unexpectedly" in text)
        if ours_failed or any(sign in text for sign in _FOREIGN_ACK_SIGNS):
            problems.append(f"{record.levelname} {record.name}: {text}")
    return problems


# ------------------------------------------------------------------------------------------ the API is down


async def test_api_answering_5xx_beyond_the_retry_budget_fails_each_request_retryable_and_the_worker_goes_on(
    worker: Worker, probe: BrokerProbe, simulator: Simulator, settings: Settings
) -> None:
    simulator.config.error_5xx_ratio = 1.0
    bodies = requests(40, projects=4)
    await probe.publish_many(bodies)

    answered = await probe.wait_for_requests([b["request_id"] for b in bodies], timeout=30)
    assert sum(answered.values()) == 40, f"duplicates: {answered.most_common(3)}"
    results = probe.results()
    assert {r.status for r in results} == {"failed"}
    errors = [e for r in results for e in r.errors]
    assert all(e.retryable for e in errors)
    assert {e.http_status for e in errors} <= {500, 502, 503}
    assert {r.queue for r in probe.received} == {settings.error_queue}
    # every batch used its whole budget of tries, and nothing more
    assert simulator.stats()["calls_total"] == worker.stats.batches_sent * settings.retry_max_tries

    simulator.config.error_5xx_ratio = 0.0
    await probe.publish({"project_id": "p1", "desktop_ids": ["later"], "request_id": "later"})
    await probe.wait_for_requests(["later"], timeout=10)
    [later] = [r for r in probe.results() if r.request_id == "later"]
    assert later.status == "accepted"

    await worker.close()  # what is still unacked would go back to the queue now
    assert await probe.requests_waiting() == 0


async def test_api_unreachable_fails_each_request_retryable_and_the_worker_serves_again_once_it_is_back(
    probe: BrokerProbe, settings: Settings
) -> None:
    port = unused_loopback_port()
    settings = settings.model_copy(update={"api_url": f"http://127.0.0.1:{port}"})
    bodies = requests(20, projects=2)
    async with running_worker(settings) as worker:
        await probe.publish_many(bodies)
        answered = await probe.wait_for_requests([b["request_id"] for b in bodies], timeout=30)
        assert sum(answered.values()) == 20
        results = probe.results()
        assert {r.status for r in results} == {"failed"}
        errors = [e for r in results for e in r.errors]
        assert {(e.http_status, e.error_code, e.retryable, e.maybe_created) for e in errors} == {
            (None, "SNAPWORKER.TRANSPORT", True, False)
        }

        api = Simulator(SimConfig(tokens=frozenset({SIM_TOKEN})))
        await api.start(host="127.0.0.1", port=port)
        try:
            await probe.publish({"project_id": "p1", "desktop_ids": ["later"], "request_id": "later"})
            await probe.wait_for_requests(["later"], timeout=10)
        finally:
            await api.stop()
        [later] = [r for r in probe.results() if r.request_id == "later"]
        assert later.status == "accepted"
        assert worker.consuming.is_set()
    assert await probe.requests_waiting() == 0


# ------------------------------------------------------------------------------------------ the broker restarts


async def _rabbitmqctl(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        "rabbitmqctl", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"rabbitmqctl {' '.join(args)} took over 60 s") from None
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        raise AssertionError(f"rabbitmqctl {' '.join(args)} failed ({proc.returncode}): {text}")
    return text


@pytest.fixture
async def rabbitmqctl(amqp_url: str) -> AsyncIterator[None]:
    """Permission to control the local broker with rabbitmqctl; the app runs again after the test, always."""
    if urlsplit(amqp_url).hostname not in ("127.0.0.1", "localhost", "::1"):
        pytest.skip("the broker is not on loopback: not restarting it")
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("rabbitmqctl is not installed")
    try:
        await _rabbitmqctl("-q", "status")
    except AssertionError as exc:
        pytest.skip(f"rabbitmqctl does not work here: {exc}")
    try:
        yield
    finally:
        try:
            await _rabbitmqctl("start_app")  # a no-op when the app runs
        except AssertionError:  # the node itself is down: start it
            await _start_node()


async def _start_node() -> None:
    proc = await asyncio.create_subprocess_exec("rabbitmq-server", "-detached")
    await asyncio.wait_for(proc.wait(), timeout=60)
    await _rabbitmqctl("await_startup")


async def test_a_broker_restart_mid_stream_loses_no_request_and_settles_nothing_on_a_new_channel(
    probe: BrokerProbe, simulator: Simulator, settings: Settings, caplog: pytest.LogCaptureFixture, rabbitmqctl: None
) -> None:
    # (rabbitmqctl comes last: its teardown starts the app again before the probe's deletes the queues)
    if os.environ.get("SNAPWORKER_TEST_NO_BROKER_RESTART"):
        pytest.skip("SNAPWORKER_TEST_NO_BROKER_RESTART is set: the broker is shared (benchmarks running)")
    caplog.set_level(logging.WARNING)
    simulator.config.latency_s = 0.4  # dozens of small batches, 8 calls at a time: several seconds of work
    bodies = requests(300, projects=30)
    ids = [b["request_id"] for b in bodies]
    async with running_worker(settings) as worker:
        await probe.publish_many(bodies)
        await probe.wait_for(10, timeout=20)

        started = time.monotonic()
        await _rabbitmqctl("stop_app")
        answered_before = len(probe.request_ids())
        assert answered_before < len(bodies), "the restart came too late to be mid-stream"
        await probe.wait_until("the worker to notice", _async(lambda: not worker.consuming.is_set()), timeout=10)
        await _rabbitmqctl("start_app")
        restarted_s = time.monotonic() - started
        await probe.reconnect()
        await probe.wait_until("the worker to consume again", _async(worker.consuming.is_set), timeout=30)
        reconsuming_s = time.monotonic() - started

        answered = await probe.wait_for_requests(ids, timeout=40)
        done_s = time.monotonic() - started
        duplicates = sum(n - 1 for n in answered.values())
        print(
            f"\nbroker restart: {answered_before} of {len(ids)} answered before it; restart took {restarted_s:.1f} s, "
            f"consuming again after {reconsuming_s:.1f} s, all answered after {done_s:.1f} s; "
            f"{duplicates} duplicate results"
        )
        assert set(answered) == set(ids)
        assert {r.status for r in probe.results()} == {"accepted"}

    assert await probe.requests_waiting() == 0  # every request acked, none left behind
    # exactly one session lost, the restart's: a settle on the wrong channel would have cost another
    lost = [r.getMessage() for r in caplog.records if "broker session lost" in r.getMessage()]
    assert len(lost) == 1, lost
    assert log_problems(caplog.records) == []


# ------------------------------------------------------------------------------------------ the worker process dies


async def test_kill_9_mid_stream_then_a_new_worker_answers_every_request(
    probe: BrokerProbe, simulator: Simulator, settings: Settings, tmp_path: Path
) -> None:
    simulator.config.latency_s = 0.3
    bodies = requests(500, projects=50)
    ids = [b["request_id"] for b in bodies]
    async with WorkerProcess(settings, tmp_path / "worker-1.log") as child:
        await wait_consumers(probe, 1)
        await probe.publish_many(bodies)
        await probe.wait_for(50, timeout=30)
        child.send_signal(signal.SIGKILL)
        assert await child.wait(timeout=10) == -signal.SIGKILL
    answered_before = len(probe.request_ids())
    assert answered_before < len(bodies), "the kill came too late to be mid-stream"

    started = time.monotonic()
    async with running_worker(settings):
        answered = await probe.wait_for_requests(ids, timeout=40)
    duplicates = {rid: n for rid, n in answered.items() if n > 1}
    print(
        f"\nkill -9: {answered_before} of {len(ids)} answered by the killed worker; the new one answered the rest "
        f"in {time.monotonic() - started:.1f} s; {sum(duplicates.values()) - len(duplicates)} duplicate results"
    )
    assert set(answered) == set(ids), "lost requests"
    assert {r.status for r in probe.results()} == {"accepted"}
    assert await probe.requests_waiting() == 0


# ------------------------------------------------------------------------------------------ SIGTERM


async def test_sigterm_flushes_every_open_batch_at_once_and_exits_0(
    probe: BrokerProbe, simulator: Simulator, settings: Settings, tmp_path: Path
) -> None:
    settings = settings.model_copy(update={"linger_ms": 20_000})
    bodies = requests(50, projects=5)  # five open batches of ten, lingering for 20 s
    async with WorkerProcess(settings, tmp_path / "worker.log") as child:
        await wait_consumers(probe, 1)
        await probe.publish_many(bodies)

        async def all_delivered() -> bool:
            return await probe.requests_waiting() == 0

        async def partitions_claimed() -> bool:
            # until its first claim, the router holds what it received, not knowing which partitions are its own
            return "claimed partitions" in child.log()

        await probe.wait_until("every request delivered to the worker", all_delivered, timeout=10)
        await probe.wait_until("the worker's partitions claimed", partitions_claimed, timeout=10)
        await asyncio.sleep(0.5)  # held and lingering
        assert probe.received == []
        assert simulator.stats()["calls_total"] == 0

        started = time.monotonic()
        child.send_signal(signal.SIGTERM)
        try:
            answered = await probe.wait_for_requests([b["request_id"] for b in bodies], timeout=10)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the worker's log:\n{child.log()}") from None
        answered_s = time.monotonic() - started
        assert answered_s < settings.linger_s / 4
        code = await child.wait(timeout=settings.shutdown_timeout_s + 5)
        exited_s = time.monotonic() - started
    print(f"\nSIGTERM with 5 open batches: all answered after {answered_s:.2f} s, exit after {exited_s:.2f} s")
    assert code == 0, child.log()
    assert exited_s < settings.shutdown_timeout_s
    assert sum(answered.values()) == 50
    assert {r.status for r in probe.results()} == {"accepted"}
    assert simulator.stats()["batch_sizes"] == {"10": 5}
    assert await probe.requests_waiting() == 0
    log = child.log()
    assert "SIGTERM received" in log
    assert "drained" in log
    # every result was published and acked before the session closed: nothing requeued, nothing answered twice
    assert "requeueing" not in log
    assert "not published" not in log
    assert "Traceback" not in log


async def test_sigterm_with_calls_outlasting_the_shutdown_timeout_requeues_them_and_exits_0(
    probe: BrokerProbe, simulator: Simulator, settings: Settings, tmp_path: Path
) -> None:
    settings = settings.model_copy(update={"shutdown_timeout_s": 1.0, "read_timeout_s": 10.0})
    simulator.config.latency_s = 5.0
    bodies = requests(20, projects=2)
    async with WorkerProcess(settings, tmp_path / "worker.log") as child:
        await wait_consumers(probe, 1)
        await probe.publish_many(bodies)

        async def all_held_and_calls_in_flight() -> bool:
            sent = simulator.stats()["distinct_desktops"] == len(bodies)
            return sent and await probe.requests_waiting() == 0

        await probe.wait_until("every request delivered and sent", all_held_and_calls_in_flight, timeout=10)
        started = time.monotonic()
        child.send_signal(signal.SIGTERM)
        code = await child.wait(timeout=settings.shutdown_timeout_s + 5)
        exited_s = time.monotonic() - started
    print(f"\nSIGTERM with calls slower than SHUTDOWN_TIMEOUT_S=1: exit after {exited_s:.2f} s")
    assert code == 0, child.log()
    assert settings.shutdown_timeout_s <= exited_s < simulator.config.latency_s
    assert "requeueing 20 unfinished requests" in child.log()
    assert probe.received == []

    async def requeued() -> bool:
        return await probe.requests_waiting() == len(bodies)

    await probe.wait_until("the requests back on the queue", requeued, timeout=5)

    simulator.config.latency_s = 0.0
    async with running_worker(settings):
        # The calls cut off were in flight (the API may still make their snapshots): the next worker holds their
        # requests for the intents' lease (TRY_WINDOW_S + CONNECT_TIMEOUT_S + READ_TIMEOUT_S), then
        # RECONCILE_DELAY_S, before it lists them: about 25 s here.
        lease_s = lease_s_of(settings.connect_timeout_s, settings.read_timeout_s) + settings.reconcile_delay_s
        answered = await probe.wait_for_requests([b["request_id"] for b in bodies], timeout=lease_s + 20)
    assert sum(answered.values()) == len(bodies)
    assert {r.status for r in probe.results()} == {"accepted"}


async def test_a_graceful_stop_acks_every_answered_request_before_it_disconnects(
    probe: BrokerProbe, settings: Settings
) -> None:
    # An ack still queued in the client when the connection closes is lost, and the broker redelivers an
    # answered request to the next worker. The window is narrow: stop right after an answer, twenty times.
    for round_ in range(20):
        async with running_worker(settings):
            await probe.publish({"project_id": "p1", "desktop_ids": [f"d{round_}"], "request_id": f"r{round_}"})
            await probe.wait_for_requests([f"r{round_}"], timeout=10)
        assert await probe.requests_waiting() == 0, f"round {round_}: an answer was not acked"
    await asyncio.sleep(0.2)  # a redelivered request would be answered again by the next round's worker
    assert probe.request_ids() == Counter({f"r{i}": 1 for i in range(20)})


# ------------------------------------------------------------------------------------------ the consumer is cancelled


async def test_a_consumer_cancelled_by_the_broker_is_noticed_and_a_new_session_consumes_again(
    worker: Worker, probe: BrokerProbe, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    await probe.publish({"project_id": "p1", "desktop_ids": ["d1"], "request_id": "before"})
    await probe.wait_for_requests(["before"], timeout=10)

    started = time.monotonic()
    await probe.channel.queue_delete(settings.request_queue)  # the broker sends basic.cancel to our consumer
    await wait_consumers(probe, 1, timeout=10)  # the queue is back, declared by a new session

    async def consuming() -> bool:  # its router consumes first; the worker consumes once its partitions are claimed
        return worker.consuming.is_set()

    await probe.wait_until("the new session to consume", consuming, timeout=10)
    recovered_s = time.monotonic() - started
    print(f"\nconsumer cancelled: consuming again after {recovered_s:.2f} s")

    await probe.publish({"project_id": "p1", "desktop_ids": ["d2"], "request_id": "after"})
    answered = await probe.wait_for_requests(["after"], timeout=10)
    assert answered == Counter({"before": 1, "after": 1})
    assert {r.status for r in probe.results()} == {"accepted"}
    assert any("connected but not consuming" in r.getMessage() for r in caplog.records)
    assert log_problems(caplog.records) == []
    assert recovered_s < 5 * settings.consumer_check_s + 2


async def test_a_consumer_refused_by_the_broker_is_retried_with_backoff_until_the_queue_is_free(
    probe: BrokerProbe, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    queue = await probe.channel.get_queue(settings.request_queue)

    async def ignore(_message: AbstractIncomingMessage) -> None:
        pass

    squatter = await queue.consume(ignore, exclusive=True)  # every other consumer gets ACCESS_REFUSED

    def refusals() -> int:
        return sum("broker session failed" in r.getMessage() for r in caplog.records)

    worker = Worker(settings)
    task = asyncio.create_task(worker.run())
    try:
        await probe.wait_until("two refused sessions", _async(lambda: refusals() >= 2), timeout=10)
        assert not task.done(), "run() ended on a refused consumer"
        assert not worker.consuming.is_set()

        await queue.cancel(squatter)
        await probe.wait_until("the worker to consume", _async(worker.consuming.is_set), timeout=15)
        await probe.publish({"project_id": "p1", "desktop_ids": ["d1"], "request_id": "r1"})
        await probe.wait_for_requests(["r1"], timeout=10)
        assert [r.status for r in probe.results()] == ["accepted"]
    finally:
        await asyncio.wait_for(worker.close(), timeout=30)
        await asyncio.wait_for(task, timeout=5)
    assert "ACCESS_REFUSED" in next(r.getMessage() for r in caplog.records if "broker session failed" in r.getMessage())


# ------------------------------------------------------------------------------------------ quorum queue


async def test_a_quorum_request_queue_is_declared_with_a_delivery_limit_and_serves(
    settings: Settings, rabbitmqctl: None
) -> None:
    settings = settings.model_copy(update={"queue_type": "quorum", "delivery_limit": 7})
    async with BrokerProbe(settings) as probe, running_worker(settings):
        await probe.publish({"project_id": "p1", "desktop_ids": ["d1"], "request_id": "q1"})
        await probe.wait_for_requests(["q1"], timeout=10)
        assert [r.status for r in probe.results()] == ["accepted"]
        listed = await _rabbitmqctl("list_queues", "-q", "--formatter", "json", "name", "type", "arguments")
        [queue] = [q for q in json.loads(listed) if q["name"] == settings.request_queue]
        arguments = {name: value for name, _type, value in queue["arguments"]}
    assert queue["type"] == "quorum"
    assert arguments["x-delivery-limit"] == 7
    assert arguments["x-dead-letter-routing-key"] == settings.dead_letter_queue

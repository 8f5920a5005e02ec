"""The intake's fuzz strategies against a live worker, on the real broker and the simulator.

A fixed-seed batch of messages from :func:`tests.test_intake_fuzz.draw_messages` (arbitrary bytes, JSON of any
shape, other encodings and content types, odd AMQP properties, reply_to queues that exist and that do not) is
published at once. Each message must end with exactly one result (matched by correlation_id), an ``invalid`` one
also dead-lettered exactly once, or, if no result could be published, exactly one dead-letter copy; nothing may
stay in the request queue, and the worker must still answer a valid request afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import Awaitable, Callable

import aio_pika
import pytest

from snapworker.runtime.worker import Worker
from snapworker.settings import Settings
from tests.integration.harness import BrokerProbe
from tests.test_intake_fuzz import FuzzMessage, draw_messages

pytestmark = [pytest.mark.broker, pytest.mark.timeout(120)]

MESSAGES = 150
SEED = 20_261_001
WAIT_S = 45.0
MAX_BYTES = 8192  # small enough that some fuzzed bodies are over it


def correlation_id(i: int, message: FuzzMessage) -> str:
    """Unique per message, keeping some of the fuzzed value (odd characters included) within AMQP's 255 bytes."""
    tail = (message.correlation_id or "")[:40]
    return f"fuzz-{i}:{tail}"


async def publish(probe: BrokerProbe, i: int, message: FuzzMessage, reply_queue: str) -> str:
    cid = correlation_id(i, message)
    reply_to = {"none": None, "reply": reply_queue, "missing": f"{reply_queue}.missing"}[message.reply_to]
    await probe.channel.default_exchange.publish(
        aio_pika.Message(
            message.body,
            content_type=message.content_type,
            content_encoding=message.content_encoding,
            headers=message.headers,
            message_id=message.message_id,
            correlation_id=cid,
            reply_to=reply_to,
            priority=message.priority,
            type=message.type,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        ),
        routing_key=probe.settings.request_queue,
    )
    return cid


def outcomes(probe: BrokerProbe) -> tuple[Counter[str], Counter[str], dict[str, str]]:
    """Results and dead-letter copies per correlation_id, and each result's status."""
    dead_letter = probe.settings.dead_letter_queue
    results: Counter[str] = Counter()
    dead: Counter[str] = Counter()
    status: dict[str, str] = {}
    for received in probe.received:
        cid = received.correlation_id or ""
        if received.queue == dead_letter:
            dead[cid] += 1
        else:
            results[cid] += 1
            status[cid] = received.result.status
    return results, dead, status


def settled(cid: str, results: Counter[str], dead: Counter[str], status: dict[str, str]) -> bool:
    if results[cid]:
        return status[cid] != "invalid" or dead[cid] > 0
    return dead[cid] > 0


def problems(cids: list[str], results: Counter[str], dead: Counter[str], status: dict[str, str]) -> list[str]:
    """What breaks "exactly one result, an invalid one dead-lettered once, or else exactly one dead-letter"."""
    found = []
    for cid in cids:
        r, d = results[cid], dead[cid]
        if r == 1:
            wanted = 1 if status[cid] == "invalid" else 0
            if d != wanted:
                found.append(f"{cid!r}: {status[cid]} result and {d} dead-letter copies")
        elif not (r == 0 and d == 1):
            found.append(f"{cid!r}: {r} results and {d} dead-letter copies")
    return found


async def run_batch(probe: BrokerProbe, batch: list[FuzzMessage], reply_queue: str) -> list[str]:
    """Publish every message, wait until each is answered or dead-lettered (or WAIT_S passed); their ids."""
    cids = list(await asyncio.gather(*(publish(probe, i, m, reply_queue) for i, m in enumerate(batch))))
    await wait_settled(probe, cids, timeout=WAIT_S)
    return cids


async def wait_settled(probe: BrokerProbe, cids: list[str], *, timeout: float) -> None:
    """Until every message is answered or dead-lettered, or ``timeout`` passed; then a little longer for duplicates."""

    async def all_settled() -> bool:
        return all(settled(cid, *outcomes(probe)) for cid in cids)

    with contextlib.suppress(AssertionError):  # what is missing is reported by the test's own assertion
        await probe.wait_until("every fuzzed message settled", all_settled, timeout=timeout, every=0.1)
    await asyncio.sleep(0.5)  # a duplicate would come now


async def answers_a_valid_request(probe: BrokerProbe) -> bool:
    before = len(probe.results())
    await probe.publish({"project_id": "p-after", "desktop_ids": ["d-after"]}, correlation_id="after-fuzz")
    arrived = await probe.wait_for(before + 1, timeout=20)
    return any(r.correlation_id == "after-fuzz" and r.result.status == "accepted" for r in arrived)


async def request_queue_empty(probe: BrokerProbe, worker: Worker, task: asyncio.Task[None]) -> int:
    """Close the worker (an unacked request would return to the queue) and count what is left in it."""
    await worker.close()
    await asyncio.wait_for(task, timeout=30)
    return await probe.queue_depth(probe.settings.request_queue)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The integration settings with a MAX_MESSAGE_BYTES that some fuzzed bodies exceed."""
    return settings.model_copy(update={"max_message_bytes": MAX_BYTES})


@pytest.fixture
async def reply_queue(probe: BrokerProbe, unique_name: str) -> str:
    name = f"{unique_name}.replies"
    await probe.watch(name)
    return name


async def test_every_fuzzed_message_gets_exactly_one_result_or_dead_letter(
    probe: BrokerProbe, worker: Worker, reply_queue: str
) -> None:
    batch = draw_messages(MESSAGES, at_seed=SEED)
    cids = await run_batch(probe, batch, reply_queue)
    assert problems(cids, *outcomes(probe)) == []


async def test_every_fuzzed_message_gets_a_result_not_only_a_dead_letter(
    probe: BrokerProbe, worker: Worker, reply_queue: str
) -> None:
    """Every answer here can be published: a dead-letter without a result would be the guard covering for a bug.

    Before the intake kept lone surrogates (``"\\ud800"`` in a JSON string) out of its ``invalid`` answers, those
    answers could not be serialised and such messages were only dead-lettered.
    """
    cids = await run_batch(probe, draw_messages(MESSAGES, at_seed=SEED), reply_queue)
    results, _, _ = outcomes(probe)
    assert [cid for cid in cids if results[cid] != 1] == []


async def test_the_worker_answers_a_valid_request_after_the_fuzzed_batch(
    probe: BrokerProbe, worker: Worker, reply_queue: str
) -> None:
    await run_batch(probe, draw_messages(MESSAGES, at_seed=SEED), reply_queue)
    assert await answers_a_valid_request(probe)


async def test_no_fuzzed_message_is_left_ready_or_unacked(
    probe: BrokerProbe, settings: Settings, reply_queue: str
) -> None:
    worker = Worker(settings)
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(worker.consuming.wait(), timeout=10)
    await run_batch(probe, draw_messages(MESSAGES, at_seed=SEED), reply_queue)
    assert not task.done(), "the worker stopped during the fuzzed batch"
    assert await request_queue_empty(probe, worker, task) == 0


async def test_an_invalid_request_whose_answer_exceeds_one_frame_is_answered_or_dead_lettered(
    probe: BrokerProbe, start_worker: Callable[..., Awaitable[Worker]]
) -> None:
    await start_worker(max_message_bytes=256 * 1024)  # the body (about 135 kB) is under the limit
    body = json.dumps({"project_id": "p/1", "desktop_ids": [f"{i:04d}" + "x" * 124 for i in range(1000)]}).encode()
    await probe.publish(body, correlation_id="too-large")
    await wait_settled(probe, ["too-large"], timeout=20)
    assert problems(["too-large"], *outcomes(probe)) == []

"""Durable idempotency on the real broker and the simulator: kills at the worst moments repeat no snapshot.

The crash test runs a worker process that kills itself (SIGKILL, through a failpoint) right after the API
answered and before the outcome is recorded, or right after it is recorded and before the results go out, or is
killed at a random moment; round after round, each new process picking up what the last one held. The
simulator's snapshots are the ground truth: no desktop may have two, and every request must get its result.
``SNAPWORKER_TEST_IDEMPOTENCY_ROUNDS`` sets the rounds (5 by default; 20 for the figure in docs/design.md). The
rounds run once on each store: the embedded SQLite file and Redis (a fleet's; under CI a missing Redis fails).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydantic import SecretStr
from redis.asyncio import Redis

from snapworker.settings import Settings
from snapworker.simulator.app import Simulator
from tests.helpers import redis_test_url, require_redis
from tests.integration.harness import BrokerProbe, WorkerProcess
from tests.integration.test_faults import running_worker

pytestmark = pytest.mark.broker

ROUNDS = int(os.environ.get("SNAPWORKER_TEST_IDEMPOTENCY_ROUNDS", "5"))
_KILLS = ("after_api_before_record", "after_record_before_publish", "random")


def api_calls(simulator: Simulator) -> int:
    return int(simulator.stats()["jobs_created"])


@pytest.fixture(params=["sqlite", "redis"])
async def on_store(request: pytest.FixtureRequest, settings: Settings, tmp_path: Path) -> AsyncIterator[Settings]:
    """The test's settings with the idempotency store on SQLite (under tmp_path) or on Redis (database 7; the
    test's keys, named after its unique request queue, are deleted at the end)."""
    if request.param == "sqlite":
        yield settings.model_copy(update={"idempotency_store": "sqlite", "state_dir": str(tmp_path / "state")})
        return
    require_redis()
    url = redis_test_url(7)
    yield settings.model_copy(update={"idempotency_store": "redis", "redis_url": SecretStr(url)})
    client = Redis.from_url(url)
    keys = [key async for key in client.scan_iter(match=f"snapworker:idem:{settings.request_queue}\x1f*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


async def test_kills_at_the_failpoints_and_at_random_repeat_no_snapshot_and_lose_no_request(
    probe: BrokerProbe, simulator: Simulator, on_store: Settings, tmp_path: Path
) -> None:
    simulator.config.latency_s = 0.05
    state = on_store
    rng = random.Random(12)
    ids: list[str] = []
    kills = []
    for round_ in range(ROUNDS):
        # Fresh requests every round (unique desktops), on top of what the last worker left held: every process
        # has new calls to make, and so reaches its failpoint.
        bodies = [
            {"project_id": f"p{i % 20}", "desktop_ids": [f"d{round_}-{i}"], "request_id": f"r{round_}-{i}"}
            for i in range(100)
        ]
        ids += [str(b["request_id"]) for b in bodies]
        await probe.publish_many(bodies)
        kill = _KILLS[round_ % len(_KILLS)]
        child_settings = state.model_copy(update={"failpoints": "" if kill == "random" else kill})
        async with WorkerProcess(child_settings, tmp_path / f"worker-{round_}.log") as child:
            if kill == "random":
                await asyncio.sleep(rng.uniform(0.8, 2.0))
                child.send_signal(signal.SIGKILL)
            code = await child.wait(timeout=30)
        kills.append(code)
    async with running_worker(state):
        answered = await probe.wait_for_requests(ids, timeout=60)
    repeated = simulator.snapshots.repeated()
    statuses = Counter(r.status for r in probe.results())
    print(
        f"\n{state.idempotency_store}: {len(kills)} kill rounds ({len(ids)} requests): {api_calls(simulator)} jobs, "
        f"{len(repeated)} desktops snapshotted twice, {len(set(ids) - set(answered))} requests lost, "
        f"{probe.duplicates()} duplicate results, results {dict(statuses)}"
    )
    assert kills == [-signal.SIGKILL] * ROUNDS
    assert repeated == {}
    assert set(answered) >= set(ids)
    assert {r.status for r in probe.results()} == {"accepted"}


async def test_a_request_published_again_after_its_result_is_answered_from_the_record_without_a_call(
    probe: BrokerProbe, simulator: Simulator, settings: Settings, tmp_path: Path
) -> None:
    state = settings.model_copy(update={"state_dir": str(tmp_path / "state")})
    body = {"project_id": "p1", "desktop_ids": ["d1", "d2"], "request_id": "again-1"}
    async with running_worker(state) as worker:
        await probe.publish(body)
        await probe.wait_for(1)
        calls = api_calls(simulator)
        await probe.publish(body)
        first, second = (r.result for r in await probe.wait_for(2))
        assert worker.idempotency is not None
        assert worker.idempotency.health.from_record == 1
    assert calls == 1
    assert api_calls(simulator) == 1
    assert second.jobs == first.jobs
    assert second.status == "accepted"


async def test_a_request_without_request_id_or_message_id_is_sent_again_at_least_once_only(
    probe: BrokerProbe, simulator: Simulator, settings: Settings, tmp_path: Path
) -> None:
    state = settings.model_copy(update={"state_dir": str(tmp_path / "state")})
    body = {"project_id": "p1", "desktop_ids": ["d1"]}
    async with running_worker(state):
        await probe.publish(body)
        await probe.wait_for(1)
        await probe.publish(body)
        await probe.wait_for(2)
    assert api_calls(simulator) == 2


async def test_an_unavailable_store_holds_requests_unsent_and_not_ready_then_serves_them_once_it_is_back(
    probe: BrokerProbe, simulator: Simulator, settings: Settings, tmp_path: Path
) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("a file where the state directory should be")  # the store cannot open
    state = settings.model_copy(update={"state_dir": str(blocker), "idempotency_hold_s": 0.3})
    async with running_worker(state) as worker:
        await probe.publish({"project_id": "p1", "desktop_ids": ["d1"], "request_id": "held-1"})
        idem = worker.idempotency
        assert idem is not None

        async def held() -> bool:
            return idem.health.held >= 2

        await probe.wait_until("the request held twice", held, timeout=10)
        assert not worker.ready()
        assert api_calls(simulator) == 0
        assert probe.results() == []
        blocker.unlink()  # the directory can be made now: the store is back
        await probe.wait_for(1, timeout=10)
        assert worker.ready()
    assert api_calls(simulator) == 1

"""Following jobs to their end against the simulator and a real RabbitMQ: completions, and who publishes them."""

from __future__ import annotations

import asyncio
import io
import json
import math
import signal
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from snapworker.client import SnapshotClient
from snapworker.contract.models import COMPLETION_TYPE
from snapworker.runtime.worker import Worker
from snapworker.settings import Settings
from snapworker.simulator.app import Simulator
from snapworker.tools.broker import BrokerTools
from snapworker.tools.results import follow_results
from tests.integration.harness import BrokerProbe, WorkerProcess

PROJECT = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The shared test settings with tracking on and a fast schedule (its queues are this test's own)."""
    return settings.model_copy(
        update={
            "track_jobs": True,
            "track_first_poll_s": 0.2,
            "track_max_poll_s": 0.4,
            "track_deadline_s": 20.0,
            "read_rate_limit": 100.0,
            "read_rate_burst": 20,
        }
    )


def request(request_id: str, *desktops: str) -> dict[str, object]:
    return {"project_id": PROJECT, "desktop_ids": list(desktops), "request_id": request_id}


async def wait_completions(probe: BrokerProbe, count: int, timeout: float = 20.0) -> None:
    async def arrived() -> bool:
        return len(probe.completions()) >= count

    await probe.wait_until(f"{count} completions", arrived, timeout=timeout)


async def test_finished_jobs_bring_one_succeeded_completion_per_request(
    simulator: Simulator, probe: BrokerProbe, worker: Worker
) -> None:
    simulator.config.job_duration_s = 0.5
    for i in range(3):
        await probe.publish(request(f"r{i}", f"desk-{i}a", f"desk-{i}b"))
    await wait_completions(probe, 3)
    results = {r.request_id: r for r in probe.results()}
    for completion in probe.completions():
        assert completion.status == "succeeded"
        jobs = {d: j.job_id for j in results[completion.request_id].jobs for d in j.desktop_ids}
        assert {d.desktop_id: d.job_id for d in completion.desktops} == jobs
        assert all(d.outcome == "succeeded" and d.sub_job_status == "SUCCESS" for d in completion.desktops)
    completed = probe.on(probe.settings.completion_queue)
    assert all(r.type == COMPLETION_TYPE and r.persistent for r in completed)


async def test_a_failing_desktop_makes_its_request_partial(
    simulator: Simulator, probe: BrokerProbe, worker: Worker
) -> None:
    simulator.config.failing_desktops = frozenset({"desk-bad"})
    await probe.publish(request("r-partial", "desk-good", "desk-bad"))
    await wait_completions(probe, 1)
    [completion] = probe.completions()
    assert completion.status == "partial"
    outcomes = {d.desktop_id: d for d in completion.desktops}
    assert outcomes["desk-good"].outcome == "succeeded"
    bad = outcomes["desk-bad"]
    assert (bad.outcome, bad.sub_job_status, bad.error_code) == ("failed", "FAIL", "WKS.0005")
    assert "desk-bad" in (bad.fail_reason or "")


async def test_a_job_that_never_ends_is_unknown_after_the_deadline(
    simulator: Simulator, probe: BrokerProbe, start_worker: Callable[..., Awaitable[Worker]]
) -> None:
    simulator.config.job_duration_s = math.inf
    await start_worker(track_deadline_s=1.5)
    await probe.publish(request("r-stuck", "desk-stuck"))
    await probe.wait_for(1, queue=probe.settings.result_queue)
    await asyncio.sleep(1.0)
    assert probe.completions() == []  # still running before the deadline: no guess
    await wait_completions(probe, 1, timeout=5.0)
    [completion] = probe.completions()
    assert completion.status == "unknown"
    [desktop] = completion.desktops
    assert (desktop.outcome, desktop.sub_job_status) == ("unknown", "RUNNING")
    assert "TRACK_DEADLINE_S" in (desktop.fail_reason or "")


async def test_a_completion_goes_to_reply_to_with_the_completion_type(
    simulator: Simulator, probe: BrokerProbe, worker: Worker, unique_name: str
) -> None:
    reply_to = f"{unique_name}.replies"
    await probe.watch(reply_to)
    await probe.publish(request("r-reply", "desk-r"), reply_to=reply_to, correlation_id="c-1")
    await wait_completions(probe, 1)
    replies = probe.on(reply_to)
    assert [r.type for r in replies] == [None, COMPLETION_TYPE]  # the result first, then the completion
    assert replies[1].completion.correlation_id == "c-1"
    assert (replies[1].message_id or "").startswith("completion:r-reply:")  # the same id if published again


async def test_one_poll_round_reads_each_job_once_for_all_its_requests(
    simulator: Simulator, probe: BrokerProbe, start_worker: Callable[..., Awaitable[Worker]]
) -> None:
    simulator.config.job_duration_s = 0.0  # done at the first look: one read per job, whatever the requests
    await start_worker(linger_ms=300)
    await probe.publish_many([request(f"r{i}", f"desk-{i}") for i in range(20)])
    await wait_completions(probe, 20)
    jobs = {j.job_id for r in probe.results() for j in r.jobs}
    assert simulator.stats()["job_queries"] == len(jobs) < 20


async def test_a_worker_killed_while_tracking_leaves_its_jobs_to_another(
    simulator: Simulator,
    probe: BrokerProbe,
    settings: Settings,
    start_worker: Callable[..., Awaitable[Worker]],
    tmp_path: Path,
) -> None:
    simulator.config.job_duration_s = 2.5
    async with WorkerProcess(settings, tmp_path / "worker.log") as child:
        await probe.publish_many([request(f"r{i}", f"desk-{i}") for i in range(5)])
        await probe.wait_for(5, queue=settings.result_queue, timeout=20)
        await asyncio.sleep(1.0)  # the child has looked at the running jobs a few times
        assert simulator.stats()["job_queries"] > 0, child.log()
        child.send_signal(signal.SIGKILL)
        await child.wait(timeout=10)
    assert probe.completions() == []
    await start_worker()
    await wait_completions(probe, 5)
    await asyncio.sleep(1.0)  # time for a duplicate to show up, if there were one
    assert Counter(c.request_id for c in probe.completions()) == {f"r{i}": 1 for i in range(5)}
    assert {c.status for c in probe.completions()} == {"succeeded"}


async def test_a_request_answered_from_its_record_after_a_kill_still_gets_its_completion(
    simulator: Simulator,
    probe: BrokerProbe,
    settings: Settings,
    start_worker: Callable[..., Awaitable[Worker]],
    tmp_path: Path,
) -> None:
    simulator.config.job_duration_s = 0.5
    state = settings.model_copy(update={"state_dir": str(tmp_path / "state")})
    # killed after the outcome is recorded, before the result (and the start of tracking) went out
    killed = state.model_copy(update={"failpoints": "after_record_before_publish"})
    async with WorkerProcess(killed, tmp_path / "worker.log") as child:
        await probe.publish(request("r-record", "desk-record"))
        assert await child.wait(timeout=20) == -signal.SIGKILL, child.log()
    assert simulator.stats()["jobs_created"] == 1
    worker = await start_worker(state_dir=state.state_dir)
    await wait_completions(probe, 1)
    assert worker.idempotency is not None
    assert worker.idempotency.health.from_record == 1
    assert simulator.stats()["jobs_created"] == 1
    (completion,) = probe.completions()
    assert completion.request_id == "r-record"
    assert completion.status == "succeeded"


async def test_the_client_waits_for_the_completion_of_what_it_asked(
    simulator: Simulator, settings: Settings, worker: Worker
) -> None:
    async with SnapshotClient(settings) as client:
        result = await client.create_snapshots(PROJECT, ["desk-c1", "desk-c2"], timeout=10)
        completion = await client.wait_for_completion(result, timeout=10)
    assert (completion.request_id, completion.status) == (result.request_id, "succeeded")
    assert {d.job_id for d in completion.desktops} == {j.job_id for j in result.jobs}


async def test_the_results_tool_prints_completions(
    simulator: Simulator, probe: BrokerProbe, settings: Settings, worker: Worker, unique_name: str
) -> None:
    replies = f"{unique_name}.cli-replies"  # not watched by the probe: the tool reads it
    await probe.channel.declare_queue(replies, durable=True)
    probe.forget_at_exit(replies)
    await probe.publish(request("r-cli", "desk-cli"), reply_to=replies, correlation_id="c-cli")
    out, err = io.StringIO(), io.StringIO()
    async with BrokerTools(settings) as broker:
        read = await follow_results(broker, [replies], out=out, err=err, jsonl=True, count=2, max_seconds=10)
    assert read == 2, err.getvalue()
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert (first["status"], second["status"]) == ("accepted", "succeeded")
    assert second["desktops"][0]["desktop_id"] == "desk-cli"

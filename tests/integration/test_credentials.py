"""A refused credential is a fault of the worker, not of its requests: on the real broker and loopback HTTP.

The worker logs one ERROR, answers 503 on /readyz with the reason, stops consuming, answers the requests whose call
was refused with ``retryable: true``, returns the rest to the queue, and resumes by itself once the credential
works again, including a token rotated in SNAPWORKER_AUTH_TOKEN_FILE, without a restart.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from snapworker.runtime.worker import Worker
from snapworker.settings import Settings
from snapworker.simulator.app import Simulator
from tests.conftest import SIM_TOKEN
from tests.helpers import unused_loopback_port
from tests.integration.harness import BrokerProbe, WorkerProcess

pytestmark = pytest.mark.broker

PROJECT = "0123456789abcdef0123456789abcdef"


async def _readyz(port: int) -> tuple[int, dict[str, object]]:
    try:
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/readyz") as response:
            return response.status, await response.json()
    except aiohttp.ClientError:
        return 0, {}


def _rotate(path: Path, token: str) -> None:
    new = path.with_suffix(".new")
    new.write_text(token, encoding="utf-8")
    os.replace(new, path)


async def test_a_token_refused_mid_run_answers_the_refused_call_retryable_and_requeues_the_rest(
    start_worker: Callable[..., Awaitable[Worker]], probe: BrokerProbe, simulator: Simulator
) -> None:
    # one call a second: when the first is refused, the others have not been sent
    worker = await start_worker(rate_limit=1.0, rate_burst=1, linger_ms=0)
    simulator.config.tokens = frozenset({"another-token"})  # the worker's token expires
    ids = [f"r{i}" for i in range(5)]
    for i, request_id in enumerate(ids):
        await probe.publish({"project_id": f"p{i}", "desktop_ids": [f"d{i}"]}, message_id=request_id)

    async def paused() -> bool:
        return "credential" in worker.problems()

    await probe.wait_until("the worker pauses", paused, timeout=15)
    refused = await probe.wait_for(1, timeout=15)
    assert not worker.ready()
    await asyncio.sleep(1.5)  # the paused worker answers nothing more
    answered_while_paused = probe.results()
    assert 1 <= len(answered_while_paused) < len(ids)
    for result in answered_while_paused:
        assert result.status == "failed"
        assert [(e.error_code, e.retryable) for e in result.errors] == [("APIG.0301", True)]
    assert refused[0].result.request_id in ids

    simulator.config.tokens = frozenset({SIM_TOKEN})  # accepted again: the probe finds out within seconds
    counts = await probe.wait_for_requests(ids, timeout=60)
    assert set(counts.values()) == {1}  # exactly one result each
    accepted = {r.request_id for r in probe.results() if r.status == "accepted"}
    assert accepted == set(ids) - {r.request_id for r in answered_while_paused}
    assert worker.ready()


async def test_a_refused_token_file_at_start_pauses_the_worker_and_its_rotation_resumes_it(
    settings: Settings, probe: BrokerProbe, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("expired", encoding="utf-8")
    port = unused_loopback_port()
    child_settings = settings.model_copy(
        update={"auth_token": None, "auth_token_file": str(token_file), "project_id": PROJECT, "metrics_port": port}
    )
    await probe.watch(settings.result_queue)
    async with WorkerProcess(child_settings, tmp_path / "worker.log") as child:

        async def refusing() -> bool:
            status, body = await _readyz(port)
            return status == 503 and body.get("status") == "credential refused"

        await probe.wait_until("/readyz to say the credential is refused", refusing, timeout=30, every=0.2)
        _, body = await _readyz(port)
        assert "APIG.0301" in json.dumps(body["problems"])

        for i in range(3):
            await probe.publish({"project_id": PROJECT, "desktop_ids": [f"d{i}"]}, message_id=f"r{i}")
        await asyncio.sleep(2)
        assert probe.results() == []
        assert await probe.queue_depth(settings.request_queue) == 3  # not consumed while paused

        _rotate(token_file, SIM_TOKEN)  # the daily rotation: no restart
        counts = await probe.wait_for_requests(["r0", "r1", "r2"], timeout=60)
        assert set(counts.values()) == {1}
        assert {r.status for r in probe.results()} == {"accepted"}

        async def ready() -> bool:
            return (await _readyz(port))[0] == 200

        await probe.wait_until("/readyz to answer ready again", ready, timeout=15, every=0.2)
        errors = [line for line in child.log().splitlines() if " ERROR " in line]
    assert len(errors) == 1, child.log()
    assert "refused" in errors[0]

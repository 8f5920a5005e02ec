"""The operator commands as a user runs them: ``python -m snapworker publish|results|check`` in a subprocess,
configured through SNAPWORKER_* variables, against the real broker, the simulator and a running worker."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aio_pika
import pytest

from snapworker.amqp.partitioning import request_queues
from snapworker.contract.models import SnapshotResult
from snapworker.runtime.worker import Worker
from snapworker.settings import Settings
from snapworker.tools.results import HEADER
from tests.integration.harness import BrokerProbe

pytestmark = pytest.mark.broker


@dataclass(frozen=True)
class Ran:
    code: int
    out: str
    err: str


def _env(settings: Settings, **overrides: str) -> dict[str, str]:
    """The subprocess's environment: these settings, nothing inherited from the caller's SNAPWORKER_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SNAPWORKER_")}
    assert settings.auth_token is not None
    env |= {
        "SNAPWORKER_AMQP_URL": settings.amqp_url.get_secret_value(),
        "SNAPWORKER_API_URL": settings.api_url,
        "SNAPWORKER_AUTH_TOKEN": settings.auth_token.get_secret_value(),
        "SNAPWORKER_REQUEST_QUEUE": settings.request_queue,
        "SNAPWORKER_RESULT_QUEUE": settings.result_queue,
        "SNAPWORKER_ERROR_QUEUE": settings.error_queue,
        "SNAPWORKER_DEAD_LETTER_QUEUE": settings.dead_letter_queue,
        "SNAPWORKER_CONNECT_TIMEOUT_S": "3",
        "SNAPWORKER_READ_TIMEOUT_S": "5",
    }
    return env | {f"SNAPWORKER_{name.upper()}": value for name, value in overrides.items()}


async def _snapworker(*args: str, env: dict[str, str], stdin: bytes | None = None, timeout: float = 60.0) -> Ran:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "snapworker",
        *args,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Ran(proc.returncode, out.decode(), err.decode())


def _request(request_id: str, desktop: str) -> str:
    return json.dumps({"project_id": "p1", "desktop_ids": [desktop], "request_id": request_id})


# -- publish


async def test_publish_from_a_file_reports_bad_lines_by_number_and_publishes_the_others(
    worker: Worker, probe: BrokerProbe, settings: Settings, tmp_path: Path
) -> None:
    lines = [_request("r-1", "d1"), '{"project_id": "p1"}', "not json", "", _request("r-2", "d2")]
    path = tmp_path / "requests.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    ran = await _snapworker("publish", "--file", str(path), env=_env(settings))
    assert ran.code == 1
    assert "line 2: desktop_ids: Field required" in ran.err
    assert "line 3: Invalid JSON" in ran.err
    assert ran.out.strip() == "confirmed 2 messages; 2 invalid lines not published"
    results = [r.result for r in await probe.wait_for(2)]
    assert sorted((r.request_id, r.status) for r in results) == [("r-1", "accepted"), ("r-2", "accepted")]


async def test_publish_reads_requests_from_stdin(worker: Worker, probe: BrokerProbe, settings: Settings) -> None:
    stdin = "".join(_request(f"r-{i}", f"d{i}") + "\n" for i in range(3)).encode()
    ran = await _snapworker("publish", "--file", "-", env=_env(settings), stdin=stdin)
    assert (ran.code, ran.out.strip()) == (0, "confirmed 3 messages")
    assert sorted(r.result.request_id for r in await probe.wait_for(3)) == ["r-0", "r-1", "r-2"]


async def test_publish_with_wait_prints_the_accepted_result(worker: Worker, settings: Settings) -> None:
    args = ("publish", "--project", "p1", "--desktop", "d1", "--desktop", "d2", "--wait", "--timeout", "30")
    ran = await _snapworker(*args, env=_env(settings))
    assert ran.code == 0, ran.err
    result = SnapshotResult.model_validate_json(ran.out)
    assert result.status == "accepted"
    assert [job.desktop_ids for job in result.jobs] == [("d1", "d2")]


async def test_publish_refuses_an_invalid_request_without_publishing(probe: BrokerProbe, settings: Settings) -> None:
    ran = await _snapworker("publish", "--project", "p/../x", "--desktop", "d1", env=_env(settings))
    assert ran.code == 2
    assert "project_id" in ran.err
    assert await probe.queue_depth(settings.request_queue) == 0


# -- results

PublishResults = Callable[[int], Awaitable[None]]


@pytest.fixture
async def own_queue(amqp_url: str, unique_name: str) -> AsyncIterator[tuple[str, PublishResults]]:
    """A queue of this test's own (deleted at the end) and a function that puts N results on it."""
    name = f"{unique_name}.replies"
    conn = await aio_pika.connect(amqp_url)
    try:
        channel = await conn.channel()
        await channel.declare_queue(name, durable=True)

        async def put(n: int) -> None:
            for i in range(n):
                result = SnapshotResult(
                    request_id=f"res-{i}", project_id="p1", status="accepted", finished_at=datetime.now(UTC)
                )
                body = result.model_dump_json().encode()
                await channel.default_exchange.publish(aio_pika.Message(body), routing_key=name)

        yield name, put
        await channel.queue_delete(name)
    finally:
        await conn.close()


async def _depth(amqp_url: str, queue: str) -> int:
    async with await aio_pika.connect(amqp_url) as conn:
        declared = await (await conn.channel()).declare_queue(queue, passive=True)
        return int(declared.declaration_result.message_count or 0)


async def test_results_prints_a_row_per_result_and_takes_no_more_than_count(
    own_queue: tuple[str, PublishResults], settings: Settings, amqp_url: str
) -> None:
    queue, put = own_queue
    await put(3)
    ran = await _snapworker("results", "--queue", queue, "--count", "2", "--timeout", "20", env=_env(settings))
    assert ran.code == 0, ran.err
    header, *rows = ran.out.splitlines()
    assert header == HEADER
    assert [row.split()[1:3] for row in rows] == [["accepted", "res-0"], ["accepted", "res-1"]]
    assert await _depth(amqp_url, queue) == 1


async def test_results_jsonl_prints_each_result_as_one_json_line(
    own_queue: tuple[str, PublishResults], settings: Settings
) -> None:
    queue, put = own_queue
    await put(2)
    ran = await _snapworker("results", "--queue", queue, "--count", "2", "--jsonl", env=_env(settings), timeout=30)
    assert ran.code == 0, ran.err
    assert [SnapshotResult.model_validate_json(line).request_id for line in ran.out.splitlines()] == ["res-0", "res-1"]


async def test_results_exits_non_zero_when_count_is_not_reached_in_time(
    own_queue: tuple[str, PublishResults], settings: Settings
) -> None:
    queue, put = own_queue
    await put(1)
    ran = await _snapworker("results", "--queue", queue, "--count", "2", "--timeout", "1", env=_env(settings))
    assert ran.code == 1
    assert "1 of 2 results arrived" in ran.err


# -- check


async def test_check_reports_a_good_setup_ok(probe: BrokerProbe, settings: Settings) -> None:
    ran = await _snapworker("check", env=_env(settings))
    assert ran.code == 0, ran.out
    assert "FAIL" not in ran.out
    assert "reachable and authenticated" in ran.out
    assert ran.out.splitlines()[-1] == "all checks passed"


async def test_check_reports_a_wrong_token_as_a_problem(probe: BrokerProbe, settings: Settings) -> None:
    ran = await _snapworker("check", env=_env(settings, auth_token="not-the-token"))
    assert ran.code == 1
    [line] = [line for line in ran.out.splitlines() if line.startswith("FAIL")]
    assert "credentials refused (401 APIG.0301" in line
    assert "SNAPWORKER_AUTH_TOKEN" in line


async def test_check_reports_an_unreachable_api_as_a_problem(
    probe: BrokerProbe, settings: Settings, unused_tcp_port: int
) -> None:
    ran = await _snapworker("check", env=_env(settings, api_url=f"http://127.0.0.1:{unused_tcp_port}"))
    assert ran.code == 1
    [line] = [line for line in ran.out.splitlines() if line.startswith("FAIL")]
    assert "api" in line
    assert "unreachable" in line


async def test_check_reports_an_unreachable_broker_as_a_problem(settings: Settings, unused_tcp_port: int) -> None:
    url = f"amqp://guest:guest@127.0.0.1:{unused_tcp_port}/"
    ran = await _snapworker("check", env=_env(settings, amqp_url=url))
    assert ran.code == 1
    [line] = [line for line in ran.out.splitlines() if line.startswith("FAIL")]
    assert f"cannot reach RabbitMQ at amqp://guest:***@127.0.0.1:{unused_tcp_port}/" in line


async def test_check_reports_missing_queues_as_problems(settings: Settings) -> None:
    # no probe fixture: nothing declared the queues of this test
    ran = await _snapworker("check", env=_env(settings))
    assert ran.code == 1
    missing = [line for line in ran.out.splitlines() if line.startswith("FAIL  queue") and "does not exist" in line]
    assert len(missing) == 4


async def test_check_declare_declares_the_queues(settings: Settings, amqp_url: str) -> None:
    try:
        ran = await _snapworker("check", "--declare", env=_env(settings))
        assert ran.code == 0, ran.out
        assert await _depth(amqp_url, settings.request_queue) == 0
    finally:
        async with await aio_pika.connect(amqp_url) as conn:
            channel = await conn.channel()
            for name in (settings.request_queue, settings.result_queue, settings.error_queue):
                await channel.queue_delete(name)
            await channel.queue_delete(settings.dead_letter_queue)
            for name in request_queues(settings.request_queue, settings.partitions):  # partitions, urgent twins
                await channel.queue_delete(name)

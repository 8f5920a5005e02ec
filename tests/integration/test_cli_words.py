"""What the command line and the worker's log say, run as a user runs them, against the real broker: a second
Ctrl-C, a lost broker connection, the masked broker URL, ``publish --wait``'s result, ``results``' count, and the
Quick start's demo."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from snapworker.runtime.process import EXIT_INTERRUPTED as EXIT_CODE
from snapworker.settings import Settings
from snapworker.simulator.app import Simulator
from snapworker.tools.broker import BrokerTools
from snapworker.tools.demo import run_demo
from tests.integration.harness import BrokerProbe, WorkerProcess, worker_env

pytestmark = pytest.mark.broker


async def _log_shows(worker: WorkerProcess, text: str, *, times: int = 1, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while worker.log().count(text) < times:
        if worker.returncode is not None or time.monotonic() > deadline:
            raise AssertionError(f"the worker's log does not show {text!r} {times}x; its log:\n{worker.log()}")
        await asyncio.sleep(0.05)


async def _snapworker(*args: str, env: dict[str, str], timeout: float = 120.0) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "snapworker",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


# -- a second Ctrl-C


async def test_a_second_ctrl_c_exits_at_once_while_the_first_one_drains(
    settings: Settings, probe: BrokerProbe, simulator: Simulator, tmp_path: Path
) -> None:
    patient = settings.model_copy(update={"shutdown_timeout_s": 60.0})  # the drain alone would wait up to 60 s
    async with WorkerProcess(patient, tmp_path / "worker.log") as worker:
        await _log_shows(worker, "consuming")
        simulator.config.latency_s = 60.0  # the call stays in flight: the drain waits for it
        await probe.publish({"project_id": "p1", "desktop_ids": ["d1"]})

        async def call_in_flight() -> bool:
            return bool(simulator.stats()["calls_total"] >= 1)

        await probe.wait_until("the call to reach the simulator", call_in_flight)
        worker.send_signal(signal.SIGINT)
        await _log_shows(worker, "SIGINT received: stopping")
        await asyncio.sleep(0.5)
        assert worker.returncode is None  # draining
        second = time.monotonic()
        worker.send_signal(signal.SIGINT)
        code = await worker.wait(timeout=5.0)
        waited = time.monotonic() - second
    assert (code, EXIT_CODE) == (130, 130)
    assert waited < 3.0
    assert worker.log().count("SIGINT received again: exiting now, without draining") == 1


# -- the broker connection lost, and the broker URL


@contextlib.asynccontextmanager
async def _proxy_to(port: int) -> AsyncIterator[tuple[int, set[asyncio.StreamWriter]]]:
    """A TCP proxy on a free loopback port to the broker; close the yielded writers to drop every connection."""
    open_writers: set[asyncio.StreamWriter] = set()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        broker_reader, broker_writer = await asyncio.open_connection("127.0.0.1", port)
        open_writers.update((client_writer, broker_writer))
        await asyncio.gather(pipe(client_reader, broker_writer), pipe(broker_reader, client_writer))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], open_writers
    finally:
        server.close()
        for writer in open_writers:
            writer.close()


async def test_a_dropped_broker_connection_is_one_warning_without_traceback(
    settings: Settings, probe: BrokerProbe, tmp_path: Path
) -> None:
    broker_port = int(settings.amqp_url.get_secret_value().rsplit(":", 1)[1].split("/")[0])
    async with _proxy_to(broker_port) as (port, connections):
        via_proxy = settings.model_copy(update={"amqp_url": SecretStr(f"amqp://guest:guest@127.0.0.1:{port}/")})
        async with WorkerProcess(via_proxy, tmp_path / "worker.log") as worker:
            await _log_shows(worker, "consuming")
            for writer in list(connections):  # the broker goes away: every connection of the worker drops
                writer.transport.abort()
            connections.clear()
            await _log_shows(worker, "consuming", times=2)  # reconnected
            worker.send_signal(signal.SIGTERM)
            assert await worker.wait(timeout=30) == 0
    log = worker.log()
    assert log.count("WARNING snapworker.broker: broker connection lost: ") == 1, log
    assert "Traceback" not in log
    assert "aiormq" not in log


async def test_the_broker_url_in_the_log_masks_the_password_and_not_the_user(
    settings: Settings, probe: BrokerProbe, tmp_path: Path
) -> None:
    assert settings.amqp_url.get_secret_value().startswith("amqp://guest:guest@")
    async with WorkerProcess(settings, tmp_path / "worker.log") as worker:
        await _log_shows(worker, "consuming")
        worker.send_signal(signal.SIGTERM)
        assert await worker.wait(timeout=30) == 0
    assert "snapworker starting: broker amqp://guest:***@127.0.0.1:" in worker.log()


# -- publish --wait and results


async def test_publish_wait_prints_no_truncated_field_for_a_result_that_was_not_cut(
    settings: Settings, probe: BrokerProbe, tmp_path: Path
) -> None:
    async with WorkerProcess(settings, tmp_path / "worker.log") as worker:
        await _log_shows(worker, "consuming")
        args = ("publish", "--project", "p1", "--desktop", "d1", "--wait", "--timeout", "30")
        code, out, err = await _snapworker(*args, env=worker_env(settings))
    assert code == 0, err
    printed = json.loads(out)
    assert printed["status"] == "accepted"
    assert "truncated" not in printed


async def test_results_that_did_not_arrive_are_counted_in_the_singular(settings: Settings, probe: BrokerProbe) -> None:
    await probe.watch(settings.result_queue)  # declared (and deleted at the end) by the probe
    await probe.watch(settings.error_queue)
    code, _, err = await _snapworker("results", "--count", "1", "--timeout", "1", env=worker_env(settings))
    assert code == 1
    assert "snapworker results: 0 of 1 result arrived within 1 s" in err


# -- the Quick start's demo


async def test_the_demo_ends_without_cancelled_consumers_or_tracebacks(amqp_url: str, state_dir: Path) -> None:
    code, out, err = await _snapworker("demo", env=_demo_env(amqp_url, state_dir), timeout=240)
    assert code == 0, err
    assert "results received" in out
    assert "cancelled by the broker" not in out + err
    assert "Traceback" not in out + err


async def test_the_demo_deletes_every_queue_it_declared(amqp_url: str, state_dir: Path) -> None:
    settings = Settings(amqp_url=amqp_url, state_dir=str(state_dir), partitions=2, log_level="WARNING")
    report = await run_demo(settings)
    suffixes = ("requests", "requests.p000", "requests.p001", "results", "errors", "dead-letter", "completions")
    async with BrokerTools(settings) as broker:
        left = [name for s in suffixes if await broker.queue_info(name := f"{report.queue_prefix}.{s}") is not None]
    assert report.queue_prefix.startswith("snapworker-demo.")
    assert left == []


def _demo_env(amqp_url: str, state_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("SNAPWORKER_")}
    return env | {"SNAPWORKER_AMQP_URL": amqp_url, "SNAPWORKER_STATE_DIR": str(state_dir)}

"""Plumbing shared by the scenarios: the simulator process, driving a measured process to completion, logs.

``drive`` is the clock of every backlog figure: it starts when the measured process was spawned and stops at
the first poll (about 20 per second, passive queue declares) that sees the result and error queues holding
every expected message. What follows (checking that nothing is left unacked, stopping the process, reading
its totals) is outside the timing.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.broker import Broker, Queues, ctl_queue_state
from bench.procs import CpuWatch, Measured

__all__ = ["Drive", "SimProcess", "drive", "parse_totals", "verify_drained"]

POLL_S = 0.05


class SimProcess:
    """``snapworker simulate`` as a child process on a free loopback port, without latency; without limits
    unless ``rate_per_minute`` is given (the real API's is about 100 batch-create calls a minute per user)."""

    def __init__(self, proc: Measured, url: str, token: str) -> None:
        self.proc = proc
        self.url = url
        self.token = token
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))

    @classmethod
    async def start(
        cls,
        log_path: Path,
        token: str,
        timeout_s: float = 30.0,
        *,
        rate_per_minute: int | None = None,
        extra_args: Sequence[str] = (),
    ) -> SimProcess:
        argv = ["-m", "snapworker", "simulate", "--host", "127.0.0.1", "--port", "0", "--token", token]
        if rate_per_minute is not None:
            argv += ["--rate-per-minute", str(rate_per_minute)]
        argv += list(extra_args)
        proc = Measured("simulator", argv, log_path)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", proc.log_text())
            if match:
                return cls(proc, match.group(1), token)
            if not proc.alive():
                break
            await asyncio.sleep(0.1)
        await proc.stop()
        raise RuntimeError(f"the simulator did not start; see {log_path}")

    async def stats(self) -> dict[str, Any]:
        async with self._http.get(f"{self.url}/_sim/stats") as response:
            response.raise_for_status()
            data: dict[str, Any] = await response.json()
            return data

    async def reset(self) -> None:
        async with self._http.post(f"{self.url}/_sim/reset") as response:
            response.raise_for_status()

    async def throttle(self, seconds: float) -> None:
        """Have the simulator answer every batch-create 429 for ``seconds`` (a throttling burst)."""
        async with self._http.post(f"{self.url}/_sim/throttle", params={"seconds": str(seconds)}) as response:
            response.raise_for_status()

    async def stop(self) -> None:
        await self._http.close()
        await self.proc.stop(timeout_s=10)


@dataclass
class Drive:
    """What one measured process did with one workload."""

    system: str
    expected: int
    seconds: float | None = None  # spawn -> every result in the result and error queues
    consuming_after_s: float | None = None  # spawn -> first poll that saw its consumer on the request queue
    first_result_s: float | None = None  # spawn -> first poll that saw a result: start-up, claims, first batch
    results: int = 0
    cpu_s: float | None = None  # utime + stime at completion (start-up included)
    cpu_at_consuming_s: float | None = None  # utime + stime when the consumer was first seen: start-up
    thread_cpu_s: dict[str, float] = field(default_factory=dict)  # cpu_s of the main / other threads, at completion
    vm_hwm_mb: float | None = None
    peak_rss_sampled_mb: float = 0.0
    outcome: str = "ok"  # ok | timeout | died
    request_queue_after: dict[str, float] = field(default_factory=dict)
    exit_code: int | None = None
    totals: dict[str, Any] | None = None
    sim: dict[str, Any] | None = None
    cpu_elsewhere: dict[str, float | None] = field(default_factory=dict)
    log: str = ""

    @property
    def per_s(self) -> float | None:
        return self.expected / self.seconds if self.seconds else None

    @property
    def steady_per_s(self) -> float | None:
        """Throughput from the first consumer to the end: the figure without process start-up."""
        if self.seconds is None or self.consuming_after_s is None or self.seconds <= self.consuming_after_s:
            return None
        return self.expected / (self.seconds - self.consuming_after_s)

    @property
    def sustained_per_s(self) -> float | None:
        """Throughput from the first result to the last: the drain once running, without start-up."""
        if self.seconds is None or self.first_result_s is None or self.seconds <= self.first_result_s:
            return None
        return self.expected / (self.seconds - self.first_result_s)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["requests_per_s_after_first_result"] = self.sustained_per_s
        data["requests_per_s"] = self.per_s
        data["requests_per_s_after_consuming"] = self.steady_per_s
        data["cpu_s_per_1k"] = self.cpu_s / self.expected * 1000 if self.cpu_s is not None else None
        data["cpu_s_per_1k_after_start"] = (
            (self.cpu_s - self.cpu_at_consuming_s) / self.expected * 1000
            if self.cpu_s is not None and self.cpu_at_consuming_s is not None
            else None
        )
        return data


async def drive(
    proc: Measured, broker: Broker, queues: Queues, expected: int, timeout_s: float, watch: CpuWatch
) -> Drive:
    """Poll until the result and error queues hold ``expected`` messages, the process dies, or the timeout.

    ``watch`` (started by the caller just before the spawn) records the CPU of the broker, the simulator and
    the whole machine over the same interval.
    """
    run = Drive(system=proc.name, expected=expected, log=str(proc.log_path))
    names = [queues.request, queues.result, queues.error]
    tick = 0
    while True:
        elapsed = time.perf_counter() - proc.started
        if elapsed > timeout_s:
            run.outcome = "timeout"
            break
        if not proc.alive():
            run.outcome = "died"
            break
        (_, consumers), (results, _), (errors, _) = await broker.counts(names)
        run.results = results + errors
        if run.consuming_after_s is None and consumers > 0:
            run.consuming_after_s = time.perf_counter() - proc.started
            run.cpu_at_consuming_s = proc.cpu_s()
        if run.first_result_s is None and run.results > 0:
            run.first_result_s = time.perf_counter() - proc.started
        if run.results >= expected:
            run.seconds = time.perf_counter() - proc.started
            break
        if tick % 2 == 0:
            proc.rss_mb()  # ~10 samples a second; VmHWM is the exact peak
        tick += 1
        await asyncio.sleep(POLL_S)
    run.cpu_s = proc.cpu_s()
    run.thread_cpu_s = proc.thread_cpu_s()
    run.cpu_elsewhere = watch.stop()
    measured = run.cpu_s or 0.0
    named = measured + sum(run.cpu_elsewhere.get(k) or 0.0 for k in ("broker_cpu_s", "simulator_cpu_s", "bench_cpu_s"))
    busy = run.cpu_elsewhere.get("machine_busy_cpu_s")
    run.cpu_elsewhere["others_cpu_s"] = round(busy - named, 2) if busy is not None else None
    wall = time.perf_counter() - proc.started
    run.cpu_elsewhere["others_cores"] = round((busy - named) / wall, 2) if busy is not None and wall > 0 else None
    run.vm_hwm_mb = proc.hwm_mb()
    proc.rss_mb()
    run.peak_rss_sampled_mb = round(proc.peak_rss_sampled_mb, 1)
    return run


async def verify_drained(queue: str, timeout_s: float = 15.0) -> dict[str, float]:
    """Outside the timing: wait (bounded) for the request queue to show 0 ready and 0 unacked; what was seen."""
    deadline = time.monotonic() + timeout_s
    seen: dict[str, float] = {}
    started = time.monotonic()
    while True:
        state = await asyncio.to_thread(ctl_queue_state, [queue])
        ready, unacked = state.get(queue, (-1, -1))
        seen = {"ready": ready, "unacked": unacked, "checked_after_s": round(time.monotonic() - started, 2)}
        if (ready, unacked) == (0, 0) or time.monotonic() > deadline:
            return seen
        await asyncio.sleep(0.5)


def parse_totals(log: str, marker: str) -> dict[str, Any] | None:
    """The JSON after ``marker`` (e.g. ``worker totals ``) on its last line in ``log``."""
    for line in reversed(log.splitlines()):
        at = line.find(marker)
        if at >= 0:
            try:
                data: dict[str, Any] = json.loads(line[at + len(marker) :].strip())
            except ValueError:
                return None
            return data
    return None


def parse_settings_line(log: str) -> dict[str, str]:
    """The worker's ``settings: NAME=value ...`` start-up line as a dict (secrets are shown as set/unset)."""
    for line in log.splitlines():
        at = line.find("settings: ")
        if at >= 0:
            shown: dict[str, str] = {}
            for item in line[at + len("settings: ") :].split(" "):
                name, sep, value = item.partition("=")
                if sep:
                    shown[name] = value
            return shown
    return {}

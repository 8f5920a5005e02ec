"""Processes under measurement: spawning, CPU and memory from /proc, stopping, and the machine's description.

CPU is ``utime + stime`` of ``/proc/<pid>/stat`` (clock ticks, divided by ``SC_CLK_TCK``); memory is ``VmRSS``
(sampled) and ``VmHWM`` (the kernel's own peak) of ``/proc/<pid>/status``. Both belong to the measured process
alone, which is why every system under test runs as a process of its own.
"""

from __future__ import annotations

import asyncio
import os
import platform
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "CpuWatch",
    "Measured",
    "find_pid",
    "kill_leftovers",
    "machine_info",
    "parse_proc_stat_busy",
    "parse_stat_cpu_ticks",
    "parse_status_kb",
    "snapworker_env",
]

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_LIVE: set[Measured] = set()


def kill_leftovers() -> None:
    """SIGKILL every child this benchmark started that is still running (after an error or Ctrl-C)."""
    for measured in list(_LIVE):
        if measured.alive():
            measured.proc.kill()
            measured.proc.wait(timeout=10)
        _LIVE.discard(measured)


def parse_stat_cpu_ticks(stat: str) -> int:
    """``utime + stime`` (clock ticks) from the text of ``/proc/<pid>/stat``.

    The command name (field 2) is in parentheses and may itself contain spaces or ``)``, so the fields are
    counted from the last ``)``: after it come state (field 3) ... utime (14) and stime (15).
    """
    rest = stat[stat.rindex(")") + 2 :].split()
    return int(rest[11]) + int(rest[12])


def parse_status_kb(status: str, name: str) -> int | None:
    """The value in kB of a ``Name:   1234 kB`` line of ``/proc/<pid>/status``, or None if absent."""
    match = re.search(rf"^{re.escape(name)}:\s+(\d+)\s+kB", status, re.MULTILINE)
    return int(match.group(1)) if match else None


def _pid_cpu_s(pid: int) -> float | None:
    try:
        return parse_stat_cpu_ticks(Path(f"/proc/{pid}/stat").read_text()) / _CLK_TCK
    except (OSError, ValueError, IndexError):
        return None


def parse_proc_stat_busy(text: str) -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs from the first line of ``/proc/stat``; idle and iowait are not busy."""
    fields = [int(v) for v in text.splitlines()[0].split()[1:]]
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest time is inside user)
    return total - fields[3] - fields[4], total


def find_pid(comm: str) -> int | None:
    """The first process whose command name is ``comm`` (e.g. RabbitMQ's ``beam.smp``), to read its CPU."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == comm:
                    return int(entry.name)
            except OSError:
                continue
    return None


async def wait_until_quiet(
    pid: int | None, *, cores: float = 0.15, window_s: float = 0.5, max_wait_s: float = 20.0
) -> float:
    """Wait until ``pid`` (the broker) uses less than ``cores`` over ``window_s``; return the seconds waited.

    Deleting the previous system's queues and flushing the backlog just published keep RabbitMQ busy for a
    while; without this pause the system measured next pays for its predecessor.
    """
    started = time.perf_counter()
    if pid is None:
        return 0.0
    while time.perf_counter() - started < max_wait_s:
        before = _pid_cpu_s(pid)
        await asyncio.sleep(window_s)
        after = _pid_cpu_s(pid)
        if before is None or after is None or (after - before) / window_s < cores:
            break
    return round(time.perf_counter() - started, 2)


class CpuWatch:
    """CPU seconds used by named processes, this process and the whole machine between start and stop.

    The machine's busy time minus everything named says how much *other* work (a shared, noisy box) ran
    during a measurement.
    """

    def __init__(self, pids: Mapping[str, int | None]) -> None:
        self._pids = {name: pid for name, pid in pids.items() if pid is not None}
        self._start: dict[str, float | None] = {}
        self._machine: tuple[int, int] = (0, 0)
        self._self = 0.0
        self._wall = 0.0

    def start(self) -> None:
        self._start = {name: _pid_cpu_s(pid) for name, pid in self._pids.items()}
        self._machine = parse_proc_stat_busy(Path("/proc/stat").read_text())
        self._self = time.process_time()
        self._wall = time.perf_counter()

    def stop(self) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for name, pid in self._pids.items():
            now, then = _pid_cpu_s(pid), self._start.get(name)
            out[f"{name}_cpu_s"] = round(now - then, 2) if now is not None and then is not None else None
        out["bench_cpu_s"] = round(time.process_time() - self._self, 2)
        busy, _total = parse_proc_stat_busy(Path("/proc/stat").read_text())
        busy_s = (busy - self._machine[0]) / _CLK_TCK
        out["machine_busy_cpu_s"] = round(busy_s, 2)
        wall = time.perf_counter() - self._wall
        out["machine_busy_cores"] = round(busy_s / wall, 2) if wall > 0 else None
        return out


def snapworker_env(settings: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without any SNAPWORKER_* variable, plus ``settings`` (names without prefix)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SNAPWORKER_")}
    env.update({f"SNAPWORKER_{name.upper()}": value for name, value in settings.items()})
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Measured:
    """A child process whose output goes to a log file, with its CPU and memory readable while it runs."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None) -> None:
        self.name = name
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("wb")
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, *argv],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=Path(__file__).resolve().parent.parent,
        )
        self.peak_rss_sampled_mb = 0.0
        _LIVE.add(self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def cpu_s(self) -> float | None:
        """User + system CPU seconds so far (None once the process is gone)."""
        return _pid_cpu_s(self.pid)

    def thread_cpu_s(self) -> dict[str, float]:
        """User + system CPU seconds so far of the main thread ("main") and of all other threads together
        ("others"; for the worker, mostly the idempotency store's own thread), from ``/proc/<pid>/task``.
        (Python 3.11 does not name OS threads, so they are told apart only by being the main one or not.)"""
        out = {"main": 0.0, "others": 0.0}
        try:
            tasks = list(Path(f"/proc/{self.pid}/task").iterdir())
        except OSError:
            return {}
        for task in tasks:
            try:
                ticks = parse_stat_cpu_ticks((task / "stat").read_text())
            except (OSError, ValueError, IndexError):
                continue  # the thread ended meanwhile
            which = "main" if task.name == str(self.pid) else "others"
            out[which] = round(out[which] + ticks / _CLK_TCK, 2)
        return out

    def _status_mb(self, name: str) -> float | None:
        try:
            kb = parse_status_kb(Path(f"/proc/{self.pid}/status").read_text(), name)
        except OSError:
            return None
        return kb / 1024 if kb is not None else None

    def rss_mb(self) -> float | None:
        value = self._status_mb("VmRSS")
        if value is not None:
            self.peak_rss_sampled_mb = max(self.peak_rss_sampled_mb, value)
        return value

    def hwm_mb(self) -> float | None:
        """The kernel's peak resident set size of the process (VmHWM)."""
        return self._status_mb("VmHWM")

    def log_text(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    async def stop(self, timeout_s: float = 45.0) -> int:
        """SIGTERM, wait up to ``timeout_s`` (then SIGKILL); the exit code."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.to_thread(self.proc.wait, timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = await asyncio.to_thread(self.proc.wait, 10)
        self._log.close()
        _LIVE.discard(self)
        return code


def _first(path: str, pattern: str) -> str | None:
    try:
        match = re.search(pattern, Path(path).read_text(), re.MULTILINE)
    except OSError:
        return None
    return match.group(1).strip() if match else None


def _rabbitmq_version() -> str | None:
    try:
        out = subprocess.run(
            ["rabbitmqctl", "version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.splitlines()[-1] if out else None


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    mem_kb = _first("/proc/meminfo", r"^MemTotal:\s+(\d+)")
    try:
        load = list(os.getloadavg())
    except OSError:
        load = []
    return {
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": _first("/proc/cpuinfo", r"^model name\s*:\s*(.+)$"),
        "ram_gib": round(int(mem_kb) / 1024 / 1024, 1) if mem_kb else None,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "rabbitmq": _rabbitmq_version(),
        "loadavg_at_start": load,
    }

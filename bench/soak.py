"""The chaos soak: publish steadily while workers are killed and the broker restarts, then check nothing was lost.

::

    bash bench/soak --minutes 10                   # the documented run (bench/README.md, "Chaos soak")
    bash bench/soak --minutes 1 --no-broker-restart

What runs, every part a process of its own on loopback:

- the API simulator (``snapworker simulate``) injecting faults at random: 5xx (JSON and HTML), 429 regardless
  of any limit, latency with jitter, and stalled answers longer than the workers' READ_TIMEOUT_S (a response
  timeout after the job was created);
- ``--workers`` worker processes (``python -m snapworker run``) on fresh queues;
- a publisher (in this process) publishing unique requests (``request_id`` = ``<tag>-<n>``, 1-3 desktops each,
  every desktop distinct) at ``--rate`` a second over ``--projects`` projects, with publisher confirms; a
  publish that fails (broker down) is retried with a new ``correlation_id`` (``<request_id>/<attempt>``) so a
  duplicate result it causes is told apart from one the workers caused;
- a chaos loop: every ``--chaos-every`` seconds (random within the range) one of ``kill -9`` of a worker,
  SIGTERM of a worker (each restarted after a moment), ``rabbitmqctl stop_app`` / ``start_app`` (unless
  ``--no-broker-restart``), or a worker's broker session lost while its batches wait for a throttled limiter
  (the simulator answers every call 429 for ``THROTTLE_S``; after a moment ``rabbitmqctl close_connection``
  closes one worker's consume connection: its requests go to the others while its calls wait; needs broker
  control, as restarts do). Worker 0 is the *witness* (with 2 or more workers): never signalled, so its memory
  over the whole soak shows whether it grows;
- the simulator also processes a share of the POSTs and drops the connection before answering
  (``--api-drop``): the job exists, the worker sees a lost answer.

At the end: publishing stops, the chaos stops (the broker app is started and every worker runs), the workers
drain, every result is read back, and the invariants are checked (``SoakResult.invariants``):

- ``none_lost``: every request published has at least one result (result or error queue);
- ``no_unknown_results``: no result names a request that was not published;
- ``all_published``: every request's publish was confirmed in the end;
- ``queues_empty``: the request queue (and partition queues) show 0 ready and 0 unacked after the drain and
  again after the workers stopped; nothing was dead-lettered;
- ``workers_alive``: every worker was running at the end and none exited without being told to;
- ``sigterm_clean``: every SIGTERM'd worker exited 0 within SHUTDOWN_TIMEOUT_S plus a margin;
- ``memory_bounded``: no worker process's peak RSS (VmHWM) passed ``--rss-bound-mb``;
- ``no_repeated_snapshots``: no desktop was put in more than one job (the idempotency store's promise).

Duplicates (results beyond one per request, split into those the workers caused and those a publisher retry
caused) are figures, not failures: delivery is at least once. Exit status 0 when every invariant holds, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage

from bench.broker import Queues, check_loopback, ctl_queue_state
from bench.infra import SimProcess
from bench.procs import Measured, kill_leftovers, machine_info, snapworker_env
from snapworker.amqp.partitioning import partition_queue
from snapworker.amqp.partitioning import request_queues as all_request_queues
from snapworker.amqp.topology import declare_topology
from snapworker.settings import Settings, redact_url
from snapworker.tracking.loop import tracking_queues

__all__ = ["SoakConfig", "SoakResult", "format_report", "main", "run_soak"]

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class SoakConfig:
    """Everything a soak run is parameterised by; the defaults are the documented 10-minute run's."""

    minutes: float = 10.0
    workers: int = 3
    rate: float = 20.0  # requests published per second
    projects: int = 10
    broker_restarts: bool = True
    chaos_every_s: tuple[float, float] = (8.0, 25.0)
    broker_down_s: tuple[float, float] = (2.0, 8.0)
    restart_after_s: tuple[float, float] = (0.5, 3.0)  # a killed or stopped worker is started again after this
    witness: bool = True  # worker 0 is never signalled (with 2 or more workers)
    # API faults (simulator options)
    error_5xx_ratio: float = 0.03
    html_error_ratio: float = 0.01
    error_429_ratio: float = 0.01
    latency_s: float = 0.02
    latency_jitter_s: float = 0.3
    stall_ratio: float = 0.01
    stall_s: float = 5.0  # over the workers' READ_TIMEOUT_S below: a response timeout
    drop_after_create_ratio: float = 0.02  # POSTs processed, then the connection dropped unanswered
    session_losses: bool = True  # a worker's session lost while its batches wait for a throttled limiter
    # workers
    read_timeout_s: float = 3.0
    shutdown_timeout_s: float = 10.0
    retry_max_time_s: float = 30.0
    rate_limit: float = 20.0
    partitions: int = 0
    #: None: one SQLite idempotency store for all workers (one host); a URL: Redis, as a fleet runs (the shared
    #: rate budget comes with it). The soak's keys there are deleted at the end.
    redis_url: str | None = None
    rss_bound_mb: float = 150.0
    drain_timeout_s: float = 240.0
    seed: int | None = None
    amqp_url: str = field(default_factory=lambda: os.environ.get("SNAPWORKER_AMQP_URL", DEFAULT_AMQP_URL))
    log_dir: Path = ROOT / "bench" / "results" / "logs"

    def worker_settings(self, queues: Queues, sim: SimProcess, state_dir: Path) -> dict[str, str]:
        settings = {
            "amqp_url": self.amqp_url,
            "api_url": sim.url,
            "auth_token": sim.token,
            **queues.settings(),
            **_tracking_names(queues),
            "state_dir": str(state_dir),  # one SQLite idempotency store for the soak's workers, as on one host
            "rate_limit": str(self.rate_limit),
            "rate_burst": str(max(5, int(self.rate_limit))),
            "read_timeout_s": str(self.read_timeout_s),
            "retry_max_time_s": str(self.retry_max_time_s),
            "shutdown_timeout_s": str(self.shutdown_timeout_s),
            "consumer_check_s": "2",
            "log_level": "INFO",
        }
        settings["partitions"] = str(self.partitions)  # explicit: 0 is not the workers' default
        if self.redis_url is not None:
            settings.update(idempotency_store="redis", redis_url=self.redis_url)
        return settings

    def sim_argv(self, token: str) -> list[str]:
        argv = ["-m", "snapworker", "simulate", "--host", "127.0.0.1", "--port", "0", "--token", token]
        argv += ["--error-5xx-ratio", str(self.error_5xx_ratio), "--html-error-ratio", str(self.html_error_ratio)]
        argv += ["--error-429-ratio", str(self.error_429_ratio), "--latency-s", str(self.latency_s)]
        argv += ["--latency-jitter-s", str(self.latency_jitter_s)]
        argv += ["--stall-ratio", str(self.stall_ratio), "--stall-s", str(self.stall_s)]
        argv += ["--drop-after-create-ratio", str(self.drop_after_create_ratio)]
        return [*argv, "--seed", str(self.seed or 0)]


@dataclass
class SoakResult:
    """What a soak found: the figures, each invariant (True = held) and why any did not."""

    figures: dict[str, Any]
    invariants: dict[str, bool]
    problems: list[str]
    config: dict[str, Any]

    @property
    def ok(self) -> bool:
        return all(self.invariants.values())

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, **asdict(self)}


# --------------------------------------------------------------------------------------------------- broker


async def _connect(url: str) -> AbstractConnection:
    return await aio_pika.connect(url, timeout=5, client_properties={"connection_name": "snapworker-soak"})


def _tracking_names(queues: Queues) -> dict[str, str]:
    """The soak's own tracking and completion queues (the defaults are shared names)."""
    prefix = queues.request.rsplit(".", 1)[0]
    return {"tracking_queue": f"{prefix}.tracking", "completion_queue": f"{prefix}.completions"}


def _request_queues(queues: Queues, partitions: int) -> list[str]:
    return [queues.request, *(partition_queue(queues.request, p) for p in range(partitions))]


async def _queue_state(names: list[str]) -> dict[str, tuple[int, int]] | None:
    """(ready, unacked) of each queue by ``rabbitmqctl list_queues``; None while the broker does not answer."""
    try:
        return await asyncio.to_thread(ctl_queue_state, names)
    except (OSError, subprocess.SubprocessError):
        return None


async def _rabbitmqctl(*args: str, timeout_s: float = 90.0) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        "rabbitmqctl", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return -1, f"rabbitmqctl {' '.join(args)} took over {timeout_s:.0f} s"
    return proc.returncode or 0, out.decode(errors="replace").strip()


#: how long the simulator throttles every call in a "session" fault
THROTTLE_S = 8.0


async def _close_consume_connection(pid: int) -> tuple[int, str]:
    """Have the broker close worker ``pid``'s consume connection (its session is lost); (closed, problem)."""
    code, out = await _rabbitmqctl(
        "-q", "list_connections", "--no-table-headers", "pid", "client_properties", timeout_s=30
    )
    if code:
        return 0, f"list_connections {code}: {out[-200:]}"
    closed = 0
    wanted = f'"connection_name","snapworker-consume pid {pid} on {socket.gethostname()}"'
    for line in out.splitlines():
        conn_pid, _, properties = line.partition("\t")
        if wanted in properties:
            code, out = await _rabbitmqctl("close_connection", conn_pid.strip(), "soak: session lost", timeout_s=30)
            if code:
                return closed, f"close_connection {code}: {out[-200:]}"
            closed += 1
    return closed, "" if closed else f"no consume connection of pid {pid} found"


async def broker_control_usable(amqp_url: str) -> str | None:
    """None if this soak may stop and start the broker app here, else why not."""
    check_loopback(amqp_url)
    if shutil.which("rabbitmqctl") is None:
        return "rabbitmqctl is not installed"
    code, out = await _rabbitmqctl("-q", "status", timeout_s=30)
    return None if code == 0 else f"rabbitmqctl does not work here: {out[-300:]}"


class Publisher:
    """Publishes the soak's requests at a steady rate; survives the broker going away (retrying what failed)."""

    def __init__(self, url: str, queue: str, *, rate: float, projects: int, rng: random.Random) -> None:
        self.url = url
        self.queue = queue
        self.rate = rate
        self.projects = projects
        self.tag = uuid.uuid4().hex[:6]
        self._rng = rng
        self.bodies: dict[str, bytes] = {}  # request_id -> body, every request generated
        self.desktops = 0
        self.confirmed: set[str] = set()
        self.attempts: Counter[str] = Counter()
        self.failed_publishes = 0
        self.reconnects = 0
        self._retry: list[str] = []
        self._conn: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None

    def _new_request(self) -> str:
        n = len(self.bodies)
        request_id = f"{self.tag}-{n:07d}"
        desktops = [f"d{self.tag}-{n:07d}-{j}" for j in range(self._rng.randint(1, 3))]
        body = {"project_id": f"soak-{self.tag}-p{n % self.projects:02d}", "desktop_ids": desktops}
        self.bodies[request_id] = json.dumps({**body, "request_id": request_id}).encode()
        self.desktops += len(desktops)
        return request_id

    async def _ensure_channel(self) -> AbstractChannel | None:
        if self._channel is not None and not self._channel.is_closed:
            return self._channel
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
            self._conn = None
        try:
            self._conn = await _connect(self.url)
            self._channel = await self._conn.channel(publisher_confirms=True)
        except Exception:  # the broker is down: try again on the next tick
            self._conn, self._channel = None, None
            return None
        self.reconnects += 1
        return self._channel

    async def _publish(self, channel: AbstractChannel, request_id: str) -> None:
        self.attempts[request_id] += 1
        message = aio_pika.Message(
            self.bodies[request_id],
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            correlation_id=f"{request_id}/{self.attempts[request_id]}",
        )
        try:
            await asyncio.wait_for(channel.default_exchange.publish(message, routing_key=self.queue), timeout=10)
        except Exception:
            self.failed_publishes += 1
            self._retry.append(request_id)
            raise
        self.confirmed.add(request_id)

    async def run(self, stop: asyncio.Event, *, finish_timeout_s: float = 120.0) -> None:
        """Publish until ``stop``; then retry what is unconfirmed for up to ``finish_timeout_s``."""
        started = time.monotonic()
        stopped_at: float | None = None
        try:
            while True:
                if stop.is_set() and stopped_at is None:
                    stopped_at = time.monotonic()
                if stopped_at is not None and (not self._retry or time.monotonic() - stopped_at > finish_timeout_s):
                    return
                channel = await self._ensure_channel()
                if channel is None:
                    await asyncio.sleep(1.0)
                    continue
                due = self._retry[:200]
                del self._retry[:200]
                if stopped_at is None:
                    target = int((time.monotonic() - started) * self.rate)
                    while len(self.bodies) < target and len(due) < 400:
                        due.append(self._new_request())
                if due:
                    outcomes = await asyncio.gather(*(self._publish(channel, r) for r in due), return_exceptions=True)
                    if any(isinstance(o, BaseException) for o in outcomes):
                        await asyncio.sleep(0.5)  # the channel is probably gone: reconnect on the next tick
                        continue
                await asyncio.sleep(0.05)
        finally:
            if self._conn is not None:
                with contextlib.suppress(Exception):
                    await self._conn.close()


class Collector:
    """Reads every result, error and dead-letter message (auto-ack) once the soak's chaos is over."""

    def __init__(self) -> None:
        self.results: list[tuple[str | None, str | None, str]] = []  # request_id, correlation_id, status
        self.dead_letters = 0
        self.maybe_created = 0
        self.unreadable = 0
        self.error_codes: Counter[str] = Counter()  # "<http_status> <error_code>" of the errors in results
        self._conn: AbstractConnection | None = None

    async def start(self, url: str, queues: Queues) -> None:
        self._conn = await _connect(url)
        channel = await self._conn.channel()
        await channel.set_qos(prefetch_count=2000)

        async def on_result(message: AbstractIncomingMessage) -> None:
            try:
                data = json.loads(message.body)
            except ValueError:
                self.unreadable += 1
                return
            request_id = data.get("request_id")
            status = str(data.get("status"))
            self.results.append((request_id, message.correlation_id, status))
            for error in data.get("errors") or ():
                self.error_codes[f"{error.get('http_status')} {error.get('error_code')}"] += 1
                self.maybe_created += bool(error.get("maybe_created"))

        async def on_dead_letter(_message: AbstractIncomingMessage) -> None:
            self.dead_letters += 1

        for name in (queues.result, queues.error):
            queue = await channel.declare_queue(name, passive=True)
            await queue.consume(on_result, no_ack=True)
        dead = await channel.declare_queue(queues.dead_letter, passive=True)
        await dead.consume(on_dead_letter, no_ack=True)

    def answered(self) -> set[str]:
        return {r for r, _, _ in self.results if r is not None}

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()


# --------------------------------------------------------------------------------------------------- workers


class Fleet:
    """The worker processes, one per slot, restarted after each kill; tracks exits and memory per process."""

    def __init__(self, config: SoakConfig, env: dict[str, str], log_dir: Path) -> None:
        self.config = config
        self.env = env
        self.log_dir = log_dir
        self.slots: list[Measured | None] = [None] * config.workers
        self.spawned = 0
        self.signalled: set[int] = set()  # pids we killed or stopped
        self.unexpected_exits: list[dict[str, Any]] = []
        self.sigterm_exits: list[dict[str, Any]] = []
        self.kill9s = 0
        self.peak_hwm_mb: list[float] = []  # per process, read before it ended
        self.witness_rss: list[tuple[float, float]] = []  # (seconds into the soak, MB)
        self.traceback_logs: list[str] = []
        self._logs: list[Measured] = []

    def spawn(self, slot: int) -> Measured:
        self.spawned += 1
        log = self.log_dir / f"worker{slot}-{self.spawned:03d}.log"
        proc = Measured(f"worker{slot}", ["-m", "snapworker", "run"], log, env=self.env)
        self.slots[slot] = proc
        self._logs.append(proc)
        return proc

    def chaos_slots(self) -> list[int]:
        first = 1 if self.config.witness and self.config.workers >= 2 else 0
        return [s for s in range(first, self.config.workers) if self.slots[s] is not None]

    def _note_peak(self, proc: Measured) -> None:
        hwm = proc.hwm_mb()
        proc.rss_mb()
        self.peak_hwm_mb.append(round(max(hwm or 0.0, proc.peak_rss_sampled_mb), 1))

    async def kill9(self, slot: int) -> dict[str, Any]:
        proc = self.slots[slot]
        assert proc is not None
        self.slots[slot] = None
        self._note_peak(proc)
        self.signalled.add(proc.pid)
        proc.proc.kill()
        code = await proc.stop(timeout_s=10)
        self.kill9s += 1
        return {"pid": proc.pid, "exit": code}

    async def sigterm(self, slot: int) -> dict[str, Any]:
        proc = self.slots[slot]
        assert proc is not None
        self.slots[slot] = None
        self._note_peak(proc)
        self.signalled.add(proc.pid)
        started = time.monotonic()
        code = await proc.stop(timeout_s=self.config.shutdown_timeout_s + 20)
        seconds = round(time.monotonic() - started, 2)
        exit_ = {"pid": proc.pid, "exit": code, "seconds": seconds, "log": str(proc.log_path)}
        self.sigterm_exits.append(exit_)
        return exit_

    def sample(self) -> None:
        for proc in self.slots:
            if proc is not None:
                proc.rss_mb()

    def check_alive(self, now_s: float) -> list[dict[str, Any]]:
        """Workers that exited without being told to: noted, and started again."""
        found = []
        for slot, proc in enumerate(self.slots):
            if proc is not None and not proc.alive():
                code = proc.proc.returncode
                self.peak_hwm_mb.append(round(proc.peak_rss_sampled_mb, 1))
                exit_ = {"slot": slot, "pid": proc.pid, "exit": code, "at_s": round(now_s, 1)}
                exit_["log"] = str(proc.log_path)
                # a signal from outside the soak (the worker logs the signals it handles)
                exit_["signal_logged"] = "SIGTERM received" in proc.log_text() or "SIGINT received" in proc.log_text()
                self.unexpected_exits.append(exit_)
                found.append(exit_)
                self.slots[slot] = None
                self.spawn(slot)
        return found

    async def stop_all(self) -> list[int]:
        """SIGTERM every worker (they drain); their exit codes."""
        procs = [p for p in self.slots if p is not None]
        for proc in procs:
            self._note_peak(proc)
            self.signalled.add(proc.pid)
        self.slots = [None] * len(self.slots)
        return list(await asyncio.gather(*(p.stop(timeout_s=self.config.shutdown_timeout_s + 20) for p in procs)))

    def scan_logs(self) -> None:
        for proc in self._logs:
            with contextlib.suppress(OSError):
                if "Traceback" in proc.log_path.read_text(errors="replace"):
                    self.traceback_logs.append(str(proc.log_path))


# --------------------------------------------------------------------------------------------------- the soak


async def _start_simulator(config: SoakConfig, log_dir: Path) -> SimProcess:
    token = f"soak-token-{uuid.uuid4().hex}"
    proc = Measured("simulator", config.sim_argv(token), log_dir / "simulator.log")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", proc.log_text())
        if match:
            sim = SimProcess(proc, match.group(1), token)
            check_loopback(sim.url)
            return sim
        if not proc.alive():
            break
        await asyncio.sleep(0.1)
    await proc.stop()
    raise RuntimeError(f"the simulator did not start; see {proc.log_path}")


class Chaos:
    """Every few seconds one fault: kill -9 or SIGTERM of a worker (started again), or a broker restart."""

    def __init__(
        self, config: SoakConfig, fleet: Fleet, rng: random.Random, started: float, sim: SimProcess | None = None
    ) -> None:
        self.config = config
        self.fleet = fleet
        self.sim = sim
        self.rng = rng
        self.started = started
        self.events: list[dict[str, Any]] = []
        self.broker_restarts = 0
        self.broker_down = False
        self.counts: Counter[str] = Counter()
        self._deck: list[str] = []

    def _at(self) -> float:
        return round(time.monotonic() - self.started, 1)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.rng.uniform(*self.config.chaos_every_s))
            if stop.is_set():
                return
            if not self._deck:  # every kind of fault once per round, in a random order
                self._deck = ["kill9", "sigterm"] + (["broker"] if self.config.broker_restarts else [])
                self._deck += ["session"] if self.config.session_losses and self.sim is not None else []
                self.rng.shuffle(self._deck)
            action = self._deck.pop()
            slots = self.fleet.chaos_slots()
            if action != "broker" and not slots:
                continue
            event: dict[str, Any] = {"at_s": self._at(), "action": action}
            if action == "broker":
                event |= await self.restart_broker()
            elif action == "session":
                slot = self.rng.choice(slots)
                event["slot"] = slot
                event |= await self.lose_session_while_throttled(slot)
            else:
                slot = self.rng.choice(slots)
                event["slot"] = slot
                event |= await (self.fleet.kill9(slot) if action == "kill9" else self.fleet.sigterm(slot))
                await asyncio.sleep(self.rng.uniform(*self.config.restart_after_s))
                self.fleet.spawn(slot)
            self.counts[action] += 1
            self.events.append(event)
            print(f"  chaos {event['at_s']:>6.1f} s: {_event_text(event)}", flush=True)

    async def lose_session_while_throttled(self, slot: int) -> dict[str, Any]:
        """The API throttles every call for THROTTLE_S: the workers' limiters pause and their batches wait; a
        moment later one worker's consume connection is closed by the broker. Its requests are redelivered to
        the others while its own calls still wait: none of them may send again what the others now own."""
        assert self.sim is not None
        proc = self.fleet.slots[slot]
        assert proc is not None
        await self.sim.throttle(THROTTLE_S)
        await asyncio.sleep(self.rng.uniform(1.0, 3.0))
        closed, problem = await _close_consume_connection(proc.pid)
        event: dict[str, Any] = {"pid": proc.pid, "throttled_s": THROTTLE_S, "connections_closed": closed}
        if problem:
            event["problem"] = problem
        return event

    async def restart_broker(self) -> dict[str, Any]:
        self.broker_down = True
        code, out, down_s = -1, "", 0.0
        try:
            code, out = await _rabbitmqctl("stop_app")
            down_s = self.rng.uniform(*self.config.broker_down_s)
            await asyncio.sleep(down_s)
        finally:
            started = time.monotonic()
            start_code, start_out = await _rabbitmqctl("start_app")
            self.broker_down = False
        self.broker_restarts += 1
        event: dict[str, Any] = {"down_s": round(down_s, 1), "start_app_s": round(time.monotonic() - started, 1)}
        if code or start_code:
            event["problem"] = f"stop_app {code}: {out[-200:]}; start_app {start_code}: {start_out[-200:]}"
        return event


def _event_text(event: dict[str, Any]) -> str:
    if event["action"] == "session":
        return (
            f"API throttled for {event['throttled_s']:g} s, then worker{event['slot']}'s session lost (pid "
            f"{event['pid']}, {event['connections_closed']} connection closed)"
        )
    if event["action"] == "broker":
        return f"broker stop_app for {event['down_s']} s, start_app took {event['start_app_s']} s"
    extra = f", exit {event.get('exit')}" + (f" after {event['seconds']} s" if "seconds" in event else "")
    return f"{event['action']} worker{event['slot']} (pid {event['pid']}{extra}), restarted"


async def _delete_idempotency_keys(url: str, namespace: str) -> None:
    from redis.asyncio import Redis

    client = Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=f"snapworker:idem:{namespace}\x1f*", count=1000)]
        for start in range(0, len(keys), 1000):
            await client.delete(*keys[start : start + 1000])
    finally:
        await client.aclose()


async def run_soak(config: SoakConfig) -> SoakResult:
    """Run one soak as ``config`` says; never raises for a broken invariant (see ``SoakResult.ok``)."""
    check_loopback(config.amqp_url)
    if config.redis_url is not None:
        check_loopback(config.redis_url)
    rng = random.Random(config.seed)
    log_dir = config.log_dir / f"soak-{datetime.now(UTC):%Y%m%dT%H%M%S}"
    log_dir.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    if config.broker_restarts:
        reason = await broker_control_usable(config.amqp_url)
        if reason is not None:
            raise RuntimeError(f"cannot restart the broker ({reason}); use --no-broker-restart")
    queues = Queues.fresh("soak", partitions=0)  # its partitions are in request_queues
    request_queues = _request_queues(queues, config.partitions)
    setup = await _connect(config.amqp_url)
    try:
        names: dict[str, Any] = {**queues.settings(), **_tracking_names(queues)}
        topology = Settings(amqp_url=config.amqp_url, partitions=config.partitions, **names)
        await declare_topology(await setup.channel(), topology)
    finally:
        await setup.close()

    sim = await _start_simulator(config, log_dir)
    fleet = Fleet(config, snapworker_env(config.worker_settings(queues, sim, log_dir / "state")), log_dir)
    every_queue = [*queues.all(), *all_request_queues(queues.request, config.partitions), *tracking_queues(topology)]
    publisher = Publisher(config.amqp_url, queues.request, rate=config.rate, projects=config.projects, rng=rng)
    collector = Collector()
    started = time.monotonic()
    chaos = Chaos(config, fleet, rng, started, sim if config.broker_restarts else None)
    figures: dict[str, Any] = {"log_dir": str(log_dir), "queues": queues.all()}
    state_after_drain: dict[str, tuple[int, int]] | None = None
    state_after_stop: dict[str, tuple[int, int]] | None = None
    exit_codes: list[int] = []
    drained_s: float | None = None
    print(
        f"soak: {config.minutes:g} min, {config.workers} workers, {config.rate:g} requests/s over {config.projects} "
        f"projects, broker restarts {'on' if config.broker_restarts else 'off'}; logs in {log_dir}",
        flush=True,
    )
    tasks: list[asyncio.Task[None]] = []
    try:
        for slot in range(config.workers):
            fleet.spawn(slot)
        stop_publishing, stop_chaos = asyncio.Event(), asyncio.Event()
        publishing = asyncio.create_task(publisher.run(stop_publishing))
        chaos_task = asyncio.create_task(chaos.run(stop_chaos))
        tasks += [publishing, chaos_task]
        end = started + config.minutes * 60
        next_print, next_witness = started + 30, started + 10
        while time.monotonic() < end:
            await asyncio.sleep(1.0)
            now_s = time.monotonic() - started
            fleet.sample()
            for exit_ in fleet.check_alive(now_s):
                print(f"  worker{exit_['slot']} exited by itself ({exit_['exit']}): {exit_['log']}", flush=True)
            witness = fleet.slots[0]
            if witness is not None and time.monotonic() >= next_witness:
                next_witness += 10
                rss = witness.rss_mb()
                if rss is not None:
                    fleet.witness_rss.append((round(now_s, 1), round(rss, 1)))
            if publishing.done() or chaos_task.done():
                break  # an error in either: it surfaces below
            if time.monotonic() >= next_print:
                next_print += 30
                rss_now = [round(p.rss_mb() or 0) for p in fleet.slots if p is not None]
                print(
                    f"  {now_s:6.0f} s: published {len(publisher.confirmed)} (of {len(publisher.bodies)}), "
                    f"chaos {dict(chaos.counts)}, worker RSS {rss_now} MB",
                    flush=True,
                )
        stop_chaos.set()
        await chaos_task  # finishes the fault in progress: the broker app runs and every slot has a worker again
        stop_publishing.set()
        await publishing
        publish_end_s = time.monotonic() - started
        fleet.check_alive(publish_end_s)
        print(
            f"  {publish_end_s:6.0f} s: publishing stopped ({len(publisher.confirmed)} requests); draining",
            flush=True,
        )

        # -- drain: every request answered and the request queues empty, or the drain timeout
        await collector.start(config.amqp_url, queues)
        wanted = set(publisher.confirmed)
        drain_started = time.monotonic()
        while time.monotonic() - drain_started < config.drain_timeout_s:
            await asyncio.sleep(2.0)
            fleet.sample()
            fleet.check_alive(time.monotonic() - started)
            if wanted <= collector.answered():
                state = await _queue_state(request_queues)
                if state is not None and all(state.get(q) == (0, 0) for q in request_queues):
                    drained_s = round(time.monotonic() - drain_started, 1)
                    break
        await asyncio.sleep(3.0)  # late duplicates
        state_after_drain = await _queue_state(request_queues)
        figures["workers_alive_at_end"] = [p is not None and p.alive() for p in fleet.slots]
        fleet.check_alive(time.monotonic() - started)
        exit_codes = await fleet.stop_all()
        await asyncio.sleep(2.0)
        state_after_stop = await _queue_state(request_queues)
        completions = await _queue_state([topology.completion_queue])
        figures["completions_published"] = (completions or {}).get(topology.completion_queue, (None, 0))[0]
        figures["sim"] = await sim.stats()
    finally:
        for task in tasks:  # after an error: the chaos starts the broker app again as it is cancelled
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if chaos.broker_down or config.broker_restarts:
            code, out = await _rabbitmqctl("start_app")  # always leave the broker app started
            if code:
                problems.append(f"rabbitmqctl start_app at the end failed: {out[-300:]}")
        await collector.close()
        with contextlib.suppress(Exception):
            await asyncio.gather(*(p.stop(timeout_s=30) for p in fleet.slots if p is not None))
        with contextlib.suppress(Exception):
            await sim.stop()
        kill_leftovers()
        with contextlib.suppress(Exception):
            cleanup = await _connect(config.amqp_url)
            channel = await cleanup.channel()
            for name in every_queue:
                await channel.queue_delete(name)
            await cleanup.close()
        if config.redis_url is not None:
            with contextlib.suppress(Exception):
                await _delete_idempotency_keys(config.redis_url, queues.request)
    fleet.scan_logs()

    # -- the figures and the invariants
    per_request: Counter[str] = Counter()
    attempts_seen: dict[str, set[str | None]] = {}
    statuses: Counter[str] = Counter()
    for request_id, correlation_id, status in collector.results:
        if request_id is None:
            continue
        per_request[request_id] += 1
        attempts_seen.setdefault(request_id, set()).add(correlation_id)
        statuses[status] += 1
    published = publisher.confirmed
    missing = sorted(published - set(per_request))
    unknown = sorted(set(per_request) - set(publisher.bodies))
    extra = {r: n - 1 for r, n in per_request.items() if n > 1}
    by_republish = sum(min(n, len(attempts_seen[r]) - 1) for r, n in extra.items())
    sim_stats: dict[str, Any] = figures.get("sim") or {}
    calls = sim_stats.get("calls_by_status") or {}
    peak = max(fleet.peak_hwm_mb, default=0.0)
    sigterm_bad = [e for e in fleet.sigterm_exits if e["exit"] != 0]
    after = {"after_drain": state_after_drain, "after_stop": state_after_stop}
    figures |= {
        "seconds": round(time.monotonic() - started, 1),
        "drain_s": drained_s,
        "requests_published": len(published),
        "requests_generated": len(publisher.bodies),
        "desktops_published": publisher.desktops,
        "publish_retries": sum(publisher.attempts.values()) - len(publisher.attempts),
        "publisher_reconnects": publisher.reconnects - 1,
        "results": len(collector.results),
        "statuses": dict(statuses),
        "errors_maybe_created": collector.maybe_created,
        "result_errors_by_code": dict(collector.error_codes.most_common()),
        "missing": len(missing),
        "missing_sample": missing[:20],
        "unknown": len(unknown),
        "duplicate_results": sum(extra.values()),
        "duplicate_results_by_publisher_retry": by_republish,
        "duplicate_results_by_workers": sum(extra.values()) - by_republish,
        "requests_answered_more_than_once": len(extra),
        "dead_lettered": collector.dead_letters,
        "unreadable_results": collector.unreadable,
        "desktops_repeated": sim_stats.get("desktops_repeated"),
        "repeated_snapshots": sim_stats.get("repeated_snapshots"),
        "api_calls": sim_stats.get("calls_total"),
        "api_calls_by_status": calls,
        "kill9": chaos.counts["kill9"],
        "sessions_lost_while_throttled": chaos.counts["session"],
        "answers_dropped_after_create": sim_stats.get("dropped_answers"),
        "sigterm": chaos.counts["sigterm"],
        "broker_restarts": chaos.broker_restarts,
        "worker_processes": fleet.spawned,
        "unexpected_exits": fleet.unexpected_exits,
        "sigterm_exits": fleet.sigterm_exits,
        "sigterm_exit_max_s": max((e["seconds"] for e in fleet.sigterm_exits), default=None),
        "final_exit_codes": exit_codes,
        "peak_rss_mb": peak,
        "rss_bound_mb": config.rss_bound_mb,
        "witness_rss_mb": fleet.witness_rss,
        "request_queues": after,
        "logs_with_traceback": fleet.traceback_logs,
        "chaos_events": chaos.events,
    }
    empty = all(
        state is not None and all(state.get(q) == (0, 0) for q in request_queues)
        for state in (state_after_drain, state_after_stop)
    )
    invariants = {
        "none_lost": not missing,
        "no_unknown_results": not unknown and not collector.unreadable,
        "all_published": len(published) == len(publisher.bodies),
        "queues_empty": empty and collector.dead_letters == 0,
        "workers_alive": not fleet.unexpected_exits
        and all(figures.get("workers_alive_at_end") or [False])
        and all(c == 0 for c in exit_codes),
        "sigterm_clean": not sigterm_bad,
        "memory_bounded": 0 < peak <= config.rss_bound_mb,
        "no_repeated_snapshots": sim_stats.get("repeated_snapshots") == 0,
    }
    if missing:
        problems.append(f"{len(missing)} requests never answered, e.g. {missing[:5]}")
    if unknown:
        problems.append(f"results for unpublished requests: {unknown[:5]}")
    if not invariants["all_published"]:
        problems.append(f"{len(publisher.bodies) - len(published)} requests never confirmed by the broker")
    if not invariants["queues_empty"]:
        problems.append(f"request queues (ready, unacked): {after}; dead-lettered {collector.dead_letters}")
    if not invariants["workers_alive"]:
        problems.append(
            f"unexpected exits {fleet.unexpected_exits}; alive at the end {figures.get('workers_alive_at_end')}; "
            f"final exit codes {exit_codes}"
        )
    if sigterm_bad:
        problems.append(f"SIGTERM exits not clean: {sigterm_bad}")
    if not invariants["no_repeated_snapshots"]:
        problems.append(
            f"{sim_stats.get('repeated_snapshots')} repeated snapshots (desktops {sim_stats.get('desktops_repeated')})"
        )
    if not invariants["memory_bounded"]:
        problems.append(f"peak worker RSS {peak} MB (bound {config.rss_bound_mb} MB)")
    config_json = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()}
    if config.redis_url is not None:
        config_json["redis_url"] = redact_url(config.redis_url)
    config_json["amqp_url"] = re.sub(r"//[^@/]*@", "//***@", config.amqp_url)
    return SoakResult(figures=figures, invariants=invariants, problems=problems, config=config_json)


def format_report(result: SoakResult) -> str:
    f = result.figures
    c = result.config
    lines = [
        f"chaos soak: {c['minutes']:g} min, {c['workers']} workers, {c['rate']:g} requests/s, "
        f"broker restarts {'on' if c['broker_restarts'] else 'off'}, "
        f"idempotency store {'Redis' if c.get('redis_url') else 'SQLite'}",
        "",
        "| figure | value |",
        "|---|---|",
        f"| requests published (desktops) | {f['requests_published']:,} ({f['desktops_published']:,}) |",
        f"| faults: kill -9 / SIGTERM / broker restarts / sessions lost while throttled | {f['kill9']} / "
        f"{f['sigterm']} / {f['broker_restarts']} / {f.get('sessions_lost_while_throttled', 0)} |",
        f"| POSTs processed with their answer dropped | {f.get('answers_dropped_after_create')} |",
        f"| API calls (by status) | {f['api_calls']:,} ({_statuses(f['api_calls_by_status'])}) |",
        f"| results (by status) | {f['results']:,} ({_statuses(f['statuses'])}) |",
        f"| errors with maybe_created (response timeouts) | {f['errors_maybe_created']} |",
        f"| errors in results, by HTTP status and code | {_statuses(f['result_errors_by_code'])} |",
        f"| lost (never answered) | {f['missing']} |",
        f"| duplicate results: by the workers / by publisher retries | {f['duplicate_results_by_workers']} / "
        f"{f['duplicate_results_by_publisher_retry']} ({f['requests_answered_more_than_once']} requests) |",
        f"| repeated snapshots (desktops in more than one job) | {f['repeated_snapshots']} ({f['desktops_repeated']}"
        " desktops) |",
        f"| request queue after drain / after stop (ready, unacked) | {_states(f['request_queues'])} |",
        f"| dead-lettered | {f['dead_lettered']} |",
        f"| drain after publishing stopped | {f['drain_s']} s |",
        f"| peak worker RSS (bound) | {f['peak_rss_mb']} MB ({f['rss_bound_mb']:g} MB) |",
        f"| witness worker (never signalled) RSS: at 60 s / at the end | {_witness(f['witness_rss_mb'])} |",
        f"| SIGTERM → exit, longest (SHUTDOWN_TIMEOUT_S) | {f['sigterm_exit_max_s']} s "
        f"({c['shutdown_timeout_s']:g} s) |",
        f"| completions published (job tracking) | {f.get('completions_published')} |",
        f"| worker processes started / exits not asked for | {f['worker_processes']} / {len(f['unexpected_exits'])} |",
        f"| publisher: retried publishes / reconnects | {f['publish_retries']} / {f['publisher_reconnects']} |",
        "",
        "invariants: " + ", ".join(f"{k} {'ok' if v else 'FAILED'}" for k, v in result.invariants.items()),
    ]
    lines += [f"  problem: {p}" for p in result.problems]
    if f.get("logs_with_traceback"):
        lines.append(f"  (info) worker logs with a traceback: {len(f['logs_with_traceback'])}")
    return "\n".join(lines)


def _statuses(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items())) or "none"


def _states(states: dict[str, Any]) -> str:
    def one(state: Any) -> str:
        if state is None:
            return "unknown"
        return "; ".join(f"{tuple(v)}" for v in state.values())

    return f"{one(states.get('after_drain'))} / {one(states.get('after_stop'))}"


def _witness(samples: Sequence[Sequence[float]]) -> str:
    if not samples:
        return "n/a"
    t0, first = next((s for s in samples if s[0] >= 60), samples[0])  # past the warm-up
    t1, last = samples[-1]
    return f"{first} MB at {t0:g} s / {last} MB at {t1:g} s (peak {max(s[1] for s in samples)} MB)"


def _pair(text: str) -> tuple[float, float]:
    low, _, high = text.partition(",")
    return float(low), float(high or low)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bash bench/soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to publish under chaos (default 10)")
    parser.add_argument("--workers", type=int, default=3, help="worker processes (default 3)")
    parser.add_argument("--rate", type=float, default=20.0, help="requests published per second (default 20)")
    parser.add_argument("--projects", type=int, default=10, help="projects the requests spread over (default 10)")
    parser.add_argument("--partitions", type=int, default=0, help="the workers' PARTITIONS (default 0)")
    parser.add_argument("--no-broker-restart", action="store_true", help="never stop the broker app")
    parser.add_argument(
        "--redis-url", default=None, help="idempotency store (and rate budget) on this Redis, as a fleet runs"
    )
    parser.add_argument("--chaos-every", type=_pair, default=(8.0, 25.0), help="MIN,MAX seconds between faults")
    parser.add_argument("--no-witness", action="store_true", help="let the chaos signal worker 0 too")
    parser.add_argument("--rss-bound-mb", type=float, default=150.0, help="peak RSS a worker may reach (150)")
    parser.add_argument("--drain-timeout-s", type=float, default=240.0, help="longest drain at the end (240)")
    parser.add_argument("--api-5xx", type=float, default=0.03, help="share of API calls answered 5xx (0.03)")
    parser.add_argument("--api-429", type=float, default=0.01, help="share of API calls answered 429 (0.01)")
    parser.add_argument("--api-stall", type=float, default=0.01, help="share of API calls timing out (0.01)")
    parser.add_argument("--api-drop", type=float, default=0.02, help="share of POSTs processed, answer dropped (0.02)")
    parser.add_argument("--no-session-loss", action="store_true", help="no session lost while throttled")
    parser.add_argument("--seed", type=int, default=None, help="seed of the chaos and the workload")
    parser.add_argument("--amqp-url", default=os.environ.get("SNAPWORKER_AMQP_URL", DEFAULT_AMQP_URL))
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "soak.json", help="the report")
    args = parser.parse_args(argv)
    for name in ("aiormq", "aio_pika"):  # the publisher's connection drops with every broker restart, by design
        logging.getLogger(name).setLevel(logging.CRITICAL)
    config = SoakConfig(
        minutes=args.minutes,
        workers=args.workers,
        rate=args.rate,
        projects=args.projects,
        partitions=args.partitions,
        redis_url=args.redis_url,
        broker_restarts=not args.no_broker_restart,
        chaos_every_s=args.chaos_every,
        witness=not args.no_witness,
        rss_bound_mb=args.rss_bound_mb,
        drain_timeout_s=args.drain_timeout_s,
        error_5xx_ratio=args.api_5xx,
        error_429_ratio=args.api_429,
        stall_ratio=args.api_stall,
        drop_after_create_ratio=args.api_drop,
        session_losses=not args.no_session_loss,
        seed=args.seed,
        amqp_url=args.amqp_url,
    )
    try:
        result = asyncio.run(run_soak(config))
    except KeyboardInterrupt:
        kill_leftovers()
        return 130
    report = format_report(result)
    print("\n" + report)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    document = {"machine": machine_info(), "when": datetime.now(UTC).isoformat(), **result.to_json()}
    document["table"] = report
    args.json.write_text(json.dumps(document, indent=2, default=str) + "\n")
    print(f"\nJSON: {args.json}")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())

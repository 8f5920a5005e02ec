"""``python -m bench.profile``: where the worker's CPU goes at full speed, sampled with py-spy.

The throughput scenario's workload (single-desktop requests over 50 projects, an unlimited simulator, the bench's
unlimited-API settings) with job tracking as users run it: on, completions asked for (SNAPWORKER_COMPLETION_QUEUE
set), and the idempotency store on. py-spy samples the worker from its start until every completion is in, so
the tracking looks after the drain are in the profile too. Prints the functions with the most samples, by their
own time and by their total (inclusive) time, and writes the raw stacks next to the bench's logs.

    python -m bench.profile                     # 20,000 requests (after bash bench/run set up .venv)
    python -m bench.profile --requests 5000 --set track_jobs=false
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import shutil
import sys
import time
import uuid
from pathlib import Path

from bench.broker import Broker, Queues, check_loopback
from bench.infra import SimProcess
from bench.procs import Measured, kill_leftovers, snapworker_env
from bench.scenarios import PUBLISH_IN_FLIGHT, backlog
from bench.tracked import TrackingQueues

#: The bench's unlimited-API worker settings (bench/__main__.py) and its backlog linger.
SETTINGS = {
    "prefetch": "10000",
    "max_concurrency": "16",
    "rate_limit": "1000",
    "rate_burst": "100",
    "read_rate_limit": "100",
    "linger_ms": "10000",
}


def top(raw: Path, n: int) -> str:
    """The ``n`` functions with most samples by own time, and by total time, from py-spy's raw stacks."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        samples += count
        frames = [_short(f) for f in stack.split(";")]
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count
    lines = [f"{samples} samples"]
    for title, counter in (("own time", own), ("total time", total)):
        lines.append(f"-- top {n} by {title}")
        lines += [f"{100 * c / samples:5.1f}%  {f}" for f, c in counter.most_common(n)]
    return "\n".join(lines)


def _short(frame: str) -> str:
    """``fn (path/to/module.py:123)`` -> ``fn (module.py)``: a function, not a line, is the unit."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rpartition(":")[0]
    for marker in ("site-packages/", "snapworker/", "python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{name} ({path})"


async def profile(args: argparse.Namespace) -> None:
    amqp_url = os.environ.get("SNAPWORKER_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    out_dir = Path(args.out)
    broker = await Broker.open(amqp_url)
    sim = await SimProcess.start(out_dir / "profile-simulator.log", token=f"bench-token-{uuid.uuid4().hex}")
    check_loopback(sim.url)
    queues = Queues.fresh("profile")
    tracking = TrackingQueues.of(queues)
    settings = {**SETTINGS, **tracking.settings()}
    settings |= dict(kv.split("=", 1) for kv in args.set)
    tracked = settings.get("track_jobs", "true") != "false"
    await broker.declare(queues)
    worker: Measured | None = None
    try:
        await broker.publish_many(
            queues.request, backlog(args.requests, 50, uuid.uuid4().hex[:6]), in_flight=PUBLISH_IN_FLIGHT, timeout_s=300
        )
        env = {
            "amqp_url": amqp_url,
            "api_url": sim.url,
            "auth_token": sim.token,
            "state_dir": str(out_dir / "profile-state" / uuid.uuid4().hex[:8]),
            **queues.settings(),
            **settings,
        }
        worker = Measured("worker", ["-m", "snapworker", "run"], out_dir / "profile-worker.log", snapworker_env(env))
        raw = out_dir / "profile.raw.txt"
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        spy = await asyncio.create_subprocess_exec(
            *(py_spy, "record", "--pid", str(worker.pid), "--format", "raw", "--rate", "250", "--gil"),
            *("--output", str(raw)),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        started = time.perf_counter()
        results_s = None
        marks: dict[str, float] = {}  # when the results first reached 1, 25 %, 50 %, 75 %
        while time.perf_counter() - started < args.timeout_s and worker.alive():
            (results, _), (errors, _) = await broker.counts([queues.result, queues.error])
            for share in (0.0, 0.25, 0.5, 0.75):
                if results + errors > share * args.requests and f"{share:.0%}" not in marks:
                    marks[f"{share:.0%}"] = round(time.perf_counter() - started, 2)
            if results_s is None and results + errors >= args.requests:
                results_s = time.perf_counter() - started
            done = results_s is not None
            if done and tracked:
                done = (await broker.counts([tracking.completions]))[0][0] >= args.requests
            if done:
                break
            await asyncio.sleep(0.1)
        all_s = time.perf_counter() - started
        cpu = worker.cpu_s()
        await worker.stop()
        await asyncio.wait_for(spy.wait(), timeout=60)
        print(f"results past {marks} s")
        print(f"{args.requests} requests; results in {results_s and round(results_s, 1)} s, everything in "
              f"{all_s:.1f} s; worker CPU {cpu} s; settings {settings}")  # fmt: skip
        print(top(raw, args.top))
    finally:
        if worker is not None and worker.alive():
            await worker.stop()
        await broker.delete(queues)
        await tracking.delete(broker)
        await broker.close()
        await sim.stop()
        kill_leftovers()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--timeout-s", type=float, default=300.0)
    parser.add_argument("--out", default="bench/results/logs")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="a worker setting")
    args = parser.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    asyncio.run(profile(args))


if __name__ == "__main__":
    main()

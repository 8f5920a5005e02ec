"""Micro-benchmark of the idempotency store's per-request cost (not part of `bench/run`).

    python -m bench.idem_micro [N] [--busy]

Times, for N one-desktop keyed requests in calls of 100: the gate's per-request work (key, fingerprint), the
journal's intent and outcome rows, and the SQLite store's writes and lookups (on its thread, awaited).
``--busy``: the event loop meanwhile spins in pure Python, so the store's thread must win the GIL back each
time it lets it go (CPU figures then include the spinning: read the wall ones).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

from snapworker.contract.models import JobEntry, SnapshotRequest
from snapworker.idempotency.sqlite_store import SqliteStore
from snapworker.idempotency.store import INTENT, OUTCOME, Row, entry_body, fingerprint, json_strings


async def _busy(stop: asyncio.Event) -> None:
    """The event loop's own work meanwhile: pure Python, yielding every ~1 ms (as a loaded worker does)."""
    while not stop.is_set():
        deadline = time.perf_counter() + 0.001
        while time.perf_counter() < deadline:
            pass
        await asyncio.sleep(0)


async def main(n: int, busy: bool) -> None:
    stop = asyncio.Event()
    spinner = asyncio.create_task(_busy(stop)) if busy else None
    bodies = [f'{{"project_id":"p{i % 50:03d}-x","desktop_ids":["d-x-{i:07d}"]}}'.encode() for i in range(n)]
    requests = [SnapshotRequest.model_validate_json(b) for b in bodies]
    t = time.process_time()
    keys = [f"q\x1f{i}" for i in range(n)]
    fps = [fingerprint(r) for r in requests]
    t_gate = time.process_time() - t
    t = time.process_time()
    intents, outcomes = [], []
    for start in range(0, n, 100):
        now = time.time()
        attempt = f"{start:032x}"
        intents.append(
            [
                Row(keys[i], fps[i], INTENT, attempt, json_strings(requests[i].desktop_ids), now)
                for i in range(start, min(n, start + 100))
            ]
        )
        entry = JobEntry(
            job_id=f"job{start}", desktop_ids=tuple(d for r in requests[start : start + 100] for d in r.desktop_ids)
        )
        single = entry_body(entry)
        outcomes.append(
            [
                Row(keys[i], fps[i], OUTCOME, attempt, f"[[{single},{json_strings(requests[i].desktop_ids)}]]", now)
                for i in range(start, min(n, start + 100))
            ]
        )
    t_rows = time.process_time() - t
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(Path(tmp), ttl_s=3600, max_rows=1_000_000)
        await store.lookup(["warm"])
        t, w = time.process_time(), time.perf_counter()
        for start in range(0, n, 500):
            await store.lookup(keys[start : start + 500])
        t_lookup, w_lookup = time.process_time() - t, time.perf_counter() - w
        t, w = time.process_time(), time.perf_counter()
        for rows_i, rows_o in zip(intents, outcomes, strict=True):
            await store.record_intent(rows_i)
            await store.record_outcome(rows_o)
        t_write, w_write = time.process_time() - t, time.perf_counter() - w
        t, w = time.process_time(), time.perf_counter()
        for start in range(0, n, 500):
            await store.lookup(keys[start : start + 500])
        t_found, w_found = time.process_time() - t, time.perf_counter() - w
        await store.close()
    stop.set()
    if spinner is not None:
        await spinner
    us = 1e6 / n
    print(f"N={n}  µs per request (CPU; wall in brackets){'; the loop kept busy' if busy else ''}")
    print(f"  gate: key + fingerprint      {t_gate * us:6.1f}")
    print(f"  journal: intent+outcome rows {t_rows * us:6.1f}")
    print(f"  store: lookups, none found   {t_lookup * us:6.1f} [{w_lookup * us:.1f}]")
    print(f"  store: intent+outcome writes {t_write * us:6.1f} [{w_write * us:.1f}]")
    print(f"  store: lookups, all found    {t_found * us:6.1f} [{w_found * us:.1f}]")
    print(f"  total on the hot path        {(t_gate + t_rows + t_lookup + t_write) * us:6.1f}")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000, "--busy" in sys.argv))

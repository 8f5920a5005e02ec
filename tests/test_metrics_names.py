"""Metric names carry their units, the standard process/Python/build series are there, OpenMetrics is served when
asked, and every metric the Grafana dashboard queries exists."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import cast

from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import generate_latest

from snapworker.cloud.jobs import JobReader
from snapworker.ops.health import HealthServer
from snapworker.ops.metrics import build_registry
from snapworker.runtime.worker import Worker
from snapworker.settings import Settings
from snapworker.tracking.loop import Tracker

DASHBOARD = Path(__file__).parent.parent / "deploy" / "grafana-dashboard.json"
_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def _exposed_names(worker: Worker | None = None) -> set[str]:
    registry, _ = build_registry(worker or Worker(Settings()))
    names = set()
    for line in generate_latest(registry).decode().splitlines():
        if line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def test_renamed_metrics_carry_their_units() -> None:
    names = _exposed_names()
    assert "snapworker_batch_fill_desktops_bucket" in names
    assert not any(n.startswith("snapworker_batch_fill_bucket") for n in names)


def test_process_python_and_build_series_are_exposed() -> None:
    names = _exposed_names()
    assert {"process_resident_memory_bytes", "python_info", "snapworker_build_info"} <= names


def test_every_metric_the_dashboard_queries_exists() -> None:
    names = _exposed_names()
    # the limiter's series appear once the worker runs: they are part of the contract all the same
    names |= {"snapworker_limiter_rate_calls_per_second", "snapworker_api_call_seconds_bucket"}
    names |= {"snapworker_api_call_seconds_count", "snapworker_api_throttles_total"}
    # and the tracker's once it has started (TRACK_JOBS on)
    tracking = Worker(Settings())
    tracking._outcomes.tracker = Tracker(Settings(), cast(JobReader, object()))
    names |= _exposed_names(tracking)
    dashboard = json.loads(DASHBOARD.read_text())
    queried = {
        metric
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for metric in re.findall(r"\b(?:snapworker|process|python)_[a-z_]+\b", target["expr"])
    }
    assert queried
    assert queried - names == set()


async def test_openmetrics_is_served_when_the_scraper_asks_for_it() -> None:
    registry, _ = build_registry(Worker(Settings()))
    server = HealthServer(registry, lambda: True, host="127.0.0.1", port=0)
    async with TestClient(TestServer(server._app)) as client:
        plain = await client.get("/metrics")
        negotiated = await client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
        assert plain.headers["Content-Type"].startswith("text/plain")
        assert negotiated.headers["Content-Type"].startswith("application/openmetrics-text")
        assert (await negotiated.text()).rstrip().endswith("# EOF")

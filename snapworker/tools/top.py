"""``snapworker top``: a live terminal view of the queues and of the workers' metrics.

Each frame asks RabbitMQ for every queue's depth and consumers (a passive declare: nothing is created or
consumed) and, optionally, scrapes the workers' ``/metrics`` (``--metrics URL``, repeatable). Rates are the
change between two frames divided by the time between them, so the first frame shows none. A queue that does
not exist, or a worker that does not answer, is shown as such; only an unreachable broker ends the command.

The tables are drawn with rich (``Live`` redraws them in place, ``Table`` sizes the columns to the terminal),
which does this better than cursor codes of our own.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time
from dataclasses import dataclass
from typing import TextIO

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from snapworker.amqp.partitioning import partition_queue
from snapworker.settings import Settings, load_settings
from snapworker.tools.broker import BrokerTools

__all__ = ["WorkerMetrics", "parse_metrics", "queue_names", "top"]

_SCRAPE_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True)
class WorkerMetrics:
    """The figures ``top`` shows from one scrape of a worker's ``/metrics`` (cumulative counters)."""

    requests: float = 0.0
    desktops: float = 0.0
    calls: float = 0.0
    """Batches sent: one batch-create call each (retries not counted)."""
    desktops_in_calls: float = 0.0
    throttles: float = 0.0
    rate: float | None = None
    consuming: bool | None = None


def parse_metrics(text: str) -> WorkerMetrics:
    """Read the Prometheus text format (prometheus_client's parser); metrics not found stay at their defaults."""
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[sample.name] = values.get(sample.name, 0.0) + sample.value  # sums the label sets
    consuming = values.get("snapworker_consuming")
    return WorkerMetrics(
        requests=values.get("snapworker_requests_total", 0.0),
        desktops=values.get("snapworker_desktops_total", 0.0),
        calls=values.get("snapworker_batch_fill_desktops_count", 0.0),
        desktops_in_calls=values.get("snapworker_batch_fill_desktops_sum", 0.0),
        throttles=values.get("snapworker_api_throttles_total", 0.0),
        rate=values.get("snapworker_limiter_rate_calls_per_second"),
        consuming=None if consuming is None else consuming >= 1,
    )


def queue_names(settings: Settings) -> list[str]:
    """The queues shown, in the order requests flow through them."""
    names = [settings.request_queue]
    names += [partition_queue(settings.request_queue, p) for p in range(settings.partitions)]
    names += [settings.result_queue, settings.error_queue, settings.dead_letter_queue]
    if settings.track_jobs:
        names += [settings.tracking_queue, settings.completion_queue]
    return names


def _metrics_url(url: str) -> str:
    # ``--metrics http://host:9108`` is as good as ``.../metrics``
    return url if url.rstrip("/").count("/") > 2 else url.rstrip("/") + "/metrics"


def _rate(now: float | None, before: float | None, seconds: float) -> str:
    if now is None or before is None or seconds <= 0:
        return ""
    return f"{(now - before) / seconds:+,.1f}/s"


def _per_second(now: float, before: float | None, seconds: float) -> str:
    if before is None or seconds <= 0:
        return ""
    return f"{max(now - before, 0.0) / seconds:,.1f}"


class TopView:
    """Builds frames; keeps the previous frame's figures to turn them into rates."""

    def __init__(self, settings: Settings, broker: BrokerTools, urls: list[str]) -> None:
        self._settings = settings
        self._broker = broker
        self._urls = [_metrics_url(u) for u in urls]
        self._depths: dict[str, int | None] = {}
        self._workers: dict[str, WorkerMetrics] = {}
        self._at: float | None = None

    async def frame(self, session: aiohttp.ClientSession | None = None) -> Group:
        """One frame: the queue table, and the worker table when there are metrics URLs. BrokerError when
        the broker cannot be asked."""
        now = time.monotonic()
        seconds = now - self._at if self._at is not None else 0.0
        queues = await self._queue_table(seconds)
        parts: list[Table] = [queues]
        if self._urls and session is not None:
            parts.append(await self._worker_table(session, seconds))
        self._at = now
        return Group(*parts)

    async def _queue_table(self, seconds: float) -> Table:
        table = Table(title=f"snapworker top  {time.strftime('%H:%M:%S')}", title_justify="left")
        table.add_column("QUEUE")
        for title in ("DEPTH", "CONSUMERS", "RATE"):
            table.add_column(title, justify="right")
        for name in queue_names(self._settings):
            info = await self._broker.queue_info(name)
            depth = None if info is None else info.messages
            before = self._depths.get(name)
            self._depths[name] = depth
            if info is None:
                table.add_row(name, "missing", "", "")
                continue
            table.add_row(name, f"{info.messages:,}", str(info.consumers), _rate(depth, before, seconds))
        return table

    async def _worker_table(self, session: aiohttp.ClientSession, seconds: float) -> Table:
        table = Table(title="workers (rates since the last frame)", title_justify="left")
        table.add_column("METRICS")
        for title in ("REQ/S", "DESKTOPS/S", "CALLS/S", "DESKTOPS/CALL", "THROTTLES", "RATE CALLS/S", "CONSUMING"):
            table.add_column(title, justify="right")
        samples = await asyncio.gather(*(self._scrape(session, url) for url in self._urls))
        for url, sample in zip(self._urls, samples, strict=True):
            if isinstance(sample, str):
                table.add_row(url, f"[red]{sample}[/red]", *[""] * 6)
                self._workers.pop(url, None)
                continue
            before = self._workers.get(url)
            self._workers[url] = sample
            economy = sample.desktops_in_calls / sample.calls if sample.calls else math.nan
            table.add_row(
                url,
                _per_second(sample.requests, None if before is None else before.requests, seconds),
                _per_second(sample.desktops, None if before is None else before.desktops, seconds),
                _per_second(sample.calls, None if before is None else before.calls, seconds),
                "" if math.isnan(economy) else f"{economy:.1f}",
                f"{sample.throttles:,.0f}",
                "" if sample.rate is None else f"{sample.rate:.2f}",
                {None: "", True: "yes", False: "[red]no[/red]"}[sample.consuming],
            )
        return table

    @staticmethod
    async def _scrape(session: aiohttp.ClientSession, url: str) -> WorkerMetrics | str:
        try:
            async with asyncio.timeout(_SCRAPE_TIMEOUT_S), session.get(url) as response:
                if response.status != 200:
                    return f"HTTP {response.status}"
                return parse_metrics(await response.text())
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return f"unreachable ({type(exc).__name__})"
        except ValueError as exc:  # not the Prometheus text format
            return f"not Prometheus metrics ({exc})"


async def _show(settings: Settings, urls: list[str], *, interval: float, once: bool, console: Console) -> int:
    async with (
        BrokerTools(settings, connection_name="snapworker-top") as broker,
        aiohttp.ClientSession() as session,
    ):
        view = TopView(settings, broker, urls)
        first = await view.frame(session)
        if once:
            console.print(first)
            return 0
        with Live(first, console=console, auto_refresh=False) as live:
            while True:
                await asyncio.sleep(interval)
                live.update(await view.frame(session), refresh=True)


def top(args: argparse.Namespace, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """``snapworker top``: exit 0 at Ctrl-C (or after ``--once``), 1 when the broker cannot be asked."""
    from snapworker.tools.commands import _run  # the operator commands' shared runner: errors become one line

    for url in args.metrics or ():
        if not url.startswith(("http://", "https://")):
            err.write(f"snapworker top: --metrics wants an http:// or https:// URL, got {url!r}\n")
            return 2
    settings = load_settings()
    console = Console(file=out)
    try:
        return _run(
            "top",
            _show(settings, list(args.metrics or ()), interval=args.interval, once=args.once, console=console),
            err,
        )
    except KeyboardInterrupt:  # Ctrl-C is how a live view ends
        return 0

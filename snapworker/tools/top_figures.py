"""The figures of one ``snapworker top`` frame, and where they come from; :mod:`snapworker.tools.top_draw`
draws them.

* Queues: a passive declare per queue (nothing is created or consumed) gives the messages *ready* and the
  consumers; the messages delivered and not yet acked (held by workers) come from RabbitMQ's management API when
  ``--management`` names it, and are unknown (None) otherwise.
* Workers: each ``--metrics`` URL is scraped; rates are the change since the previous scrape of that URL.
* The broker connection is opened on the first frame and again on any frame after it was lost: a frame that
  cannot ask the broker says so (and since when) instead of failing. Only a refusal (wrong credentials or vhost)
  before the first successful frame raises, as BrokerRefused: no retry can fix it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from snapworker.amqp.errors import vhost_of
from snapworker.amqp.partitioning import partition_queue
from snapworker.client import BROKER_ERRORS
from snapworker.errors import BrokerError, BrokerRefused
from snapworker.settings import Settings
from snapworker.tools.broker import BrokerTools, QueueInfo
from snapworker.tools.management import ManagementApi, QueueCounts

__all__ = ["Figures", "Frame", "QueueRow", "WorkerMetrics", "WorkerRow", "parse_metrics", "queue_names"]

_SCRAPE_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True)
class WorkerMetrics:
    """What ``top`` reads from one scrape of a worker's ``/metrics``: cumulative counters and current gauges."""

    requests: float = 0.0
    desktops: float = 0.0
    calls: float = 0.0
    """Batches sent: one batch-create call each (retries not counted)."""
    desktops_in_calls: float = 0.0
    throttles: float = 0.0
    held: float = 0.0
    """Requests the worker holds (delivered to it, not yet answered and acked)."""
    urgent: float = 0.0
    """Urgent requests among them (served before the backlog)."""
    in_flight: float = 0.0
    """Batches cut for a granted API call and not yet answered."""
    rate: float | None = None
    max_rate: float | None = None
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
        held=values.get("snapworker_requests_open", 0.0),
        urgent=values.get("snapworker_urgent_requests_waiting", 0.0),
        in_flight=values.get("snapworker_batches_in_flight", 0.0),
        rate=values.get("snapworker_limiter_rate_calls_per_second"),
        max_rate=values.get("snapworker_limiter_max_rate_calls_per_second"),
        consuming=None if consuming is None else consuming >= 1,
    )


def queue_names(settings: Settings) -> list[str]:
    """The queues shown, in the order requests flow through them."""
    names = [settings.request_queue]
    names += [partition_queue(settings.request_queue, p) for p in range(settings.partitions)]
    names += [settings.result_queue, settings.error_queue, settings.dead_letter_queue]
    if settings.track_jobs:
        names += [q for q in (settings.tracking_queue, settings.completion_queue) if q]  # COMPLETION_QUEUE may be unset
    return names


@dataclass(frozen=True, slots=True)
class QueueRow:
    name: str
    ready: int | None
    """None: the queue does not exist."""
    unacked: int | None = None
    """None: not known (no management API, or it has no figures for this queue yet)."""
    consumers: int | None = None
    ready_per_s: float | None = None
    """Change of ``ready`` per second since the previous frame; None on the first."""


@dataclass(frozen=True, slots=True)
class WorkerRow:
    url: str
    problem: str | None = None
    """Set when the scrape failed; every figure is then absent."""
    held: int = 0
    urgent: int = 0
    """Urgent requests among those held."""
    in_flight: int = 0
    requests_per_s: float | None = None
    calls_per_s: float | None = None
    desktops_per_call: float | None = None
    rate: float | None = None
    throttled: bool = False
    """The limiter's rate is cut below its maximum, or a throttle answer came since the previous scrape."""
    consuming: bool | None = None


@dataclass(frozen=True, slots=True)
class Frame:
    clock: str
    interval_s: float
    queues: tuple[QueueRow, ...] = ()
    broker_problem: str | None = None
    """Set when the broker could not be asked: ``queues`` is then empty."""
    broker_down_s: float = 0.0
    """How long the broker has been unreachable (0 when it answered)."""
    management: bool = False
    """Whether a management API was given (then a ``None`` unacked is a missing figure, not an unasked one)."""
    management_problem: str | None = None
    workers: tuple[WorkerRow, ...] = ()


class BrokerLink:
    """``top``'s broker connection: opened when needed, dropped when it fails, opened again on the next frame."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._tools: BrokerTools | None = None
        self._answered_once = False
        self._down_since: float | None = None
        self.problem: str | None = None

    @property
    def down_s(self) -> float:
        return 0.0 if self._down_since is None else time.monotonic() - self._down_since

    async def queue_infos(self, names: list[str]) -> list[QueueInfo | None] | None:
        """Each queue's figures (None: no such queue), or None when the broker cannot be asked (``problem``
        says why). BrokerRefused when it refuses before it ever answered."""
        try:
            if self._tools is None:
                tools = BrokerTools(self._settings, connection_name="snapworker-top")
                await tools.__aenter__()
                self._tools = tools
            async with asyncio.timeout(self._settings.connect_timeout_s):  # a silent broker must not hang top
                infos = [await self._tools.queue_info(name) for name in names]
        except BrokerRefused as exc:
            if not self._answered_once:
                raise
            await self._lost(str(exc))  # it answered before: maybe a user being changed; keep trying
            return None
        except BrokerError as exc:
            await self._lost(str(exc))
            return None
        except TimeoutError:
            await self._lost(f"the broker did not answer in {self._settings.connect_timeout_s:g} s")
            return None
        self._answered_once, self._down_since, self.problem = True, None, None
        return infos

    async def _lost(self, problem: str) -> None:
        self.problem = problem
        if self._down_since is None:
            self._down_since = time.monotonic()
        await self.close()

    async def close(self) -> None:
        tools, self._tools = self._tools, None
        if tools is not None:
            with contextlib.suppress(*BROKER_ERRORS):  # closing a connection that is already gone
                await tools.__aexit__(None, None, None)


class Figures:
    """Builds frames; keeps the previous figures to turn counters into rates."""

    def __init__(
        self, settings: Settings, urls: list[str], *, management_url: str | None = None, interval_s: float = 2.0
    ) -> None:
        self._names = queue_names(settings)
        self._link = BrokerLink(settings)
        self._urls = [_metrics_url(u) for u in urls]
        amqp_url = settings.amqp_url.get_secret_value()
        self._management = (
            None if management_url is None else ManagementApi(management_url, vhost_of(amqp_url), amqp_url)
        )
        self._interval_s = interval_s
        self._ready: dict[str, tuple[int, float]] = {}
        self._scrapes: dict[str, tuple[WorkerMetrics, float]] = {}

    async def frame(self, session: aiohttp.ClientSession) -> Frame:
        """One frame. Raises only BrokerRefused (see the module docstring)."""
        infos, counts, workers = await asyncio.gather(
            self._link.queue_infos(self._names),
            self._management.queues(session) if self._management is not None else _none(),
            asyncio.gather(*(self._worker(session, url) for url in self._urls)),
        )
        return Frame(
            clock=time.strftime("%H:%M:%S"),
            interval_s=self._interval_s,
            queues=() if infos is None else tuple(self._queue_rows(infos, counts)),
            broker_problem=self._link.problem,
            broker_down_s=self._link.down_s,
            management=self._management is not None,
            management_problem=counts if isinstance(counts, str) else None,
            workers=tuple(workers),
        )

    async def close(self) -> None:
        await self._link.close()

    def _queue_rows(self, infos: list[QueueInfo | None], counts: dict[str, QueueCounts] | str | None) -> list[QueueRow]:
        now = time.monotonic()
        rows = []
        for name, info in zip(self._names, infos, strict=True):
            if info is None:
                self._ready.pop(name, None)
                rows.append(QueueRow(name, None))
                continue
            before = self._ready.get(name)
            self._ready[name] = (info.messages, now)
            per_s = None if before is None or now <= before[1] else (info.messages - before[0]) / (now - before[1])
            known = counts.get(name) if isinstance(counts, dict) else None
            unacked = None if known is None else known.unacked
            rows.append(QueueRow(name, info.messages, unacked, info.consumers, per_s))
        return rows

    async def _worker(self, session: aiohttp.ClientSession, url: str) -> WorkerRow:
        sample = await _scrape(session, url)
        if isinstance(sample, str):
            self._scrapes.pop(url, None)
            return WorkerRow(url, sample)
        now = time.monotonic()
        previous = self._scrapes.get(url)
        self._scrapes[url] = (sample, now)
        before, seconds = (None, 0.0) if previous is None else (previous[0], now - previous[1])
        requests_before = None if before is None else before.requests
        calls_before = None if before is None else before.calls
        cut = sample.rate is not None and sample.max_rate is not None and sample.rate < sample.max_rate * 0.999
        return WorkerRow(
            url,
            held=int(sample.held),
            urgent=int(sample.urgent),
            in_flight=int(sample.in_flight),
            requests_per_s=_per_second(sample.requests, requests_before, seconds),
            calls_per_s=_per_second(sample.calls, calls_before, seconds),
            desktops_per_call=sample.desktops_in_calls / sample.calls if sample.calls else None,
            rate=sample.rate,
            throttled=cut or (before is not None and sample.throttles > before.throttles),
            consuming=sample.consuming,
        )


async def _none() -> None:
    return None


def _metrics_url(url: str) -> str:
    # ``--metrics http://host:9108`` is as good as ``.../metrics``
    return url if url.rstrip("/").count("/") > 2 else url.rstrip("/") + "/metrics"


def _per_second(now: float, before: float | None, seconds: float) -> float | None:
    if before is None or seconds <= 0:
        return None
    return max(now - before, 0.0) / seconds  # a restarted worker's counters start again at 0


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

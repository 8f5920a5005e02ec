"""Pure arithmetic and formatting: medians, ratios, minimum API calls, percentiles, the results table."""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "P99_MARGIN_MS",
    "Row",
    "Spread",
    "budget_rate",
    "floor_setting",
    "format_table",
    "ideal_drain_s",
    "minimum_calls",
    "minimum_calls_of_requests",
    "minimum_calls_with_linger",
    "percentile",
    "ratio",
    "request_merge_key",
    "spread",
]

#: the latency targets: p99 at most LINGER_MS plus this
P99_MARGIN_MS = 100.0


@dataclass(frozen=True)
class Spread:
    """Median, min and max over runs (None where no run produced a value)."""

    median: float | None
    low: float | None
    high: float | None
    n: int

    def show(self, fmt: str = "{:,.0f}") -> str:
        if self.median is None or self.low is None or self.high is None:
            return "n/a"
        text = fmt.format(self.median)
        if self.n > 1 and self.low != self.high:
            text += f" ({fmt.format(self.low)}–{fmt.format(self.high)})"
        return text

    def to_json(self) -> dict[str, float | int | None]:
        return {"median": self.median, "min": self.low, "max": self.high, "runs": self.n}


def spread(values: Iterable[float | None]) -> Spread:
    present = [v for v in values if v is not None]
    if not present:
        return Spread(None, None, None, 0)
    return Spread(statistics.median(present), min(present), max(present), len(present))


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def minimum_calls(pairs: Iterable[tuple[Hashable, str]], max_batch: int = 100) -> int:
    """The fewest batch-create calls that cover every (merge key, desktop): sum of ceil(distinct / max_batch)."""
    distinct: dict[Hashable, set[str]] = defaultdict(set)
    for key, desktop in pairs:
        distinct[key].add(desktop)
    return sum(math.ceil(len(d) / max_batch) for d in distinct.values())


def _settings_key(info: Any) -> str | None:
    """A snapshot-info object as part of a merge key: absent stays None; null fields count as absent."""
    if info is None:
        return None
    if isinstance(info, Mapping):
        info = {k: v for k, v in info.items() if v is not None}
    return json.dumps(info, sort_keys=True)


def request_merge_key(body: Mapping[str, Any]) -> tuple[Any, ...]:
    """The merge key of a request body, as the worker's ``MergeKey``: the project and the snapshot settings."""
    return (
        body.get("project_id"),
        body.get("disk_type"),
        _settings_key(body.get("system_disk_snapshot")),
        _settings_key(body.get("data_disk_snapshot")),
    )


def minimum_calls_of_requests(bodies: Iterable[bytes | str | Mapping[str, Any]], max_batch: int = 100) -> int:
    """:func:`minimum_calls` over request bodies (JSON or parsed): every desktop under its request's merge key."""
    pairs: list[tuple[Hashable, str]] = []
    for raw in bodies:
        body = raw if isinstance(raw, Mapping) else json.loads(raw)
        key = request_merge_key(body)
        pairs += [(key, desktop) for desktop in body.get("desktop_ids", ())]
    return minimum_calls(pairs, max_batch)


def ideal_drain_s(calls: int, rate_per_s: float, burst: int) -> float:
    """The least time ``calls`` calls take through a token bucket of ``rate_per_s`` that starts with ``burst``."""
    return max(0, calls - burst) / rate_per_s


def budget_rate(per_minute: int, burst: int) -> float:
    """The steady rate (per second) that keeps any 60 s window at or under ``per_minute`` with ``burst`` on top."""
    return (per_minute - burst) / 60


def floor_setting(value: float, decimals: int = 4) -> str:
    """``value`` rounded *down* for an environment setting, so a rate limit never ends up above its budget."""
    scale = 10**decimals
    return f"{math.floor(value * scale) / scale:.{decimals}f}".rstrip("0").rstrip(".")


def minimum_calls_with_linger(arrivals: Iterable[tuple[Hashable, float]], linger_s: float, max_batch: int = 100) -> int:
    """The fewest calls when no desktop may wait longer than ``linger_s`` after it arrived (times in seconds).

    Per merge key, greedily: a call opens at the earliest waiting arrival and takes every arrival within
    ``linger_s`` of it, up to ``max_batch``. Greedy is optimal for covering points with windows of fixed length.
    """
    by_key: dict[Hashable, list[float]] = defaultdict(list)
    for key, at in arrivals:
        by_key[key].append(at)
    calls = 0
    for times in by_key.values():
        times.sort()
        i = 0
        while i < len(times):
            calls += 1
            opened, taken = times[i], 0
            while i < len(times) and times[i] <= opened + linger_s and taken < max_batch:
                i += 1
                taken += 1
    return calls


def percentile(values: Sequence[float], pct: float) -> float | None:
    """The nearest-rank percentile (pct in 0..100) of ``values``; None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class Row:
    figure: str
    worker: str
    baseline: str
    ratio: str
    target: str
    verdict: str  # PASS | FAIL | info | n/a

    def to_json(self) -> dict[str, str]:
        return {
            "figure": self.figure,
            "snapworker": self.worker,
            "baseline": self.baseline,
            "ratio": self.ratio,
            "target": self.target,
            "result": self.verdict,
        }


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


_HEADER = ("figure", "snapworker", "baseline(s)", "ratio", "target", "result")


def format_table(rows: Sequence[Row]) -> str:
    """A Markdown table (readable in a terminal as is, and pasteable into README.md)."""
    cells = [_HEADER, *((r.figure, r.worker, r.baseline, r.ratio, r.target, r.verdict) for r in rows)]
    widths = [max(len(c[i]) for c in cells) for i in range(len(_HEADER))]

    def line(values: Sequence[str]) -> str:
        return "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), rule, *(line(c) for c in cells[1:])])

"""What a fleet started with one environment wastes, in words: the warning a worker logs at start and `check` shows."""

from __future__ import annotations

from snapworker.amqp.fleet import fleet_warning
from snapworker.settings import Settings

QUEUE = "snapworker.requests"


def _settings(**overrides: object) -> Settings:
    return Settings(**overrides)  # type: ignore[arg-type]


def test_a_lone_worker_gets_no_warning() -> None:
    assert fleet_warning(1, _settings(partitions=0)) is None


def test_a_fleet_with_partitions_and_redis_gets_no_warning() -> None:
    assert fleet_warning(3, _settings(redis_url="redis://127.0.0.1:6379/0")) is None


def test_a_fleet_without_partitions_or_redis_is_told_to_set_both() -> None:
    warning = fleet_warning(3, _settings(partitions=0))
    assert warning is not None
    assert warning.startswith(f"3 workers consume {QUEUE!r} with PARTITIONS=0")
    assert "partial batch" in warning
    assert "unset SNAPWORKER_PARTITIONS" in warning
    assert "set SNAPWORKER_REDIS_URL" in warning


def test_a_fleet_with_redis_but_without_partitions_is_told_only_of_partitions() -> None:
    warning = fleet_warning(2, _settings(partitions=0, redis_url="redis://127.0.0.1:6379/0"))
    assert warning is not None
    assert "unset SNAPWORKER_PARTITIONS" in warning
    assert "REDIS_URL" not in warning


def test_a_partitioned_fleet_without_redis_is_told_its_budget_is_only_shared_approximately() -> None:
    warning = fleet_warning(3, _settings(rate_limit=1.5))
    assert warning is not None
    assert "without SNAPWORKER_REDIS_URL" in warning
    assert "each taking 1/3 of it" in warning

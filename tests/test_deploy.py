"""The process files: Procfile and docker-compose.yml name real commands and settings."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from snapworker.cli import _parser
from snapworker.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    return data


def _subcommands() -> set[str]:
    for action in _parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    raise AssertionError("no sub-commands")


def test_procfile_has_a_worker_and_a_simulator_running_snapworker_commands() -> None:
    entries = dict(
        line.split(":", 1) for line in (ROOT / "Procfile").read_text(encoding="utf-8").splitlines() if line.strip()
    )
    assert set(entries) == {"worker", "simulator"}
    assert entries["worker"].split()[-2:] == ["snapworker", "run"]
    assert "snapworker simulate" in entries["simulator"]


def test_compose_runs_rabbitmq_with_management_the_simulator_and_two_workers() -> None:
    services = _compose()["services"]
    assert "management" in services["rabbitmq"]["image"]
    assert services["worker"]["deploy"]["replicas"] == 2
    assert services["worker"]["command"] == ["snapworker", "run"]
    assert services["simulator"]["command"][:2] == ["snapworker", "simulate"]


def test_compose_wires_the_worker_by_known_settings() -> None:
    env = _compose()["services"]["worker"]["environment"]
    known = {f"SNAPWORKER_{name.upper()}" for name in Settings.model_fields}
    assert set(env) <= known
    assert env["SNAPWORKER_API_URL"] == "http://simulator:8808"
    assert "@rabbitmq:5672" in env["SNAPWORKER_AMQP_URL"]


def test_compose_and_procfile_commands_exist_in_the_cli() -> None:
    services = _compose()["services"]
    assert {services["worker"]["command"][1], services["simulator"]["command"][1]} <= _subcommands()


def test_compose_gives_workers_more_time_to_stop_than_the_default_shutdown_timeout() -> None:
    grace = _compose()["services"]["worker"]["stop_grace_period"]
    assert int(grace.rstrip("s")) > Settings().shutdown_timeout_s


def test_compose_workers_share_one_rate_budget_in_redis() -> None:
    services = _compose()["services"]
    assert services["worker"]["environment"]["SNAPWORKER_REDIS_URL"].startswith("redis://redis:")
    assert "redis" in services["worker"]["depends_on"]
    assert "[redis]" in services["worker"]["entrypoint"][2]

"""The process files: Procfile, docker-compose.yml and the Dockerfile name real commands and settings.

No container builder runs on the project's machines, so the Dockerfile is never built here: these tests hold
its invariants instead (slim base, non-root user, a HEALTHCHECK on /healthz, nothing secret baked in).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from snapworker.settings import Settings
from snapworker.tools.cli import _parser

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
    assert services["worker"]["command"] == ["run"]
    assert services["simulator"]["command"][0] == "simulate"


def test_compose_wires_the_worker_by_known_settings() -> None:
    env = _compose()["services"]["worker"]["environment"]
    known = {f"SNAPWORKER_{name.upper()}" for name in Settings.model_fields}
    assert set(env) <= known
    assert env["SNAPWORKER_API_URL"] == "http://simulator:8808"
    assert "@rabbitmq:5672" in env["SNAPWORKER_AMQP_URL"]


def test_compose_and_procfile_commands_exist_in_the_cli() -> None:
    services = _compose()["services"]
    assert {services["worker"]["command"][0], services["simulator"]["command"][0]} <= _subcommands()


def test_compose_gives_workers_more_time_to_stop_than_the_default_shutdown_timeout() -> None:
    grace = _compose()["services"]["worker"]["stop_grace_period"]
    assert int(grace.rstrip("s")) > Settings().shutdown_timeout_s


def test_compose_workers_share_one_rate_budget_in_redis() -> None:
    services = _compose()["services"]
    assert services["worker"]["environment"]["SNAPWORKER_REDIS_URL"].startswith("redis://redis:")
    assert "redis" in services["worker"]["depends_on"]


# -- the Dockerfile


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            keyword, _, rest = pending.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
            pending = ""
    return instructions


def _final_stage() -> list[tuple[str, str]]:
    instructions = _dockerfile()
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def _args(keyword: str) -> list[str]:
    return [rest for k, rest in _final_stage() if k == keyword]


def test_dockerfile_runs_on_python_3_11_slim() -> None:
    bases = [rest.split()[0] for keyword, rest in _dockerfile() if keyword == "FROM"]
    assert set(bases) == {"python:3.11-slim"}


def test_dockerfile_runs_as_a_non_root_user() -> None:
    [user] = _args("USER")
    assert user.split(":")[0] not in ("root", "0")
    # USER comes after every RUN of the final stage: nothing installed later as root, nothing run as root
    keywords = [k for k, _ in _final_stage()]
    assert keywords.index("USER") > max(i for i, k in enumerate(keywords) if k == "RUN")


def test_dockerfile_healthcheck_asks_healthz_on_the_metrics_port_with_python() -> None:
    [check] = _args("HEALTHCHECK")
    assert "/healthz" in check
    assert "urllib.request" in check  # the slim image has no curl
    assert "SNAPWORKER_METRICS_PORT" in check
    env = " ".join(_args("ENV"))
    assert "SNAPWORKER_METRICS_PORT=9108" in env
    assert "9108" in _args("EXPOSE")[0].split()


def test_dockerfile_entrypoint_is_snapworker_and_runs_a_worker_by_default() -> None:
    assert _args("ENTRYPOINT") == ['["snapworker"]']
    assert _args("CMD") == ['["run"]']


def test_dockerfile_installs_snapworker_with_the_redis_extra() -> None:
    runs = " ".join(rest for keyword, rest in _dockerfile() if keyword == "RUN")
    assert ".[redis]" in runs
    assert "snapworker[redis]" in runs


def test_dockerfile_bakes_in_no_secret() -> None:
    secret_names = ("AUTH_TOKEN", "SECRET_KEY", "ACCESS_KEY", "SECURITY_TOKEN", "PASSWORD", "AMQP_URL", "REDIS_URL")
    baked = " ".join(_args("ENV") + [rest for keyword, rest in _dockerfile() if keyword == "ARG"])
    assert not [name for name in secret_names if name in baked]


def test_dockerignore_keeps_only_the_package_sources_in_the_build_context() -> None:
    lines = [
        line for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines() if line and line[0] != "#"
    ]
    assert lines[0] == "*"  # everything else (.venv, .git, state, local settings files) stays out
    assert {"!pyproject.toml", "!README.md", "!snapworker/"} <= set(lines)
    copied = " ".join(rest for keyword, rest in _dockerfile() if keyword == "COPY" and "--from" not in rest)
    assert set(copied.replace("./", "").split()) - {".", "snapworker"} <= {"pyproject.toml", "README.md"}


def test_compose_builds_the_worker_and_the_simulator_from_the_dockerfile() -> None:
    services = _compose()["services"]
    for name in ("worker", "simulator"):
        assert services[name]["build"] == "."
        assert "entrypoint" not in services[name]  # the image's own: snapworker
        assert "volumes" not in services[name]  # nothing installed from a mounted source tree

"""Every known user mistake, in every command, ends with one clear line and a non-zero exit code, never a traceback.

Each row runs ``python -m snapworker ...`` in a subprocess, as a user would. Rows that need the broker to answer
(a wrong password, an unknown vhost) are marked ``broker``; the rest need nothing running.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

CLOSED_PORT_URL = "amqp://guest:guest@127.0.0.1:1/"  # port 1: nothing listens there


@dataclass(frozen=True)
class Mistake:
    args: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    code: int = 2
    says: str = ""


@pytest.fixture(scope="module")
def busy_port() -> Iterator[int]:
    """A port something else already listens on (all interfaces)."""
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def _with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{parts.username}:{password}@{parts.hostname}:{parts.port or 5672}"))


def _with_vhost(url: str, vhost: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{vhost}"))


TOKEN = {"SNAPWORKER_AUTH_TOKEN": "tok"}
MISTAKES: dict[str, Mistake] = {
    "schema written under a file": Mistake(("schema", "--out", "{file}/schemas"), says="Not a directory"),
    "metrics port in use": Mistake(
        ("run",), TOKEN | {"SNAPWORKER_METRICS_PORT": "{busy_port}"}, says="choose another SNAPWORKER_METRICS_PORT"
    ),
    "simulator port in use": Mistake(("simulate", "--port", "{busy_port}"), says="address already in use"),
    "empty token": Mistake(("run",), {"SNAPWORKER_AUTH_TOKEN": ""}, says="AUTH_TOKEN is set but empty"),
    "token and AK/SK together": Mistake(
        ("run",),
        TOKEN | {"SNAPWORKER_ACCESS_KEY": "ak", "SNAPWORKER_SECRET_KEY": "sk"},
        says="remove AUTH_TOKEN",
    ),
    "no credentials": Mistake(("run",), says="no API credentials"),
    "a setting that is not a number": Mistake(("run",), TOKEN | {"SNAPWORKER_PREFETCH": "lots"}, says="PREFETCH"),
    "a negative timeout": Mistake(("publish", "--project", "p", "--desktop", "d", "--timeout", "-1"), says="above 0"),
    "a file to publish that does not exist": Mistake(("publish", "--file", "{file}.missing"), says="No such file"),
    "demo with no broker": Mistake(("demo",), {"SNAPWORKER_AMQP_URL": CLOSED_PORT_URL}, 1, "cannot reach RabbitMQ"),
    "publish with no broker": Mistake(
        ("publish", "--project", "p", "--desktop", "d"), {"SNAPWORKER_AMQP_URL": CLOSED_PORT_URL}, 1, "cannot reach"
    ),
    "results with no broker": Mistake(("results",), {"SNAPWORKER_AMQP_URL": CLOSED_PORT_URL}, 1, "cannot reach"),
    "publish --dry-run with --wait": Mistake(
        ("publish", "--project", "p", "--desktop", "d", "--dry-run", "--wait"), says="drop --wait"
    ),
    "a snapshot name too long": Mistake(
        ("publish", "--project", "p", "--desktop", "d", "--snapshot-name", "n" * 65, "--dry-run"),
        says="invalid request",
    ),
    "top with no broker": Mistake(("top", "--once"), {"SNAPWORKER_AMQP_URL": CLOSED_PORT_URL}, 1, "cannot reach"),
    "top with a metrics address that is not a URL": Mistake(
        ("top", "--once", "--metrics", "worker-1:9108"), says="wants an http:// or https:// URL"
    ),
    "replay with no broker": Mistake(("replay",), {"SNAPWORKER_AMQP_URL": CLOSED_PORT_URL}, 1, "cannot reach"),
    "replay with a limit of 0": Mistake(("replay", "--limit", "0"), says="must be at least 1"),
}
BROKER_MISTAKES: dict[str, Mistake] = {
    "run with a wrong broker password": Mistake(
        ("run",), TOKEN | {"SNAPWORKER_AMQP_URL": "{wrong_password}"}, 3, "refused the login of user"
    ),
    "run with an unknown vhost": Mistake(
        ("run",), TOKEN | {"SNAPWORKER_AMQP_URL": "{unknown_vhost}"}, 3, "refused virtual host 'no-such-vhost'"
    ),
}


def _run(mistake: Mistake, values: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SNAPWORKER_")}
    # the worker's INFO start-up lines are not part of the answer to a mistake
    env |= {"SNAPWORKER_LOG_LEVEL": "WARNING", "SNAPWORKER_CONNECT_TIMEOUT_S": "3"}
    env |= {k: v.format(**values) for k, v in mistake.env.items()}
    args = [a.format(**values) for a in mistake.args]
    return subprocess.run(
        [sys.executable, "-m", "snapworker", *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def _assert_one_clear_line(ran: subprocess.CompletedProcess[str], mistake: Mistake) -> None:
    assert "Traceback" not in ran.stdout + ran.stderr
    assert ran.returncode == mistake.code, ran.stderr
    said = [line for line in ran.stderr.splitlines() if line.startswith("snapworker")]
    assert len(said) == 1, ran.stderr
    assert mistake.says in said[0]


@pytest.mark.parametrize("name", list(MISTAKES))
def test_a_user_mistake_ends_with_one_clear_line(name: str, tmp_path: Path, busy_port: int) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    ran = _run(MISTAKES[name], {"file": str(a_file), "busy_port": str(busy_port)})
    _assert_one_clear_line(ran, MISTAKES[name])


@pytest.mark.broker
@pytest.mark.parametrize("name", list(BROKER_MISTAKES))
def test_a_broker_refusal_ends_run_with_one_clear_line(name: str, amqp_url: str) -> None:
    values = {
        "wrong_password": _with_password(amqp_url, "certainly-not-the-password"),
        "unknown_vhost": _with_vhost(amqp_url, "no-such-vhost"),
    }
    _assert_one_clear_line(_run(BROKER_MISTAKES[name], values), BROKER_MISTAKES[name])

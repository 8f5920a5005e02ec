"""A start that fails for good (the broker refuses the login) ends with its one line: no "retrying" line from a
loop beside it, and no totals of a worker that never served. Through the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from urllib.parse import urlsplit, urlunsplit

import pytest

pytestmark = pytest.mark.broker


def _wrong_password(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{parts.username}:not-the-password@{parts.hostname}:{parts.port or 5672}"))


@pytest.fixture
def refused_run(amqp_url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SNAPWORKER_")}
    env |= {"SNAPWORKER_AUTH_TOKEN": "t", "SNAPWORKER_AMQP_URL": _wrong_password(amqp_url)}
    env["SNAPWORKER_STATE_DIR"] = os.environ["SNAPWORKER_STATE_DIR"]
    return subprocess.run(
        [sys.executable, "-m", "snapworker", "run"], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_a_refused_login_exits_non_zero_naming_the_fix(refused_run: subprocess.CompletedProcess[str]) -> None:
    assert refused_run.returncode != 0
    assert "refused the login" in refused_run.stderr.splitlines()[-1]


def test_a_refused_login_prints_no_retrying_line(refused_run: subprocess.CompletedProcess[str]) -> None:
    assert "retrying" not in refused_run.stderr


def test_a_refused_login_prints_no_totals(refused_run: subprocess.CompletedProcess[str]) -> None:
    assert "totals" not in refused_run.stderr
    assert "Traceback" not in refused_run.stderr

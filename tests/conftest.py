"""Shared fixtures: a real RabbitMQ (required under CI) and the Workspace API simulator on loopback."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from snapworker.simulator.app import SimConfig, Simulator

AMQP_URL = os.environ.get("SNAPWORKER_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
SIM_TOKEN = "test-token"


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test session's own STATE_DIR (the SQLite idempotency store lives there)."""
    return tmp_path_factory.mktemp("snapworker-state")


@pytest.fixture(autouse=True)
def _state_outside_home(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test writes to ~/.local/state/snapworker: Settings built without STATE_DIR read it from here, and
    worker subprocesses inherit it (tests/integration/harness.py passes the settings and the environment on)."""
    monkeypatch.setenv("SNAPWORKER_STATE_DIR", str(state_dir))
    monkeypatch.setenv("XDG_STATE_HOME", str(state_dir / "xdg"))  # also where the default would go


@pytest.fixture
async def simulator() -> AsyncIterator[Simulator]:
    """A fresh simulator on a free loopback port, accepting X-Auth-Token ``SIM_TOKEN``."""
    sim = Simulator(SimConfig(tokens=frozenset({SIM_TOKEN})))
    await sim.start(host="127.0.0.1", port=0)
    try:
        yield sim
    finally:
        await sim.stop()


@pytest.fixture
def unique_name() -> str:
    """A queue-name prefix no other test uses."""
    return f"test.{uuid.uuid4().hex[:12]}"

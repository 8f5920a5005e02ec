"""The test suite keeps the idempotency store out of the user's home (tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

from snapworker.settings import Settings
from tests.integration.harness import worker_env


def test_settings_without_state_dir_point_at_the_sessions_state_dir(state_dir: Path) -> None:
    settings = Settings()
    assert settings.state_path == state_dir
    assert Path.home() not in settings.state_path.parents
    assert worker_env(settings)["SNAPWORKER_STATE_DIR"] == str(state_dir)  # what a worker subprocess is given

"""A job read refused for the worker's credential is looked at again later without a WARNING per job: the worker's
one ERROR line says the credential is refused (see runtime/credential_pause.py)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import cast

import pytest

from snapworker.cloud.jobs import JobReader
from snapworker.errors import ApiCredentialRefused, ApiServerError
from snapworker.settings import Settings
from snapworker.tracking.loop import Tracker
from snapworker.tracking.state import start_unit
from tests.tracking.test_state import result

SETTINGS = Settings(api_url="http://127.0.0.1:9", auth_token="t", completion_queue="c")


class _FailingReader:
    reads = 0

    def __init__(self, error: Exception) -> None:
        self.error = error

    async def read(self, project_id: str, job_id: str) -> object:
        self.reads += 1
        raise self.error


async def _look_with(error: Exception) -> _FailingReader:
    reader = _FailingReader(error)
    tracker = Tracker(SETTINGS, cast(JobReader, reader))
    unit = start_unit([(result("r1", ("job-1", ("d1",))), None)], datetime.now(UTC))
    assert unit is not None
    await tracker._look(unit)
    return reader


async def test_a_refused_job_read_logs_no_warning(caplog: pytest.LogCaptureFixture) -> None:
    refused = ApiCredentialRefused("decrypt token fail", http_status=401, error_code="APIG.0301")
    with caplog.at_level(logging.WARNING):
        reader = await _look_with(refused)
    assert reader.reads == 1
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_another_failed_job_read_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    failed = ApiServerError("backend unavailable", http_status=500, error_code="WKS.0005")
    with caplog.at_level(logging.WARNING):
        await _look_with(failed)
    assert any("reading job job-1 failed" in r.getMessage() for r in caplog.records)

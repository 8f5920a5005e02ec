"""CredentialPause: a refused credential pauses the worker with one ERROR, and probing it again resumes it."""

from __future__ import annotations

import asyncio
import logging

import pytest

from snapworker.errors import ApiCredentialRefused, ApiTransportError
from snapworker.runtime.credential_pause import CredentialPause


def _refusal() -> ApiCredentialRefused:
    return ApiCredentialRefused(
        "Incorrect IAM authentication information: decrypt token fail", http_status=401, error_code="APIG.0301"
    )


class Probe:
    """A probe whose answer the test sets: None (accepted) or the error to raise."""

    def __init__(self, error: Exception | None) -> None:
        self.error = error
        self.calls = 0

    async def __call__(self) -> None:
        self.calls += 1
        if self.error is not None:
            raise self.error


async def test_a_refusal_stops_serving_and_names_the_reason() -> None:
    pause = CredentialPause()
    pause.refused("default", _refusal(), Probe(None))
    assert not pause.serving.is_set()
    assert pause.refusing.is_set()
    assert pause.reason is not None
    assert "APIG.0301" in pause.reason


async def test_repeated_refusals_of_one_credential_log_one_error(caplog: pytest.LogCaptureFixture) -> None:
    pause = CredentialPause()
    with caplog.at_level(logging.ERROR, logger="snapworker.worker"):
        for _ in range(5):
            pause.refused("default", _refusal(), Probe(_refusal()))
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "refused" in errors[0].getMessage()
    assert pause.pauses == 1


async def test_a_probe_that_is_still_refused_keeps_the_pause() -> None:
    pause = CredentialPause()
    probe = Probe(_refusal())
    pause.refused("default", _refusal(), probe)
    await pause.probe_all()
    assert probe.calls == 1
    assert not pause.serving.is_set()


async def test_a_probe_the_api_could_not_answer_keeps_the_pause() -> None:
    pause = CredentialPause()
    pause.refused("default", _refusal(), Probe(ApiTransportError("connection refused")))
    await pause.probe_all()
    assert not pause.serving.is_set()


async def test_an_accepted_probe_resumes_serving() -> None:
    pause = CredentialPause()
    pause.refused("default", _refusal(), Probe(None))
    await pause.probe_all()
    assert pause.serving.is_set()
    assert not pause.refusing.is_set()
    assert pause.reason is None


async def test_serving_resumes_only_when_every_refused_credential_works() -> None:
    pause = CredentialPause()
    pause.refused("a", _refusal(), Probe(None))
    still = Probe(_refusal())
    pause.refused("b", _refusal(), still)
    await pause.probe_all()
    assert not pause.serving.is_set()
    assert pause.reason is not None
    assert pause.reason.startswith("b:")
    still.error = None
    await pause.probe_all()
    assert pause.serving.is_set()


async def test_the_probe_loop_resumes_by_itself() -> None:
    pause = CredentialPause(retry_s=0.01, max_retry_s=0.02)
    probe = Probe(_refusal())
    pause.refused("default", _refusal(), probe)
    loop = asyncio.create_task(pause.run())
    try:
        await asyncio.sleep(0.05)
        assert probe.calls >= 1
        assert not pause.serving.is_set()
        probe.error = None
        await asyncio.wait_for(pause.serving.wait(), timeout=2)
    finally:
        loop.cancel()


async def test_wait_serving_returns_when_stopping() -> None:
    pause = CredentialPause()
    pause.refused("default", _refusal(), Probe(_refusal()))
    stopping = asyncio.Event()
    stopping.set()
    await asyncio.wait_for(pause.wait_serving(stopping), timeout=1)
    assert not pause.serving.is_set()

"""Results are capped in size: whatever the contract allows fits, a cut result says so, nothing required is lost."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from snapworker.contract.intake import Envelope, Rejected, read_request
from snapworker.contract.models import JobEntry, ResultError, SnapshotResult
from snapworker.contract.result_size import (
    RESULT_MAX_BYTES,
    TEXT_MAX_CHARS,
    TRUNCATION_MARK,
    ResultTooLarge,
    encode_result,
)
from snapworker.settings import Settings
from tests.guard_fakes import FRAME_BODY_MAX

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _result(*errors: ResultError, jobs: tuple[JobEntry, ...] = (), status: str = "failed") -> SnapshotResult:
    return SnapshotResult.model_validate(
        {"request_id": "r-1", "project_id": "p1", "status": status, "finished_at": NOW, "jobs": jobs, "errors": errors}
    )


def _error(
    desktop_ids: tuple[str, ...], *, msg: str = "no", detail: str | None = None, api_id: str = "a"
) -> ResultError:
    return ResultError(
        desktop_ids=desktop_ids,
        http_status=404,
        error_code="WKS.0202",
        error_msg=msg,
        error_detail=detail,
        api_request_id=api_id,
        retryable=False,
    )


def test_the_issue_case_1000_echoed_ids_of_128_chars_fits_in_one_frame_and_is_marked() -> None:
    body = json.dumps({"project_id": "p1", "desktop_ids": [f"{i:04d}" + "x" * 124 for i in range(1000)]}).encode()
    assert len(body) < Settings().max_message_bytes
    rejected = read_request(Envelope(body), max_bytes=Settings().max_message_bytes, now=NOW)
    assert isinstance(rejected, Rejected)
    assert len(rejected.result.model_dump_json()) > FRAME_BODY_MAX  # what used to make the publish raise

    sent, encoded = encode_result(rejected.result)

    assert len(encoded) <= RESULT_MAX_BYTES < FRAME_BODY_MAX
    assert json.loads(encoded)["truncated"] is True
    [error] = sent.errors
    assert 0 < len(error.desktop_ids) < 1000
    assert error.desktop_ids == rejected.result.errors[0].desktop_ids[: len(error.desktop_ids)]
    assert error.error_msg.endswith(TRUNCATION_MARK)
    assert f"the first {len(error.desktop_ids)} of 1000" in error.error_msg


def test_a_result_that_fits_is_sent_as_is_without_the_truncated_field() -> None:
    result = _result(_error(("d1",)))
    sent, encoded = encode_result(result)
    assert sent == result
    assert "truncated" not in json.loads(encoded)
    assert SnapshotResult.model_validate_json(encoded) == result


def test_an_error_detail_over_the_text_limit_is_always_cut_and_marked() -> None:
    sent, encoded = encode_result(_result(_error(("d1",), detail="y" * 50_000)))
    assert len(encoded) < 50_000
    assert sent.errors[0].error_detail == "y" * TEXT_MAX_CHARS + TRUNCATION_MARK
    assert json.loads(encoded)["truncated"] is True


def test_a_valid_request_keeps_every_desktop_when_its_errors_must_be_merged() -> None:
    desktops = [f"{i:04d}" + "d" * 32 for i in range(1000)]  # the contract's largest request: 1000 IDs of 36
    errors = [_error((d,), msg="m" * 2000, detail="x" * 2000, api_id=f"api-{i}") for i, d in enumerate(desktops)]

    sent, encoded = encode_result(_result(*errors))

    assert len(encoded) <= RESULT_MAX_BYTES
    assert sent.truncated
    covered = [d for e in sent.errors for d in e.desktop_ids]
    assert sorted(covered) == sorted(desktops)


def test_jobs_are_never_cut() -> None:
    # one job per desktop for 800 of a request's 1000 desktops, the other 200 failed one by one
    jobs = tuple(JobEntry(job_id=f"job-{i:032d}", desktop_ids=(f"{i:036d}",)) for i in range(800))
    errors = tuple(_error((f"e{i:035d}",), msg="m" * 500, api_id=f"api-{i}") for i in range(200))

    sent, encoded = encode_result(_result(*errors, jobs=jobs, status="partial"))

    assert len(encoded) <= RESULT_MAX_BYTES
    assert sent.jobs == jobs


def test_a_result_that_cannot_fit_even_cut_raises_result_too_large() -> None:
    jobs = tuple(JobEntry(job_id="j" * 200, desktop_ids=(f"{i:036d}",)) for i in range(1000))
    with pytest.raises(ResultTooLarge):
        encode_result(_result(jobs=jobs, status="accepted"))

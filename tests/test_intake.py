"""Reading request messages: every bad input becomes an ``invalid`` result, never an exception."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from snapworker.contract.intake import Accepted, Envelope, Rejected, read_request
from snapworker.contract.models import INVALID_REQUEST_CODE

NOW = datetime(2026, 1, 1, tzinfo=UTC)
GOOD = json.dumps({"project_id": "p1", "desktop_ids": ["a", "b"]}).encode()


def read(body: bytes, **props: str | None) -> Accepted | Rejected:
    return read_request(Envelope(body, **props), max_bytes=1024, now=NOW)  # type: ignore[arg-type]  # str fields


def rejected(body: bytes, **props: str | None) -> Rejected:
    outcome = read(body, **props)
    assert isinstance(outcome, Rejected)
    assert outcome.result.status == "invalid"
    assert outcome.result.errors[0].error_code == INVALID_REQUEST_CODE
    assert outcome.result.errors[0].retryable is False
    return outcome


def test_a_valid_message_is_accepted() -> None:
    outcome = read(GOOD, content_type="application/json", correlation_id="c1")
    assert isinstance(outcome, Accepted)
    assert outcome.request.desktop_ids == ("a", "b")
    assert outcome.correlation_id == "c1"


def test_request_id_defaults_to_the_message_id() -> None:
    outcome = read(GOOD, message_id="m-1")
    assert isinstance(outcome, Accepted)
    assert outcome.request_id == "m-1"


def test_request_id_in_the_body_wins_over_the_message_id() -> None:
    body = json.dumps({"project_id": "p1", "desktop_ids": ["a"], "request_id": "mine"}).encode()
    outcome = read(body, message_id="m-1")
    assert isinstance(outcome, Accepted)
    assert outcome.request_id == "mine"


def test_request_id_is_a_fresh_uuid_without_message_id() -> None:
    first, second = read(GOOD), read(GOOD)
    assert isinstance(first, Accepted)
    assert isinstance(second, Accepted)
    assert len(first.request_id) == 36
    assert first.request_id != second.request_id


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8", None])
def test_json_content_types_and_a_missing_one_are_read(content_type: str | None) -> None:
    assert isinstance(read(GOOD, content_type=content_type), Accepted)


def test_a_wrong_content_type_is_invalid() -> None:
    outcome = rejected(GOOD, content_type="text/plain")
    assert "content type" in outcome.result.errors[0].error_msg


def test_a_body_that_is_not_json_is_invalid() -> None:
    outcome = rejected(b"\x00\xffnot json", correlation_id="c9", message_id="m9")
    assert outcome.result.correlation_id == "c9"
    assert outcome.result.request_id == "m9"
    assert outcome.result.project_id is None


def test_an_oversized_body_is_invalid_without_being_parsed() -> None:
    outcome = rejected(b" " * 2000)
    assert "over the limit" in outcome.result.errors[0].error_msg


def test_a_schema_error_names_the_field_and_keeps_what_could_be_read() -> None:
    body = json.dumps({"project_id": "p1", "desktop_ids": ["a", "a", "bad/id"], "request_id": "r7"}).encode()
    outcome = rejected(body)
    error = outcome.result.errors[0]
    assert "desktop_ids.2" in error.error_msg
    assert error.desktop_ids == ("a", "bad/id")
    assert (outcome.result.request_id, outcome.result.project_id) == ("r7", "p1")


def test_a_json_array_is_invalid() -> None:
    rejected(b"[1, 2]")


def test_an_unreadable_project_id_is_not_echoed() -> None:
    body = json.dumps({"project_id": {"x": 1}, "desktop_ids": ["a"]}).encode()
    assert rejected(body).result.project_id is None


def test_thousands_of_nested_arrays_are_invalid_not_a_crash() -> None:
    body = b"[" * 5000 + b"]" * 5000  # deeper than json.loads can recurse
    outcome = read_request(Envelope(body), max_bytes=len(body), now=NOW)
    assert isinstance(outcome, Rejected)
    assert outcome.result.status == "invalid"

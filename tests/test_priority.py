"""A request's priority: the body field the contract accepts, and the one rule that makes a request urgent."""

from __future__ import annotations

import json
from typing import Any, get_args

import pytest
from pydantic import ValidationError

from snapworker.contract.intake import validation_problems
from snapworker.contract.models import SnapshotRequest
from snapworker.contract.priority import Priority, amqp_priority, is_urgent
from snapworker.contract.schemas import render_schemas


def _request(**changes: Any) -> SnapshotRequest:
    return SnapshotRequest.model_validate({"project_id": "p1", "desktop_ids": ["d1"], **changes})


@pytest.mark.parametrize("priority", ["normal", "urgent"])
def test_a_request_may_say_normal_or_urgent(priority: str) -> None:
    assert _request(priority=priority).priority == priority


def test_a_request_without_a_priority_has_none() -> None:
    assert _request().priority is None


def test_a_request_without_a_priority_is_published_without_the_field() -> None:
    assert "priority" not in _request().model_dump(exclude_none=True)


@pytest.mark.parametrize("priority", ["high", "URGENT", "", 9, True])
def test_other_priorities_are_refused_naming_the_two_values(priority: object) -> None:
    with pytest.raises(ValidationError) as caught:
        _request(priority=priority)
    assert validation_problems(caught.value) == ["priority: Input should be 'normal' or 'urgent'"]


def test_the_request_schema_lists_the_two_priorities() -> None:
    schema = json.loads(render_schemas()["snapshot-request.schema.json"])
    [choice, _null] = schema["properties"]["priority"]["anyOf"]
    assert choice["enum"] == list(get_args(Priority)) == ["normal", "urgent"]
    assert "priority" not in schema["required"]


@pytest.mark.parametrize(
    ("field", "amqp", "urgent"),
    [
        # body only
        ("urgent", None, True),
        ("normal", None, False),
        # property only: 5 and more is urgent (a quorum queue's high priority), 0 to 4 normal
        (None, 9, True),
        (None, 5, True),
        (None, 255, True),
        (None, 4, False),
        (None, 0, False),
        # both, disagreeing: the body wins
        ("normal", 9, False),
        ("urgent", 0, True),
        # neither
        (None, None, False),
    ],
)
def test_the_body_field_wins_else_the_amqp_priority_decides(
    field: Priority | None, amqp: int | None, urgent: bool
) -> None:
    assert is_urgent(field, amqp) is urgent


@pytest.mark.parametrize(("field", "amqp"), [("urgent", 9), ("normal", 0), (None, None)])
def test_the_client_publishes_urgent_as_9_normal_as_0_and_nothing_unsaid(
    field: Priority | None, amqp: int | None
) -> None:
    assert amqp_priority(field) == amqp


@pytest.mark.parametrize("field", ["urgent", "normal"])
def test_the_property_the_client_publishes_says_what_the_field_says(field: Priority) -> None:
    # a reader that sees only the property (a priority queue) and one that reads both agree
    assert is_urgent(None, amqp_priority(field)) is is_urgent(field, None) is is_urgent(field, amqp_priority(field))

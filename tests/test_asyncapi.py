"""asyncapi.yaml stays the truth: AsyncAPI 3.0, every reference resolves, and it agrees with the models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml

from snapworker.contract.models import (
    CompletionStatus,
    ResultStatus,
    SnapshotCompletion,
    SnapshotRequest,
    SnapshotResult,
)
from snapworker.contract.priority import URGENT_AMQP_PRIORITY, URGENT_FROM, is_urgent
from snapworker.contract.schemas import SCHEMA_FILES, render_schemas
from snapworker.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    loaded = yaml.safe_load((ROOT / "asyncapi.yaml").read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def _refs(node: object) -> list[str]:
    """Every ``$ref`` value in the document, depth first."""
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for item in node for ref in _refs(item)]
    return []


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def test_it_is_an_asyncapi_3_0_0_document(doc: dict[str, Any]) -> None:
    assert doc["asyncapi"] == "3.0.0"
    assert doc["info"]["title"] == "snapworker"
    assert {"channels", "operations", "components"} <= doc.keys()


def test_every_internal_reference_resolves(doc: dict[str, Any]) -> None:
    internal = [ref for ref in _refs(doc) if ref.startswith("#/")]
    assert internal
    for ref in internal:
        assert _resolve(doc, ref) is not None, ref


def test_message_payloads_are_the_schema_files_generated_from_the_models(doc: dict[str, Any]) -> None:
    messages = doc["components"]["messages"]
    expected = {
        "SnapshotRequest": "snapshot-request.schema.json",
        "SnapshotResult": "snapshot-result.schema.json",
        "SnapshotCompletion": "snapshot-completion.schema.json",
    }
    rendered = render_schemas()
    for message, name in expected.items():
        ref = messages[message]["payload"]["$ref"]
        assert ref == f"./schemas/{name}"
        assert json.loads((ROOT / ref).read_text(encoding="utf-8")) == json.loads(rendered[name])
    assert set(expected.values()) == set(SCHEMA_FILES)


def test_channel_addresses_are_the_default_queue_names(doc: dict[str, Any]) -> None:
    defaults = {name: field.default for name, field in Settings.model_fields.items()}
    channels = doc["channels"]
    for channel, setting in (
        ("requests", "request_queue"),
        ("results", "result_queue"),
        ("errors", "error_queue"),
    ):
        assert channels[channel]["address"] == defaults[setting]
        assert channels[channel]["bindings"]["amqp"]["queue"]["name"] == defaults[setting]
    assert channels["replies"]["address"] is None  # named by each request's reply_to
    assert channels["completions"]["address"] is None  # named by SNAPWORKER_COMPLETION_QUEUE, unset by default
    assert defaults["completion_queue"] == ""


def test_operations_receive_requests_and_send_results(doc: dict[str, Any]) -> None:
    operations = doc["operations"]
    actions = {(op["action"], op["channel"]["$ref"]) for op in operations.values()}
    assert actions == {
        ("receive", "#/channels/requests"),
        ("send", "#/channels/results"),
        ("send", "#/channels/errors"),
        ("send", "#/channels/completions"),
    }
    reply = operations["receiveRequest"]["reply"]
    assert reply["channel"]["$ref"] == "#/channels/replies"
    assert reply["address"]["location"] == "$message.header#/reply_to"


def test_the_status_header_lists_the_model_statuses(doc: dict[str, Any]) -> None:
    header = doc["components"]["messages"]["SnapshotResult"]["headers"]["properties"]["x-snapworker-status"]
    assert header["enum"] == list(get_args(ResultStatus))


def test_the_examples_are_valid_messages(doc: dict[str, Any]) -> None:
    messages = doc["components"]["messages"]
    for message, model in (
        ("SnapshotRequest", SnapshotRequest),
        ("SnapshotResult", SnapshotResult),
        ("SnapshotCompletion", SnapshotCompletion),
    ):
        examples = messages[message]["examples"]
        assert examples
        for example in examples:
            model.model_validate_json(json.dumps(example["payload"]))


def test_the_completion_status_header_lists_the_model_statuses(doc: dict[str, Any]) -> None:
    header = doc["components"]["messages"]["SnapshotCompletion"]["headers"]["properties"]["x-snapworker-status"]
    assert header["enum"] == list(get_args(CompletionStatus))


def test_the_urgent_request_example_is_urgent(doc: dict[str, Any]) -> None:
    examples = {e["name"]: e["payload"] for e in doc["components"]["messages"]["SnapshotRequest"]["examples"]}
    request = SnapshotRequest.model_validate(examples["urgent"])
    assert is_urgent(request.priority, None)


def test_the_amqp_priority_property_is_described_with_the_threshold_and_the_value_sent(doc: dict[str, Any]) -> None:
    [bullet] = [line for line in doc["info"]["description"].split("* ") if line.startswith("`priority`")]
    assert f"{URGENT_FROM} or more marks the request urgent" in bullet
    assert "wins over it" in bullet  # the body field
    assert f"{URGENT_AMQP_PRIORITY} for urgent" in bullet

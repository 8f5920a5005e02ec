"""Fuzzing the intake: whatever bytes and AMQP properties a message has, it is read as a valid request or answered
``invalid`` with a reason, and that answer can be published.

The strategies here (:func:`fuzz_messages`) also feed the live run in ``tests/integration/test_fuzz_live.py``: arbitrary
bytes, JSON of any shape (deep nesting, huge numbers, NaN and Infinity, duplicate keys, lone surrogates), valid
requests with one field mutated, other text encodings and compressions, other content types, and odd property values.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from hypothesis import HealthCheck, Phase, example, given, seed, settings
from hypothesis import strategies as st

from snapworker.contract.intake import Accepted, Envelope, Rejected, read_request
from snapworker.contract.models import INVALID_REQUEST_CODE, SnapshotRequest, SnapshotResult
from snapworker.contract.result_size import RESULT_MAX_BYTES

NOW = datetime(2026, 1, 1, tzinfo=UTC)
MAX_BYTES = 256 * 1024  # the worker's default MAX_MESSAGE_BYTES
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ReplyTo = Literal["none", "reply", "missing"]

# -- strategies

# AMQP short strings (message_id, correlation_id, ...) are at most 255 bytes of UTF-8: 60 characters always fit.
shortstr = st.text(max_size=60)
odd_text = st.text(st.characters(codec="utf-8", categories=["Cc", "Cf", "Zs", "Zl", "So", "Lo", "Mn"]), max_size=60)
property_text = st.none() | st.just("") | shortstr | odd_text

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats()  # NaN and ±Infinity become the non-standard NaN / Infinity literals
    | st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
    max_leaves=40,
)

project_ids = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)
desktop_ids = st.from_regex(r"[A-Za-z0-9_-]{1,36}", fullmatch=True)


@st.composite
def valid_requests(draw: st.DrawFn) -> dict[str, Any]:
    request: dict[str, Any] = {
        "project_id": draw(project_ids),
        "desktop_ids": draw(st.lists(desktop_ids, min_size=1, max_size=8)),
    }
    if draw(st.booleans()):
        request["request_id"] = draw(st.text(min_size=1, max_size=40))
    if draw(st.booleans()):
        request["disk_type"] = draw(st.sampled_from(["SYSTEM_DISK", "DATA_DISKS", "ALL"]))
    if draw(st.booleans()):
        request["system_disk_snapshot"] = {"name": draw(st.text(max_size=20)), "description": None}
    return request


_FIELDS = ("project_id", "desktop_ids", "request_id", "disk_type", "system_disk_snapshot", "data_disk_snapshot")


@st.composite
def mutated_requests(draw: st.DrawFn) -> dict[str, Any]:
    """A valid request with one field dropped, retyped, overlong, or an unknown field added."""
    request = draw(valid_requests())
    name = draw(st.sampled_from((*_FIELDS, "unknown", "desktop_ids.item")))
    how = draw(st.sampled_from(["drop", "any", "long"]))
    if name == "desktop_ids.item":
        request["desktop_ids"] = [*request["desktop_ids"], draw(json_values)]
    elif how == "drop":
        request.pop(name, None)
    elif how == "any":
        request[name] = draw(json_values)
    else:
        request[name] = draw(st.sampled_from(["x" * 129, "é" * 65, ["d"] * 1001, "../etc", "a/b", ""]))
    return request


def _object_with_pairs(pairs: list[tuple[str, Any]]) -> str:
    """A JSON object text that may repeat keys (a dict cannot)."""
    return "{" + ",".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in pairs) + "}"


duplicate_keys = st.builds(
    lambda base, extra: _object_with_pairs([*base.items(), *extra]).encode(),
    valid_requests(),
    st.lists(st.tuples(st.sampled_from(_FIELDS), json_values), min_size=1, max_size=3),
)
lone_surrogates = st.text(st.characters(categories=["Cs"]), min_size=1, max_size=3)
surrogate_bodies = st.one_of(
    # as escapes (valid UTF-8 JSON text that json.loads reads, pydantic does not)
    st.builds(
        lambda s, field_: json.dumps({"project_id": "p", "desktop_ids": ["d"], field_: s}).encode(),
        lone_surrogates,
        st.sampled_from(["request_id", "project_id"]),
    ),
    st.builds(lambda s: json.dumps({"project_id": s, "desktop_ids": [s, 1]}).encode(), lone_surrogates),
    # raw (surrogates encoded as if they were characters: not UTF-8 at all)
    st.builds(
        lambda s: json.dumps({"project_id": "p", "desktop_ids": [s]}, ensure_ascii=False).encode(
            "utf-8", "surrogatepass"
        ),
        lone_surrogates,
    ),
)
deep_nesting = st.builds(
    lambda depth, opener, closed: opener * depth + ((b"]" if opener == b"[" else b"}") * depth if closed else b""),
    st.integers(min_value=100, max_value=6000),  # json.loads recurses about 1000 deep
    st.sampled_from([b"[", b'{"a":']),
    st.booleans(),
)
huge_numbers = st.builds(
    lambda digits, where: (
        json.dumps({"project_id": "p", "desktop_ids": ["d"], where: 0}).replace("0}", "9" * digits + "}").encode()
    ),
    st.integers(min_value=300, max_value=6000),
    st.sampled_from(["request_id", "disk_type"]),
)
non_finite = st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b'{"project_id":NaN,"desktop_ids":[Infinity]}'])

json_bodies = st.one_of(
    st.builds(lambda v: json.dumps(v).encode(), json_values),
    st.builds(lambda v: json.dumps(v).encode(), valid_requests()),
    st.builds(lambda v: json.dumps(v).encode(), mutated_requests()),
    duplicate_keys,
    surrogate_bodies,
    deep_nesting,
    huge_numbers,
    non_finite,
)

Encoding = Literal["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-32", "latin-1", "gzip"]


def encode(text: str, encoding: Encoding) -> bytes:
    if encoding == "gzip":
        return gzip.compress(text.encode(), mtime=0)
    if encoding == "latin-1":
        return text.encode("latin-1", errors="replace")
    return text.encode(encoding)


# A valid request with a non-ASCII request_id, in some encoding other than plain UTF-8.
otherwise_encoded = st.builds(
    lambda request, rid, encoding: encode(json.dumps({**request, "request_id": rid}, ensure_ascii=False), encoding),
    valid_requests(),
    st.text(min_size=1, max_size=20).map(lambda t: "é" + t),
    st.sampled_from(["utf-8-sig", "utf-16", "utf-16-le", "utf-32", "latin-1", "gzip"]),
)

valid_bodies = st.builds(lambda v: json.dumps(v).encode(), valid_requests())
# valid requests weighted up, so that the live run mixes answered requests with the invalid ones
bodies = st.integers(0, 4).flatmap(
    lambda k: (st.binary(max_size=2048), json_bodies, otherwise_encoded, valid_bodies, valid_bodies)[k]
)
json_content_types = st.sampled_from(
    [None, "", "application/json", "text/json", "APPLICATION/JSON", "application/json; charset=utf-8"]
)
content_types = (
    json_content_types
    | st.sampled_from(
        ["text/plain", "application/xml", "application/octet-stream", "application/json-patch+json", ";", " "]
    )
    | shortstr
)
content_encodings = st.sampled_from([None, "", "identity", "gzip", "deflate", "utf-16", "br"]) | shortstr
header_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**63 - 1) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(min_size=1, max_size=10), inner, max_size=3),
    max_leaves=8,
)
headers = st.none() | st.dictionaries(st.text(min_size=1, max_size=30), header_values, max_size=4)


@dataclass(frozen=True)
class FuzzMessage:
    """A request message as a publisher might send it: the body and every AMQP property the worker could see."""

    body: bytes
    content_type: str | None = None
    content_encoding: str | None = None
    message_id: str | None = None
    correlation_id: str | None = None
    headers: dict[str, Any] | None = None
    reply_to: ReplyTo = "none"
    priority: int | None = None
    type: str | None = None

    def envelope(self) -> Envelope:
        """What the intake sees of it."""
        return Envelope(self.body, self.content_type, self.message_id, self.correlation_id)


fuzz_messages = st.builds(
    FuzzMessage,
    body=bodies,
    content_type=st.integers(0, 3).flatmap(lambda k: content_types if k == 0 else json_content_types),
    content_encoding=content_encodings,
    message_id=property_text,
    correlation_id=property_text,
    headers=headers,
    reply_to=st.sampled_from(["none", "reply", "missing"]),
    priority=st.none() | st.integers(min_value=0, max_value=9),
    type=property_text,
)
max_bytes = st.sampled_from([1024, 4096, MAX_BYTES])


def draw_messages(count: int, *, at_seed: int) -> list[FuzzMessage]:
    """``count`` distinct messages drawn from :data:`fuzz_messages`, the same ones every time for one seed."""
    drawn: dict[str, FuzzMessage] = {}  # by repr: headers make a message unhashable

    @settings(
        max_examples=count,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @seed(at_seed)
    @given(st.lists(fuzz_messages, min_size=1, max_size=8))
    def collect(messages: list[FuzzMessage]) -> None:
        for message in messages:
            if len(drawn) < count:
                drawn.setdefault(repr(message), message)

    collect()
    return list(drawn.values())


# -- helpers


def read(message: FuzzMessage, limit: int = MAX_BYTES) -> Accepted | Rejected:
    return read_request(message.envelope(), max_bytes=limit, now=NOW)


def error_msg(outcome: Accepted | Rejected) -> str:
    assert isinstance(outcome, Rejected), f"accepted: {outcome!r}"
    return outcome.result.errors[0].error_msg


# -- properties


@FUZZ
@given(fuzz_messages, max_bytes)
def test_every_message_is_either_accepted_or_rejected(message: FuzzMessage, limit: int) -> None:
    outcome = read(message, limit)
    assert isinstance(outcome, Accepted) != isinstance(outcome, Rejected)


@FUZZ
@given(fuzz_messages, max_bytes)
def test_an_invalid_answer_is_one_invalid_request_error_with_a_reason(message: FuzzMessage, limit: int) -> None:
    outcome = read(message, limit)
    if isinstance(outcome, Rejected):
        result = outcome.result
        assert result.status == "invalid"
        assert result.jobs == ()
        assert [(e.error_code, e.retryable) for e in result.errors] == [(INVALID_REQUEST_CODE, False)]
        assert result.errors[0].error_msg.strip()


@FUZZ
@given(fuzz_messages, max_bytes)
@example(FuzzMessage(b'{"project_id":"\\ud800","desktop_ids":[1]}'), MAX_BYTES)
@example(FuzzMessage(b'{"project_id":"p","desktop_ids":["d"],"request_id":"\\udfff"}'), MAX_BYTES)
def test_an_invalid_answer_serialises_to_json_within_the_result_size_limit(message: FuzzMessage, limit: int) -> None:
    outcome = read(message, limit)
    if isinstance(outcome, Rejected):
        body = outcome.result.model_dump_json().encode()
        assert len(body) <= RESULT_MAX_BYTES
        echoed = SnapshotResult.model_validate_json(body)
        assert echoed.correlation_id == message.correlation_id
        assert echoed.request_id


@FUZZ
@given(fuzz_messages, max_bytes)
def test_an_accepted_request_can_be_answered(message: FuzzMessage, limit: int) -> None:
    outcome = read(message, limit)
    if isinstance(outcome, Accepted):
        assert outcome.request_id
        assert outcome.correlation_id == message.correlation_id
        answer = SnapshotResult(
            request_id=outcome.request_id,
            correlation_id=outcome.correlation_id,
            project_id=outcome.request.project_id,
            status="accepted",
            finished_at=NOW,
        )
        assert len(answer.model_dump_json().encode()) <= RESULT_MAX_BYTES


@FUZZ
@given(fuzz_messages)
def test_an_accepted_body_is_a_json_object_the_model_accepts(message: FuzzMessage) -> None:
    outcome = read(message)
    if isinstance(outcome, Accepted):
        assert SnapshotRequest.model_validate(json.loads(message.body)) == outcome.request


@FUZZ
@given(mutated_requests() | valid_requests())
def test_reading_a_body_agrees_with_validating_its_fields(request: dict[str, Any]) -> None:
    """The worker's reading of the JSON text and a publisher's validation of the same dict decide alike."""
    try:
        SnapshotRequest.model_validate(request)
        valid = True
    except ValueError:
        valid = False
    outcome = read(FuzzMessage(json.dumps(request).encode(), "application/json"))
    assert isinstance(outcome, Accepted) == valid


@FUZZ
@given(valid_requests(), st.sampled_from(["text/plain", "application/xml", "application/octet-stream", "json"]))
def test_a_valid_body_with_another_content_type_is_invalid_naming_it(
    request: dict[str, Any], content_type: str
) -> None:
    outcome = read(FuzzMessage(json.dumps(request).encode(), content_type))
    assert "content type" in error_msg(outcome)


@FUZZ
@given(st.binary(min_size=1025, max_size=2048) | json_bodies.filter(lambda b: len(b) > 1024))
def test_a_body_over_the_limit_is_invalid_naming_the_limit(body: bytes) -> None:
    assert "over the limit" in error_msg(read(FuzzMessage(body), 1024))


# -- examples found by fuzzing, and the reasons for misencoded bodies


def test_a_lone_surrogate_in_the_project_id_is_not_echoed_into_the_answer() -> None:
    """Found by fuzzing: json.loads reads "\\ud800" (pydantic does not), and the answer could not be serialised."""
    outcome = read(FuzzMessage(b'{"project_id":"\\ud800","desktop_ids":[1]}'))
    assert isinstance(outcome, Rejected)
    assert outcome.result.project_id is None
    outcome.result.model_dump_json()


def test_a_lone_surrogate_in_the_request_id_is_not_echoed_into_the_answer() -> None:
    outcome = read(FuzzMessage(b'{"project_id":"p","desktop_ids":["d"],"request_id":"x\\ud800"}', message_id="m1"))
    assert isinstance(outcome, Rejected)
    assert outcome.result.request_id == "m1"
    outcome.result.model_dump_json()


def test_a_lone_surrogate_among_desktop_ids_is_left_out_of_the_answer() -> None:
    outcome = read(FuzzMessage(b'{"project_id":"p","desktop_ids":["d1","\\udc00","d/2"]}'))
    assert isinstance(outcome, Rejected)
    assert outcome.result.errors[0].desktop_ids == ("d1", "d/2")
    outcome.result.model_dump_json()


GOOD = {"project_id": "p1", "desktop_ids": ["d1"], "request_id": "r1"}


def test_a_gzip_compressed_body_is_invalid_saying_so() -> None:
    assert "gzip" in error_msg(read(FuzzMessage(encode(json.dumps(GOOD), "gzip"), "application/json", "gzip")))


def test_a_body_with_a_utf8_byte_order_mark_is_invalid_saying_so() -> None:
    assert "byte order mark" in error_msg(read(FuzzMessage(encode(json.dumps(GOOD), "utf-8-sig"))))


def test_a_utf16_body_is_invalid_saying_it_must_be_utf8() -> None:
    assert "UTF-16" in error_msg(read(FuzzMessage(encode(json.dumps(GOOD), "utf-16-le"))))


def test_a_latin1_body_is_invalid_saying_it_is_not_utf8() -> None:
    body = encode(json.dumps({**GOOD, "request_id": "café"}, ensure_ascii=False), "latin-1")
    assert "not UTF-8" in error_msg(read(FuzzMessage(body)))


def test_an_empty_body_is_invalid_saying_so() -> None:
    assert "empty" in error_msg(read(FuzzMessage(b"")))


def test_a_misencoded_body_still_names_its_request_id() -> None:
    outcome = read(FuzzMessage(encode(json.dumps(GOOD), "utf-16")))
    assert isinstance(outcome, Rejected)
    assert outcome.result.request_id == "r1"


def test_draw_messages_is_the_same_for_one_seed_and_distinct() -> None:
    first = draw_messages(40, at_seed=7)
    assert first == draw_messages(40, at_seed=7)
    assert len({repr(m) for m in first}) == 40

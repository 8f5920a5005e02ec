"""Records folded into a request's state, results composed from them, and failpoints that cost nothing off."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime

from snapworker import failpoints
from snapworker.contract.models import JobEntry, ResultError, SnapshotRequest
from snapworker.core import compose_result
from snapworker.idempotency import records
from snapworker.idempotency.store import (
    INTENT,
    OUTCOME,
    UNREADABLE,
    Row,
    entry_body,
    fingerprint,
    json_strings,
    state_of,
)

JOB = JobEntry(job_id="j1", desktop_ids=("d1", "d2"))
ERROR = ResultError(desktop_ids=("d3",), http_status=404, error_code="WKS.0202", error_msg="no", retryable=False)


BUSY = ResultError(desktop_ids=("d1",), http_status=409, error_code="WKS.0110", error_msg="busy", retryable=True)
LOST = ResultError(
    desktop_ids=("d1",), http_status=None, error_code="SNAPWORKER.RESPONSE_LOST", error_msg="lost", retryable=True
).model_copy(update={"maybe_created": True})


def outcome(at: float, *pairs: tuple[JobEntry | ResultError, list[str]], fp: str = "fp", attempt: str = "a") -> Row:
    return Row("k", fp, OUTCOME, attempt, json.dumps([[entry_body(e), ds] for e, ds in pairs]), at)


def intent(at: float, desktops: list[str], fp: str = "fp", attempt: str = "a") -> Row:
    return Row("k", fp, INTENT, attempt, json.dumps(desktops), at)


def test_an_outcome_that_holds_settles_the_desktops_its_intent_announced() -> None:
    state = state_of([intent(1, ["d1", "d2", "d3"]), outcome(2, (JOB, ["d1", "d2"]), (ERROR, ["d3"]))], "fp")
    assert state.outcomes["d1"].model_dump() == JOB.model_dump()
    assert isinstance(state.outcomes["d3"], ResultError)
    assert state.attempts == {}


def test_an_intent_without_outcome_leaves_its_attempt_doubtful_with_its_time() -> None:
    rows = [intent(1, ["d1"]), outcome(2, (JOB, ["d1"])), intent(3, ["d1"], attempt="b")]
    state = state_of(rows, "fp")
    assert state.outcomes == {}
    assert state.attempts == {"d1": {"b": 3}}


def test_a_retryable_error_rules_out_its_own_attempt_but_not_an_earlier_doubtful_one() -> None:
    rows = [intent(1, ["d1"], attempt="a"), intent(2, ["d1"], attempt="b"), outcome(3, (BUSY, ["d1"]), attempt="b")]
    assert state_of(rows, "fp").attempts == {"d1": {"a": 1}}


def test_a_maybe_created_outcome_keeps_its_attempt_doubtful() -> None:
    state = state_of([intent(1, ["d1"]), outcome(2, (LOST, ["d1"]))], "fp")
    assert state.attempts == {"d1": {"a": 1}}
    assert isinstance(state.outcomes["d1"], ResultError)


def test_rows_of_another_fingerprint_are_ignored() -> None:
    state = state_of([intent(1, ["d1"], fp="other"), outcome(2, (JOB, ["d1"]), fp="other")], "fp")
    assert state.outcomes == {}
    assert state.attempts == {}


def test_the_fingerprint_changes_with_the_desktops_and_not_with_their_order() -> None:
    a = SnapshotRequest(project_id="p", desktop_ids=("d1", "d2"))
    b = SnapshotRequest(project_id="p", desktop_ids=("d2", "d1"))
    c = SnapshotRequest(project_id="p", desktop_ids=("d1", "d3"))
    assert fingerprint(a) == fingerprint(b) != fingerprint(c)


def test_a_composed_result_groups_desktops_by_entry_and_is_partial_with_an_error() -> None:
    entries: dict[str, JobEntry | ResultError] = {"d1": JOB, "d2": JOB, "d3": ERROR}
    result = compose_result("r1", "c1", "p", ("d1", "d2", "d3"), entries, datetime.now(UTC))
    assert result.status == "partial"
    assert [j.desktop_ids for j in result.jobs] == [("d1", "d2")]
    assert [e.desktop_ids for e in result.errors] == [("d3",)]


def test_an_armed_failpoint_kills_the_process_with_sigkill() -> None:
    code = "from snapworker import failpoints as f; f.configure('boom'); f.failpoint('other'); f.failpoint('boom')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30, check=False)
    assert done.returncode == -9
    assert b"failpoint boom" in done.stderr


def test_an_unarmed_failpoint_does_nothing() -> None:
    failpoints.configure("")
    failpoints.failpoint("after_api_before_record")


def test_json_strings_is_a_json_array_of_any_strings() -> None:
    values = ["d1", 'q"uote\\', "é\u2028", "\x00ctl", ""]
    assert json.loads(json_strings(values)) == values
    assert json_strings(()) == "[]"


# -- the store's order, never a clock (issue 20, item 5/6 (a))


def test_rows_fold_in_the_order_given_not_by_their_times() -> None:
    # the busy error was recorded first, by a host whose clock runs ahead; the job came after it
    rows = [intent(200, ["d1"], attempt="b"), outcome(200, (BUSY, ["d1"]), attempt="b")]
    rows += [intent(100, ["d1"], attempt="a"), outcome(100, (JOB, ["d1"]), attempt="a")]
    state = state_of(rows, "fp")
    assert isinstance(state.outcomes["d1"], JobEntry)
    assert state.attempts == {}


# -- records decoded apart from the wire contract (b)


def test_an_entry_with_a_field_of_a_newer_version_is_read_without_it() -> None:
    newer = json.dumps(["job", {"job_id": "j1", "possible_duplicate": False, "queued_at": "2031-01-01"}])
    row = Row("k", "fp", OUTCOME, "a", json.dumps([[newer, ["d1"]]]), 2)
    state = state_of([intent(1, ["d1"]), row], "fp")
    assert state.outcomes["d1"] == JobEntry(job_id="j1", desktop_ids=("d1",))
    assert not state.unreadable


def test_an_entry_missing_a_field_keeps_its_attempt_doubtful() -> None:
    row = Row("k", "fp", OUTCOME, "a", json.dumps([[json.dumps(["job", {}]), ["d1"]]]), 2)
    state = state_of([intent(1, ["d1"]), row], "fp")
    assert state.outcomes == {}
    assert state.attempts == {"d1": {"a": 1}}


def test_an_outcome_row_that_is_not_json_makes_the_request_unreadable() -> None:
    row = Row("k", "fp", OUTCOME, "a", "[[not json", 2)
    state = state_of([intent(1, ["d1"]), row], "fp")
    assert state.unreadable
    assert state.attempts == {"d1": {"a": 1}}


def test_an_intent_whose_desktops_cannot_be_read_makes_the_request_unreadable() -> None:
    state = state_of([Row("k", "fp", INTENT, "a", '{"desktops": ["d1"]}', 1)], "fp")
    assert state.unreadable
    assert state.attempts == {}


def test_a_row_of_a_kind_this_version_does_not_know_makes_the_request_unreadable() -> None:
    state = state_of([intent(1, ["d1"]), outcome(2, (JOB, ["d1"])), Row("k", "fp", 7, "b", '["d1"]', 3)], "fp")
    assert state.unreadable
    assert isinstance(state.outcomes["d1"], JobEntry)


def test_a_row_the_store_could_not_read_counts_whatever_its_fingerprint() -> None:
    state = state_of([Row("k", "", UNREADABLE, "", "", 0.0)], "fp")
    assert state.unreadable


def test_an_unreadable_row_of_another_request_is_ignored() -> None:
    state = state_of([Row("k", "other", OUTCOME, "a", "[[not json", 2)], "fp")
    assert not state.unreadable


def test_every_field_of_the_wire_entries_is_stored_and_read_back() -> None:
    job = JobEntry(job_id="j9", desktop_ids=("d1",), possible_duplicate=True)
    error = ResultError(
        desktop_ids=("d1",),
        http_status=503,
        error_code="WKS.0005",
        error_msg="down",
        error_detail="detail",
        api_request_id="req-1",
        retryable=True,
        maybe_created=True,
    )
    for entry in (job, error):
        assert set(entry.model_fields_set) == set(type(entry).model_fields)  # the test sets every field
        assert records.decode_entry(entry_body(entry), ("d1",)) == entry

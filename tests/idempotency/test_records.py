"""Records folded into a request's state, results composed from them, and failpoints that cost nothing off."""

from __future__ import annotations

import json
import subprocess
import sys

from snapworker.contract.models import JobEntry, ResultError, SnapshotRequest
from snapworker.idempotency.gate import compose
from snapworker.idempotency.store import INTENT, OUTCOME, Row, entry_body, fingerprint, json_strings, state_of
from snapworker import failpoints

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
    result = compose("r1", "c1", "p", ("d1", "d2", "d3"), entries)
    assert result.status == "partial"
    assert [j.desktop_ids for j in result.jobs] == [("d1", "d2")]
    assert [e.desktop_ids for e in result.errors] == [("d3",)]


def test_an_armed_failpoint_kills_the_process_with_sigkill() -> None:
    code = (
        "from snapworker import failpoints as f; f.configure('boom'); f.failpoint('other'); f.failpoint('boom')"
    )
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

"""Reading the API's answers: error classification, Huawei's error bodies, gateway pages, Retry-After."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from multidict import CIMultiDict

from snapworker.cloud.responses import (
    BAD_RESPONSE_CODE,
    DOCUMENTED_ERRORS,
    body_snippet,
    error_from_response,
    is_busy,
    may_have_processed,
    named_desktops,
    parse_created_job,
    parse_job,
    parse_retry_after,
)
from snapworker.errors import (
    ApiAuthError,
    ApiClientError,
    ApiCredentialRefused,
    ApiResponseTimeout,
    ApiServerError,
    ApiStatusError,
    ApiThrottled,
)

NOW = datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC)
NO_HEADERS: CIMultiDict[str] = CIMultiDict()


# -- Retry-After


@pytest.mark.parametrize(("value", "seconds"), [("5", 5.0), (" 120 ", 120.0), ("1.5", 1.5), ("-3", 0.0)])
def test_retry_after_in_seconds(value: str, seconds: float) -> None:
    assert parse_retry_after(value) == seconds


def test_retry_after_as_an_http_date_is_seconds_from_now() -> None:
    assert parse_retry_after("Mon, 01 Jan 2024 12:00:30 GMT", now=NOW) == 30.0


def test_retry_after_as_a_past_http_date_is_zero() -> None:
    assert parse_retry_after("Mon, 01 Jan 2024 11:00:00 GMT", now=NOW) == 0.0


@pytest.mark.parametrize("value", [None, "", "soon", "nan", "inf"])
def test_an_absent_or_unreadable_retry_after_is_none(value: str | None) -> None:
    assert parse_retry_after(value, now=NOW) is None


# -- classification


@pytest.mark.parametrize(
    ("status", "code", "cls", "retryable"),
    [
        (429, None, ApiThrottled, True),
        (403, "APIG.0308", ApiThrottled, True),
        (400, "APIG.0308", ApiThrottled, True),
        (401, "APIG.0301", ApiCredentialRefused, True),  # the worker's credential: retryable once it works
        (403, "APIG.0302", ApiCredentialRefused, True),  # the gateway refuses the identity
        (401, None, ApiCredentialRefused, True),
        (403, "WKS.00010099", ApiAuthError, False),
        (400, "WKS.0001", ApiClientError, False),
        (404, "WKS.0202", ApiClientError, False),
        (409, "WKS.0110", ApiClientError, True),
        (409, None, ApiClientError, True),
        (404, None, ApiClientError, False),
        (500, "WKS.0005", ApiServerError, True),
        (502, None, ApiServerError, True),
        (503, None, ApiServerError, True),
        (504, None, ApiServerError, True),
        (501, None, ApiServerError, False),
        (302, None, ApiStatusError, False),
    ],
)
def test_status_and_code_decide_the_error_class(
    status: int, code: str | None, cls: type[ApiStatusError], retryable: bool
) -> None:
    body = f'{{"error_code": "{code}", "error_msg": "m"}}'.encode() if code else b""
    error = error_from_response(status, None, NO_HEADERS, body)
    assert type(error) is cls
    assert error.retryable is retryable
    assert error.http_status == status
    assert not error.maybe_created


# Every error code the API documents (shared reference workspace-api.md, "Known error codes", and the
# batch-create page's statuses), with its status and whether the same call may succeed later. Written out here
# rather than read from responses.DOCUMENTED_ERRORS, so a change to either has to agree with the other.
DOCUMENTED = [
    ("WKS.0001", 400, ApiClientError, False),  # empty/invalid input: the same body is refused again
    ("WKS.0005", 500, ApiServerError, True),  # an ECS call failed inside the service
    ("WKS.0009", 500, ApiServerError, True),  # an IAM call failed inside the service
    ("WKS.00010099", 403, ApiAuthError, False),  # the service is disabled
    ("WKS.0202", 404, ApiClientError, False),  # resource (desktop) not found
    ("APIG.0308", 429, ApiThrottled, True),  # flow control: retry after 2-5 s
    ("WKS.0110", 409, ApiClientError, True),  # busy desktop ("try again later"); 409 is "operation conflict"
]


@pytest.mark.parametrize(("code", "status", "cls", "retryable"), DOCUMENTED, ids=[row[0] for row in DOCUMENTED])
def test_every_documented_error_code_says_retryable_truthfully(
    code: str, status: int, cls: type[ApiStatusError], retryable: bool
) -> None:
    body = f'{{"error_code": "{code}", "error_msg": "m", "error_detail": null}}'.encode()
    error = error_from_response(status, None, NO_HEADERS, body)
    assert (type(error), error.error_code, error.retryable) == (cls, code, retryable)
    documented = DOCUMENTED_ERRORS[code]
    assert (documented.http_status, documented.retryable) == (status, retryable)


def test_the_table_of_documented_codes_has_no_code_the_test_does_not_check() -> None:
    assert set(DOCUMENTED_ERRORS) == {row[0] for row in DOCUMENTED}


def test_a_documented_code_keeps_its_retryable_in_an_unusual_status() -> None:
    # an IAM failure behind a 501 still passes; an invalid body answered 500 is still invalid
    assert error_from_response(501, None, NO_HEADERS, b'{"error_code": "WKS.0009", "error_msg": "m"}').retryable
    assert not error_from_response(500, None, NO_HEADERS, b'{"error_code": "WKS.0001", "error_msg": "m"}').retryable


def test_a_409_is_a_busy_desktop_and_a_404_or_a_5xx_is_not() -> None:
    assert is_busy(error_from_response(409, None, NO_HEADERS, b'{"error_code": "WKS.0110", "error_msg": "m"}'))
    assert is_busy(error_from_response(409, "Conflict", NO_HEADERS, b""))
    assert not is_busy(error_from_response(404, None, NO_HEADERS, b'{"error_code": "WKS.0202", "error_msg": "m"}'))
    assert not is_busy(error_from_response(503, None, NO_HEADERS, b""))


def _not_found(msg: str, detail: str | None) -> ApiStatusError:
    body = {"error_code": "WKS.0202", "error_msg": msg, "error_detail": detail}
    return error_from_response(404, None, NO_HEADERS, json.dumps(body).encode())


def test_the_desktop_an_answer_names_is_found_in_its_detail_or_message() -> None:
    assert named_desktops(_not_found("The desktop does not exist", "d-2"), ["d-1", "d-2", "d-3"]) == ["d-2"]
    assert named_desktops(_not_found("The desktop does not exist: d-3", None), ["d-1", "d-2", "d-3"]) == ["d-3"]


def test_a_desktop_id_is_matched_whole_not_inside_another() -> None:
    assert named_desktops(_not_found("The desktop does not exist: d10", None), ["d1", "d10"]) == ["d10"]
    assert named_desktops(_not_found("The desktop does not exist: d10", None), ["d1", "d2"]) == []


def test_an_answer_naming_no_desktop_of_the_call_names_none() -> None:
    assert named_desktops(_not_found("The desktop does not exist.", None), ["d-1", "d-2"]) == []
    assert named_desktops(ApiResponseTimeout("no answer: d-1"), ["d-1"]) == []


def test_huawei_error_body_fields_and_request_id_are_kept() -> None:
    body = (
        b'{"error_code": "WKS.0202", "error_msg": "The desktop does not exist", '
        b'"error_detail": "d-9", "encoded_authorization_message": null}'
    )
    error = error_from_response(404, "Not Found", CIMultiDict({"x-request-id": "rid-1"}), body)
    assert (error.error_code, str(error), error.error_detail, error.api_request_id) == (
        "WKS.0202",
        "The desktop does not exist",
        "d-9",
        "rid-1",
    )


def test_the_gateway_request_id_in_the_body_is_used_without_the_header() -> None:
    body = b'{"error_code": "APIG.0308", "error_msg": "over ratelimit", "request_id": "rid-2"}'
    assert error_from_response(429, None, NO_HEADERS, body).api_request_id == "rid-2"


def test_an_iam_style_nested_error_body_is_read() -> None:
    body = b'{"error": {"code": 401, "message": "The request you have made requires authentication."}}'
    error = error_from_response(401, "Unauthorized", NO_HEADERS, body)
    assert (error.error_code, str(error)) == ("401", "The request you have made requires authentication.")


def test_retry_after_is_read_into_the_error() -> None:
    error = error_from_response(429, None, CIMultiDict({"Retry-After": "7"}), b"")
    assert error.retry_after_s == 7.0


def test_an_html_page_becomes_an_http_code_and_a_short_snippet() -> None:
    page = b"<html><head><style>p{}</style><title>502 Bad Gateway</title></head><body><h1>oops</h1></body></html>"
    error = error_from_response(502, "Bad Gateway", NO_HEADERS, page)
    assert (error.error_code, str(error)) == ("HTTP.502", "HTTP 502 Bad Gateway: 502 Bad Gateway oops")


def test_an_empty_body_says_so() -> None:
    error = error_from_response(504, "Gateway Timeout", NO_HEADERS, b"")
    assert (error.error_code, str(error)) == ("HTTP.504", "HTTP 504 Gateway Timeout (empty body)")


def test_a_json_body_that_is_not_huaweis_is_quoted() -> None:
    error = error_from_response(500, "Internal Server Error", NO_HEADERS, b'["odd"]')
    assert str(error) == 'HTTP 500 Internal Server Error: ["odd"]'


def test_a_snippet_is_cut_to_200_characters() -> None:
    snippet = body_snippet(b"<p>" + b"x" * 1000 + b"</p>")
    assert len(snippet) == 200
    assert snippet.endswith("…")


# -- success bodies


def test_the_job_id_is_read_from_a_created_answer() -> None:
    assert parse_created_job(200, NO_HEADERS, b'{"job_id": "j-1"}') == "j-1"


@pytest.mark.parametrize("body", [b"", b"<html>ok</html>", b'{"job_id": ""}', b'{"id": "j"}', b"[]"])
def test_a_created_answer_without_a_job_id_may_have_created_one(body: bytes) -> None:
    with pytest.raises(ApiStatusError) as caught:
        parse_created_job(200, NO_HEADERS, body)
    assert caught.value.error_code == BAD_RESPONSE_CODE
    assert caught.value.maybe_created
    assert not caught.value.retryable


def test_a_job_answer_that_is_not_an_object_is_a_bad_response() -> None:
    with pytest.raises(ApiStatusError) as caught:
        parse_job(200, NO_HEADERS, b"not json")
    assert caught.value.error_code == BAD_RESPONSE_CODE
    assert not caught.value.maybe_created


@pytest.mark.parametrize(
    ("status", "body", "maybe"),
    [
        (503, b'{"error_code": "APIG.0201", "error_msg": "Backend unavailable"}', False),
        (500, b'{"error_code": "WKS.0005", "error_msg": "ECS failed"}', False),
        (502, b'{"error_code": "APIG.0201", "error_msg": "Backend unavailable"}', True),
        (504, b"", True),
        (500, b"<html>oops</html>", True),
    ],
    ids=["503-not-passed-on", "service-refusal", "gateway-502", "gateway-504", "page"],
)
def test_only_a_503_or_the_services_own_error_rule_out_that_a_5xx_post_was_processed(
    status: int, body: bytes, maybe: bool
) -> None:
    error = error_from_response(status, None, {}, body)
    assert isinstance(error, ApiServerError)
    assert may_have_processed(error) is maybe

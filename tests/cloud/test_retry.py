"""The retry rules, as plain decisions: which errors, how many tries, how long, Retry-After."""

from __future__ import annotations

import itertools

import pytest

from snapworker.cloud.responses import error_from_response
from snapworker.cloud.retry import RetryPolicy
from snapworker.errors import (
    ApiClientError,
    ApiError,
    ApiResponseLost,
    ApiResponseTimeout,
    ApiServerError,
    ApiThrottled,
    ApiTransportError,
)
from snapworker.settings import Settings

POLICY = RetryPolicy(max_tries=5, max_time_s=60.0)


def server_error() -> ApiServerError:
    return ApiServerError("down", http_status=503, error_code="HTTP.503")


def throttled(retry_after_s: float | None) -> ApiThrottled:
    return ApiThrottled("slow down", http_status=429, error_code="APIG.0308", retry_after_s=retry_after_s)


def delay(error: ApiError, *, attempt: int = 1, elapsed_s: float = 0.0, backoff_s: float = 1.0,
          idempotent: bool = False, policy: RetryPolicy = POLICY) -> float | None:  # fmt: skip
    return policy.next_delay(error, attempt=attempt, elapsed_s=elapsed_s, backoff_s=backoff_s, idempotent=idempotent)


def test_backoff_doubles_from_half_a_second_up_to_thirty() -> None:
    assert list(itertools.islice(POLICY.backoff_delays(), 8)) == [0.5, 1, 2, 4, 8, 16, 30, 30]


@pytest.mark.parametrize(
    "error", [server_error(), throttled(None), ApiTransportError("refused")], ids=["5xx", "429", "transport"]
)
def test_retryable_errors_wait_the_backoff(error: ApiError) -> None:
    assert delay(error, backoff_s=1.25) == 1.25


def test_a_permanent_error_is_not_retried() -> None:
    assert delay(ApiClientError("bad", http_status=400, error_code="WKS.0001")) is None


def test_a_busy_desktop_is_retryable_but_left_to_the_sender() -> None:
    busy = error_from_response(409, None, {}, b'{"error_code": "WKS.0110", "error_msg": "busy: d-1"}')
    assert busy.retryable
    assert delay(busy) is None


@pytest.mark.parametrize("error", [ApiResponseTimeout("late"), ApiResponseLost("reset")], ids=["timeout", "lost"])
def test_a_post_that_may_have_been_processed_is_never_retried_here(error: ApiError) -> None:
    assert delay(error) is None


def test_a_post_whose_gateway_answered_502_is_never_retried_here() -> None:
    gateway = error_from_response(502, None, {}, b"")
    gateway.maybe_created = True  # as the client marks a 5xx the service may have taken (responses.may_have_processed)
    assert delay(gateway) is None


def test_an_idempotent_call_whose_response_timed_out_is_retried() -> None:
    assert delay(ApiResponseTimeout("late"), idempotent=True) == 1.0


def test_no_retry_after_max_tries() -> None:
    assert delay(server_error(), attempt=4) == 1.0
    assert delay(server_error(), attempt=5) is None


def test_no_retry_once_the_time_budget_is_spent() -> None:
    assert delay(server_error(), elapsed_s=60.0) is None


def test_the_wait_is_cut_to_what_the_budget_has_left() -> None:
    assert delay(server_error(), elapsed_s=59.5, backoff_s=8.0) == 0.5


def test_retry_after_is_the_least_wait() -> None:
    assert delay(throttled(3.0), backoff_s=0.2) == 3.0
    assert delay(throttled(3.0), backoff_s=5.0) == 5.0


def test_retry_after_beyond_the_budget_gives_up() -> None:
    assert delay(throttled(30.0), elapsed_s=40.0) is None


def test_from_settings_reads_tries_and_time() -> None:
    settings = Settings(retry_max_tries=3, retry_max_time_s=42.0)
    assert RetryPolicy.from_settings(settings) == RetryPolicy(3, 42.0)

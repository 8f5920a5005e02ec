"""Results capped in size: every result fits in RESULT_MAX_BYTES, and a result that was cut says so.

Why a cap: a result goes out in one broker frame (RabbitMQ's default ``frame_max`` is 128 KiB), and a result the
worker cannot publish leaves its request without an answer. What the contract bounds stays whole: every desktop
of a valid request appears in exactly one job or error entry (≤ 1000 IDs of ≤ 36 characters). What it does not
bound is cut: the texts the API sends back (``error_msg``, ``error_detail``) and the desktop IDs an ``invalid``
result echoes from an unreadable request (up to 1000 of 128 characters). A cut result has ``truncated: true``.
"""

from __future__ import annotations

from collections.abc import Callable

from snapworker.contract.models import ResultError, SnapshotResult

__all__ = ["RESULT_MAX_BYTES", "TEXT_MAX_CHARS", "TRUNCATION_MARK", "ResultTooLarge", "encode_result"]

#: Largest result body published, in bytes: under RabbitMQ's default frame_max (131,072) less frame overhead.
RESULT_MAX_BYTES = 120_000
#: ``error_msg`` and ``error_detail`` are cut to this many characters in every result.
TEXT_MAX_CHARS = 4000
#: Ends every text that was cut.
TRUNCATION_MARK = "…[truncated]"

# ``truncated`` is left out of the JSON while false, so consumers built before the field existed still read
# every result that was not cut.
_UNCUT = {"truncated"}


class ResultTooLarge(Exception):
    """Even cut as far as the contract allows, the result does not fit (an API answer far outside its spec)."""


def encode_result(result: SnapshotResult, *, max_bytes: int = RESULT_MAX_BYTES) -> tuple[SnapshotResult, bytes]:
    """The result as published and its JSON body, at most ``max_bytes``; raises ResultTooLarge if it cannot fit.

    Steps, each only while the body is still too large: texts over TEXT_MAX_CHARS are cut (always); texts are
    cut to 500, then to 100 characters with ``error_detail`` reduced to the mark; error entries that share
    ``http_status``, ``error_code``, ``retryable`` and ``maybe_created`` are merged into one (the first one's
    texts and ``api_request_id``); an ``invalid`` result echoes only the first desktop IDs it read.
    """
    if any(_long(e, TEXT_MAX_CHARS) for e in result.errors):
        result = _with_texts(result, TEXT_MAX_CHARS, TEXT_MAX_CHARS)
    body = _dump(result)
    steps: list[Callable[[SnapshotResult], SnapshotResult]] = [
        lambda r: _with_texts(r, 500, 500),
        lambda r: _with_texts(r, 100, 0),
        _merged,
    ]
    for step in steps:
        if len(body) <= max_bytes:
            return result, body
        result = step(result)
        body = _dump(result)
    if len(body) <= max_bytes:
        return result, body
    if result.status == "invalid":
        return _echo_fitting(result, max_bytes)
    raise ResultTooLarge(f"result of {result.request_id!r} is {len(body)} bytes even cut, over {max_bytes}")


def _dump(result: SnapshotResult) -> bytes:
    return result.model_dump_json(exclude=None if result.truncated else _UNCUT).encode()


def _long(error: ResultError, limit: int) -> bool:
    return len(error.error_msg) > limit or (error.error_detail is not None and len(error.error_detail) > limit)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + TRUNCATION_MARK


def _with_texts(result: SnapshotResult, msg_chars: int, detail_chars: int) -> SnapshotResult:
    errors = tuple(
        e.model_copy(
            update={
                "error_msg": _cut(e.error_msg, msg_chars),
                "error_detail": None if e.error_detail is None else _cut(e.error_detail, detail_chars),
            }
        )
        if _long(e, min(msg_chars, detail_chars))
        else e
        for e in result.errors
    )
    return result.model_copy(update={"errors": errors, "truncated": True})


def _merged(result: SnapshotResult) -> SnapshotResult:
    groups: dict[tuple[int | None, str, bool, bool], list[ResultError]] = {}
    for e in result.errors:
        groups.setdefault((e.http_status, e.error_code, e.retryable, e.maybe_created), []).append(e)
    errors = []
    for group in groups.values():
        first = group[0]
        if len(group) > 1:
            message = (
                first.error_msg if first.error_msg.endswith(TRUNCATION_MARK) else first.error_msg + TRUNCATION_MARK
            )
            first = first.model_copy(
                update={"desktop_ids": tuple(d for e in group for d in e.desktop_ids), "error_msg": message}
            )
        errors.append(first)
    return result.model_copy(update={"errors": tuple(errors), "truncated": True})


def _echo_fitting(result: SnapshotResult, max_bytes: int) -> tuple[SnapshotResult, bytes]:
    """The invalid result echoing as many of its first desktop IDs as fit (bisected on the encoded size)."""

    def echoing(count: int) -> tuple[SnapshotResult, bytes]:
        errors = tuple(
            e.model_copy(
                update={
                    "desktop_ids": e.desktop_ids[:count],
                    "error_msg": f"{e.error_msg} (desktop_ids: the first {count} of {len(e.desktop_ids)} read)"
                    + TRUNCATION_MARK,
                }
            )
            if len(e.desktop_ids) > count
            else e
            for e in result.errors
        )
        cut = result.model_copy(update={"errors": errors, "truncated": True})
        return cut, _dump(cut)

    low, high = 0, max((len(e.desktop_ids) for e in result.errors), default=0)
    best = echoing(0)
    if len(best[1]) > max_bytes:
        raise ResultTooLarge(f"invalid result of {result.request_id!r} does not fit {max_bytes} bytes")
    while low < high:  # invariant: echoing(low) fits
        mid = (low + high + 1) // 2
        candidate = echoing(mid)
        if len(candidate[1]) <= max_bytes:
            low, best = mid, candidate
        else:
            high = mid - 1
    return best

"""The API gateway's side of SDK-HMAC-SHA256: check a signature that arrived on the wire (the simulator's job).

:func:`verify_signature` recomputes the signature from what arrived and returns the access key, or raises
:class:`SignatureError` saying why not. The signing pieces it shares with the client are in
:mod:`snapworker.cloud.signing`. Pure: no I/O, no clock (``now`` is passed in).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from snapworker.cloud.signing import (
    ALGORITHM,
    AUTHORIZATION,
    EMPTY_BODY_SHA256,
    HOST,
    UNSIGNED_PAYLOAD,
    X_SDK_CONTENT_SHA256,
    X_SDK_DATE,
    canonical_request,
    hmac_signature,
    parse_sdk_date,
    string_to_sign,
)

__all__ = [
    "MAX_CLOCK_SKEW",
    "ParsedAuthorization",
    "SignatureError",
    "SignatureFailure",
    "parse_authorization",
    "verify_signature",
]

#: The API gateway refuses an X-Sdk-Date further than this from its clock, either way.
MAX_CLOCK_SKEW = timedelta(minutes=15)

SignatureFailure = Literal[
    "missing",  # no Authorization header
    "malformed",  # not an SDK-HMAC-SHA256 header we can read, or a signed header is missing/repeated
    "unknown_access_key",
    "bad_date",  # X-Sdk-Date missing or malformed
    "expired",  # X-Sdk-Date more than max_skew away from now
    "unsigned_payload",  # UNSIGNED-PAYLOAD where the body must be signed
    "body_mismatch",  # X-Sdk-Content-Sha256 does not match the body received
    "mismatch",  # the signature is wrong (wrong SK, or anything signed was changed)
]


class SignatureError(Exception):
    """A request's signature was refused. ``reason`` says why; ``access_key`` is set once it was read."""

    def __init__(self, reason: SignatureFailure, message: str, *, access_key: str | None = None) -> None:
        super().__init__(message)
        self.reason: SignatureFailure = reason
        self.access_key = access_key


@dataclass(frozen=True, slots=True)
class ParsedAuthorization:
    """The parts of ``Authorization: SDK-HMAC-SHA256 Access=.., SignedHeaders=..;.., Signature=..``."""

    access_key: str
    signed_headers: tuple[str, ...]
    signature: str


def parse_authorization(value: str) -> ParsedAuthorization:
    """Read an SDK-HMAC-SHA256 Authorization header; SignatureError("malformed") if it is not one."""
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise SignatureError("malformed", f"unsupported signing algorithm {algorithm!r}")
    fields: dict[str, str] = {}
    for item in rest.split(","):
        key, sep, val = item.strip().partition("=")
        if not sep:
            raise SignatureError("malformed", f"cannot read Authorization field {item.strip()!r}")
        fields[key] = val
    try:
        access_key, signed, signature = fields["Access"], fields["SignedHeaders"], fields["Signature"]
    except KeyError as exc:
        raise SignatureError("malformed", f"Authorization lacks {exc.args[0]}") from None
    if not access_key or not signed or not signature:
        raise SignatureError("malformed", "Authorization has an empty field")
    return ParsedAuthorization(access_key, tuple(signed.split(";")), signature)


def verify_signature(
    method: str,
    target: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    secret_key_for: Callable[[str], str | None],
    now: datetime,
    max_skew: timedelta = MAX_CLOCK_SKEW,
    allow_unsigned_payload: bool = False,
) -> str:
    """Check a received request's SDK-HMAC-SHA256 signature the way the API gateway does; return its AK.

    ``target`` is the raw request target as received (``/path?query``, still percent-encoded); ``headers`` all
    received headers (a multi-dict is fine: a signed header received twice is refused); ``body`` the exact
    body bytes; ``secret_key_for`` maps an AK to its SK (None if unknown); ``now`` an aware datetime.

    Stricter than strictly needed in one way: ``host`` and ``x-sdk-date`` must be among the signed headers
    (the SDKs always sign both). Raises :class:`SignatureError`.
    """
    repeated_names: set[str] = set()
    received: dict[str, str] = {}
    authorization: str | None = None
    for name, value in headers.items():
        lower = name.lower()
        if lower == AUTHORIZATION:
            if authorization is not None:
                raise SignatureError("malformed", "Authorization header sent twice")
            authorization = value
        elif lower in received:
            repeated_names.add(lower)  # remember the repeat; only an error if that header is signed
        else:
            received[lower] = value
    if authorization is None:
        raise SignatureError("missing", "no Authorization header")
    parsed = parse_authorization(authorization)
    ak = parsed.access_key
    repeated = repeated_names.intersection(parsed.signed_headers)
    if repeated:
        raise SignatureError("malformed", f"signed header {sorted(repeated)[0]} sent twice", access_key=ak)
    for required in (HOST, X_SDK_DATE):
        if required not in parsed.signed_headers:
            raise SignatureError("malformed", f"{required} is not a signed header", access_key=ak)
    missing = [name for name in parsed.signed_headers if name not in received]
    if missing:
        raise SignatureError("malformed", f"signed header {missing[0]} was not sent", access_key=ak)

    secret_key = secret_key_for(ak)
    if secret_key is None:
        raise SignatureError("unknown_access_key", f"ak:{ak},err:ak not exist", access_key=ak)

    date = received[X_SDK_DATE].strip()
    try:
        signed_at = parse_sdk_date(date)
    except ValueError:
        raise SignatureError("bad_date", f"cannot read X-Sdk-Date {date!r}", access_key=ak) from None
    if abs(now - signed_at) > max_skew:
        raise SignatureError(
            "expired", f"X-Sdk-Date {date} is more than {max_skew} away from server time", access_key=ak
        )

    if not body:
        payload_hash = EMPTY_BODY_SHA256
    else:
        payload_hash = hashlib.sha256(body).hexdigest()
        declared = received.get(X_SDK_CONTENT_SHA256, "").strip()
        if declared == UNSIGNED_PAYLOAD:
            if not allow_unsigned_payload:
                raise SignatureError("unsigned_payload", "the body must be signed", access_key=ak)
            payload_hash = UNSIGNED_PAYLOAD
        elif declared and declared != payload_hash:
            raise SignatureError("body_mismatch", "X-Sdk-Content-Sha256 does not match the body", access_key=ak)

    path, _, query = target.partition("?")
    canonical = canonical_request(method, path, query, parsed.signed_headers, received, payload_hash)
    expected = hmac_signature(secret_key, string_to_sign(canonical, date))
    if not hmac.compare_digest(expected, parsed.signature):
        raise SignatureError("mismatch", "verify aksk signature fail", access_key=ak)
    return ak

"""SDK-HMAC-SHA256 request signing, byte-compatible with Huawei Cloud's official SDKs (huaweicloudsdkcore).

Signing (client side)::

    extra = sign_request("POST", url, headers, body, access_key=ak, secret_key=sk, sdk_date=sdk_date_now())
    session.post(yarl.URL(url, encoded=True), data=body, headers={**headers, **extra})

``headers`` are the headers you will send and want signed: at least ``Content-Type`` and ``X-Project-Id`` for
Workspace (the SDK signs every header it sends, ``User-Agent`` included). ``sign_request`` returns only the
headers it adds: ``X-Sdk-Date``, ``Authorization``, ``Host`` (the URL's host[:port], unless ``headers`` has one)
and, for a non-JSON ``Content-Type`` only, ``X-Sdk-Content-Sha256: UNSIGNED-PAYLOAD``. Send all of them, send
``body`` byte for byte, and send the URL's path and query as given (``yarl.URL(url, encoded=True)``).

Verifying (gateway side, used by the simulator): :func:`verify_signature` recomputes the signature from what
arrived on the wire and returns the access key, or raises :class:`SignatureError` saying why not.

Everything here is pure (no I/O, no clock) except :func:`sdk_date_now`.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal
from urllib.parse import quote, unquote, urlsplit

__all__ = [
    "ALGORITHM",
    "EMPTY_BODY_SHA256",
    "MAX_CLOCK_SKEW",
    "UNSIGNED_PAYLOAD",
    "ParsedAuthorization",
    "SignatureError",
    "SignatureFailure",
    "SignedRequest",
    "canonical_query",
    "canonical_request",
    "canonical_uri",
    "format_sdk_date",
    "parse_authorization",
    "parse_sdk_date",
    "sdk_date_now",
    "sign_request",
    "sign_request_details",
    "string_to_sign",
    "verify_signature",
]

ALGORITHM = "SDK-HMAC-SHA256"
SDK_DATE_FORMAT = "%Y%m%dT%H%M%SZ"
EMPTY_BODY_SHA256 = hashlib.sha256(b"").hexdigest()
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
#: The API gateway refuses an X-Sdk-Date further than this from its clock, either way.
MAX_CLOCK_SKEW = timedelta(minutes=15)

_HOST = "host"
_X_SDK_DATE = "x-sdk-date"
_AUTHORIZATION = "authorization"
_CONTENT_TYPE = "content-type"
_X_SDK_CONTENT_SHA256 = "x-sdk-content-sha256"


# --------------------------------------------------------------------------------------------------- pieces


def format_sdk_date(when: datetime) -> str:
    """``when`` as ``YYYYMMDDTHHMMSSZ`` in UTC. ``when`` must carry a timezone (a naive time is ambiguous)."""
    if when.tzinfo is None:
        raise ValueError("sdk_date must be timezone-aware (use datetime.now(UTC))")
    return when.astimezone(UTC).strftime(SDK_DATE_FORMAT)


def parse_sdk_date(value: str) -> datetime:
    """An ``X-Sdk-Date`` value as an aware UTC datetime; ValueError if it is not ``YYYYMMDDTHHMMSSZ``."""
    # strptime accepts "2024011T..." style short fields; a length check keeps the format exact.
    if len(value) != 16:
        raise ValueError(f"X-Sdk-Date {value!r} is not YYYYMMDDTHHMMSSZ")
    return datetime.strptime(value, SDK_DATE_FORMAT).replace(tzinfo=UTC)


def sdk_date_now() -> str:
    """The current UTC time as an ``X-Sdk-Date`` value (the only clock read in this module)."""
    return format_sdk_date(datetime.now(UTC))


def _encode(value: str) -> str:
    # quote() always keeps A-Za-z0-9 and "_.-~"; safe="~" (as the SDK passes) adds nothing else, so "/" is
    # encoded too. Non-ASCII text is encoded as UTF-8 first.
    return quote(value, safe="~")


def canonical_uri(path: str) -> str:
    """The canonical URI of a raw (as sent, percent-encoded) URL path.

    Like the SDK: percent-decode the whole path, split it on ``/``, re-encode every segment, and end it with
    ``/``. A path that decodes an ``%2F`` therefore splits there, on both sides alike.
    """
    encoded = "/".join(_encode(segment) for segment in unquote(path).split("/"))
    return encoded if encoded.endswith("/") else encoded + "/"


def canonical_query(query: str) -> str:
    """The canonical query string of a raw (as sent, percent-encoded, without ``?``) query.

    Pairs are split on ``&`` and the first ``=``, percent-decoded (``+`` stays a plus, as in Huawei's APIG
    signers), sorted by decoded key then value, re-encoded and joined with ``&``. A key without ``=`` gets an
    empty value; empty pieces (``a=1&&b=2``) are skipped.
    """
    if not query:
        return ""
    pairs: list[tuple[str, str]] = []
    for piece in query.split("&"):
        if not piece:
            continue
        key, _, value = piece.partition("=")
        pairs.append((unquote(key), unquote(value)))
    # The SDK sorts the decoded (key, value) tuples and encodes afterwards: for non-ASCII text this order
    # differs from sorting the encoded strings.
    pairs.sort()
    return "&".join(f"{_encode(key)}={_encode(value)}" for key, value in pairs)


def canonical_request(
    method: str,
    path: str,
    query: str,
    signed_headers: tuple[str, ...],
    header_values: Mapping[str, str],
    payload_hash: str,
) -> str:
    """The canonical request text.

    ``signed_headers`` are lowercase names in signing order; ``header_values`` maps each of them (lowercase) to
    its value as sent, trimmed here. ``path`` and ``query`` are raw, as in :func:`canonical_uri` and
    :func:`canonical_query`.
    """
    headers_block = "".join(f"{name}:{header_values[name].strip()}\n" for name in signed_headers)
    return "\n".join(
        (
            method.upper(),
            canonical_uri(path),
            canonical_query(query),
            headers_block,
            ";".join(signed_headers),
            payload_hash,
        )
    )


def string_to_sign(canonical: str, sdk_date: str) -> str:
    """``SDK-HMAC-SHA256\\n{X-Sdk-Date}\\n{hex sha256 of the canonical request}``."""
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    return f"{ALGORITHM}\n{sdk_date}\n{digest}"


def _signature(secret_key: str, to_sign: str) -> str:
    # No key derivation: the SK's UTF-8 bytes are the HMAC key.
    return hmac.new(secret_key.encode("utf-8"), to_sign.encode("utf-8"), hashlib.sha256).hexdigest()


def _is_json_or_bson(content_type: str) -> bool:
    return content_type.startswith(("application/json", "application/bson"))


# --------------------------------------------------------------------------------------------------- signing


@dataclass(frozen=True, slots=True)
class SignedRequest:
    """Everything :func:`sign_request_details` computed, for tests and for logging a refused signature."""

    headers: dict[str, str]
    """The headers to add to the request (see the module docstring)."""
    signed_headers: tuple[str, ...]
    canonical_request: str
    string_to_sign: str
    signature: str


def sign_request_details(
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    access_key: str,
    secret_key: str,
    sdk_date: datetime | str,
) -> SignedRequest:
    """Sign one request as huaweicloudsdkcore's ``Signer`` does; see :func:`sign_request`."""
    if not access_key:
        raise ValueError("access_key is required")
    if not secret_key:
        raise ValueError("secret_key is required")
    date = format_sdk_date(sdk_date) if isinstance(sdk_date, datetime) else sdk_date
    parse_sdk_date(date)  # refuse a malformed string now rather than get a 401 later

    values: dict[str, str] = {}
    for name, value in headers.items():
        lower = name.lower()
        if lower in values:
            raise ValueError(f"header {name!r} given twice")
        if lower in (_AUTHORIZATION, _X_SDK_DATE):
            raise ValueError(f"header {name!r} is set by sign_request, do not pass it")
        values[lower] = value

    parts = urlsplit(url)
    added: dict[str, str] = {}
    content_type = values.get(_CONTENT_TYPE)
    if content_type and not _is_json_or_bson(content_type) and _X_SDK_CONTENT_SHA256 not in values:
        # The SDK does not sign the body of non-JSON requests; it says so in this (signed) header.
        added["X-Sdk-Content-Sha256"] = UNSIGNED_PAYLOAD
    added["X-Sdk-Date"] = date
    if _HOST not in values:
        # The SDK signs the endpoint's netloc as written (a port stays if the URL has one).
        added["Host"] = parts.netloc.rpartition("@")[2]
    for name, value in added.items():
        values[name.lower()] = value

    if not body:
        payload_hash = EMPTY_BODY_SHA256
    else:
        # Like the SDK, a caller-supplied X-Sdk-Content-Sha256 replaces the body hash (unverified).
        payload_hash = values.get(_X_SDK_CONTENT_SHA256) or hashlib.sha256(body).hexdigest()

    # The SDK signs every header it sends except names containing "_" (nginx-style gateways drop those).
    signed = tuple(sorted(name for name in values if "_" not in name))
    canonical = canonical_request(method, parts.path, parts.query, signed, values, payload_hash)
    to_sign = string_to_sign(canonical, date)
    signature = _signature(secret_key, to_sign)
    added["Authorization"] = f"{ALGORITHM} Access={access_key}, SignedHeaders={';'.join(signed)}, Signature={signature}"
    return SignedRequest(added, signed, canonical, to_sign, signature)


def sign_request(
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    access_key: str,
    secret_key: str,
    sdk_date: datetime | str,
) -> dict[str, str]:
    """The headers that make this request carry a valid SDK-HMAC-SHA256 signature.

    ``url`` is absolute (``https://host[:port]/path?query``) with path and query exactly as they will be sent.
    ``headers`` are the request headers to sign (names case-insensitive, each at most once; must not contain
    ``Authorization`` or ``X-Sdk-Date``). ``body`` is the exact body bytes (``b""`` for none). ``sdk_date`` is
    an aware datetime or an ``X-Sdk-Date`` string; it must be within 15 minutes of the gateway's clock when
    sent. Returns ``X-Sdk-Date``, ``Authorization``, ``Host`` unless given, and ``X-Sdk-Content-Sha256`` for a
    non-JSON content type: add them all to the request. Raises ValueError on unusable input.
    """
    return sign_request_details(
        method, url, headers, body, access_key=access_key, secret_key=secret_key, sdk_date=sdk_date
    ).headers


# --------------------------------------------------------------------------------------------------- verifying

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
        if lower == _AUTHORIZATION:
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
    for required in (_HOST, _X_SDK_DATE):
        if required not in parsed.signed_headers:
            raise SignatureError("malformed", f"{required} is not a signed header", access_key=ak)
    missing = [name for name in parsed.signed_headers if name not in received]
    if missing:
        raise SignatureError("malformed", f"signed header {missing[0]} was not sent", access_key=ak)

    secret_key = secret_key_for(ak)
    if secret_key is None:
        raise SignatureError("unknown_access_key", f"ak:{ak},err:ak not exist", access_key=ak)

    date = received[_X_SDK_DATE].strip()
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
        declared = received.get(_X_SDK_CONTENT_SHA256, "").strip()
        if declared == UNSIGNED_PAYLOAD:
            if not allow_unsigned_payload:
                raise SignatureError("unsigned_payload", "the body must be signed", access_key=ak)
            payload_hash = UNSIGNED_PAYLOAD
        elif declared and declared != payload_hash:
            raise SignatureError("body_mismatch", "X-Sdk-Content-Sha256 does not match the body", access_key=ak)

    path, _, query = target.partition("?")
    canonical = canonical_request(method, path, query, parsed.signed_headers, received, payload_hash)
    expected = _signature(secret_key, string_to_sign(canonical, date))
    if not hmac.compare_digest(expected, parsed.signature):
        raise SignatureError("mismatch", "verify aksk signature fail", access_key=ak)
    return ak

"""SDK-HMAC-SHA256 request signing, byte-compatible with Huawei Cloud's official SDKs (huaweicloudsdkcore).

Signing (client side)::

    extra = sign_request("POST", url, headers, body, access_key=ak, secret_key=sk, sdk_date=sdk_date_now())
    session.post(yarl.URL(url, encoded=True), data=body, headers={**headers, **extra})

``headers`` are the headers you will send and want signed: at least ``Content-Type`` and ``X-Project-Id`` for
Workspace (the SDK signs every header it sends, ``User-Agent`` included). ``sign_request`` returns only the
headers it adds: ``X-Sdk-Date``, ``Authorization``, ``Host`` (the URL's host[:port], unless ``headers`` has one)
and, for a non-JSON ``Content-Type`` only, ``X-Sdk-Content-Sha256: UNSIGNED-PAYLOAD``. Send all of them, send
``body`` byte for byte, and send the URL's path and query as given (``yarl.URL(url, encoded=True)``).

The gateway's side (checking a signature that arrived) is the simulator's: :mod:`snapworker.simulator.verify`.

Everything here is pure (no I/O, no clock) except :func:`sdk_date_now`.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote, unquote, urlsplit

__all__ = [
    "ALGORITHM",
    "EMPTY_BODY_SHA256",
    "UNSIGNED_PAYLOAD",
    "SignedRequest",
    "canonical_query",
    "canonical_request",
    "canonical_uri",
    "format_sdk_date",
    "hmac_signature",
    "parse_sdk_date",
    "sdk_date_now",
    "sign_request",
    "sign_request_details",
    "string_to_sign",
]

ALGORITHM = "SDK-HMAC-SHA256"
SDK_DATE_FORMAT = "%Y%m%dT%H%M%SZ"
EMPTY_BODY_SHA256 = hashlib.sha256(b"").hexdigest()
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"

HOST = "host"
X_SDK_DATE = "x-sdk-date"
AUTHORIZATION = "authorization"
_CONTENT_TYPE = "content-type"
X_SDK_CONTENT_SHA256 = "x-sdk-content-sha256"


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


def hmac_signature(secret_key: str, to_sign: str) -> str:
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
        if lower in (AUTHORIZATION, X_SDK_DATE):
            raise ValueError(f"header {name!r} is set by sign_request, do not pass it")
        values[lower] = value

    parts = urlsplit(url)
    added: dict[str, str] = {}
    content_type = values.get(_CONTENT_TYPE)
    if content_type and not _is_json_or_bson(content_type) and X_SDK_CONTENT_SHA256 not in values:
        # The SDK does not sign the body of non-JSON requests; it says so in this (signed) header.
        added["X-Sdk-Content-Sha256"] = UNSIGNED_PAYLOAD
    added["X-Sdk-Date"] = date
    if HOST not in values:
        # The SDK signs the endpoint's netloc as written (a port stays if the URL has one).
        added["Host"] = parts.netloc.rpartition("@")[2]
    for name, value in added.items():
        values[name.lower()] = value

    if not body:
        payload_hash = EMPTY_BODY_SHA256
    else:
        # Like the SDK, a caller-supplied X-Sdk-Content-Sha256 replaces the body hash (unverified).
        payload_hash = values.get(X_SDK_CONTENT_SHA256) or hashlib.sha256(body).hexdigest()

    # The SDK signs every header it sends except names containing "_" (nginx-style gateways drop those).
    signed = tuple(sorted(name for name in values if "_" not in name))
    canonical = canonical_request(method, parts.path, parts.query, signed, values, payload_hash)
    to_sign = string_to_sign(canonical, date)
    signature = hmac_signature(secret_key, to_sign)
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

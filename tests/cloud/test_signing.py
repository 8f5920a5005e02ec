"""SDK-HMAC-SHA256: the reference vectors, huaweicloudsdkcore as an oracle, and the verifier."""

from __future__ import annotations

import hashlib
import random
import string
from datetime import UTC, datetime, timedelta
from types import ModuleType, SimpleNamespace
from urllib.parse import quote, urlsplit

import pytest

from snapworker.cloud.signing import (
    canonical_query,
    canonical_uri,
    format_sdk_date,
    sign_request,
    sign_request_details,
)
from snapworker.simulator.verify import SignatureError, verify_signature

AK = "AKEXAMPLEAK0000000000"
SK = "SKEXAMPLEsecretkey0000000000000000000000"
PROJECT = "0123456789abcdef0123456789abcdef"
DATE = "20240101T120000Z"
HOST = "workspace.cn-north-4.myhuaweicloud.com"
BATCH_URL = f"https://{HOST}/v2/{PROJECT}/snapshots/batch-create"
VECTOR_BODY = (
    b'{"desktop_ids": ["d-0001", "d-0002"], "disk_type": "SYSTEM_DISK", '
    b'"system_disk_snapshot": {"name": "snap1", "description": "nightly"}}'
)
JSON_HEADERS = {"Content-Type": "application/json", "X-Project-Id": PROJECT}
SIGNED_AT = datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC)


def _secrets(ak: str) -> str | None:
    return SK if ak == AK else None


# ------------------------------------------------------------------------------------------ reference vectors


def test_vector_1_body_sha256() -> None:
    assert hashlib.sha256(VECTOR_BODY).hexdigest() == (
        "fc95429cd01acbda47194ed4ed6879386da63a24f18c206e7226700157c80e71"
    )


def test_vector_1_canonical_request_hash() -> None:
    details = sign_request_details(
        "POST", BATCH_URL, JSON_HEADERS, VECTOR_BODY, access_key=AK, secret_key=SK, sdk_date=DATE
    )
    assert details.string_to_sign == (
        f"SDK-HMAC-SHA256\n{DATE}\nfb8cc50351b56df45e2ec9ecf9faa40cf8adbf469163d1a08c5d3ed57b7d0600"
    )


def test_vector_1_authorization_header() -> None:
    added = sign_request("POST", BATCH_URL, JSON_HEADERS, VECTOR_BODY, access_key=AK, secret_key=SK, sdk_date=DATE)
    assert added == {
        "X-Sdk-Date": DATE,
        "Host": HOST,
        "Authorization": "SDK-HMAC-SHA256 Access=AKEXAMPLEAK0000000000, "
        "SignedHeaders=content-type;host;x-project-id;x-sdk-date, "
        "Signature=abc6e422af246f9c25893aa73b85909fb90c06363bd3bb9b2984b49849a1c0ed",
    }


def test_vector_1_accepts_datetime_for_sdk_date() -> None:
    by_str = sign_request("POST", BATCH_URL, JSON_HEADERS, VECTOR_BODY, access_key=AK, secret_key=SK, sdk_date=DATE)
    by_dt = sign_request("POST", BATCH_URL, JSON_HEADERS, VECTOR_BODY, access_key=AK, secret_key=SK, sdk_date=SIGNED_AT)
    assert by_dt == by_str


def test_vector_2_signs_user_agent() -> None:
    headers = {**JSON_HEADERS, "User-Agent": "huaweicloud-usdk-python/3.0; sign-vector"}
    added = sign_request("POST", BATCH_URL, headers, VECTOR_BODY, access_key=AK, secret_key=SK, sdk_date=DATE)
    assert added["Authorization"] == (
        "SDK-HMAC-SHA256 Access=AKEXAMPLEAK0000000000, "
        "SignedHeaders=content-type;host;user-agent;x-project-id;x-sdk-date, "
        "Signature=335a1e3fdb344926b4566a42b857c18e1150adc33cfd41fef5fe2ef66bb35377"
    )


def test_vector_3_get_with_query_and_empty_body() -> None:
    url = f"https://{HOST}/v2/{PROJECT}/workspace-sub-jobs?job_id=job-0001&limit=10&offset=0"
    added = sign_request("GET", url, JSON_HEADERS, b"", access_key=AK, secret_key=SK, sdk_date=DATE)
    assert added["Authorization"] == (
        "SDK-HMAC-SHA256 Access=AKEXAMPLEAK0000000000, "
        "SignedHeaders=content-type;host;x-project-id;x-sdk-date, "
        "Signature=887101eeea8526a2e1065fb310e2436e129d210577b0433fab45952d8aa619a9"
    )


# ------------------------------------------------------------------------------------------ canonical pieces


def test_canonical_uri_appends_slash_and_reencodes_segments() -> None:
    assert canonical_uri("/v2/p%20x/a~b") == "/v2/p%20x/a~b/"
    assert canonical_uri("/v2/") == "/v2/"
    assert canonical_uri("/a%7Eb/c%2Fd") == "/a~b/c/d/"


def test_canonical_query_sorts_decoded_pairs_and_keeps_plus() -> None:
    assert canonical_query("b=2&a=x+y&a=1&flag") == "a=1&a=x%2By&b=2&flag="


def test_host_header_keeps_the_url_port() -> None:
    added = sign_request("GET", "http://127.0.0.1:8443/v2/x", {}, b"", access_key=AK, secret_key=SK, sdk_date=DATE)
    assert added["Host"] == "127.0.0.1:8443"


def test_given_host_header_is_used_and_not_returned() -> None:
    details = sign_request_details(
        "GET",
        "http://127.0.0.1:8443/v2/x",
        {"Host": "api.example"},
        b"",
        access_key=AK,
        secret_key=SK,
        sdk_date=DATE,
    )
    assert "Host" not in details.headers
    assert "host:api.example\n" in details.canonical_request


def test_headers_with_underscore_are_not_signed() -> None:
    details = sign_request_details(
        "GET", BATCH_URL, {"X_Odd": "1", "X-Even": "2"}, b"", access_key=AK, secret_key=SK, sdk_date=DATE
    )
    assert details.signed_headers == ("host", "x-even", "x-sdk-date")


def test_non_json_content_type_leaves_body_unsigned() -> None:
    details = sign_request_details(
        "POST", BATCH_URL, {"Content-Type": "text/plain"}, b"hello", access_key=AK, secret_key=SK, sdk_date=DATE
    )
    assert details.headers["X-Sdk-Content-Sha256"] == "UNSIGNED-PAYLOAD"
    assert details.canonical_request.endswith("\nUNSIGNED-PAYLOAD")


def test_sign_refuses_naive_datetime() -> None:
    with pytest.raises(ValueError, match="timezone"):
        sign_request("GET", BATCH_URL, {}, b"", access_key=AK, secret_key=SK, sdk_date=datetime(2024, 1, 1))


def test_sign_refuses_malformed_date_string() -> None:
    with pytest.raises(ValueError, match="X-Sdk-Date"):
        sign_request("GET", BATCH_URL, {}, b"", access_key=AK, secret_key=SK, sdk_date="2024-01-01T12:00:00Z")


def test_sign_refuses_header_given_twice_in_different_case() -> None:
    with pytest.raises(ValueError, match="twice"):
        sign_request("GET", BATCH_URL, {"X-A": "1", "x-a": "2"}, b"", access_key=AK, secret_key=SK, sdk_date=DATE)


# ------------------------------------------------------------------------------------------ SDK as oracle

_SEGMENT_CHARS = string.ascii_letters + string.digits + "-_.~ %/+=&?:@!$'()*,;é中"
_HEADER_NAME_CHARS = string.ascii_letters + string.digits + "-"
_HEADER_VALUE_CHARS = string.ascii_letters + string.digits + " -_.;:/=,()+*&%$#@!?'\"[]{}<>"


def _text(rng: random.Random, alphabet: str, lo: int, hi: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(lo, hi)))


@pytest.fixture
def sdk_signer(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> ModuleType:
    """huaweicloudsdkcore's signer module, imported with HOME pointing at a scratch directory."""
    # Importing parts of the SDK writes $HOME/.huaweicloud/application_id: keep that out of the real HOME.
    monkeypatch.setenv("HOME", str(tmp_path))
    pytest.importorskip("huaweicloudsdkcore")
    module: ModuleType = pytest.importorskip("huaweicloudsdkcore.signer.signer")
    return module


def test_matches_huaweicloudsdkcore_signer_on_random_requests(sdk_signer: ModuleType) -> None:
    from huaweicloudsdkcore.sdk_request import SdkRequest

    rng = random.Random(20240101)
    credentials = SimpleNamespace(ak=AK, sk=SK)
    for case in range(400):
        method = rng.choice(["GET", "POST", "PUT", "DELETE", "PATCH"])
        host = rng.choice([HOST, "127.0.0.1:8080", "Example.COM:443"])
        # The SDK builds resource paths by quoting each path parameter with safe="", as here.
        segments = [quote(_text(rng, _SEGMENT_CHARS, 1, 12), safe="") for _ in range(rng.randint(1, 5))]
        resource_path = "/" + "/".join(segments) + rng.choice(["", "/"])
        query = [(_text(rng, _SEGMENT_CHARS, 1, 6), _text(rng, _SEGMENT_CHARS, 0, 8)) for _ in range(rng.randint(0, 4))]
        headers: dict[str, str] = {}
        for _ in range(rng.randint(0, 5)):
            name = _text(rng, _HEADER_NAME_CHARS, 1, 10) + rng.choice(["", "", "_x"])
            if name.lower() in {"authorization", "x-sdk-date", "host"} | {h.lower() for h in headers}:
                continue
            headers[name] = rng.choice(["", " "]) + _text(rng, _HEADER_VALUE_CHARS, 0, 20) + rng.choice(["", " "])
        if rng.random() < 0.8:
            headers["Content-Type"] = rng.choice(["application/json", "application/json;charset=UTF-8", "text/plain"])
        body = rng.choice([b"", rng.randbytes(rng.randint(1, 300)), VECTOR_BODY])
        sdk_date = format_sdk_date(SIGNED_AT + timedelta(seconds=rng.randint(0, 10**8)))

        request = SdkRequest(
            method=method,
            schema="https",
            host=host,
            resource_path=resource_path,
            query_params=list(query),
            header_params={**headers, "X-Sdk-Date": sdk_date},
            body=body,
        )
        sdk_signer.Signer(credentials).sign(request)
        wire_url = request.url  # the SDK sends resource_path?canonical_query

        ours = sign_request(method, wire_url, headers, body, access_key=AK, secret_key=SK, sdk_date=sdk_date)
        assert ours["Authorization"] == request.header_params["Authorization"], (case, wire_url, headers)
        assert ours.get("X-Sdk-Content-Sha256") == request.header_params.get("X-Sdk-Content-Sha256"), case
        assert ours["Host"] == request.header_params["Host"], case


# ------------------------------------------------------------------------------------------ verifying


def _signed_wire_request(
    body: bytes = VECTOR_BODY, *, secret_key: str = SK, sdk_date: str = DATE
) -> tuple[str, dict[str, str]]:
    url = f"http://127.0.0.1:8080/v2/{PROJECT}/snapshots/batch-create?x=a%20b"
    added = sign_request("POST", url, JSON_HEADERS, body, access_key=AK, secret_key=secret_key, sdk_date=sdk_date)
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}", {**JSON_HEADERS, **added, "Content-Length": str(len(body))}


def test_verify_accepts_what_sign_produces() -> None:
    target, headers = _signed_wire_request()
    ak = verify_signature("POST", target, headers, VECTOR_BODY, secret_key_for=_secrets, now=SIGNED_AT)
    assert ak == AK


def test_verify_accepts_date_14_minutes_off() -> None:
    target, headers = _signed_wire_request()
    now = SIGNED_AT + timedelta(minutes=14)
    assert verify_signature("POST", target, headers, VECTOR_BODY, secret_key_for=_secrets, now=now) == AK


def test_verify_rejects_tampered_body() -> None:
    target, headers = _signed_wire_request()
    tampered = VECTOR_BODY.replace(b"d-0002", b"d-0003")
    with pytest.raises(SignatureError) as info:
        verify_signature("POST", target, headers, tampered, secret_key_for=_secrets, now=SIGNED_AT)
    assert info.value.reason == "mismatch"


def test_verify_rejects_wrong_secret_key() -> None:
    target, headers = _signed_wire_request(secret_key="not-the-secret")
    with pytest.raises(SignatureError) as info:
        verify_signature("POST", target, headers, VECTOR_BODY, secret_key_for=_secrets, now=SIGNED_AT)
    assert info.value.reason == "mismatch"


@pytest.mark.parametrize("offset", [timedelta(minutes=16), timedelta(minutes=-16)])
def test_verify_rejects_date_16_minutes_off(offset: timedelta) -> None:
    target, headers = _signed_wire_request()
    with pytest.raises(SignatureError) as info:
        verify_signature("POST", target, headers, VECTOR_BODY, secret_key_for=_secrets, now=SIGNED_AT + offset)
    assert info.value.reason == "expired"


def test_verify_rejects_unknown_access_key() -> None:
    target, headers = _signed_wire_request()
    with pytest.raises(SignatureError) as info:
        verify_signature("POST", target, headers, VECTOR_BODY, secret_key_for=lambda ak: None, now=SIGNED_AT)
    assert info.value.reason == "unknown_access_key"


def test_verify_rejects_changed_query() -> None:
    target, headers = _signed_wire_request()
    with pytest.raises(SignatureError) as info:
        verify_signature(
            "POST", target.replace("a%20b", "a%20c"), headers, VECTOR_BODY, secret_key_for=_secrets, now=SIGNED_AT
        )
    assert info.value.reason == "mismatch"


def test_verify_rejects_missing_authorization() -> None:
    target, headers = _signed_wire_request()
    del headers["Authorization"]
    with pytest.raises(SignatureError) as info:
        verify_signature("POST", target, headers, VECTOR_BODY, secret_key_for=_secrets, now=SIGNED_AT)
    assert info.value.reason == "missing"


def test_verify_rejects_signed_header_not_sent() -> None:
    target, headers = _signed_wire_request()
    del headers["X-Project-Id"]
    with pytest.raises(SignatureError) as info:
        verify_signature("POST", target, headers, VECTOR_BODY, secret_key_for=_secrets, now=SIGNED_AT)
    assert info.value.reason == "malformed"


def test_verify_rejects_unsigned_payload_by_default() -> None:
    url = "http://127.0.0.1:8080/v2/x"
    body = b"plain text"
    added = sign_request("POST", url, {"Content-Type": "text/plain"}, body, access_key=AK, secret_key=SK, sdk_date=DATE)
    headers = {"Content-Type": "text/plain", **added}
    with pytest.raises(SignatureError) as info:
        verify_signature("POST", "/v2/x", headers, body, secret_key_for=_secrets, now=SIGNED_AT)
    assert info.value.reason == "unsigned_payload"
    ak = verify_signature(
        "POST", "/v2/x", headers, b"other", secret_key_for=_secrets, now=SIGNED_AT, allow_unsigned_payload=True
    )
    assert ak == AK

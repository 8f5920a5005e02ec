"""Huawei's conventions: the SDK's HUAWEICLOUD_SDK_* variables, temporary credentials signed as the SDK signs them,
a CA bundle and a proxy for the API."""

from __future__ import annotations

from types import ModuleType, SimpleNamespace
from urllib.parse import urlsplit

import pytest

from snapworker.cloud.client import WorkspaceClient
from snapworker.cloud.credential import Credential
from snapworker.errors import ConfigError
from snapworker.settings import Settings, load_settings
from snapworker.simulator.verify import parse_authorization

AK, SK, TOKEN = "HST3UQNAXMPLEAK0001", "tempSK0123456789abcdef", "securitytoken-abc.def"
DATE = "20261201T020000Z"
URL = "https://workspace.cn-north-4.myhuaweicloud.com/v2/p1/snapshots/batch-create"


def test_the_sdk_variables_give_the_access_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUAWEICLOUD_SDK_AK", AK)
    monkeypatch.setenv("HUAWEICLOUD_SDK_SK", SK)
    monkeypatch.setenv("HUAWEICLOUD_SDK_SECURITY_TOKEN", TOKEN)
    s = load_settings()
    assert s.auth_mode == "aksk"
    assert s.access_key is not None
    assert s.access_key.get_secret_value() == AK
    assert s.security_token is not None
    assert s.security_token.get_secret_value() == TOKEN


def test_a_snapworker_variable_wins_over_the_sdk_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUAWEICLOUD_SDK_AK", "sdk-ak")
    monkeypatch.setenv("SNAPWORKER_ACCESS_KEY", "our-ak")
    monkeypatch.setenv("HUAWEICLOUD_SDK_SK", SK)
    access_key = load_settings().access_key
    assert access_key is not None
    assert access_key.get_secret_value() == "our-ak"


def test_a_security_token_without_access_keys_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"SECURITY_TOKEN \(temporary credentials\) needs the ACCESS_KEY"):
        load_settings(security_token=TOKEN)


def test_a_ca_file_that_does_not_exist_is_refused() -> None:
    with pytest.raises(ConfigError, match="API_CA_FILE"):
        load_settings(api_ca_file="/nonexistent/ca.pem")


def test_a_proxy_that_is_not_http_is_refused() -> None:
    with pytest.raises(ConfigError, match="API_PROXY"):
        load_settings(api_proxy="socks5://proxy:1080")


def _headers(settings: Settings) -> dict[str, str]:
    return Credential(settings, sdk_date=lambda: DATE).headers("POST", URL, "p1", b'{"desktops": []}')


def test_temporary_credentials_send_the_security_token_signed() -> None:
    headers = _headers(Settings(access_key=AK, secret_key=SK, security_token=TOKEN))
    assert headers["X-Security-Token"] == TOKEN
    assert "x-security-token" in parse_authorization(headers["Authorization"]).signed_headers


def test_permanent_credentials_send_no_security_token() -> None:
    assert "X-Security-Token" not in _headers(Settings(access_key=AK, secret_key=SK))


@pytest.fixture
def sdk_signer(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> ModuleType:
    """huaweicloudsdkcore's signer module, imported with HOME pointing at a scratch directory."""
    monkeypatch.setenv("HOME", str(tmp_path))
    pytest.importorskip("huaweicloudsdkcore")
    module: ModuleType = pytest.importorskip("huaweicloudsdkcore.signer.signer")
    return module


def test_temporary_credentials_are_signed_as_huaweicloudsdkcore_signs_them(sdk_signer: ModuleType) -> None:
    from huaweicloudsdkcore.sdk_request import SdkRequest

    body = b'{"desktops": []}'
    ours = _headers(Settings(access_key=AK, secret_key=SK, security_token=TOKEN))
    parts = urlsplit(URL)
    # what the SDK's BasicCredentials.process_auth_request does: add X-Security-Token, then sign every header
    request = SdkRequest(
        method="POST",
        schema="https",
        host=parts.netloc,
        resource_path=parts.path,
        query_params=[],
        header_params={
            "Content-Type": "application/json",
            "X-Project-Id": "p1",
            "X-Security-Token": TOKEN,
            "X-Sdk-Date": DATE,
        },
        body=body,
    )
    sdk_signer.Signer(SimpleNamespace(ak=AK, sk=SK)).sign(request)
    assert ours["Authorization"] == request.header_params["Authorization"]


async def test_the_client_verifies_the_api_against_the_configured_ca_file() -> None:
    import ssl

    certifi = pytest.importorskip("certifi")  # comes with huaweicloudsdkcore (test extra)

    client = WorkspaceClient(Settings(auth_token="t", api_ca_file=certifi.where()))
    try:
        connector = client._get_session().connector
        assert connector is not None
        assert isinstance(connector._ssl, ssl.SSLContext)  # type: ignore[attr-defined]
    finally:
        await client.close()


def test_the_client_sends_through_the_configured_proxy() -> None:
    client = WorkspaceClient(Settings(auth_token="t", api_proxy="http://proxy.internal:3128"))
    assert client._proxy == "http://proxy.internal:3128"

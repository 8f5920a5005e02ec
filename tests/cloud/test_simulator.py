"""The Workspace API simulator, driven over real loopback HTTP."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import re
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
import yarl
from multidict import CIMultiDict

from snapworker.cloud.signing import sign_request
from snapworker.simulator.app import SimConfig, Simulator, add_arguments, config_from_args
from snapworker.simulator.service import JobStore
from snapworker.simulator.snapshots import SnapshotIndex, SnapshotQuery
from snapworker.simulator.state import FlowLimiter

TOKEN = "test-token"  # the token tests/conftest.py's simulator fixture accepts
PROJECT = "0123456789abcdef0123456789abcdef"
AK = "AKSIM0000000000000000"
SK = "SKSIMsecret0000000000000000000000000000"
SERVICE_ERROR_KEYS = {"error_code", "error_msg", "error_detail", "encoded_authorization_message"}
#: The SDK's DesktopSnapshotDetailInfo fields (tests/conformance checks them against the SDK itself).
SNAPSHOT_FIELDS = {
    "snapshot_id",
    "snapshot_name",
    "desktop_id",
    "desktop_name",
    "desktop_sid",
    "desktop_pool_id",
    "is_system_disk",
    "status",
    "process",
    "description",
    "create_time",
    "create_type",
    "last_restore_time",
    "restore_fail_reason",
}
WHOLE_SECONDS_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


@dataclass
class Answer:
    status: int
    headers: CIMultiDict[str]  # case-insensitive: aiohttp's client spells it X-Request-ID
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def _desktops(n: int, prefix: str = "d") -> list[str]:
    return [f"{prefix}-{i:06d}" for i in range(n)]


async def _call(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> Answer:
    async with session.request(method, yarl.URL(url, encoded=True), data=body, headers=headers) as resp:
        return Answer(resp.status, CIMultiDict(resp.headers), await resp.text())


async def _batch(
    session: aiohttp.ClientSession,
    sim: Simulator,
    payload: Any = None,
    *,
    raw: bytes | None = None,
    token: str | None = TOKEN,
    project: str = PROJECT,
) -> Answer:
    body = raw if raw is not None else json.dumps(payload).encode()
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["X-Auth-Token"] = token
    return await _call(session, "POST", f"{sim.url}/v2/{project}/snapshots/batch-create", body=body, headers=headers)


async def _job(session: aiohttp.ClientSession, sim: Simulator, job_id: str, project: str = PROJECT) -> Answer:
    url = f"{sim.url}/v2/{project}/workspace-jobs/{job_id}"
    return await _call(session, "GET", url, headers={"X-Auth-Token": TOKEN})


async def _get(session: aiohttp.ClientSession, sim: Simulator, path_and_query: str) -> Answer:
    return await _call(session, "GET", f"{sim.url}/v2/{PROJECT}/{path_and_query}", headers={"X-Auth-Token": TOKEN})


async def _list(session: aiohttp.ClientSession, sim: Simulator, *query: tuple[str, str | int]) -> Answer:
    """``GET snapshots`` with ``query`` pairs in order (a list is sent as repeated keys, as the SDK does)."""
    return await _get(session, sim, f"snapshots?{urlencode(query)}" if query else "snapshots")


async def _snapshots(session: aiohttp.ClientSession, sim: Simulator, *query: tuple[str, str | int]) -> list[Any]:
    answer = await _list(session, sim, *query)
    assert answer.status == 200, answer.text
    items: list[Any] = answer.json()["desktop_snapshots"]
    return items


def _stamp(create_time: str) -> str:
    """The timestamp a snapshot name ends with, from its create_time: ``YYYYmmddHHMMSS``."""
    return re.sub(r"\D", "", create_time)


async def _next_second() -> None:
    """Wait until just after the wall clock's next whole second (create_time has whole seconds only)."""
    await asyncio.sleep(1.0 - time.time() % 1.0 + 0.02)


def _signed_headers(url: str, body: bytes, *, secret_key: str = SK, sdk_date: datetime | None = None) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "X-Project-Id": PROJECT}
    when = sdk_date or datetime.now(UTC)
    return {**headers, **sign_request("POST", url, headers, body, access_key=AK, secret_key=secret_key, sdk_date=when)}


# ------------------------------------------------------------------------------------------ batch-create


async def test_batch_create_returns_a_uuid4_job_id(simulator: Simulator, session: aiohttp.ClientSession) -> None:
    answer = await _batch(session, simulator, {"desktop_ids": _desktops(3), "disk_type": "SYSTEM_DISK"})
    assert answer.status == 200
    assert uuid.UUID(answer.json()["job_id"]).version == 4


async def test_batch_create_accepts_every_field_at_its_limit(
    simulator: Simulator, session: aiohttp.ClientSession
) -> None:
    payload = {
        "desktop_ids": [f"{i:036d}" for i in range(100)],
        "disk_type": "ALL",
        "system_disk_snapshot": {"name": "n" * 64, "description": "d" * 255},
        "data_disk_snapshot": {"name": "n" * 64, "description": None},
        "some_future_field": 1,
    }
    assert (await _batch(session, simulator, payload)).status == 200


INVALID_BODIES: dict[str, bytes | dict[str, Any] | list[Any]] = {
    "empty body": b"",
    "not json": b"{desktop_ids: [",
    "not an object": ["d-1"],
    "no desktop_ids": {"disk_type": "ALL"},
    "desktop_ids not a list": {"desktop_ids": "d-1"},
    "no desktops": {"desktop_ids": []},
    "101 desktops": {"desktop_ids": _desktops(101)},
    "desktop id not a string": {"desktop_ids": [12]},
    "empty desktop id": {"desktop_ids": [""]},
    "37-char desktop id": {"desktop_ids": ["x" * 37]},
    "unknown disk_type": {"desktop_ids": ["d-1"], "disk_type": "BOOT_DISK"},
    "snapshot info not an object": {"desktop_ids": ["d-1"], "system_disk_snapshot": "nightly"},
    "65-char system snapshot name": {"desktop_ids": ["d-1"], "system_disk_snapshot": {"name": "n" * 65}},
    "256-char description": {"desktop_ids": ["d-1"], "system_disk_snapshot": {"description": "d" * 256}},
    "65-char data snapshot name": {"desktop_ids": ["d-1"], "data_disk_snapshot": {"name": "n" * 65}},
}


@pytest.mark.parametrize("case", list(INVALID_BODIES))
async def test_invalid_body_is_refused_400_wks_0001(
    simulator: Simulator, session: aiohttp.ClientSession, case: str
) -> None:
    payload = INVALID_BODIES[case]
    if isinstance(payload, bytes):
        answer = await _batch(session, simulator, raw=payload)
    else:
        answer = await _batch(session, simulator, payload)
    assert answer.status == 400
    body = answer.json()
    assert set(body) == SERVICE_ERROR_KEYS
    assert body["error_code"] == "WKS.0001"
    assert simulator.stats()["jobs_created"] == 0


async def test_unknown_desktop_is_refused_404_naming_it(simulator: Simulator, session: aiohttp.ClientSession) -> None:
    simulator.config.unknown_desktops = frozenset({"d-000002"})
    answer = await _batch(session, simulator, {"desktop_ids": _desktops(5)})
    assert answer.status == 404
    body = answer.json()
    assert body["error_code"] == "WKS.0202"
    assert "d-000002" in body["error_msg"]
    assert body["error_detail"] == "d-000002"


async def test_busy_desktop_is_refused_409_naming_it(simulator: Simulator, session: aiohttp.ClientSession) -> None:
    simulator.config.busy_desktops = frozenset({"d-000001"})
    answer = await _batch(session, simulator, {"desktop_ids": _desktops(5)})
    assert answer.status == 409
    body = answer.json()
    assert set(body) == SERVICE_ERROR_KEYS
    assert body["error_code"] == "WKS.0110"
    assert body["error_detail"] == "d-000001"


async def test_a_busy_desktop_is_free_busy_for_s_after_its_first_409(
    simulator: Simulator, session: aiohttp.ClientSession
) -> None:
    simulator.config.busy_desktops = frozenset({"d-000001"})
    simulator.config.busy_for_s = 0.3
    payload = {"desktop_ids": ["d-000001"]}
    assert (await _batch(session, simulator, payload)).status == 409
    assert (await _batch(session, simulator, payload)).status == 409
    await asyncio.sleep(0.35)
    assert (await _batch(session, simulator, payload)).status == 200


async def test_without_name_culprits_404_and_409_do_not_name_the_desktop(
    simulator: Simulator, session: aiohttp.ClientSession
) -> None:
    simulator.config.name_culprits = False
    simulator.config.unknown_desktops = frozenset({"d-000002"})
    simulator.config.busy_desktops = frozenset({"d-000001"})
    for desktops, status in ((["d-000002", "d-000003"], 404), (["d-000001"], 409)):
        answer = await _batch(session, simulator, {"desktop_ids": desktops})
        body = answer.json()
        assert answer.status == status
        assert body["error_detail"] is None
        assert not any(d in body["error_msg"] for d in desktops)


# ------------------------------------------------------------------------------------------ authentication


async def test_no_credentials_is_refused_401_apig_1002(simulator: Simulator, session: aiohttp.ClientSession) -> None:
    answer = await _batch(session, simulator, {"desktop_ids": ["d-1"]}, token=None)
    assert answer.status == 401
    body = answer.json()
    assert body["error_code"] == "APIG.1002"
    assert body["request_id"] == answer.headers["X-Request-Id"]


async def test_wrong_token_is_refused_401_apig_0301(simulator: Simulator, session: aiohttp.ClientSession) -> None:
    answer = await _batch(session, simulator, {"desktop_ids": ["d-1"]}, token="nope")
    assert answer.status == 401
    assert answer.json()["error_code"] == "APIG.0301"


async def test_anonymous_is_accepted_when_allowed(simulator: Simulator, session: aiohttp.ClientSession) -> None:
    simulator.config.allow_anonymous = True
    assert (await _batch(session, simulator, {"desktop_ids": ["d-1"]}, token=None)).status == 200


async def test_valid_signature_is_accepted(simulator: Simulator, session: aiohttp.ClientSession) -> None:
    simulator.config.credentials = {AK: SK}
    url = f"{simulator.url}/v2/{PROJECT}/snapshots/batch-create"
    body = b'{"desktop_ids": ["d-1", "d-2"]}'
    answer = await _call(session, "POST", url, body=body, headers=_signed_headers(url, body))
    assert answer.status == 200, answer.text


async def test_signature_with_wrong_secret_key_is_refused_401(
    simulator: Simulator, session: aiohttp.ClientSession
) -> None:
    simulator.config.credentials = {AK: SK}
    url = f"{simulator.url}/v2/{PROJECT}/snapshots/batch-create"
    body = b'{"desktop_ids": ["d-1"]}'
    answer = await _call(session, "POST", url, body=body, headers=_signed_headers(url, body, secret_key="wrong"))
    assert answer.status == 401
    assert answer.json()["error_code"] == "APIG.0301"
    assert "verify aksk signature fail" in answer.json()["error_msg"]


async def test_signature_over_another_body_is_refused_401(simulator: Simulator, session: aiohttp.ClientSession) -> None:
    simulator.config.credentials = {AK: SK}
    url = f"{simulator.url}/v2/{PROJECT}/snapshots/batch-create"
    headers = _signed_headers(url, b'{"desktop_ids": ["d-1"]}')
    answer = await _call(session, "POST", url, body=b'{"desktop_ids": ["d-2"]}', headers=headers)
    assert answer.status == 401


async def test_signature_dated_16_minutes_ago_is_refused_401(
    simulator: Simulator, session: aiohttp.ClientSession
) -> None:
    simulator.config.credentials = {AK: SK}
    url = f"{simulator.url}/v2/{PROJECT}/snapshots/batch-create"
    body = b'{"desktop_ids": ["d-1"]}'
    stale = datetime.now(UTC) - timedelta(minutes=16)
    answer = await _call(session, "POST", url, body=body, headers=_signed_headers(url, body, sdk_date=stale))
    assert answer.status == 401


async def test_signature_of_unknown_access_key_is_refused_401(
    simulator: Simulator, session: aiohttp.ClientSession
) -> None:
    url = f"{simulator.url}/v2/{PROJECT}/snapshots/batch-create"
    body = b'{"desktop_ids": ["d-1"]}'
    answer = await _call(session, "POST", url, body=body, headers=_signed_headers(url, body))
    assert answer.status == 401
    assert "ak not exist" in answer.json()["error_msg"]


# ------------------------------------------------------------------------------------------ flow control


async def test_per_minute_limit_answers_429_apig_0308(simulator: Simulator, session: aiohttp.ClientSession) -> None:
    simulator.config.rate_per_minute = 3
    statuses = [(await _batch(session, simulator, {"desktop_ids": [f"d-{i}"]})).status for i in range(3)]
    throttled = await _batch(session, simulator, {"desktop_ids": ["d-x"]})
    assert statuses == [200, 200, 200]
    assert throttled.status == 429
    assert throttled.json()["error_code"] == "APIG.0308"
    assert throttled.json()["error_msg"] == (
        "The throttling threshold has been reached: policy user over ratelimit, limit:3, time:1 minute"
    )
    assert "Retry-After" not in throttled.headers


async def test_per_second_limit_answers_429(simulator: Simulator, session: aiohttp.ClientSession) -> None:
    simulator.config.rate_per_second = 2
    answers = [await _batch(session, simulator, {"desktop_ids": [f"d-{i}"]}) for i in range(3)]
    assert [a.status for a in answers] == [200, 200, 429]
    assert answers[2].json()["error_code"] == "APIG.0308"
    assert "limit:2" in answers[2].json()["error_msg"]


async def test_per_second_limit_admits_again_after_a_second(
    simulator: Simulator, session: aiohttp.ClientSession
) -> None:
    simulator.config.rate_per_second = 1
    assert (await _batch(session, simulator, {"desktop_ids": ["d-1"]})).status == 200
    assert (await _batch(session, simulator, {"desktop_ids": ["d-2"]})).status == 429
    await asyncio.sleep(1.05)
    assert (await _batch(session, simulator, {"desktop_ids": ["d-3"]})).status == 200


async def test_retry_after_is_sent_only_when_configured(simulator: Simulator, session: aiohttp.ClientSession) -> None:
    simulator.config.rate_per_minute = 1
    simulator.config.send_retry_after = True
    await _batch(session, simulator, {"desktop_ids": ["d-1"]})
    throttled = await _batch(session, simulator, {"desktop_ids": ["d-2"]})
    assert throttled.status == 429
    assert 1 <= int(throttled.headers["Retry-After"]) <= 60


async def test_flow_limit_is_per_user(simulator: Simulator, session: aiohttp.ClientSession) -> None:
    simulator.config.tokens = frozenset({TOKEN, "other-token"})
    simulator.config.rate_per_minute = 1
    assert (await _batch(session, simulator, {"desktop_ids": ["d-1"]})).status == 200
    assert (await _batch(session, simulator, {"desktop_ids": ["d-2"]}, token="other-token")).status == 200
    assert (await _batch(session, simulator, {"desktop_ids": ["d-3"]})).status == 429


def test_flow_limit_holds_in_every_sliding_window() -> None:
    limiter = FlowLimiter()
    assert limiter.admit("u", 0.0, 2, None) is None
    assert limiter.admit("u", 59.0, 2, None) is None
    refused = limiter.admit("u", 59.5, 2, None)  # a fixed per-minute window would have reset at 60
    assert refused is not None
    assert (refused.limit, refused.period, refused.retry_after_s) == (2, "minute", 0.5)
    assert limiter.admit("u", 60.01, 2, None) is None


def test_flow_limit_of_zero_refuses_everything() -> None:
    assert FlowLimiter().admit("u", 0.0, None, 0) is not None


# ------------------------------------------------------------------------------------------ faults


async def test_html_error_ratio_answers_502_html_page(simulator: Simulator, session: aiohttp.ClientSession) -> None:
    simulator.config.html_error_ratio = 1.0
    answer = await _batch(session, simulator, {"desktop_ids": ["d-1"]})
    assert answer.status == 502
    assert answer.headers["Content-Type"].startswith("text/html")
    assert "<html>" in answer.text


async def test_error_5xx_ratio_answers_5xx_without_creating_jobs(
    simulator: Simulator, session: aiohttp.ClientSession
) -> None:
    simulator.config.error_5xx_ratio = 1.0
    statuses = {(await _batch(session, simulator, {"desktop_ids": ["d-1"]})).status for _ in range(30)}
    assert statuses == {500, 502, 503}
    assert simulator.stats()["jobs_created"] == 0


async def test_latency_delays_the_answer(simulator: Simulator, session: aiohttp.ClientSession) -> None:
    simulator.config.latency_s = 0.2
    started = time.monotonic()
    await _batch(session, simulator, {"desktop_ids": ["d-1"]})
    assert time.monotonic() - started >= 0.2


async def test_error_429_ratio_answers_429_apig_0308_whatever_the_limits(
    simulator: Simulator, session: aiohttp.ClientSession
) -> None:
    simulator.config.error_429_ratio = 1.0
    answer = await _batch(session, simulator, {"desktop_ids": ["d-1"]})
    assert (answer.status, answer.json()["error_code"]) == (429, "APIG.0308")
    assert simulator.stats()["jobs_created"] == 0


async def test_a_stalled_answer_comes_stall_s_late_and_its_job_exists(
    simulator: Simulator, session: aiohttp.ClientSession
) -> None:
    simulator.config.stall_ratio, simulator.config.stall_s = 1.0, 0.3
    simulator.config.latency_jitter_s = 0.05
    started = time.monotonic()
    answer = await _batch(session, simulator, {"desktop_ids": ["d-1"]})
    assert time.monotonic() - started >= 0.3
    assert answer.status == 200
    assert simulator.stats()["jobs_created"] == 1


async def test_drop_after_create_closes_the_connection_unanswered_after_creating_the_job(
    simulator: Simulator, session: aiohttp.ClientSession
) -> None:
    simulator.config.drop_after_create_ratio = 1.0
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await _batch(session, simulator, {"desktop_ids": ["d-1", "d-2"]})
    stats = simulator.stats()
    assert (stats["jobs_created"], stats["dropped_answers"]) == (1, 1)
    assert {s["desktop_id"] for s in await _snapshots(session, simulator)} == {"d-1", "d-2"}


async def test_drop_after_create_answers_calls_that_create_no_job(
    simulator: Simulator, session: aiohttp.ClientSession
) -> None:
    simulator.config.drop_after_create_ratio = 1.0
    assert (await _batch(session, simulator, {"desktop_ids": []})).status == 400
    assert (await _batch(session, simulator, {"desktop_ids": ["d-1"]}, token=None)).status == 401
    assert simulator.stats()["dropped_answers"] == 0


async def test_drop_after_create_drops_its_share_of_calls(simulator: Simulator, session: aiohttp.ClientSession) -> None:
    simulator.config.drop_after_create_ratio = 0.5
    answered = 0
    for i in range(40):
        with contextlib.suppress(aiohttp.ServerDisconnectedError):
            answered += (await _batch(session, simulator, {"desktop_ids": [f"d-{i}"]})).status == 200
    stats = simulator.stats()
    assert stats["jobs_created"] == 40
    assert stats["dropped_answers"] == 40 - answered
    assert 8 <= stats["dropped_answers"] <= 32


async def test_a_dropped_answer_logs_no_error_and_the_simulator_keeps_serving(
    simulator: Simulator, session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="aiohttp")
    simulator.config.drop_after_create_ratio = 1.0
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await _batch(session, simulator, {"desktop_ids": ["d-1"]})
    simulator.config.drop_after_create_ratio = 0.0
    assert (await _batch(session, simulator, {"desktop_ids": ["d-2"]})).status == 200
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info] == []


async def test_stats_count_desktops_snapshotted_again(simulator: Simulator, session: aiohttp.ClientSession) -> None:
    await _batch(session, simulator, {"desktop_ids": ["d-1", "d-2"]})
    await _batch(session, simulator, {"desktop_ids": ["d-2", "d-3"]})
    await _batch(session, simulator, {"desktop_ids": ["d-2"]})
    stats = simulator.stats()
    assert (stats["distinct_desktops"], stats["desktops_repeated"], stats["repeated_snapshots"]) == (3, 1, 2)


async def test_every_response_carries_a_request_id(simulator: Simulator, session: aiohttp.ClientSession) -> None:
    simulator.config.rate_per_minute = 1
    answers = [
        await _batch(session, simulator, {"desktop_ids": ["d-1"]}),  # 200
        await _batch(session, simulator, {"desktop_ids": ["d-2"]}),  # 429
        await _batch(session, simulator, {"desktop_ids": ["d-3"]}, token=None),  # 401
        await _batch(session, simulator, raw=b"", token="x"),  # 401
        await _job(session, simulator, str(uuid.uuid4())),  # 404
        await _call(session, "GET", f"{simulator.url}/nowhere"),  # 404 gateway
        await _call(session, "GET", f"{simulator.url}/_sim/stats"),  # 200
    ]
    simulator.config.rate_per_minute = None
    answers.append(await _batch(session, simulator, {"desktop_ids": []}, token="test-token"))  # 400
    request_ids = [a.headers.get("X-Request-Id", "") for a in answers]
    assert all(len(rid) == 32 and int(rid, 16) >= 0 for rid in request_ids), request_ids
    assert len(set(request_ids)) == len(request_ids)


async def test_unknown_path_gets_gateway_404(simulator: Simulator, session: aiohttp.ClientSession) -> None:
    answer = await _call(session, "GET", f"{simulator.url}/v2/{PROJECT}/nothing-here")
    assert answer.status == 404
    assert answer.json()["error_code"] == "APIG.0101"


# ------------------------------------------------------------------------------------------ jobs


async def test_job_runs_then_succeeds(simulator: Simulator, session: aiohttp.ClientSession) -> None:
    simulator.config.job_duration_s = 0.05
    job_id = (await _batch(session, simulator, {"desktop_ids": _desktops(3)})).json()["job_id"]
    running = (await _job(session, simulator, job_id)).json()
    await asyncio.sleep(0.1)
    done = (await _job(session, simulator, job_id)).json()
    assert running["status"] == "RUNNING"
    assert running["end_time"] is None
    assert done["status"] == "SUCCESS"
    assert done["id"] == job_id
    assert done["sub_jobs_total"] == 3
    assert [s["entities"]["desktop_id"] for s in done["sub_jobs"]] == _desktops(3)
    assert {s["status"] for s in done["sub_jobs"]} == {"SUCCESS"}


async def test_job_fails_for_failing_desktops(simulator: Simulator, session: aiohttp.ClientSession) -> None:
    simulator.config.job_duration_s = 0.05
    simulator.config.failing_desktops = frozenset({"d-000001"})
    job_id = (await _batch(session, simulator, {"desktop_ids": _desktops(3)})).json()["job_id"]
    await asyncio.sleep(0.1)
    job = (await _job(session, simulator, job_id)).json()
    assert job["status"] == "FAIL"
    by_desktop = {s["entities"]["desktop_id"]: s for s in job["sub_jobs"]}
    assert by_desktop["d-000001"]["status"] == "FAIL"
    assert by_desktop["d-000001"]["error_code"]
    assert by_desktop["d-000000"]["status"] == "SUCCESS"


async def test_unknown_job_is_404_wks_0202(simulator: Simulator, session: aiohttp.ClientSession) -> None:
    answer = await _job(session, simulator, str(uuid.uuid4()))
    assert answer.status == 404
    assert answer.json()["error_code"] == "WKS.0202"


async def test_job_of_another_project_is_404(simulator: Simulator, session: aiohttp.ClientSession) -> None:
    job_id = (await _batch(session, simulator, {"desktop_ids": ["d-1"]})).json()["job_id"]
    assert (await _job(session, simulator, job_id, project="another-project")).status == 404


async def test_job_query_needs_credentials(simulator: Simulator, session: aiohttp.ClientSession) -> None:
    job_id = (await _batch(session, simulator, {"desktop_ids": ["d-1"]})).json()["job_id"]
    answer = await _call(session, "GET", f"{simulator.url}/v2/{PROJECT}/workspace-jobs/{job_id}")
    assert answer.status == 401


async def test_sub_job_process_is_an_int_percent(simulator: Simulator, session: aiohttp.ClientSession) -> None:
    simulator.config.job_duration_s = 0.2
    job_id = (await _batch(session, simulator, {"desktop_ids": ["d-1"]})).json()["job_id"]
    running = (await _job(session, simulator, job_id)).json()["sub_jobs"][0]["process"]
    await asyncio.sleep(0.25)
    done = (await _job(session, simulator, job_id)).json()["sub_jobs"][0]["process"]
    assert type(running) is int
    assert 0 <= running < 100
    assert (type(done), done) == (int, 100)


async def test_sub_job_is_a_job_detail_info_of_its_parent_job(
    simulator: Simulator, session: aiohttp.ClientSession
) -> None:
    job_id = (await _batch(session, simulator, {"desktop_ids": ["d-1"]})).json()["job_id"]
    job = (await _job(session, simulator, job_id)).json()
    sub_job = job["sub_jobs"][0]
    assert sub_job["job_id"] == job_id
    assert sub_job["project_id"] == PROJECT
    assert sub_job["job_type"] == job["job_type"]
    assert (sub_job["begin_time"], sub_job["end_time"]) == (job["begin_time"], job["end_time"])
    assert sub_job["entities"] == {"desktop_id": "d-1", "desktop_name": "desktop-d-1"}
    assert sub_job["id"] != job_id


async def test_sub_jobs_page_answers_total_count_and_the_page_of_jobs(
    simulator: Simulator, session: aiohttp.ClientSession
) -> None:
    job_id = (await _batch(session, simulator, {"desktop_ids": _desktops(5)})).json()["job_id"]
    answer = await _get(session, simulator, f"workspace-sub-jobs?job_id={job_id}&limit=2&offset=3")
    assert answer.status == 200
    page = answer.json()
    assert set(page) == {"total_count", "jobs"}
    assert page["total_count"] == 5
    assert [j["entities"]["desktop_id"] for j in page["jobs"]] == _desktops(5)[3:]


# ------------------------------------------------------------------------------------------ snapshots


async def test_snapshot_listing_answers_desktop_snapshots_and_total_count(
    simulator: Simulator, session: aiohttp.ClientSession
) -> None:
    await _batch(session, simulator, {"desktop_ids": ["d-1"]})
    answer = await _list(session, simulator)
    assert answer.status == 200
    assert set(answer.json()) == {"desktop_snapshots", "total_count"}
    assert answer.json()["total_count"] == 1


async def test_a_snapshot_has_every_field_of_desktop_snapshot_detail_info_and_no_other(
    simulator: Simulator, session: aiohttp.ClientSession
) -> None:
    await _batch(session, simulator, {"desktop_ids": ["d-1"]})
    [snapshot] = await _snapshots(session, simulator)
    assert set(snapshot) == SNAPSHOT_FIELDS
    assert uuid.UUID(snapshot["snapshot_id"])
    assert (snapshot["desktop_id"], snapshot["desktop_name"]) == ("d-1", "desktop-d-1")
    assert isinstance(snapshot["desktop_sid"], str)
    assert snapshot["desktop_sid"]
    assert (snapshot["is_system_disk"], snapshot["create_type"]) == (True, "MANUALLY")
    assert (snapshot["desktop_pool_id"], snapshot["last_restore_time"], snapshot["restore_fail_reason"]) == (
        None,
        None,
        None,
    )


async def test_snapshot_create_time_is_utc_in_whole_seconds(
    simulator: Simulator, session: aiohttp.ClientSession
) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    await _batch(session, simulator, {"desktop_ids": ["d-1"]})
    after = datetime.now(UTC)
    [snapshot] = await _snapshots(session, simulator)
    assert WHOLE_SECONDS_UTC.fullmatch(snapshot["create_time"])
    created = datetime.strptime(snapshot["create_time"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert before <= created <= after


async def test_a_snapshot_is_creating_with_its_process_then_created_without_one(
    simulator: Simulator, session: aiohttp.ClientSession
) -> None:
    simulator.config.job_duration_s = 0.2
    await _batch(session, simulator, {"desktop_ids": ["d-1"]})
    [creating] = await _snapshots(session, simulator)
    await asyncio.sleep(0.25)
    [created] = await _snapshots(session, simulator)
    assert creating["status"] == "creating"
    assert type(creating["process"]) is int
    assert 0 <= creating["process"] <= 100
    assert (created["status"], created["process"]) == ("create_success", None)


async def test_the_snapshot_of_a_failing_desktop_ends_create_failed(
    simulator: Simulator, session: aiohttp.ClientSession
) -> None:
    simulator.config.failing_desktops = frozenset({"d-2"})
    await _batch(session, simulator, {"desktop_ids": ["d-1", "d-2"]})
    statuses = {s["desktop_id"]: s["status"] for s in await _snapshots(session, simulator)}
    assert statuses == {"d-1": "create_success", "d-2": "create_failed"}


async def test_disk_type_all_makes_a_system_and_a_data_snapshot_per_desktop(
    simulator: Simulator, session: aiohttp.ClientSession
) -> None:
    await _batch(session, simulator, {"desktop_ids": ["d-1", "d-2"], "disk_type": "ALL"})
    kinds = sorted((s["desktop_id"], s["is_system_disk"]) for s in await _snapshots(session, simulator))
    assert kinds == [("d-1", False), ("d-1", True), ("d-2", False), ("d-2", True)]


@pytest.mark.parametrize("disk_type", ["SYSTEM_DISK", None])
async def test_system_disk_or_no_disk_type_makes_one_system_disk_snapshot(
    simulator: Simulator, session: aiohttp.ClientSession, disk_type: str | None
) -> None:
    await _batch(session, simulator, {"desktop_ids": ["d-1"], "disk_type": disk_type})
    assert [s["is_system_disk"] for s in await _snapshots(session, simulator)] == [True]


async def test_data_disks_makes_one_data_disk_snapshot(simulator: Simulator, session: aiohttp.ClientSession) -> None:
    await _batch(session, simulator, {"desktop_ids": ["d-1"], "disk_type": "DATA_DISKS"})
    assert [s["is_system_disk"] for s in await _snapshots(session, simulator)] == [False]


async def test_snapshot_name_is_desktop_name_given_name_and_timestamp(
    simulator: Simulator, session: aiohttp.ClientSession
) -> None:
    payload = {
        "desktop_ids": ["d-1"],
        "disk_type": "ALL",
        "system_disk_snapshot": {"name": "sys"},
        "data_disk_snapshot": {"name": "dat"},
    }
    await _batch(session, simulator, payload)
    by_disk = {s["is_system_disk"]: s for s in await _snapshots(session, simulator)}
    stamp = _stamp(by_disk[True]["create_time"])
    assert by_disk[True]["snapshot_name"] == f"desktop-d-1-sys-{stamp}"
    assert by_disk[False]["snapshot_name"] == f"desktop-d-1-dat-{stamp}"


async def test_snapshot_name_without_a_given_name_is_desktop_name_and_timestamp(
    simulator: Simulator, session: aiohttp.ClientSession
) -> None:
    await _batch(session, simulator, {"desktop_ids": ["d-1"]})
    [snapshot] = await _snapshots(session, simulator)
    assert snapshot["snapshot_name"] == f"desktop-d-1-{_stamp(snapshot['create_time'])}"


async def test_snapshot_description_is_the_one_given_for_its_disk_or_empty(
    simulator: Simulator, session: aiohttp.ClientSession
) -> None:
    payload = {"desktop_ids": ["d-1"], "disk_type": "ALL", "data_disk_snapshot": {"name": "n", "description": "data"}}
    await _batch(session, simulator, payload)
    by_disk = {s["is_system_disk"]: s["description"] for s in await _snapshots(session, simulator)}
    assert by_disk == {True: "", False: "data"}


async def test_listing_filters_by_desktop_ids_sent_as_repeated_keys(
    simulator: Simulator, session: aiohttp.ClientSession
) -> None:
    await _batch(session, simulator, {"desktop_ids": _desktops(4)})
    found = await _snapshots(session, simulator, ("desktop_ids", "d-000001"), ("desktop_ids", "d-000003"))
    assert sorted(s["desktop_id"] for s in found) == ["d-000001", "d-000003"]


async def test_listing_filters_by_desktop_id(simulator: Simulator, session: aiohttp.ClientSession) -> None:
    await _batch(session, simulator, {"desktop_ids": _desktops(3)})
    found = await _snapshots(session, simulator, ("desktop_id", "d-000002"))
    assert [s["desktop_id"] for s in found] == ["d-000002"]


async def test_listing_filters_by_desktop_names_exactly(simulator: Simulator, session: aiohttp.ClientSession) -> None:
    await _batch(session, simulator, {"desktop_ids": ["a-1", "b-1", "c-1"]})
    one = await _snapshots(session, simulator, ("desktop_name", "desktop-a-1"))
    two = await _snapshots(session, simulator, ("desktop_names", "desktop-a-1"), ("desktop_names", "desktop-c-1"))
    part = await _snapshots(session, simulator, ("desktop_name", "desktop-a"))
    assert [s["desktop_id"] for s in one] == ["a-1"]
    assert sorted(s["desktop_id"] for s in two) == ["a-1", "c-1"]
    assert part == []


async def test_listing_snapshot_name_matches_by_substring(simulator: Simulator, session: aiohttp.ClientSession) -> None:
    await _batch(session, simulator, {"desktop_ids": ["d-1"], "system_disk_snapshot": {"name": "nightly"}})
    await _batch(session, simulator, {"desktop_ids": ["d-1"], "system_disk_snapshot": {"name": "weekly"}})
    found = await _snapshots(session, simulator, ("snapshot_name", "nightly"))
    assert [s["snapshot_name"].split("-")[3] for s in found] == ["nightly"]


async def test_listing_snapshot_names_match_exactly(simulator: Simulator, session: aiohttp.ClientSession) -> None:
    await _batch(session, simulator, {"desktop_ids": _desktops(3), "system_disk_snapshot": {"name": "n"}})
    names = sorted(s["snapshot_name"] for s in await _snapshots(session, simulator))
    found = await _snapshots(session, simulator, ("snapshot_names", names[0]), ("snapshot_names", names[2]))
    partial = await _snapshots(session, simulator, ("snapshot_names", "n"))
    assert sorted(s["snapshot_name"] for s in found) == [names[0], names[2]]
    assert partial == []


@pytest.mark.parametrize(
    ("disk_type", "kinds"), [("SYSTEM_DISK", [True]), ("DATA_DISKS", [False]), ("ALL", [True, False])]
)
async def test_listing_disk_type_selects_system_or_data_disk_snapshots(
    simulator: Simulator, session: aiohttp.ClientSession, disk_type: str, kinds: list[bool]
) -> None:
    await _batch(session, simulator, {"desktop_ids": ["d-1"], "disk_type": "ALL"})
    found = await _snapshots(session, simulator, ("disk_type", disk_type))
    assert [s["is_system_disk"] for s in found] == kinds


async def test_listing_filters_by_status(simulator: Simulator, session: aiohttp.ClientSession) -> None:
    simulator.config.failing_desktops = frozenset({"d-2"})
    await _batch(session, simulator, {"desktop_ids": ["d-1", "d-2", "d-3"]})
    found = await _snapshots(session, simulator, ("status", "create_failed"))
    assert [s["desktop_id"] for s in found] == ["d-2"]


async def test_listing_filters_by_create_type(simulator: Simulator, session: aiohttp.ClientSession) -> None:
    await _batch(session, simulator, {"desktop_ids": ["d-1", "d-2"]})
    assert len(await _snapshots(session, simulator, ("create_type", "MANUALLY"))) == 2
    assert await _snapshots(session, simulator, ("create_type", "AUTO")) == []


async def test_listing_pages_by_offset_and_limit_and_total_count_counts_every_match(
    simulator: Simulator, session: aiohttp.ClientSession
) -> None:
    await _batch(session, simulator, {"desktop_ids": _desktops(5)})
    page = (await _list(session, simulator, ("offset", 1), ("limit", 3))).json()
    assert page["total_count"] == 5
    assert [s["desktop_id"] for s in page["desktop_snapshots"]] == _desktops(5)[1:4]


async def test_listing_limit_defaults_to_1000(simulator: Simulator, session: aiohttp.ClientSession) -> None:
    for prefix in "abcdef":
        await _batch(session, simulator, {"desktop_ids": _desktops(100, prefix), "disk_type": "ALL"})
    page = (await _list(session, simulator)).json()
    assert (len(page["desktop_snapshots"]), page["total_count"]) == (1000, 1200)


async def test_listing_sorts_by_create_time_desc(simulator: Simulator, session: aiohttp.ClientSession) -> None:
    await _batch(session, simulator, {"desktop_ids": ["d-old"]})
    await _next_second()
    await _batch(session, simulator, {"desktop_ids": ["d-new"]})
    found = await _snapshots(session, simulator, ("sort_field", "create_time"), ("sort_type", "DESC"))
    assert [s["desktop_id"] for s in found] == ["d-new", "d-old"]


@pytest.mark.parametrize("sort_type", ["ASC", "DESC"])
async def test_listing_by_create_time_keeps_creation_order_within_a_second(
    simulator: Simulator, session: aiohttp.ClientSession, sort_type: str
) -> None:
    await _next_second()
    for desktop_id in ("d-3", "d-1", "d-2"):
        await _batch(session, simulator, {"desktop_ids": [desktop_id]})
    found = await _snapshots(session, simulator, ("sort_field", "create_time"), ("sort_type", sort_type))
    assert len({s["create_time"] for s in found}) == 1  # a real tie
    assert [s["desktop_id"] for s in found] == ["d-3", "d-1", "d-2"]


@pytest.mark.parametrize(("sort_type", "order"), [("ASC", ["a", "b", "c"]), ("DESC", ["c", "b", "a"])])
async def test_listing_sorts_by_snapshot_name(
    simulator: Simulator, session: aiohttp.ClientSession, sort_type: str, order: list[str]
) -> None:
    await _batch(session, simulator, {"desktop_ids": ["b", "c", "a"]})
    found = await _snapshots(session, simulator, ("sort_field", "snapshot_name"), ("sort_type", sort_type))
    assert [s["desktop_id"] for s in found] == order


BAD_LISTING_QUERIES: dict[str, tuple[str, str]] = {
    "limit 0": ("limit", "0"),
    "limit 1001": ("limit", "1001"),
    "offset -1": ("offset", "-1"),
    "limit not an integer": ("limit", "ten"),
    "offset not an integer": ("offset", "1.5"),
    "unknown sort_field": ("sort_field", "desktop_id"),
    "unknown sort_type": ("sort_type", "UP"),
    "unknown disk_type": ("disk_type", "BOOT_DISK"),
}


@pytest.mark.parametrize("case", list(BAD_LISTING_QUERIES))
async def test_listing_with_a_bad_query_is_refused_400_wks_0001(
    simulator: Simulator, session: aiohttp.ClientSession, case: str
) -> None:
    answer = await _list(session, simulator, BAD_LISTING_QUERIES[case])
    assert answer.status == 400
    assert set(answer.json()) == SERVICE_ERROR_KEYS
    assert answer.json()["error_code"] == "WKS.0001"


async def test_listing_of_another_project_is_empty(simulator: Simulator, session: aiohttp.ClientSession) -> None:
    await _batch(session, simulator, {"desktop_ids": ["d-1"]}, project="another-project")
    assert (await _list(session, simulator)).json() == {"desktop_snapshots": [], "total_count": 0}


async def test_listing_needs_credentials(simulator: Simulator, session: aiohttp.ClientSession) -> None:
    answer = await _call(session, "GET", f"{simulator.url}/v2/{PROJECT}/snapshots")
    assert answer.status == 401


async def test_two_snapshots_of_one_all_job_are_not_a_repeat(
    simulator: Simulator, session: aiohttp.ClientSession
) -> None:
    await _batch(session, simulator, {"desktop_ids": ["d-1"], "disk_type": "ALL"})
    assert simulator.snapshots.repeated() == {}


async def test_a_desktop_snapshotted_by_two_jobs_is_repeated(
    simulator: Simulator, session: aiohttp.ClientSession
) -> None:
    await _batch(session, simulator, {"desktop_ids": ["d-1", "d-2"], "disk_type": "ALL"})
    await _batch(session, simulator, {"desktop_ids": ["d-2"], "disk_type": "ALL"})
    assert simulator.snapshots.repeated() == {f"{PROJECT}/d-2": 2}


async def test_job_of_names_the_job_that_made_a_snapshot(simulator: Simulator, session: aiohttp.ClientSession) -> None:
    first = (await _batch(session, simulator, {"desktop_ids": ["d-1"]})).json()["job_id"]
    second = (await _batch(session, simulator, {"desktop_ids": ["d-2"]})).json()["job_id"]
    jobs = {s["desktop_id"]: simulator.snapshots.job_of(s["snapshot_id"]) for s in await _snapshots(session, simulator)}
    assert jobs == {"d-1": first, "d-2": second}
    assert simulator.snapshots.job_of(str(uuid.uuid4())) is None


def test_snapshot_index_forgets_the_oldest_snapshots_past_its_bound() -> None:
    jobs, index = JobStore(), SnapshotIndex(max_snapshots=3)
    for desktop_id in ("d-1", "d-2"):
        job = jobs.create(
            "p", (desktop_id,), failing=frozenset(), now=0.0, wall_now=datetime.now(UTC), duration_s=0.0, max_jobs=9
        )
        index.record(job, json.dumps({"desktop_ids": [desktop_id], "disk_type": "ALL"}).encode())
    listing = index.listing("p", SnapshotQuery(), now=1.0)
    assert len(index) == 3
    assert [(s["desktop_id"], s["is_system_disk"]) for s in listing["desktop_snapshots"]] == [
        ("d-1", False),
        ("d-2", True),
        ("d-2", False),
    ]


# ------------------------------------------------------------------------------------------ stats


async def test_stats_count_batch_sizes_and_distinct_desktops(
    simulator: Simulator, session: aiohttp.ClientSession
) -> None:
    await _batch(session, simulator, {"desktop_ids": _desktops(100)})
    await _batch(session, simulator, {"desktop_ids": _desktops(100)})  # the same desktops again
    await _batch(session, simulator, {"desktop_ids": ["e-1"]})
    await _batch(session, simulator, {"desktop_ids": []})  # refused: not in the histogram
    stats = simulator.stats()
    assert stats["batch_sizes"] == {"1": 1, "100": 2}
    assert stats["distinct_desktops"] == 101
    assert stats["calls_by_status"] == {"200": 3, "400": 1}
    assert stats["calls_total"] == 4
    assert stats["jobs_created"] == 3


async def test_stats_max_calls_in_one_second_counts_refused_calls(
    simulator: Simulator, session: aiohttp.ClientSession
) -> None:
    await asyncio.gather(*(_batch(session, simulator, {"desktop_ids": ["d-1"]}, token=None) for _ in range(4)))
    await asyncio.gather(*(_batch(session, simulator, {"desktop_ids": ["d-1"]}) for _ in range(3)))
    assert simulator.stats()["max_calls_in_one_second"] == 7


async def test_stats_count_snapshot_queries(simulator: Simulator, session: aiohttp.ClientSession) -> None:
    await _list(session, simulator)
    await _list(session, simulator, ("limit", "0"))  # refused, still a query
    assert simulator.stats()["snapshot_queries"] == 2


async def test_stats_max_reads_in_one_second_counts_job_sub_job_and_snapshot_reads(
    simulator: Simulator, session: aiohttp.ClientSession
) -> None:
    job_id = (await _batch(session, simulator, {"desktop_ids": ["d-1"]})).json()["job_id"]
    reads = [
        *(_job(session, simulator, job_id) for _ in range(3)),
        *(_get(session, simulator, f"workspace-sub-jobs?job_id={job_id}") for _ in range(2)),
        *(_list(session, simulator) for _ in range(4)),
    ]
    await asyncio.gather(*reads)
    stats = simulator.stats()
    assert stats["max_reads_in_one_second"] == 9
    assert stats["max_calls_in_one_second"] == 1


async def test_stats_endpoint_serves_the_same_document(simulator: Simulator, session: aiohttp.ClientSession) -> None:
    await _batch(session, simulator, {"desktop_ids": ["d-1"]})
    answer = await _call(session, "GET", f"{simulator.url}/_sim/stats")
    assert answer.status == 200
    assert answer.json() == simulator.stats()


async def test_reset_endpoint_zeroes_stats(simulator: Simulator, session: aiohttp.ClientSession) -> None:
    await _batch(session, simulator, {"desktop_ids": ["d-1"]})
    answer = await _call(session, "POST", f"{simulator.url}/_sim/reset")
    assert answer.status == 200
    assert simulator.stats()["calls_total"] == 0
    assert simulator.stats()["distinct_desktops"] == 0


async def test_reset_stats_keeps_jobs(simulator: Simulator, session: aiohttp.ClientSession) -> None:
    job_id = (await _batch(session, simulator, {"desktop_ids": ["d-1"]})).json()["job_id"]
    simulator.reset_stats()
    assert simulator.stats()["jobs_created"] == 0
    assert (await _job(session, simulator, job_id)).status == 200
    assert simulator.job_desktops(job_id) == ("d-1",)


# ------------------------------------------------------------------------------------------ lifecycle and CLI


async def test_start_on_port_zero_picks_a_free_port() -> None:
    sims = [Simulator(SimConfig()) for _ in range(2)]
    for sim in sims:
        await sim.start(host="127.0.0.1", port=0)
    try:
        assert sims[0].url != sims[1].url
        assert sims[0].url.startswith("http://127.0.0.1:")
    finally:
        for sim in sims:
            await sim.stop()


def test_cli_options_build_the_config() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    options = (
        "--port 0 --token t --access-key ak --secret-key sk --rate-per-minute 100 --rate-per-second 5 "
        "--error-5xx-ratio 0.1 --latency-s 0.5 --unknown-desktop u1 --unknown-desktop u2 --busy-desktop b1 "
        "--job-duration-s 2 --busy-for-s 30 --unnamed-culprits --error-429-ratio 0.2 --latency-jitter-s 0.3 "
        "--stall-ratio 0.05 --stall-s 7 --drop-after-create-ratio 0.25"
    )
    args = parser.parse_args(options.split(" "))
    config = config_from_args(args)
    assert config.tokens == frozenset({"t"})
    assert config.credentials == {"ak": "sk"}
    assert not config.allow_anonymous
    assert (config.rate_per_minute, config.rate_per_second) == (100, 5)
    assert (config.error_5xx_ratio, config.latency_s, config.job_duration_s) == (0.1, 0.5, 2.0)
    assert config.unknown_desktops == frozenset({"u1", "u2"})
    assert config.busy_desktops == frozenset({"b1"})
    assert (config.busy_for_s, config.name_culprits) == (30.0, False)
    assert (config.error_429_ratio, config.latency_jitter_s, config.stall_ratio, config.stall_s) == (0.2, 0.3, 0.05, 7)
    assert config.drop_after_create_ratio == 0.25


async def test_cli_run_serves_until_sigterm(session: aiohttp.ClientSession) -> None:
    code = (
        "import argparse, sys\n"
        "from snapworker.simulator.app import add_arguments, run\n"
        "p = argparse.ArgumentParser(); add_arguments(p)\n"
        "sys.exit(run(p.parse_args(sys.argv[1:])))\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, "--port", "0", "--token", "t", stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        url = line.split()[3]
        answer = await _call(session, "GET", f"{url}/_sim/stats")
        assert answer.status == 200
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_of_desktop_names_each_snapshot_with_the_job_that_made_it(
    simulator: Simulator, session: aiohttp.ClientSession
) -> None:
    first = (await _batch(session, simulator, {"desktop_ids": ["d-1"]})).json()["job_id"]
    second = (await _batch(session, simulator, {"desktop_ids": ["d-1"], "disk_type": "ALL"})).json()["job_id"]
    made = simulator.snapshots.of_desktop(PROJECT, "d-1")
    assert [m["job_id"] for m in made] == [first, second, second]
    assert simulator.snapshots.of_desktop(PROJECT, "d-unknown") == []


async def test_a_desktop_snapshotted_again_is_logged_with_its_earlier_job(
    simulator: Simulator, session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    first = (await _batch(session, simulator, {"desktop_ids": ["d-1", "d-2"]})).json()["job_id"]
    with caplog.at_level("WARNING", logger="snapworker.simulator"):
        await _batch(session, simulator, {"desktop_ids": ["d-2", "d-3"]})
    [line] = [r.getMessage() for r in caplog.records if r.name == "snapworker.simulator"]
    assert "['d-2']" in line
    assert first in line

"""The Workspace API simulator, driven over real loopback HTTP."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
import yarl
from multidict import CIMultiDict

from snapworker.cloud.signing import sign_request
from snapworker.simulator.app import SimConfig, Simulator, add_arguments, config_from_args
from snapworker.simulator.state import FlowLimiter

TOKEN = "test-token"  # the token tests/conftest.py's simulator fixture accepts
PROJECT = "0123456789abcdef0123456789abcdef"
AK = "AKSIM0000000000000000"
SK = "SKSIMsecret0000000000000000000000000000"
SERVICE_ERROR_KEYS = {"error_code", "error_msg", "error_detail", "encoded_authorization_message"}


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
        "--stall-ratio 0.05 --stall-s 7"
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

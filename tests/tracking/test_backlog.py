"""The tracking backlog: bounded, oldest first, and never loses a unit it was publishing when that failed."""

from __future__ import annotations

import asyncio
import logging

import pytest

from snapworker.errors import BrokerError
from snapworker.tracking.backlog import MAX_UNITS, Backlog
from snapworker.tracking.state import TrackingUnit, start_unit
from tests.tracking.test_state import T0, result


def unit(request_id: str) -> TrackingUnit:
    made = start_unit([(result(request_id, (f"job-{request_id}", ("d",))), None)], T0)
    assert made is not None
    return made


def ids(units: list[TrackingUnit]) -> list[str]:
    return [u.requests[0].request_id for u in units]


class Recorder:
    def __init__(self, fail: frozenset[str] = frozenset()) -> None:
        self.sent: list[TrackingUnit] = []
        self.fail = fail

    async def send(self, sent: TrackingUnit) -> None:
        if sent.requests[0].request_id in self.fail:
            raise BrokerError("refused")
        self.sent.append(sent)


def test_the_default_bound_is_ten_thousand_units() -> None:
    assert MAX_UNITS == 10_000


async def test_a_full_backlog_drops_the_oldest_unit_with_an_error(caplog: pytest.LogCaptureFixture) -> None:
    backlog = Backlog(max_units=2)
    with caplog.at_level(logging.ERROR, logger="snapworker.tracking"):
        for request_id in ("r1", "r2", "r3"):
            backlog.keep(unit(request_id))
    assert (len(backlog), backlog.dropped) == (2, 1)
    assert "job-r1" in caplog.text
    recorder = Recorder()
    await backlog.publish(recorder.send)
    assert ids(recorder.sent) == ["r2", "r3"]


async def test_units_that_fail_to_publish_go_back_in_front_in_order_and_the_failure_is_raised() -> None:
    backlog = Backlog()
    for request_id in ("r1", "r2", "r3"):
        backlog.keep(unit(request_id))
    recorder = Recorder(fail=frozenset({"r1", "r3"}))
    with pytest.raises(BrokerError, match="refused"):
        await backlog.publish(recorder.send)
    assert ids(recorder.sent) == ["r2"]
    recorder.fail = frozenset()
    await backlog.publish(recorder.send)
    assert ids(recorder.sent) == ["r2", "r1", "r3"]


async def test_a_publish_cancelled_mid_round_puts_the_round_back() -> None:
    backlog = Backlog()
    for request_id in ("r1", "r2"):
        backlog.keep(unit(request_id))
    hold = asyncio.Event()

    async def never(_unit: TrackingUnit) -> None:
        await hold.wait()

    publishing = asyncio.create_task(backlog.publish(never))
    await asyncio.sleep(0)
    publishing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await publishing
    recorder = Recorder()
    await backlog.publish(recorder.send)
    assert ids(recorder.sent) == ["r1", "r2"]


async def test_wait_returns_once_a_unit_is_kept() -> None:
    backlog = Backlog()
    waiting = asyncio.create_task(backlog.wait())
    await asyncio.sleep(0)
    assert not waiting.done()
    backlog.keep(unit("r1"))
    await asyncio.wait_for(waiting, timeout=1.0)

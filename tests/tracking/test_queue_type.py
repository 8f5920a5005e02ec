"""SNAPWORKER_TRACKING_QUEUE_TYPE: quorum tracking queues by default, dead-lettering at least once, with wait queues
named apart from the classic ones (so that both kinds can run side by side); classic keeps the queues of before.
(On a live broker: tests/integration/test_tracking_durable.py.)"""

from __future__ import annotations

import pytest

from snapworker.errors import ConfigError
from snapworker.settings import Settings, load_settings
from snapworker.tracking.topology import classic_wait_queue, tracking_queues, wait_arguments, wait_queue

QUORUM = Settings(api_url="http://127.0.0.1:9", auth_token="t")
CLASSIC = QUORUM.model_copy(update={"tracking_queue_type": "classic"})


def test_tracking_queues_are_quorum_queues_by_default() -> None:
    assert QUORUM.tracking_queue_type == "quorum"
    assert wait_arguments(QUORUM, 10.0)["x-queue-type"] == "quorum"


def test_the_environment_can_ask_for_classic_tracking_queues(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SNAPWORKER_TRACKING_QUEUE_TYPE", "classic")
    assert load_settings(auth_token="t").tracking_queue_type == "classic"


def test_a_tracking_queue_type_other_than_quorum_or_classic_is_refused() -> None:
    with pytest.raises(ConfigError, match="SNAPWORKER_TRACKING_QUEUE_TYPE"):
        load_settings(auth_token="t", tracking_queue_type="stream")


def test_quorum_wait_queues_dead_letter_at_least_once_with_the_overflow_it_requires() -> None:
    arguments = wait_arguments(QUORUM, 10.0)
    assert (arguments["x-dead-letter-strategy"], arguments["x-overflow"]) == ("at-least-once", "reject-publish")
    assert (arguments["x-message-ttl"], arguments["x-dead-letter-routing-key"]) == (10_000, QUORUM.tracking_queue)


def test_quorum_wait_queues_are_named_apart_from_the_classic_ones() -> None:
    assert wait_queue(QUORUM, 10.0) == "snapworker.tracking.quorum.wait.10000ms"
    assert wait_queue(QUORUM, 10.0) != classic_wait_queue(QUORUM, 10.0)


def test_classic_tracking_queues_are_named_and_declared_as_before() -> None:
    assert wait_queue(CLASSIC, 10.0) == "snapworker.tracking.wait.10000ms"
    assert wait_arguments(CLASSIC, 10.0) == {
        "x-message-ttl": 10_000,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": "snapworker.tracking",
    }


def test_the_tracking_queue_keeps_its_name_whatever_the_type() -> None:
    assert tracking_queues(QUORUM)[-1] == tracking_queues(CLASSIC)[-1] == "snapworker.tracking"

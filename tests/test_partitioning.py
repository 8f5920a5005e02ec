"""Key affinity without I/O: a request's partition, and the one claim step a worker takes."""

from __future__ import annotations

import json

from snapworker.amqp.partitioning import (
    ClaimStep,
    Route,
    next_claim_step,
    partition_of,
    partition_queue,
    request_queues,
    route_of,
    urgent_queue,
)

ORDER = [2, 0, 3, 1]


def body(project: str, desktop: str = "d1") -> bytes:
    return json.dumps({"project_id": project, "desktop_ids": [desktop]}).encode()


def test_requests_of_one_project_share_a_partition() -> None:
    assert {partition_of(body("p1", f"d{i}"), 16) for i in range(50)} == {partition_of(body("p1"), 16)}


def test_projects_spread_over_the_partitions() -> None:
    assert len({partition_of(body(f"p{i}"), 16) for i in range(200)}) == 16


def test_the_partition_does_not_depend_on_the_process() -> None:
    # CRC-32 of the project id: the same in every worker, unlike Python's salted hash()
    assert partition_of(body("p1"), 16) == 3  # zlib.crc32(b"p1") % 16


def test_a_body_without_a_readable_project_still_gets_a_partition() -> None:
    for raw in (b"\xff\xfe", b"[]", b'{"project_id": 5}', b"[" * 100_000, b""):
        assert 0 <= partition_of(raw, 4) < 4


def test_partition_queues_are_named_after_the_request_queue() -> None:
    assert partition_queue("snapworker.requests", 7) == "snapworker.requests.p007"


def test_urgent_queues_are_twins_named_after_the_queue_they_go_with() -> None:
    assert urgent_queue("snapworker.requests") == "snapworker.requests.urgent"
    assert urgent_queue(partition_queue("snapworker.requests", 7)) == "snapworker.requests.p007.urgent"


def test_the_request_queues_are_the_request_queue_and_each_partition_each_with_its_urgent_twin() -> None:
    assert request_queues("q", 2) == ["q", "q.urgent", "q.p000", "q.p000.urgent", "q.p001", "q.p001.urgent"]
    assert request_queues("q", 0) == ["q", "q.urgent"]


def prioritised(project: str, priority: str) -> bytes:
    return json.dumps({"project_id": project, "desktop_ids": ["d1"], "priority": priority}).encode()


def test_a_request_urgent_by_its_body_is_routed_urgent_to_its_projects_partition() -> None:
    assert route_of(prioritised("p1", "urgent"), 16) == Route(partition_of(body("p1"), 16), urgent=True)


def test_a_request_urgent_by_its_amqp_priority_alone_is_routed_urgent() -> None:
    assert route_of(body("p1"), 16, 9).urgent
    assert route_of(body("p1"), 16, 5).urgent


def test_amqp_priority_below_5_or_none_is_normal() -> None:
    assert not route_of(body("p1"), 16, 4).urgent
    assert not route_of(body("p1"), 16, None).urgent


def test_the_body_saying_normal_wins_over_the_amqp_priority() -> None:
    assert not route_of(prioritised("p1", "normal"), 16, 9).urgent


def test_a_priority_field_of_another_value_leaves_it_to_the_amqp_priority() -> None:
    # the owner answers such a request invalid; routing it by the property alone is as good as anything
    assert route_of(prioritised("p1", "high"), 16, 9).urgent
    assert not route_of(prioritised("p1", "high"), 16).urgent


def test_an_unreadable_body_is_routed_by_its_amqp_priority() -> None:
    for raw in (b"\xff\xfe", b"[]", b"[" * 100_000, b""):
        route = route_of(raw, 4, 9)
        assert route.urgent
        assert 0 <= route.partition < 4


def test_a_lone_worker_claims_a_free_partition_in_its_order() -> None:
    assert next_claim_step(frozenset(), {}, 1, ORDER, 0.9) == ClaimStep("claim", 2)


def test_a_worker_claims_one_partition_per_step() -> None:
    assert next_claim_step(frozenset({2}), {2: 1}, 1, ORDER, 0.9) == ClaimStep("claim", 0)


def test_a_worker_never_claims_a_partition_another_consumes() -> None:
    assert next_claim_step(frozenset(), {2: 1, 0: 1}, 2, ORDER, 0.9) == ClaimStep("claim", 3)


def test_a_worker_at_its_share_changes_nothing() -> None:
    assert next_claim_step(frozenset({2, 0}), {2: 1, 0: 1}, 2, ORDER, 0.9) is None


def test_a_worker_over_its_share_releases_its_last_preference() -> None:
    owned = frozenset({0, 1, 2, 3})
    assert next_claim_step(owned, dict.fromkeys(owned, 1), 2, ORDER, 0.9) == ClaimStep("release", 1)


def test_a_contested_partition_is_given_up_on_heads() -> None:
    assert next_claim_step(frozenset({2}), {2: 2}, 2, ORDER, 0.2) == ClaimStep("release", 2)


def test_a_contested_partition_is_kept_on_tails() -> None:
    assert next_claim_step(frozenset({2}), {2: 2}, 2, ORDER, 0.7) == ClaimStep("claim", 0)


def test_with_more_workers_than_partitions_each_takes_at_most_one() -> None:
    assert next_claim_step(frozenset({2}), {2: 1}, 8, ORDER, 0.9) is None

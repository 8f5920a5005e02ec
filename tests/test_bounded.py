"""Bounded queues, sans broker: their declare arguments and the policy command that bounds an existing one.
(Declaring them on a live broker: tests/integration/test_tracking_queues.py.)"""

from __future__ import annotations

import shlex

import pytest

from snapworker.amqp.bounded import bound_arguments, policy_command


def test_a_bound_drops_the_oldest_message_past_it() -> None:
    assert bound_arguments(3) == {"x-max-length": 3, "x-overflow": "drop-head"}


def test_a_bound_of_zero_declares_no_arguments() -> None:
    assert bound_arguments(0) == {}


def test_a_negative_bound_is_a_bug() -> None:
    with pytest.raises(ValueError, match="max_length"):
        bound_arguments(-1)


def test_the_policy_command_matches_the_queue_exactly_and_reads_as_typed() -> None:
    assert policy_command("snapworker.completions", 100_000) == (
        "rabbitmqctl set_policy snapworker-completions '^snapworker\\.completions$' "
        '\'{"max-length":100000,"overflow":"drop-head"}\' --apply-to queues'
    )


def test_no_policy_command_bounds_a_queue_to_nothing() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        policy_command("q", 0)


def test_the_policy_command_names_a_virtual_host_other_than_the_default() -> None:
    words = shlex.split(policy_command("q", 5, vhost="team a"))
    assert words[:4] == ["rabbitmqctl", "set_policy", "-p", "team a"]


def test_the_policy_command_survives_a_queue_name_a_shell_would_break_on() -> None:
    words = shlex.split(policy_command("it's $HOME", 5))
    assert words[3] == "^it's\\ \\$HOME$"

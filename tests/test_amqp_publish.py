"""The batched publisher leans on aiormq's channel internals: fail loudly if an upgrade moves them."""

from __future__ import annotations

import inspect

import aiormq

from snapworker.amqp_publish import REQUIRED_CHANNEL_ATTRIBUTES


def test_the_installed_aiormq_channel_has_what_publish_confirmed_uses() -> None:
    # attributes set in __init__ are found in its source; methods and properties on the class
    init_source = inspect.getsource(aiormq.Channel.__init__)
    missing = [
        name
        for name in REQUIRED_CHANNEL_ATTRIBUTES
        if not hasattr(aiormq.Channel, name) and f"self.{name}" not in init_source
    ]
    assert missing == []


def test_basic_publish_still_registers_confirms_and_returns_the_way_we_copy() -> None:
    source = inspect.getsource(aiormq.Channel.basic_publish)
    for needle in (
        "self.confirmations[delivery_tag]",
        "self.message_id_delivery_tag[message_id]",
        "async with self.lock",
    ):
        assert needle in source, needle

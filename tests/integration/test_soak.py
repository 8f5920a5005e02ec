"""The chaos soak (bench/soak.py), short: about 45 s of publishing under kill -9, SIGTERM, broker restarts and API
faults, then every invariant of the soak must hold. The 10-minute run is documented in bench/README.md.

The broker restarts (``rabbitmqctl stop_app``/``start_app``) are left out when ``SNAPWORKER_TEST_NO_BROKER_RESTART``
is set, the broker is not on loopback or ``rabbitmqctl`` does not work here; the kills, SIGTERMs and API faults
always run.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from bench.soak import SoakConfig, broker_control_usable, format_report, run_soak

pytestmark = [pytest.mark.broker, pytest.mark.timeout(420)]


async def test_a_short_chaos_soak_loses_nothing_leaves_nothing_and_keeps_workers_alive_and_small(
    amqp_url: str, tmp_path: Path
) -> None:
    restarts = not os.environ.get("SNAPWORKER_TEST_NO_BROKER_RESTART")
    why_not = None
    if restarts:
        if urlsplit(amqp_url).hostname not in ("127.0.0.1", "localhost", "::1"):
            why_not = "the broker is not on loopback"
        else:
            why_not = await broker_control_usable(amqp_url)
    config = SoakConfig(
        minutes=0.75,
        workers=2,
        rate=10.0,
        projects=5,
        broker_restarts=restarts and why_not is None,
        chaos_every_s=(5.0, 10.0),
        broker_down_s=(2.0, 4.0),
        stall_s=4.0,
        drain_timeout_s=150.0,
        seed=random.randrange(1 << 30),
        amqp_url=amqp_url,
        log_dir=tmp_path,
    )
    result = await run_soak(config)
    report = format_report(result)
    print(f"\nseed {config.seed}" + (f"; broker restarts off: {why_not}" if why_not else "") + "\n" + report)
    assert result.ok, report
    figures = result.figures
    assert figures["requests_published"] >= 300
    assert figures["kill9"] + figures["sigterm"] + figures["broker_restarts"] >= 2, "too little chaos to mean much"
    assert figures["api_calls_by_status"].get("200", 0) > 0

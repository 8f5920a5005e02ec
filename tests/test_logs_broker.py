"""What aiormq logs when the broker goes away becomes one WARNING of ours, without traceback, once a minute.

The records are logged as aiormq 7 logs them (aiormq/connection.py: ``__handle_close``, ``_on_reader_done``,
``connect`` and the reader's stuck-connection check): same logger, level, template, arguments and exception.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import pytest
from aiormq.exceptions import AMQPConnectionError, ConnectionClosed

from snapworker.ops.logs import BrokerLossFilter, configure_logging
from snapworker.settings import Settings

AIORMQ = logging.getLogger("aiormq.connection")
CONNECTION = "amqp://guest:******@127.0.0.1:5672/?heartbeat=15"
FORCED = "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'"


def _remote_close() -> None:
    AIORMQ.error(
        'Unexpected connection close from remote "%s", Connection.Close(reply_code=%r, reply_text=%r)',
        CONNECTION,
        320,
        FORCED,
    )


def _reader_exited(exc: BaseException) -> None:
    AIORMQ.warning("Cancelling cause reader exited abnormally", exc_info=exc)


def _raised(exc: BaseException, cause: BaseException | None = None) -> BaseException:
    """``exc`` as the reader task holds it: raised, with a traceback and its cause."""
    try:
        raise exc from cause
    except BaseException as caught:
        return caught


def _connect_failed() -> None:
    AIORMQ.error(
        "error when creating transport: %r", AMQPConnectionError(111, "Connect call failed ('127.0.0.1', 5672)")
    )


@pytest.fixture
def console() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = configure_logging(Settings(log_format="console"), stream=stream)
    try:
        yield stream
    finally:
        logging.getLogger().removeHandler(handler)


def test_a_broker_restart_is_one_warning_without_traceback(console: io.StringIO) -> None:
    for _ in range(3):  # the worker's consuming, publishing and tracking connections
        _remote_close()
        _reader_exited(_raised(ConnectionClosed(320, FORCED)))
    for _ in range(5):  # reconnecting while the broker is still down
        _connect_failed()
    [line] = console.getvalue().splitlines()
    assert line.endswith(f"WARNING snapworker.broker: broker connection lost: the broker closed it (320 {FORCED})")


def test_a_connection_that_drops_says_why_in_one_line(console: io.StringIO) -> None:
    read = asyncio.IncompleteReadError(b"", 1)
    _reader_exited(_raised(AMQPConnectionError("Server connection unexpectedly closed. Read 0 bytes"), read))
    text = console.getvalue()
    assert "broker connection lost: Server connection unexpectedly closed. Read 0 bytes" in text
    assert "Traceback" not in text
    assert len(text.splitlines()) == 1


def test_a_stuck_connection_names_the_missed_heartbeats(console: io.StringIO) -> None:
    AIORMQ.warning("Server connection %r was stuck. No frames were received in %d seconds.", CONNECTION, 45)
    assert "broker connection lost: no frame from the broker in 45 s (heartbeats missed)" in console.getvalue()


def test_a_failed_connect_is_left_to_our_own_retry_line(console: io.StringIO) -> None:
    _connect_failed()
    assert console.getvalue() == ""


def test_other_aiormq_warnings_pass_as_they_are(console: io.StringIO) -> None:
    logging.getLogger("aiormq.channel").warning("Consumer %r cancelled by the broker on %r", "ctag1", "<Channel 1>")
    assert "aiormq.channel: Consumer 'ctag1' cancelled by the broker on '<Channel 1>'" in console.getvalue()


def test_our_own_records_are_not_folded(console: io.StringIO) -> None:
    logging.getLogger("snapworker.worker").warning("broker session lost (%s): reconnecting", "x")
    logging.getLogger("snapworker.worker").warning("broker session lost (%s): reconnecting", "y")
    assert len(console.getvalue().splitlines()) == 2


def test_the_next_loss_after_the_window_is_logged_with_the_count_of_the_others() -> None:
    now = [0.0]
    fold = BrokerLossFilter(window_s=60.0, clock=lambda: now[0])

    def record() -> logging.LogRecord:
        return logging.LogRecord(
            "aiormq.connection",
            logging.WARNING,
            __file__,
            1,
            "Cancelling cause reader exited abnormally",
            None,
            (ConnectionResetError, ConnectionResetError(104, "Connection reset by peer"), None),
        )

    assert fold.filter(record())
    now[0] = 30.0
    assert not fold.filter(record())
    assert not fold.filter(record())
    now[0] = 61.0
    later = record()
    assert fold.filter(later)
    assert later.getMessage() == (
        "broker connection lost: [Errno 104] Connection reset by peer (2 more like it in the last 60 s were not logged)"
    )
    assert later.suppressed == 2  # type: ignore[attr-defined]


def test_the_folded_line_is_one_json_object_without_exception() -> None:
    stream = io.StringIO()
    handler = configure_logging(Settings(log_format="json"), stream=stream)
    try:
        _reader_exited(_raised(ConnectionClosed(320, FORCED)))
    finally:
        logging.getLogger().removeHandler(handler)
    [entry] = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert (entry["level"], entry["logger"]) == ("WARNING", "snapworker.broker")
    assert entry["message"] == f"broker connection lost: [Errno 320] {FORCED}"
    assert "exception" not in entry

"""Connection failures sorted into permanent (BrokerRefused: end ``run``) and transient (BrokerError: retry)."""

from __future__ import annotations

import aiormq

from snapworker.amqp.errors import connect_error, vhost_of
from snapworker.errors import BrokerError, BrokerRefused

URL = "amqp://alice:s3cret@rabbit:5672/prod"


def test_a_refused_login_is_permanent_and_names_the_user_not_the_password() -> None:
    exc = aiormq.exceptions.ProbableAuthenticationError("ACCESS_REFUSED - Login was refused")
    error = connect_error(exc, URL)
    assert isinstance(error, BrokerRefused)
    assert "refused the login of user 'alice'" in str(error)
    assert "s3cret" not in str(error)


def test_a_refused_virtual_host_is_permanent_and_names_it() -> None:
    exc = aiormq.exceptions.InvalidFrameError(
        "Expected one of ['Connection.OpenOk'], got <Connection.Close object at 0x7f>"
    )
    error = connect_error(exc, URL)
    assert isinstance(error, BrokerRefused)
    assert "refused virtual host 'prod'" in str(error)


def test_an_unreachable_broker_is_transient() -> None:
    error = connect_error(aiormq.exceptions.AMQPConnectionError(111, "Connect call failed"), URL)
    assert type(error) is BrokerError
    assert "cannot reach RabbitMQ at amqp://alice:***@rabbit:5672/prod" in str(error)


def test_the_vhost_of_a_url_without_a_path_is_the_default_one() -> None:
    assert (vhost_of("amqp://h/"), vhost_of("amqp://h"), vhost_of("amqp://h/%2F"), vhost_of("amqp://h/a%2Fb")) == (
        "/",
        "/",
        "/",
        "a/b",
    )

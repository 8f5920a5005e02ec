"""Connection failures to RabbitMQ, sorted into permanent (:class:`BrokerRefused`) and transient (BrokerError).

A worker retries a broker it cannot reach, but a wrong password or virtual host never fixes itself: retrying
forever only hides the mistake. aiormq reports the two permanent cases unevenly: a refused login is a
``ProbableAuthenticationError`` (or ``ConnectionClosed`` with code 403), while a refused virtual host surfaces as an
``InvalidFrameError`` whose text says the broker answered ``Connection.Open`` with ``Connection.Close`` (RabbitMQ
sends 530 NOT_ALLOWED; aiormq keeps only the frame's repr). Both become one readable line here.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

import aio_pika
import aiormq

from snapworker.errors import BrokerError, BrokerRefused
from snapworker.settings import redact_url

__all__ = ["CHANNEL_ERRORS", "CONNECTION_ERRORS", "connect_error", "vhost_of"]

#: What aio-pika and aiormq raise when a channel breaks or is used after it closed.
CHANNEL_ERRORS: tuple[type[BaseException], ...] = (
    aiormq.exceptions.AMQPError,
    aio_pika.exceptions.ChannelInvalidStateError,
)
#: ... and when the connection under it breaks or times out.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (*CHANNEL_ERRORS, OSError, TimeoutError)

# close codes RabbitMQ uses for a refusal that a retry cannot fix
_ACCESS_REFUSED = 403
_NOT_ALLOWED = 530


def vhost_of(url: str) -> str:
    """The virtual host an AMQP URL names (``/`` when its path is empty), as RabbitMQ spells it."""
    path = urlsplit(url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


def connect_error(exc: BaseException, url: str) -> BrokerError:
    """``exc``, raised while connecting to ``url``, as BrokerRefused (permanent) or BrokerError (retry)."""
    shown = redact_url(url)
    user = urlsplit(url).username or "guest"
    if isinstance(exc, aiormq.exceptions.ProbableAuthenticationError | aiormq.exceptions.AuthenticationError) or (
        isinstance(exc, aiormq.exceptions.ConnectionClosed) and exc.args[:1] == (_ACCESS_REFUSED,)
    ):
        return BrokerRefused(
            f"RabbitMQ at {shown} refused the login of user {user!r}: check the user name and password in "
            f"SNAPWORKER_AMQP_URL"
        )
    refused_open = isinstance(exc, aiormq.exceptions.InvalidFrameError) and "Connection.Close" in str(exc)
    if refused_open or (isinstance(exc, aiormq.exceptions.ConnectionClosed) and exc.args[:1] == (_NOT_ALLOWED,)):
        return BrokerRefused(
            f"RabbitMQ at {shown} refused virtual host {vhost_of(url)!r}: it does not exist or user {user!r} may "
            f"not use it; check the path of SNAPWORKER_AMQP_URL (empty or %2F for the default vhost '/')"
        )
    return BrokerError(f"cannot reach RabbitMQ at {shown}: {exc!r}")

"""One client's credential: the headers that authenticate a try, and what happens when the API refuses them.

Three kinds, as the settings give them: an IAM token (``X-Auth-Token``), the same read from a file that is
re-read when it changes (:class:`~snapworker.cloud.token_file.TokenFile`), or AK/SK signing made afresh for every
try. A refusal (:class:`~snapworker.errors.ApiCredentialRefused`) is reported to a :class:`CredentialWatch` (the
worker's :class:`~snapworker.runtime.credential_pause.CredentialPause`), with a probe that tells when the
credential works again: the worker stops consuming meanwhile, instead of failing every request for good.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from snapworker.cloud.signing import sdk_date_now, sign_request
from snapworker.cloud.token_file import TokenFile
from snapworker.errors import ApiCredentialRefused
from snapworker.settings import Settings

__all__ = ["Credential", "CredentialWatch", "Probe"]

#: Tells whether a refused credential works again: returns when it does, raises an ApiError when it does not.
Probe = Callable[[], Awaitable[None]]


class CredentialWatch(Protocol):
    """Told of every refusal; ``who`` names the credential (an account of ACCOUNTS_FILE, or ``default``)."""

    def refused(self, who: str, error: ApiCredentialRefused, probe: Probe) -> None: ...


class Credential:
    """How one client authenticates. ``sdk_date`` is for tests (AK/SK signatures are dated)."""

    def __init__(
        self,
        settings: Settings,
        *,
        who: str = "default",
        watch: CredentialWatch | None = None,
        sdk_date: Callable[[], str] = sdk_date_now,
    ) -> None:
        self.who = who
        self._settings = settings
        self._watch = watch
        self._sdk_date = sdk_date
        self._token_file = TokenFile(settings.auth_token_file) if settings.auth_token_file else None

    def headers(self, method: str, url: str, project_id: str, body: bytes) -> dict[str, str]:
        """The headers of one try (``Content-Type`` included): the token, or an AK/SK signature of this try."""
        s = self._settings
        headers = {"Content-Type": "application/json"}
        if s.access_key is not None and s.secret_key is not None:
            headers["X-Project-Id"] = project_id
            if s.security_token is not None:
                # temporary credentials: the token rides in a header that is signed with the rest, as the SDK does
                headers["X-Security-Token"] = s.security_token.get_secret_value()
            headers |= sign_request(
                method,
                url,
                headers,
                body,
                access_key=s.access_key.get_secret_value(),
                secret_key=s.secret_key.get_secret_value(),
                sdk_date=self._sdk_date(),  # every try signed afresh: the gateway refuses a stale date
            )
        elif self._token_file is not None:
            headers["X-Auth-Token"] = self._token_file.token()
        elif s.auth_token is not None:
            headers["X-Auth-Token"] = s.auth_token.get_secret_value()
        return headers

    def reload(self) -> bool:
        """After a refusal: read the token file again; whether a new token came (then try it at once)."""
        return self._token_file is not None and self._token_file.reload()

    def report(self, error: ApiCredentialRefused, probe: Probe) -> None:
        """Tell the watch the API refused this credential; ``probe`` tells when it works again."""
        if self._watch is not None:
            self._watch.refused(self.who, error, probe)

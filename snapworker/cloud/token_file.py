"""An IAM token kept in a file (SNAPWORKER_AUTH_TOKEN_FILE), re-read when the file changes.

IAM tokens live 24 hours. Whatever rotates them (a cron job, Kubernetes updating a mounted Secret, a sidecar)
writes the new one into a file; the worker picks it up without a restart. The file is looked at (``stat``, a few
µs) at most once per ``check_interval_s`` on the hot path, and read again only when its identity changed (inode,
size or modification time: an atomic rename, as Kubernetes does it, changes the inode). A 401 forces a re-read
(:meth:`TokenFile.reload`), so a token rotated a moment ago is used by the very next try.

A file that cannot be read, or reads empty, keeps the last good token (a writer caught half-way, a Secret being
swapped): one WARNING says so, and the token is read again on the next change.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["TokenFile"]

log = logging.getLogger("snapworker.cloud")

#: How often the hot path looks at the file's identity: rotation is picked up within a second, for a stat a second.
CHECK_INTERVAL_S = 1.0

_Identity = tuple[int, int, int]  # inode, size, mtime_ns


class TokenFile:
    """The token in ``path``, current within ``check_interval_s``. ``clock`` is for tests."""

    def __init__(
        self,
        path: str | Path,
        *,
        check_interval_s: float = CHECK_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._path = Path(path).expanduser()
        self._interval_s = check_interval_s
        self._clock = clock
        self._identity: _Identity | None = None
        self._token = ""
        self._checked_at = float("-inf")
        self._warned = False
        self.reload()

    @property
    def path(self) -> Path:
        return self._path

    def token(self) -> str:
        """The current token (empty only if the file never held one)."""
        now = self._clock()
        if now - self._checked_at >= self._interval_s:
            self._checked_at = now
            if self._stat() != self._identity:
                self.reload()
        return self._token

    def reload(self) -> bool:
        """Read the file now; whether the token changed."""
        self._checked_at = self._clock()
        identity = self._stat()
        try:
            token = self._path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            self._warn(f"cannot be read ({exc})")
            return False
        if not token:
            self._warn("is empty")
            return False
        self._identity, self._warned = identity, False
        changed, self._token = token != self._token, token
        if changed and identity is not None:
            log.info("IAM token read from %s", self._path)
        return changed

    def _stat(self) -> _Identity | None:
        try:
            st = os.stat(self._path)
        except OSError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    def _warn(self, problem: str) -> None:
        if not self._warned:
            self._warned = True
            log.warning("SNAPWORKER_AUTH_TOKEN_FILE %s %s: keeping the token read before", self._path, problem)

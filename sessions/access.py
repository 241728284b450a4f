"""Who may read and write what, cached per process for the hot paths, with revocation that takes effect at once.

The hot paths in front of Django (``trading.reads.hotpath``, ``trading.hotwrites``) answer a request without
Django's request cycle, so they cannot look the API key and the session up in the database on every
request. They keep them here:

* ``KeyGrant`` (an API key's digest -> its key and workspace) and ``SessionGrant`` (a session id -> its
  workspace, terminal, account, status and expiry), loaded from the database on a miss;
* each entry remembers the **access epoch** it was loaded under: a random token in Redis
  (``sessions.epoch.ACCESS_EPOCH_KEY``) that every change of a session (``session_change``: a new status, a heartbeat)
  and every revocation or deletion of a key replaces after its commit (``access_epoch_rotate``). A hot
  path reads the epoch in the same Redis round trip as its other reads, *after* the request arrived, and
  serves an entry only when it was loaded under that epoch: a revoked key or a closed session is refused
  from the first request that starts after the change committed;
* an entry is also reloaded when it is older than ``BRIDGE_ACCESS_CACHE_TTL`` (default 1 s): if an epoch
  rotation was ever lost (Redis unreachable at that moment), the database still decides within that time.
  A missing epoch (Redis restarted empty) is set to a new token first, which invalidates every entry.

Anything the cache cannot vouch for (an unknown key, a session that is not active or is past its expiry, a
write to a paused session)
is not refused here: the caller hands the request to the full Django path, which gives the documented
answer (401, 409, ...).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from .api_keys import KEY_PREFIX, authenticate_key, key_digest
from .models import BridgeSession, SessionStatus


@dataclass(frozen=True)
class KeyGrant:
    key_id: int
    workspace_id: int
    epoch: str
    loaded_at: float  # monotonic


@dataclass(frozen=True)
class SessionGrant:
    session_id: str
    workspace_id: int
    terminal: str
    login: int
    status: str
    expires_at: float  # unix seconds
    epoch: str
    loaded_at: float  # monotonic
    paused: bool = False  # writes are refused while paused (the full path answers 409 SessionPaused)

    def serves(self, workspace_id: int, now: float) -> bool:
        """Active, of this workspace and not past its expiry (else the full path answers)."""
        return (self.status == SessionStatus.ACTIVE and self.workspace_id == workspace_id
                and self.expires_at > now)


def parse_bearer(value: bytes | None) -> str | None:
    """The key of an ``Authorization: Bearer <key>`` header value shaped like a bridge key, else None."""
    if not value:
        return None
    parts = value.split()
    if len(parts) != 2 or parts[0].lower() != b"bearer":
        return None
    try:
        key = parts[1].decode("ascii")
    except UnicodeDecodeError:
        return None
    return key if key.startswith(KEY_PREFIX) else None


def load_key_grant(key: str, epoch: str) -> KeyGrant | None:
    """The active key row of ``key`` from the database (runs in a thread of the caller's choosing)."""
    row = authenticate_key(key)
    if row is None:
        return None
    return KeyGrant(row.pk, row.workspace_id, epoch, time.monotonic())


def load_session_grant(session_id: str, epoch: str) -> SessionGrant | None:
    row = (BridgeSession.objects.filter(id=session_id)
           .values_list("workspace_id", "terminal__name", "login", "status", "expires_at", "paused_at").first())
    if row is None:
        return None
    workspace_id, terminal, login, status, expires_at, paused_at = row
    return SessionGrant(session_id, workspace_id, terminal, login, status, expires_at.timestamp(), epoch,
                        time.monotonic(), paused_at is not None)


class AccessCache:
    """The grants of one process. Not thread-safe: used from one event loop."""

    def __init__(self, ttl: float | None = None, max_entries: int = 10_000) -> None:
        self.ttl = settings.BRIDGE_ACCESS_CACHE_TTL if ttl is None else ttl
        self.max_entries = max_entries
        self._keys: dict[str, KeyGrant] = {}
        self._sessions: dict[str, SessionGrant] = {}

    def _fresh(self, grant: Any, epoch: str) -> bool:
        return grant.epoch == epoch and time.monotonic() - grant.loaded_at < self.ttl

    def key(self, key: str, epoch: str) -> KeyGrant | None:
        grant = self._keys.get(key_digest(key))
        return grant if grant is not None and self._fresh(grant, epoch) else None

    def session(self, session_id: str, epoch: str) -> SessionGrant | None:
        grant = self._sessions.get(session_id)
        return grant if grant is not None and self._fresh(grant, epoch) else None

    def keep_key(self, key: str, grant: KeyGrant) -> None:
        self._bound(self._keys)
        self._keys[key_digest(key)] = grant  # by digest: no key in clear stays in memory here

    def keep_session(self, grant: SessionGrant) -> None:
        self._bound(self._sessions)
        self._sessions[grant.session_id] = grant

    def _bound(self, table: dict) -> None:
        if len(table) >= self.max_entries:
            table.clear()  # a flood of distinct keys or ids: start over rather than grow

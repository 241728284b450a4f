"""The account binding of a terminal: which session (and account) it is logged in for.

The pinned worker writes it at a successful login (fenced by its lease); a session's end clears it.
Right before any MT5 call made for a session, the worker, the reader and the poller compare the
binding with the session and with the account the terminal really shows (``account_info``): if any
of the three disagree, nothing is sent or served. An empty binding serves nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.utils import timezone

from terminals.lease import Lease
from terminals.models import Terminal


@dataclass(frozen=True)
class Binding:
    """The terminal's owner: the session, and the account the terminal reported at its login."""

    session_id: str
    login: int
    server: str

    def shows(self, account: dict[str, Any] | Any) -> bool:
        """Does this account info (a dict or MT5's AccountInfo) belong to the bound account?"""
        get = account.get if isinstance(account, dict) else lambda name: getattr(account, name, None)
        return get("login") == self.login and str(get("server") or "") == self.server


def terminal_binding(*, terminal_name: str) -> Binding | None:
    """The terminal's current binding, or None when it serves no session."""
    row = (Terminal.objects.filter(name=terminal_name).exclude(bound_session_id="")
           .values_list("bound_session_id", "bound_login", "bound_server").first())
    if row is None or row[1] is None:
        return None
    return Binding(row[0], int(row[1]), row[2])


def terminal_bind(*, lease: Lease, session_id: str, login: int, server: str) -> bool:
    """Bind the lease's terminal to a session that just logged in; False when the lease is lost."""
    return bool(Terminal.objects.filter(id=lease.terminal_id, lease_token=lease.token).update(
        bound_session_id=session_id, bound_login=login, bound_server=server, bound_at=timezone.now()))


def terminal_unbind(*, session_id: str) -> int:
    """Clear the binding of whichever terminal serves ``session_id`` (its session ended)."""
    return Terminal.objects.filter(bound_session_id=session_id).update(
        bound_session_id="", bound_login=None, bound_server="", bound_at=timezone.now())


def terminal_unbind_all(*, lease: Lease) -> bool:
    """Clear the lease's terminal's binding before a login (fenced): it serves nobody meanwhile."""
    return bool(Terminal.objects.filter(id=lease.terminal_id, lease_token=lease.token).update(
        bound_session_id="", bound_login=None, bound_server="", bound_at=timezone.now()))

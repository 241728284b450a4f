"""Bridge sessions: open (pin a terminal, queue the login), heartbeat, close, expire, resolve."""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from bridge_project.errors import BridgeError, NotFound, SessionExpired, Unauthorized
from workers.models import Terminal
from workers.terminals import sync_terminals

from .crypto import encrypt_secret
from .models import LIVE_STATUSES, BridgeSession, SessionStatus, Workspace

logger = logging.getLogger("bridge.sessions")

SESSION_HEADER = "HTTP_X_SESSION_ID"


class TerminalBusy(BridgeError):
    status_code = 409
    code = "TerminalBusy"


def _candidate_terminals(requested: str | None) -> list[Terminal]:
    sync_terminals()
    terminals = Terminal.objects.filter(enabled=True)
    if requested is not None:
        terminal = terminals.filter(name=requested).first()
        if terminal is None:
            raise NotFound(f"unknown terminal {requested!r}", {"terminal": requested})
        return [terminal]
    busy = BridgeSession.objects.filter(status__in=LIVE_STATUSES).values("terminal_id")
    free = list(terminals.exclude(id__in=busy))
    # Prefer terminals whose pinned worker is alive; keep a stable order otherwise.
    now = timezone.now()
    free.sort(key=lambda t: (not t.worker_alive(now), t.name))
    return free


def open_session(
    workspace: Workspace, *, account_id: str, server: str, login: int, password: str, terminal: str | None
) -> BridgeSession:
    """Pin a free terminal (or the one asked for), store the password encrypted, queue the login.

    The database constraint ``one_live_session_per_terminal`` arbitrates concurrent opens: the
    loser of a race on one terminal moves on to the next free one.
    """
    from workers.dispatch import publish_login

    ttl = timedelta(seconds=settings.BRIDGE_SESSION_TTL)
    for candidate in _candidate_terminals(terminal):
        now = timezone.now()
        session = BridgeSession(
            workspace=workspace,
            terminal=candidate,
            account_id=account_id,
            login=login,
            server=server,
            last_heartbeat_at=now,
            expires_at=now + ttl,
        )
        session.password_encrypted = encrypt_secret(password, session.id)
        try:
            with transaction.atomic():
                session.save(force_insert=True)
                transaction.on_commit(lambda s=session: publish_login(s))
        except IntegrityError:
            continue
        logger.info("session %s opened on terminal %s (login %s)", session.id, candidate.name, login)
        return session
    if terminal is not None:
        raise TerminalBusy(f"terminal {terminal!r} already has a live session", {"terminal": terminal})
    raise TerminalBusy("no free terminal: every terminal has a live session", {})


def wait_for_outcome(session: BridgeSession, seconds: float) -> BridgeSession:
    """Poll until the session leaves ``opening`` or ``seconds`` pass (for ``?wait=``)."""
    deadline = time.monotonic() + min(seconds, settings.BRIDGE_SESSION_OPEN_MAX_WAIT)
    while session.status == SessionStatus.OPENING and time.monotonic() < deadline:
        time.sleep(0.05)
        session.refresh_from_db()
    return session


def get_session(workspace: Workspace, session_id: str) -> BridgeSession:
    """A session of this workspace, whatever its status; another workspace's is NotFound."""
    session = (
        BridgeSession.objects.select_related("terminal").filter(id=session_id, workspace=workspace).first()
    )
    if session is None:
        raise NotFound("unknown session", {"sessionId": session_id})
    return _expire_if_due(session)


def _expire_if_due(session: BridgeSession) -> BridgeSession:
    if session.live and session.expires_at <= timezone.now():
        BridgeSession.objects.filter(id=session.id, status__in=LIVE_STATUSES).update(
            status=SessionStatus.EXPIRED, ended_at=timezone.now()
        )
        session.refresh_from_db()
    return session


def require_live_session(request) -> BridgeSession:  # noqa: ANN001 - DRF request
    """The live session named by ``x-session-id`` for this workspace, else 401.

    Missing or unknown (including another workspace's) → ``Unauthorized``; closed, expired or
    failed → ``SessionExpired``.
    """
    session_id = request.META.get(SESSION_HEADER)
    if not session_id:
        raise Unauthorized("x-session-id header is required", {"x-session-id": ["required"]})
    try:
        session = get_session(request.user.workspace, session_id)
    except NotFound as exc:
        raise Unauthorized("unknown session", {"x-session-id": ["unknown"]}) from exc
    if not session.live:
        raise SessionExpired(f"session is {session.status}", {"sessionId": session.id, "status": session.status})
    return session


def heartbeat(session: BridgeSession) -> BridgeSession:
    """Extend a live session's expiry by its TTL."""
    session = _expire_if_due(session)
    if not session.live:
        raise SessionExpired(f"session is {session.status}", {"sessionId": session.id, "status": session.status})
    now = timezone.now()
    expires = now + timedelta(seconds=settings.BRIDGE_SESSION_TTL)
    updated = BridgeSession.objects.filter(id=session.id, status__in=LIVE_STATUSES).update(
        last_heartbeat_at=now, expires_at=expires
    )
    if not updated:
        session.refresh_from_db()
        raise SessionExpired(f"session is {session.status}", {"sessionId": session.id, "status": session.status})
    session.last_heartbeat_at, session.expires_at = now, expires
    return session


def close_session(session: BridgeSession) -> BridgeSession:
    """Close a session and free its terminal. Tasks already accepted still finish."""
    if session.live:
        BridgeSession.objects.filter(id=session.id, status__in=LIVE_STATUSES).update(
            status=SessionStatus.CLOSED, ended_at=timezone.now()
        )
        session.refresh_from_db()
        logger.info("session %s closed", session.id)
    return session


def expire_sessions(now=None) -> int:  # noqa: ANN001
    """Expire every live session past its expiry (beat); returns how many, freeing their terminals."""
    now = now or timezone.now()
    count = BridgeSession.objects.filter(status__in=LIVE_STATUSES, expires_at__lte=now).update(
        status=SessionStatus.EXPIRED, ended_at=now
    )
    if count:
        logger.info("expired %d session(s)", count)
    return count

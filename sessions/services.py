"""Bridge sessions: one state machine, ``opening → active → closed | expired | login_failed``.

Every change of a session goes through ``session_change``: a conditional UPDATE (so two actors, e.g. a
close and a login finishing, can never both win), the ``SessionTransition`` row in the same
transaction, and after commit the ``session`` event on the session's stream. Ending a session also
clears the terminal's account binding, wipes the encrypted password and sends ``session_ended`` (the
trading app cancels the session's queued tasks on it).

Only ``active`` sessions may write or read from the terminal (``require_active_session``); a session
still ``opening`` answers ``409 SessionNotReady``. An active session may be paused (``session_pause``,
``session_resume``: a change of ``paused_at`` through ``session_change``, with its transition row and its
``session`` event): its new writes answer ``409 SessionPaused`` and the pinned worker claims none of its
queued tasks until the resume (docs/sessions.md, "Pause and resume"). Logins have an outbox: ``login_published_at`` is
stamped at each publish, and ``sessions_redrive_logins`` (beat) re-publishes a login that no worker
has finished, then fails the session (``LoginTimeout``) after ``BRIDGE_SESSION_LOGIN_TIMEOUT``.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from bridge_project.errors import BridgeError, NotFound, SessionExpired, SessionPaused, Unauthorized
from terminals import runtime
from terminals.binding import terminal_bind, terminal_unbind, terminal_unbind_all
from terminals.gateway import GatewayError
from terminals.lease import Lease
from terminals.models import Terminal
from terminals.services import sync_terminals

from .crypto import CredentialError, decrypt_secret, encrypt_secret
from .dispatch import publish_login
from .epoch import access_epoch_rotate
from .models import END_STATUSES, LIVE_STATUSES, BridgeSession, SessionStatus, SessionTransition, Workspace
from .signals import paused_write_replay, session_changed, session_ended, session_paused, session_resumed

logger = logging.getLogger("bridge.sessions")

SESSION_HEADER = "HTTP_X_SESSION_ID"
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
PAUSE_CHANGES = ("paused", "resumed")


class TerminalBusy(BridgeError):
    status_code = 409
    code = "TerminalBusy"


class SessionNotReady(BridgeError):
    """The session is still ``opening``: nothing can be written or read at its terminal yet."""

    status_code = 409
    code = "SessionNotReady"


# --- the state machine ------------------------------------------------------------------------------

def _session_event(session: BridgeSession, previous: str, detail: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = {"sessionId": session.id, "status": session.status, "from": previous,
                            "paused": session.paused}
    if detail.get("change") in PAUSE_CHANGES:
        data["change"] = detail["change"]
        data["pausedAt"] = int(session.paused_at.timestamp()) if session.paused_at else None
        if "cancelQueued" in detail:
            data["cancelQueued"] = detail["cancelQueued"]
    if session.error_code is not None or session.error_message:
        data["error"] = {"code": session.error_code, "message": session.error_message}
    if detail.get("reason"):
        data["reason"] = detail["reason"]
    return data


def _publish_session_event(session_id: str, data: dict[str, Any]) -> None:
    """Announce the committed change (streams turns it into the ``session`` event)."""
    try:
        session_changed.send(sender=BridgeSession, session_id=session_id, data=data)
    except Exception:  # the database holds the change; the stream is best effort
        logger.exception("publishing the session event of %s failed", session_id)


def session_change(
    *,
    session_id: str,
    from_statuses: tuple[str, ...],
    to_status: str | None = None,
    fields: dict[str, Any] | None = None,
    detail: dict[str, Any] | None = None,
    change: str = "",
    lease: Lease | None = None,
    where: Q | None = None,
    announce: bool = False,
) -> BridgeSession | None:
    """The one writer of a session row: move it from one of ``from_statuses`` (and matching ``where``)
    to ``to_status`` (None: the status stays) setting ``fields``; None when it no longer matched.

    Writes the ``SessionTransition`` row of every change (a change of fields only, e.g. a heartbeat,
    is recorded with ``change`` in its detail and ``from_status == to_status``); a change of status
    also ends what an end must end and emits the ``session`` event after commit, as does a change of
    fields with ``announce`` (a pause, a resume). ``to_status ==
    active`` needs the worker's ``lease``: the terminal is bound to the session in the same
    transaction, or nothing changes."""
    fields = dict(fields or {})
    detail = {**(detail or {}), **({"change": change} if change else {})}
    if to_status in END_STATUSES:
        fields.setdefault("ended_at", timezone.now())
        fields["password_encrypted"] = b""
    with transaction.atomic():
        session = (BridgeSession.objects.select_for_update().select_related("terminal")
                   .filter(Q(id=session_id, status__in=from_statuses) & (where if where is not None else Q()))
                   .first())
        if session is None:
            return None
        previous = session.status
        if to_status == SessionStatus.ACTIVE:
            broker = fields.get("broker") or {}
            if lease is None or not terminal_bind(lease=lease, session_id=session.id, login=session.login,
                                                  server=str(broker.get("server") or "")):
                return None
        for name, value in fields.items():
            setattr(session, name, value)
        if to_status is not None:
            session.status = to_status
        session.save(update_fields=[*fields, "status", "updated_at"])
        SessionTransition.objects.create(session=session, from_status=previous, to_status=session.status,
                                         detail=detail)
        transaction.on_commit(access_epoch_rotate)  # cached grants (sessions.access) see the change at once
        status_changed = to_status is not None and to_status != previous
        if status_changed and to_status in END_STATUSES:
            terminal_unbind(session_id=session.id)
            session_ended.send(sender=BridgeSession, session=session, reason=detail.get("reason", to_status))
        if status_changed or announce:
            event = _session_event(session, previous, detail)
            transaction.on_commit(lambda: _publish_session_event(session_id, event))
            logger.info("session %s: %s -> %s %s", session_id, previous, session.status, detail or "")
    return session


# --- open, login outcome, close, expiry -----------------------------------------------------------

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


def _publish_login(session: BridgeSession) -> None:
    """Publish the login to the terminal's queue and stamp the login outbox (the sweeper's clock)."""
    if publish_login(session) is not False:  # None: a publisher that does not report
        session_change(session_id=session.id, from_statuses=(SessionStatus.OPENING,),
                       fields={"login_published_at": timezone.now()}, change="login_published")


def session_open(
    *, workspace: Workspace, account_id: str, server: str, login: int, password: str, terminal: str | None
) -> BridgeSession:
    """Pin a free terminal (or the one asked for), store the password encrypted, queue the login.

    The database constraint ``one_live_session_per_terminal`` arbitrates concurrent opens: the
    loser of a race on one terminal moves on to the next free one.
    """
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
                SessionTransition.objects.create(session=session, from_status="", to_status=SessionStatus.OPENING)
                transaction.on_commit(lambda s=session: _publish_login(s))
        except IntegrityError:
            continue
        logger.info("session %s opened on terminal %s (login %s)", session.id, candidate.name, login)
        return session
    if terminal is not None:
        raise TerminalBusy(f"terminal {terminal!r} already has a live session", {"terminal": terminal})
    raise TerminalBusy("no free terminal: every terminal has a live session", {})


def session_activate(*, session_id: str, broker: dict[str, Any], lease: Lease) -> BridgeSession | None:
    """The login succeeded on the lease holder's terminal: ``opening → active``, terminal bound."""
    return session_change(session_id=session_id, from_statuses=(SessionStatus.OPENING,),
                          to_status=SessionStatus.ACTIVE, lease=lease, fields={"broker": broker},
                          detail={"server": broker.get("server")})


def session_fail_login(*, session_id: str, code: int | None, message: str, reason: str = "") -> BridgeSession | None:
    """The login failed (MT5's error, or the bridge's ``reason``): ``opening → login_failed``."""
    return session_change(session_id=session_id, from_statuses=(SessionStatus.OPENING,),
                          to_status=SessionStatus.LOGIN_FAILED,
                          fields={"error_code": code, "error_message": message[:500]},
                          detail={"reason": reason or "login_failed", "mt5": code})


def session_close(*, session: BridgeSession) -> BridgeSession:
    """Close a session and free its terminal; its queued tasks end ``cancelled``."""
    closed = session_change(session_id=session.id, from_statuses=LIVE_STATUSES, to_status=SessionStatus.CLOSED,
                                detail={"reason": "closed"})
    if closed is None:
        session.refresh_from_db()
        return session
    return closed


def session_expire_if_due(*, session: BridgeSession) -> BridgeSession:
    """Expire the session now if its heartbeat deadline has passed (requests see expiry at once)."""
    if session.live and session.expires_at <= timezone.now():
        expired = session_change(session_id=session.id, from_statuses=LIVE_STATUSES,
                                     to_status=SessionStatus.EXPIRED, detail={"reason": "expired"})
        if expired is None:
            session.refresh_from_db()
            return session
        return expired
    return session


def sessions_expire_due(*, now: datetime | None = None) -> int:
    """Expire every live session past its expiry (beat); returns how many, freeing their terminals."""
    now = now or timezone.now()
    due = BridgeSession.objects.filter(status__in=LIVE_STATUSES, expires_at__lte=now).values_list("id", flat=True)
    count = 0
    for session_id in list(due):
        if session_change(session_id=session_id, from_statuses=LIVE_STATUSES, to_status=SessionStatus.EXPIRED,
                              detail={"reason": "expired"}):
            count += 1
    if count:
        logger.info("expired %d session(s)", count)
    return count


def sessions_redrive_logins(*, now: datetime | None = None) -> dict[str, int]:
    """The login outbox sweep (beat): re-publish logins of sessions still ``opening`` whose last
    publish is older than BRIDGE_SESSION_LOGIN_REPUBLISH_AFTER (a lost message, a worker that died
    mid-login) to a terminal whose worker is alive; fail those opening for longer than
    BRIDGE_SESSION_LOGIN_TIMEOUT with ``LoginTimeout``. A re-published login that meets a session no
    longer ``opening`` does nothing, so a slow login that finishes first is not repeated."""
    now = now or timezone.now()
    timeout = timedelta(seconds=settings.BRIDGE_SESSION_LOGIN_TIMEOUT)
    republish = now - timedelta(seconds=settings.BRIDGE_SESSION_LOGIN_REPUBLISH_AFTER)
    failed = republished = 0
    opening = BridgeSession.objects.select_related("terminal").filter(status=SessionStatus.OPENING)
    for session in opening.filter(created_at__lte=now - timeout):
        if session_fail_login(session_id=session.id, code=None, reason="LoginTimeout",
                              message=f"the login did not complete within {int(timeout.total_seconds())} s"):
            failed += 1
    stale = opening.filter(created_at__gt=now - timeout, created_at__lte=republish)
    for session in stale.exclude(login_published_at__gt=republish):
        if session.terminal.worker_alive(now):
            _publish_login(session)
            republished += 1
    if failed or republished:
        logger.info("login outbox: %d re-published, %d failed (LoginTimeout)", republished, failed)
    return {"republished": republished, "failed": failed}


def session_heartbeat(*, session: BridgeSession) -> BridgeSession:
    """Extend a live session's expiry by its TTL."""
    session = session_expire_if_due(session=session)
    if not session.live:
        raise SessionExpired(f"session is {session.status}", {"sessionId": session.id, "status": session.status})
    now = timezone.now()
    expires = now + timedelta(seconds=settings.BRIDGE_SESSION_TTL)
    updated = session_change(session_id=session.id, from_statuses=LIVE_STATUSES,
                             fields={"last_heartbeat_at": now, "expires_at": expires}, change="heartbeat")
    if updated is None:
        session.refresh_from_db()
        raise SessionExpired(f"session is {session.status}", {"sessionId": session.id, "status": session.status})
    session.last_heartbeat_at, session.expires_at = now, expires
    return session


# --- reads of sessions --------------------------------------------------------------------------

def session_wait_for_outcome(*, session: BridgeSession, seconds: float) -> BridgeSession:
    """Poll until the session leaves ``opening`` or ``seconds`` pass (for ``?wait=``)."""
    deadline = time.monotonic() + min(seconds, settings.BRIDGE_SESSION_OPEN_MAX_WAIT)
    while session.status == SessionStatus.OPENING and time.monotonic() < deadline:
        time.sleep(0.05)
        session.refresh_from_db()
    return session


def session_get(*, workspace: Workspace, session_id: str) -> BridgeSession:
    """A session of this workspace, whatever its status; another workspace's is NotFound."""
    session = (
        BridgeSession.objects.select_related("terminal").filter(id=session_id, workspace=workspace).first()
    )
    if session is None:
        raise NotFound("unknown session", {"sessionId": session_id})
    return session_expire_if_due(session=session)


def require_live_session(request) -> BridgeSession:  # DRF request
    """The live (opening or active) session named by ``x-session-id`` for this workspace, else 401.

    Missing or unknown (including another workspace's) → ``Unauthorized``; closed, expired or
    failed → ``SessionExpired``.
    """
    session_id = request.META.get(SESSION_HEADER)
    if not session_id:
        raise Unauthorized("x-session-id header is required", {"x-session-id": ["required"]})
    try:
        session = session_get(workspace=request.user.workspace, session_id=session_id)
    except NotFound as exc:
        raise Unauthorized("unknown session", {"x-session-id": ["unknown"]}) from exc
    if not session.live:
        raise SessionExpired(f"session is {session.status}", {"sessionId": session.id, "status": session.status})
    return session


def require_active_session(request, *, write: bool | None = None) -> BridgeSession:  # DRF request
    """The ``active`` session of ``x-session-id``: what writes and terminal reads need. Still
    ``opening`` → ``409 SessionNotReady`` (nothing is queued or read); ended → 401 as above.

    A write (``write``; None: a POST, PUT, PATCH or DELETE) to a paused session → ``409 SessionPaused``,
    unless the ledger already holds its request id: that is a replay, answered from the ledger by the
    caller (the same task, or 409 TaskConflict for another payload). Every write view calls this, so a
    new write endpoint is covered without knowing about pauses."""
    session = require_live_session(request)
    if session.status != SessionStatus.ACTIVE:
        raise SessionNotReady(
            f"session is {session.status}: wait for it to become active (?wait= on open, or its session event)",
            {"sessionId": session.id, "status": session.status},
        )
    if write is None:
        write = request.method in WRITE_METHODS
    if write and session.paused and not _replays_a_held_request(request, session):
        raise SessionPaused(
            "session is paused: resume it (POST /session/{id}/resume) to write; nothing was queued",
            {"sessionId": session.id, "pausedAt": int(session.paused_at.timestamp())},
        )
    return session


def _replays_a_held_request(request, session: BridgeSession) -> bool:
    """The client's request id is one the ledger already holds (trading answers ``paused_write_replay``)."""
    django_request = getattr(request, "_request", request)
    if not getattr(django_request, "bridge_request_id_given", False):
        return False  # the bridge made the id: a new one, nothing to replay
    answers = paused_write_replay.send(sender=BridgeSession, workspace_id=session.workspace_id,
                                       request_id=django_request.bridge_request_id)
    return any(held for _, held in answers)


# --- pause and resume ----------------------------------------------------------------------------

def _require_pausable(session: BridgeSession) -> None:
    """Only an ``active`` session pauses or resumes: ended → 401 SessionExpired, opening → 409."""
    if not session.live:
        raise SessionExpired(f"session is {session.status}", {"sessionId": session.id, "status": session.status})
    if session.status != SessionStatus.ACTIVE:
        raise SessionNotReady(f"session is {session.status}: only an active session can be paused or resumed",
                              {"sessionId": session.id, "status": session.status})


def _locked(session_id: str) -> BridgeSession:
    """The session row, locked until the caller's transaction ends (to decide on what it is now)."""
    return BridgeSession.objects.select_for_update().select_related("terminal").get(id=session_id)


def session_pause(*, session: BridgeSession, cancel_queued: bool = False) -> BridgeSession:
    """Pause an active session: from the commit on its new writes answer 409 SessionPaused and the pinned
    worker claims none of its queued tasks (a task it already claimed finishes); they wait for
    ``session_resume``. ``cancel_queued``: they end ``cancelled`` instead, in the same transaction.

    Through ``session_change`` (``change: paused`` transition, ``session`` event). A session already
    paused does not change (no transition, no event); with ``cancel_queued`` its queued tasks are
    cancelled all the same (that is what the caller asks for)."""
    _require_pausable(session)
    with transaction.atomic():
        paused = session_change(session_id=session.id, from_statuses=(SessionStatus.ACTIVE,),
                                where=Q(paused_at__isnull=True), fields={"paused_at": timezone.now()},
                                detail={"cancelQueued": cancel_queued}, change="paused", announce=True)
        if paused is None:  # already paused, or ended meanwhile
            paused = _locked(session.id)
            _require_pausable(paused)
            if not cancel_queued:
                return paused
        session_paused.send(sender=BridgeSession, session=paused, cancel_queued=cancel_queued)
    return paused


def session_resume(*, session: BridgeSession) -> BridgeSession:
    """Resume a paused session: writes are accepted again and its queued tasks are re-published to its
    terminal after the commit (the outbox sweeper covers a lost publish). Through ``session_change``
    (``change: resumed``, ``session`` event). A session not paused does not change."""
    _require_pausable(session)
    with transaction.atomic():
        resumed = session_change(session_id=session.id, from_statuses=(SessionStatus.ACTIVE,),
                                 where=Q(paused_at__isnull=False), fields={"paused_at": None},
                                 change="resumed", announce=True)
        if resumed is None:  # not paused, or ended meanwhile
            current = _locked(session.id)
            _require_pausable(current)
            return current
        session_resumed.send(sender=BridgeSession, session=resumed)
    return resumed


def session_log_in(*, session_id: str) -> str:
    """Log the session's terminal in to its account (on the terminal's pinned worker):
    ``opening`` → ``active`` or ``login_failed``. Returns what happened, for the worker's log.

    The terminal's binding is cleared first (whatever account it was on serves nobody while it logs
    in) and set again, fenced by this worker's lease, in the same transaction as ``→ active``.
    """
    session = BridgeSession.objects.select_related("terminal").filter(id=session_id).first()
    if session is None or session.status != SessionStatus.OPENING:
        return "skipped"
    if session.terminal.name != runtime.pinned_terminal():
        # Routing guarantees this never happens; refuse rather than touch another terminal.
        logger.error("login for %s reached the worker of %s", session.terminal.name, runtime.pinned_terminal())
        return "wrong-terminal"
    lease = runtime.held_lease()
    terminal_unbind_all(lease=lease)
    try:
        password = decrypt_secret(session.password_encrypted, session.id)
    except CredentialError as exc:
        # A key missing from BRIDGE_CREDENTIALS_KEY/OLD_KEYS: the login cannot happen; say so now.
        failed = session_fail_login(session_id=session_id, code=None, reason="CredentialsUnreadable",
                                    message=f"the stored password cannot be decrypted: {exc}")
        logger.error("session %s: stored password unreadable: %s", session_id, exc)
        return "login_failed" if failed else "skipped"
    gw = runtime.gateway()
    try:
        account = gw.login(session.login, password, session.server)
        terminal = gw.terminal_info()
    except GatewayError as exc:
        failed = session_fail_login(session_id=session_id, code=exc.code, message=exc.message)
        logger.info("session %s login failed: (%s, %s)", session_id, exc.code, exc.message)
        return "login_failed" if failed else "skipped"
    broker = {
        "company": account.get("company"),
        "server": account.get("server"),
        "currency": account.get("currency"),
        "leverage": account.get("leverage"),
        "name": account.get("name"),
        "marginMode": account.get("margin_mode"),
        "connected": bool(terminal.get("connected")),
        "terminalBuild": terminal.get("build"),
    }
    activated = session_activate(session_id=session_id, broker=broker, lease=lease)
    if activated is None:
        # The fence may have refused it (the lease row re-created or expired): retake and try once more.
        activated = session_activate(session_id=session_id, broker=broker, lease=runtime.refresh_lease())
    if activated is None:
        logger.info("session %s ended (or the lease moved) while it logged in: not activated", session_id)
        return "skipped"
    logger.info("session %s active on %s", session_id, session.terminal.name)
    return "active"


def session_reencrypt_password(*, session_id: str, current: bytes, fresh: bytes) -> bool:
    """Store ``fresh`` (the same password under the current key) if the stored blob is still ``current``."""
    return session_change(session_id=session_id, from_statuses=tuple(SessionStatus.values),
                          where=Q(password_encrypted=current), fields={"password_encrypted": fresh},
                          change="reencrypted") is not None


def sessions_expire(*, session_ids: list[str], by: str) -> int:
    """Expire these sessions now (an operator's action): each through the state machine."""
    return sum(1 for session_id in session_ids
               if session_change(session_id=session_id, from_statuses=LIVE_STATUSES, to_status=SessionStatus.EXPIRED,
                                 detail={"reason": "expired", "by": by}) is not None)

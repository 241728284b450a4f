"""Celery tasks that run on a terminal's pinned worker."""

from __future__ import annotations

import logging

from celery import shared_task
from celery.signals import worker_ready

from .binding import terminal_unbind_all
from .gateway import GatewayError
from .runtime import gateway, held_lease, pinned_terminal, refresh_lease, start_heartbeat

logger = logging.getLogger("bridge.worker")


@worker_ready.connect
def _on_worker_ready(**_: object) -> None:
    if pinned_terminal():
        start_heartbeat()
        logger.info("pinned worker for terminal %s ready", pinned_terminal())


@shared_task(name="workers.login_session")
def login_session(session_id: str) -> str:
    """Log the session's terminal in to its account; ``opening`` → ``active`` or ``login_failed``.

    The terminal's binding is cleared first (whatever account it was on serves nobody while it logs
    in) and set again, fenced by this worker's lease, in the same transaction as ``→ active``.
    """
    from sessions.crypto import CredentialError, decrypt_secret
    from sessions.models import BridgeSession, SessionStatus
    from sessions.services import session_activate, session_fail_login

    session = BridgeSession.objects.select_related("terminal").filter(id=session_id).first()
    if session is None or session.status != SessionStatus.OPENING:
        return "skipped"
    if session.terminal.name != pinned_terminal():
        # Routing guarantees this never happens; refuse rather than touch another terminal.
        logger.error("login for %s reached the worker of %s", session.terminal.name, pinned_terminal())
        return "wrong-terminal"
    lease = held_lease()
    terminal_unbind_all(lease=lease)
    try:
        password = decrypt_secret(session.password_encrypted, session.id)
    except CredentialError as exc:
        # A key missing from BRIDGE_CREDENTIALS_KEY/OLD_KEYS: the login cannot happen; say so now.
        failed = session_fail_login(session_id=session_id, code=None, reason="CredentialsUnreadable",
                                    message=f"the stored password cannot be decrypted: {exc}")
        logger.error("session %s: stored password unreadable: %s", session_id, exc)
        return "login_failed" if failed else "skipped"
    gw = gateway()
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
        activated = session_activate(session_id=session_id, broker=broker, lease=refresh_lease())
    if activated is None:
        logger.info("session %s ended (or the lease moved) while it logged in: not activated", session_id)
        return "skipped"
    logger.info("session %s active on %s", session_id, session.terminal.name)
    return "active"

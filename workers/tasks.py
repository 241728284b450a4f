"""Celery tasks that run on a terminal's pinned worker."""

from __future__ import annotations

import logging

from celery import shared_task
from celery.signals import worker_ready
from django.utils import timezone

from .gateway import GatewayError
from .runtime import gateway, pinned_terminal, start_heartbeat

logger = logging.getLogger("bridge.worker")


@worker_ready.connect
def _on_worker_ready(**_: object) -> None:
    if pinned_terminal():
        start_heartbeat()
        logger.info("pinned worker for terminal %s ready", pinned_terminal())


@shared_task(name="workers.login_session")
def login_session(session_id: str) -> str:
    """Log the session's terminal in to its account; ``opening`` → ``active`` or ``login_failed``."""
    from sessions.crypto import decrypt_secret
    from sessions.models import BridgeSession, SessionStatus

    session = BridgeSession.objects.select_related("terminal").filter(id=session_id).first()
    if session is None or session.status != SessionStatus.OPENING:
        return "skipped"
    if session.terminal.name != pinned_terminal():
        # Routing guarantees this never happens; refuse rather than touch another terminal.
        logger.error("login for %s reached the worker of %s", session.terminal.name, pinned_terminal())
        return "wrong-terminal"
    password = decrypt_secret(session.password_encrypted, session.id)
    gw = gateway()
    try:
        account = gw.login(session.login, password, session.server)
        terminal = gw.terminal_info()
    except GatewayError as exc:
        updated = BridgeSession.objects.filter(id=session_id, status=SessionStatus.OPENING).update(
            status=SessionStatus.LOGIN_FAILED,
            error_code=exc.code,
            error_message=exc.message[:500],
            ended_at=timezone.now(),
        )
        logger.info("session %s login failed: (%s, %s)", session_id, exc.code, exc.message)
        return "login_failed" if updated else "skipped"
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
    BridgeSession.objects.filter(id=session_id, status=SessionStatus.OPENING).update(
        status=SessionStatus.ACTIVE, broker=broker
    )
    logger.info("session %s active on %s", session_id, session.terminal.name)
    return "active"

"""Maintenance tasks for sessions (scheduled by beat, run on the maintenance worker)."""

from celery import shared_task

from .services import sessions_expire_due, sessions_redrive_logins


@shared_task(name="sessions.expire_sessions")
def expire_sessions_task() -> int:
    return sessions_expire_due()


@shared_task(name="sessions.redrive_logins")
def redrive_logins_task() -> dict[str, int]:
    return sessions_redrive_logins()

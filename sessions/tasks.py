"""Maintenance tasks for sessions (scheduled by beat, run on the maintenance worker)."""

from celery import shared_task

from .services import expire_sessions


@shared_task(name="sessions.expire_sessions")
def expire_sessions_task() -> int:
    return expire_sessions()

"""Publishing work to a terminal's own queue (called after the database commit)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bridge_project.celery import terminal_queue

if TYPE_CHECKING:
    from sessions.models import BridgeSession


def publish_login(session: BridgeSession) -> None:
    from .tasks import login_session

    login_session.apply_async(args=[session.id], queue=terminal_queue(session.terminal.name))

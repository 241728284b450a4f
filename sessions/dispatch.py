"""Publishing work to a terminal's own queue (called after the database commit)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from bridge_project import metrics
from bridge_project.celery import app, terminal_queue

if TYPE_CHECKING:
    from sessions.models import BridgeSession

logger = logging.getLogger("bridge.sessions.dispatch")
LOGIN_TASK = "workers.login_session"  # workers.tasks.login_session

# Fail fast when the broker is away: the request that opened the session is not held for long.
LOGIN_PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0.1, "interval_step": 0.2, "interval_max": 0.5}


def publish_login(session: BridgeSession) -> bool:
    """Send the session's login to its terminal's queue; True when the broker took it. Never raises.

    Runs after the session's insert committed. When the broker (Redis) cannot be reached the session
    stays ``opening`` and the failure is logged and counted (``bridge_redis_unavailable{where="login"}``);
    the request that opened it still answers (a session row is the outbox of its login, re-driven by
    the login sweeper).
    """
    try:
        # Sent by name: the web tier never imports the worker's task module.
        app.send_task(LOGIN_TASK, args=[session.id], queue=terminal_queue(session.terminal.name),
                      retry=True, retry_policy=LOGIN_PUBLISH_RETRY_POLICY)
    except Exception:  # the session row stands; its login is published again later
        logger.warning("publishing the login of session %s to terminal %s failed; it stays opening",
                       session.id, session.terminal.name, exc_info=True)
        metrics.redis_unavailable("login")
        return False
    return True

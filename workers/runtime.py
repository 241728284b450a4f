"""State of a pinned worker process: which terminal it owns, its gateway, its heartbeat thread."""

from __future__ import annotations

import logging
import os
import socket
import threading

from django.conf import settings
from django.db import close_old_connections

from .config import get_terminal
from .gateway import TerminalGateway

logger = logging.getLogger("bridge.worker")

TERMINAL_ENV = "BRIDGE_WORKER_TERMINAL"
_gateway: TerminalGateway | None = None
_heartbeat_started = threading.Event()


def pinned_terminal() -> str | None:
    """The terminal this process is pinned to, or None outside a pinned worker."""
    return os.environ.get(TERMINAL_ENV) or None


def gateway() -> TerminalGateway:
    """This process's gateway to its pinned terminal (one connection per process)."""
    global _gateway
    name = pinned_terminal()
    if name is None:
        raise RuntimeError("not a pinned terminal worker: only the terminal's own worker may trade")
    if _gateway is None or _gateway.terminal.name != name:
        _gateway = TerminalGateway(get_terminal(name))
    return _gateway


def _heartbeat_loop(name: str, hostname: str, stop: threading.Event) -> None:
    from .terminals import record_worker_heartbeat, sync_terminals

    interval = settings.BRIDGE_WORKER_HEARTBEAT_INTERVAL
    while not stop.is_set():
        try:
            sync_terminals()
            record_worker_heartbeat(name, hostname)
        except Exception:  # noqa: BLE001 - a failed beat must not kill the worker; next one retries
            logger.exception("heartbeat failed")
        finally:
            close_old_connections()
        stop.wait(interval)


def start_heartbeat(stop: threading.Event | None = None) -> threading.Event:
    """Start the heartbeat thread (once per process). It never touches the terminal."""
    name = pinned_terminal()
    stop = stop or threading.Event()
    if name and not _heartbeat_started.is_set():
        _heartbeat_started.set()
        hostname = f"{name}@{socket.gethostname()}:{os.getpid()}"
        threading.Thread(target=_heartbeat_loop, args=(name, hostname, stop), daemon=True, name="heartbeat").start()
    return stop


# Celery's Django fixup closes every database connection before and after each task (a reconnect per
# task: the largest single cost of an order on the pinned worker) unless CELERY_DB_REUSE_MAX is set;
# then it closes them only every that-many tasks. Set it out of reach and run Django's own
# close_old_connections around each task instead: it closes a connection that errored, is in a
# broken transaction state or is older than CONN_MAX_AGE, exactly as between two web requests.
NEVER_RECYCLE = 2**62


def _close_old_db_connections(**_: object) -> None:
    close_old_connections()


def keep_db_connections(max_age: int = 300) -> None:
    """Long-running single-threaded processes (pinned worker, reader, poller, maintenance) reuse
    their database connection: the ASGI-safe default (0: a connection per request) would cost a
    connect per task. In a Celery worker, Django's close_old_connections runs around each task (it
    drops a connection that errored or expired) in place of the fixup's unconditional close."""
    from celery.signals import task_postrun, task_prerun
    from django.db import connections

    from bridge_project.celery import app

    for alias in connections:
        connections[alias].settings_dict["CONN_MAX_AGE"] = max_age
    app.conf.update(CELERY_DB_REUSE_MAX=NEVER_RECYCLE)
    task_prerun.connect(_close_old_db_connections, weak=False, dispatch_uid="bridge.db.prerun")
    task_postrun.connect(_close_old_db_connections, weak=False, dispatch_uid="bridge.db.postrun")

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


def keep_db_connections(max_age: int = 300) -> None:
    """Long-running single-threaded processes (pinned worker, reader, poller, maintenance) reuse
    their database connection: the ASGI-safe default (0: a connection per request) would cost a
    connect per task. Celery's Django fixup still drops a connection that errored or expired."""
    from django.db import connections

    for alias in connections:
        connections[alias].settings_dict["CONN_MAX_AGE"] = max_age

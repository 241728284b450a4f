"""State of a pinned worker process: which terminal it owns, its gateway, its heartbeat thread."""

from __future__ import annotations

import logging
import os
import socket
import threading

from celery.signals import task_postrun, task_prerun
from django.conf import settings
from django.db import close_old_connections, connections

from bridge_project.celery import app
from terminals.config import get_terminal
from terminals.gateway import TerminalGateway
from terminals.lease import Lease, lease_acquire, lease_holder_name, lease_release, lease_renew
from terminals.services import record_worker_heartbeat, sync_terminals

logger = logging.getLogger("bridge.worker")

TERMINAL_ENV = "BRIDGE_WORKER_TERMINAL"
_gateway: TerminalGateway | None = None
_heartbeat_started = threading.Event()
_lease: Lease | None = None
_refresh_lock = threading.Lock()
LEASE_LOST_EXIT = 75  # the exit status of a worker that lost its terminal's lease to another


def held_lease() -> Lease:
    """The ownership lease this pinned worker holds; every claim and sent-mark is fenced by it."""
    if _lease is None:
        raise RuntimeError("this process holds no terminal lease: only the terminal's lease holder may trade")
    return _lease


def hold_lease(name: str, *, wait: bool = True, say=print) -> Lease:  # a print-like callable
    """Acquire the lease of terminal ``name`` for this process, waiting while another worker holds it."""
    global _lease
    sync_terminals()
    holder, waited = lease_holder_name(name), False
    while True:
        lease = lease_acquire(terminal_name=name, holder=holder, ttl=settings.BRIDGE_WORKER_LEASE_TTL)
        if lease is not None:
            _lease = lease
            return lease
        if not wait:
            raise RuntimeError(f"terminal {name} is held by another worker")
        if not waited:
            say(f"terminal {name}: another worker holds the lease; waiting for it to be released or to expire")
            waited = True
        close_old_connections()
        threading.Event().wait(1.0)


def give_up_lease() -> None:
    """Release the lease at a clean stop (the next worker need not wait for it to expire)."""
    global _lease
    if _lease is not None:
        try:
            lease_release(lease=_lease)
        finally:
            _lease = None


def refresh_lease() -> Lease:
    """Renew the lease, or take it again when it is free (its row was re-created, or it expired with
    nobody taking it); a worker whose lease another holds stops at once: it is stale.

    One refresh at a time in this process: the heartbeat thread and a task may both find the lease gone;
    unserialized, the second would see the lease the first just retook as another worker's and exit."""
    global _lease
    with _refresh_lock:
        lease = held_lease()
        ttl = settings.BRIDGE_WORKER_LEASE_TTL
        if lease_renew(lease=lease, ttl=ttl):
            return lease
        again = lease_acquire(terminal_name=lease.terminal_name, holder=lease.holder, ttl=ttl)
        if again is None:
            logger.error("terminal %s: lease token %s is no longer current (another worker took over): exiting",
                         lease.terminal_name, lease.token)
            os._exit(LEASE_LOST_EXIT)
        _lease = again
        return again


def _renew_or_exit() -> None:
    if _lease is not None:
        refresh_lease()


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
    interval = settings.BRIDGE_WORKER_HEARTBEAT_INTERVAL
    while not stop.is_set():
        try:
            sync_terminals()
            _renew_or_exit()
            record_worker_heartbeat(name, hostname)
        except Exception:  # a failed beat must not kill the worker; next one retries
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
    for alias in connections:
        connections[alias].settings_dict["CONN_MAX_AGE"] = max_age
    app.conf.update(CELERY_DB_REUSE_MAX=NEVER_RECYCLE)
    task_prerun.connect(_close_old_db_connections, weak=False, dispatch_uid="bridge.db.prerun")
    task_postrun.connect(_close_old_db_connections, weak=False, dispatch_uid="bridge.db.postrun")

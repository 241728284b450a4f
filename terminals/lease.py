"""The ownership lease of a terminal: exactly one pinned worker executes its tasks.

A lease row lives on the Terminal (``lease_token``, ``lease_holder``, ``lease_expires_at``). A worker
acquires it with one conditional UPDATE that also bumps ``lease_token``, the fencing token; it renews
it from its heartbeat thread and exits at once if a renewal finds the token changed. Every claim and
sent-mark of a task is conditional on the holder's token (``fence_condition``), so a stale worker (an
orphan after a VM restart, a second supervisor, a process paused past its lease) can neither claim
nor mark a task sent: the database refuses its write, whatever it believes.

A second worker for the same terminal waits until the lease is free: expired, released, or held by a
process of this host that no longer exists (a crashed worker is taken over at once, not after TTL).
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from datetime import timedelta

from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

from terminals.models import Terminal

logger = logging.getLogger("bridge.worker.lease")


@dataclass(frozen=True)
class Lease:
    """A held lease: the terminal row's id and the fencing token every fenced write carries."""

    terminal_id: int
    terminal_name: str
    token: int
    holder: str


def lease_holder_name(terminal_name: str) -> str:
    """``<terminal>@<host>:<pid>``: who holds a lease (also tells a dead holder of this host)."""
    return f"{terminal_name}@{socket.gethostname()}:{os.getpid()}"


def _holder_is_dead_here(holder: str) -> bool:
    """True when ``holder`` names a process of this host that no longer runs."""
    _, _, where = holder.partition("@")
    host, _, pid = where.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def lease_acquire(*, terminal_name: str, holder: str, ttl: float) -> Lease | None:
    """Take the terminal's lease if it is free; the new fencing token, or None while another holds it."""
    now = timezone.now()
    row = Terminal.objects.filter(name=terminal_name).values("id", "lease_token", "lease_holder",
                                                              "lease_expires_at").first()
    if row is None:
        return None
    free = Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lte=now) | Q(lease_holder=holder)
    if row["lease_holder"] and _holder_is_dead_here(row["lease_holder"]):
        free |= Q(lease_holder=row["lease_holder"])
    # Compare-and-set on the token read: of two workers racing for a free lease, one UPDATE wins.
    token = int(row["lease_token"]) + 1
    taken = Terminal.objects.filter(Q(id=row["id"], lease_token=row["lease_token"]) & free).update(
        lease_token=token, lease_holder=holder, lease_expires_at=now + timedelta(seconds=ttl)
    )
    if not taken:
        return None
    logger.info("lease of terminal %s taken by %s (token %s)", terminal_name, holder, token)
    return Lease(row["id"], terminal_name, token, holder)


def lease_renew(*, lease: Lease, ttl: float) -> bool:
    """Extend a held lease; False when the token is no longer ours (another worker took over)."""
    return bool(Terminal.objects.filter(id=lease.terminal_id, lease_token=lease.token).update(
        lease_expires_at=timezone.now() + timedelta(seconds=ttl)))


def lease_release(*, lease: Lease) -> None:
    """Give the lease up (a clean stop), so the next worker need not wait for it to expire."""
    Terminal.objects.filter(id=lease.terminal_id, lease_token=lease.token).update(lease_expires_at=None)


def fence_condition(lease: Lease, terminal_field: str = "terminal_id") -> Exists:
    """A filter for a fenced write of a terminal's row: true only while ``lease`` is the current one."""
    return Exists(Terminal.objects.filter(id=OuterRef(terminal_field), lease_token=lease.token))

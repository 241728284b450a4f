"""Single-use socket tickets: ``POST /events/ticket`` (API key + session) gives a short-lived ticket that
opens one socket with ``/events?ticket=...``, so the API key never has to travel in a URL.

A ticket is 256 random bits. Redis keeps only its SHA-256 (``bridge:ev:ticket:<hex>``), with the
session, the key and the workspace it was issued for, and expires it after ``BRIDGE_EVENTS_TICKET_TTL``
(30 s). The socket takes it with ``GETDEL``: whoever comes first gets it, a second use finds nothing.
The socket then checks, as with a key, that the key is still active and the session still live.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from dataclasses import dataclass

import redis.asyncio as aioredis

from . import conf
from .keys import PREFIX
from .publisher import sync_redis

TICKET_PREFIX = "wst_"
_TICKET_RE = re.compile(r"^wst_[A-Za-z0-9_-]{43}$")


@dataclass(frozen=True)
class Ticket:
    session_id: str
    key_id: int
    workspace_id: int


def _redis_key(ticket: str) -> str:
    return f"{PREFIX}:ticket:{hashlib.sha256(ticket.encode()).hexdigest()}"


def issue(*, session_id: str, key_id: int, workspace_id: int) -> tuple[str, float]:
    """A new ticket for ``session_id`` and when it expires (unix seconds). Raises RedisError when Redis
    is away (the view answers 503)."""
    ttl = conf.ticket_ttl()
    ticket = TICKET_PREFIX + secrets.token_urlsafe(32)
    payload = json.dumps({"s": session_id, "k": key_id, "w": workspace_id}, separators=(",", ":"))
    sync_redis().set(_redis_key(ticket), payload, px=max(1, int(ttl * 1000)), nx=True)
    return ticket, time.time() + ttl


async def redeem(client: aioredis.Redis, ticket: str) -> Ticket | None:
    """The ticket's grant, once: None when malformed, unknown, expired or already used."""
    if not isinstance(ticket, str) or not _TICKET_RE.match(ticket):
        return None
    raw = await client.getdel(_redis_key(ticket))
    if raw is None:
        return None
    try:
        data = json.loads(raw)
        return Ticket(str(data["s"]), int(data["k"]), int(data["w"]))
    except (ValueError, KeyError, TypeError):
        return None

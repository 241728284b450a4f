"""The access epoch: a random token in Redis that every change of who may read what replaces.

Processes that cache API keys and sessions (``sessions.access``) serve a cached entry only under the
epoch it was loaded under, so replacing the token after a change commits invalidates every cache at
once: a session change (``session_change``, heartbeats included) and a key's revocation or deletion
call ``access_epoch_rotate``.
"""

from __future__ import annotations

import logging
import secrets

import redis
from django.conf import settings

logger = logging.getLogger("bridge.sessions")

ACCESS_EPOCH_KEY = "bridge:access:epoch"

_client: redis.Redis | None = None


def _redis() -> redis.Redis:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=1.0, socket_connect_timeout=1.0)
    return _client


def new_epoch() -> str:
    return secrets.token_hex(8)


def access_epoch_rotate() -> None:
    """Invalidate every process's cached grants. Call after the change commits. Never raises: the
    grants' TTL (``BRIDGE_ACCESS_CACHE_TTL``) bounds a rotation lost to a Redis outage."""
    try:
        _redis().set(ACCESS_EPOCH_KEY, new_epoch())
    except redis.RedisError as exc:
        logger.warning("cannot rotate the access epoch (cached grants expire within %.1f s): %s",
                       settings.BRIDGE_ACCESS_CACHE_TTL, exc)

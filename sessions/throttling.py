"""Per-workspace throttling (the rate is ``BRIDGE_THROTTLE_RATE``, e.g. ``6000/min``).

The request history lives in the Redis cache. When Redis cannot be reached the throttle **fails
open**: the request goes on unthrottled (a warning is logged, ``bridge_redis_unavailable{where=
"throttle"}`` counts it) rather than turning into a 500. Rate limiting protects the bridge; it must
not be the reason a write that the database ledger can accept is refused. After a failure the cache
is left alone for ``REDIS_HOLD_OFF_SECONDS`` (requests pass without trying it), so an outage costs
no connection attempt per request.
"""

from __future__ import annotations

import logging
import threading
import time

import redis
from django.conf import settings
from rest_framework.throttling import SimpleRateThrottle

from bridge_project import metrics

from .auth import WorkspacePrincipal

logger = logging.getLogger("bridge.sessions.throttling")

REDIS_HOLD_OFF_SECONDS = 2.0

_lock = threading.Lock()
_redis_down_until = 0.0


def _holding_off() -> bool:
    return time.monotonic() < _redis_down_until


def _note_redis_down(exc: Exception) -> None:
    global _redis_down_until
    with _lock:
        first = not _holding_off()
        _redis_down_until = time.monotonic() + REDIS_HOLD_OFF_SECONDS
    if first:
        logger.warning("rate limiter failing open: Redis unreachable (%s: %s)", type(exc).__name__, exc)


class WorkspaceRateThrottle(SimpleRateThrottle):
    scope = "workspace"

    def get_rate(self) -> str:
        return settings.BRIDGE_THROTTLE_RATE

    def get_cache_key(self, request, view) -> str | None:  # noqa: ANN001
        user = request.user
        if not isinstance(user, WorkspacePrincipal):
            return None
        return f"throttle:ws:{user.workspace.pk}"

    def allow_request(self, request, view) -> bool:  # noqa: ANN001
        if _holding_off():
            if self.get_cache_key(request, view) is not None:
                metrics.redis_unavailable("throttle")
            return True
        try:
            return super().allow_request(request, view)
        except redis.RedisError as exc:
            _note_redis_down(exc)
            metrics.redis_unavailable("throttle")
            return True

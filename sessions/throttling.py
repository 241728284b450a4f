"""Per-workspace and per-API-key throttling of the client API.

A request with a valid API key counts against two limits at once, in one atomic Redis script call
(``bridge_project.ratelimit``): its workspace (``BRIDGE_THROTTLE_RATE``, e.g. ``6000/min``) and its key
(``BRIDGE_THROTTLE_KEY_RATE``). Over either: ``429 RateLimited`` with ``Retry-After``. Requests without
valid credentials are limited per client IP in ``sessions.auth`` (``BRIDGE_THROTTLE_IP_RATE``).

When Redis cannot be reached the throttle **fails open**: the request goes on unthrottled (a warning
is logged, ``bridge_redis_unavailable{where="throttle"}`` counts it) rather than turning into a 500.
Rate limiting protects the bridge; it must not be the reason a write that the database ledger can
accept is refused. After a failure Redis is left alone for ``ratelimit.REDIS_HOLD_OFF_SECONDS``
(requests pass without trying it), so an outage costs no connection attempt per request.
"""

from __future__ import annotations

from django.conf import settings
from rest_framework.throttling import BaseThrottle

from bridge_project import ratelimit

from .auth import WorkspacePrincipal

REDIS_HOLD_OFF_SECONDS = ratelimit.REDIS_HOLD_OFF_SECONDS


class WorkspaceRateThrottle(BaseThrottle):
    scope = "workspace"

    def __init__(self) -> None:
        self._wait: float | None = None

    def allow_request(self, request, view) -> bool:
        user = request.user
        if not isinstance(user, WorkspacePrincipal):
            return True  # no valid key: limited per IP by sessions.auth
        self._wait = ratelimit.check_request(request, [
            ("workspace", str(user.workspace.pk), settings.BRIDGE_THROTTLE_RATE),
            ("key", str(user.api_key.pk), getattr(settings, "BRIDGE_THROTTLE_KEY_RATE", "")),
        ])
        return self._wait is None

    def wait(self) -> float | None:
        return ratelimit.retry_after(self._wait) if self._wait is not None else None

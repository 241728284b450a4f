"""Per-workspace throttling (the rate is ``BRIDGE_THROTTLE_RATE``, e.g. ``6000/min``)."""

from __future__ import annotations

from django.conf import settings
from rest_framework.throttling import SimpleRateThrottle

from .auth import WorkspacePrincipal


class WorkspaceRateThrottle(SimpleRateThrottle):
    scope = "workspace"

    def get_rate(self) -> str:
        return settings.BRIDGE_THROTTLE_RATE

    def get_cache_key(self, request, view) -> str | None:  # noqa: ANN001
        user = request.user
        if not isinstance(user, WorkspacePrincipal):
            return None
        return f"throttle:ws:{user.workspace.pk}"

"""DRF authentication by workspace API key (``Authorization: Bearer <key>``).

A request without valid credentials (no key, a malformed header, a wrong or revoked key) is counted
per client IP (``BRIDGE_THROTTLE_IP_RATE``, ``bridge_project.ratelimit``): over the limit it is answered
``429 RateLimited`` with ``Retry-After`` instead of ``401``.
"""

from __future__ import annotations

from dataclasses import dataclass

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.permissions import BasePermission

from bridge_project.ratelimit import RateLimited, limit_anonymous

from .api_keys import authenticate_key
from .models import ApiKey, Workspace


@dataclass
class WorkspacePrincipal:
    """The request's user: a workspace acting through one of its keys."""

    workspace: Workspace
    api_key: ApiKey
    is_authenticated: bool = True
    is_staff: bool = False

    @property
    def pk(self) -> int:
        return self.workspace.pk


def principal_for_key(key: str) -> WorkspacePrincipal | None:
    row = authenticate_key(key)
    return WorkspacePrincipal(row.workspace, row) if row else None


def _refuse(request, message: str) -> AuthenticationFailed:
    """The exception for a failed authentication: 401, or 429 once the client IP is over its limit."""
    wait = limit_anonymous(request)
    if wait is not None:
        return RateLimited(wait, "too many requests without valid credentials from this address")
    return AuthenticationFailed(message)


class ApiKeyAuthentication(BaseAuthentication):
    def authenticate(self, request):  # DRF signature
        header = get_authorization_header(request).split()
        if not header:
            return None
        if header[0].lower() != b"bearer" or len(header) != 2:
            raise _refuse(request, "Authorization must be 'Bearer <api-key>'")
        try:
            key = header[1].decode("ascii")
        except UnicodeDecodeError as exc:
            raise _refuse(request, "invalid API key") from exc
        principal = principal_for_key(key)
        if principal is None:
            raise _refuse(request, "invalid or revoked API key")
        return principal, principal.api_key

    def authenticate_header(self, request) -> str:
        return "Bearer"


class IsWorkspace(BasePermission):
    """Allows workspace principals only (an API key was presented and valid). A request without
    credentials counts against its IP's limit (429 over it, else 401)."""

    def has_permission(self, request, view) -> bool:
        if isinstance(request.user, WorkspacePrincipal):
            return True
        wait = limit_anonymous(request)
        if wait is not None:
            raise RateLimited(wait, "too many requests without valid credentials from this address")
        return False


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    """OpenAPI: the API key as a bearer scheme (drf-spectacular registers extensions when defined)."""

    target_class = "sessions.auth.ApiKeyAuthentication"
    name = "ApiKey"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "Workspace API key: `Authorization: Bearer mt5b_<prefix>_<secret>`",
        }

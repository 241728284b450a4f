"""DRF authentication by workspace API key (``Authorization: Bearer <key>``)."""

from __future__ import annotations

from dataclasses import dataclass

from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.permissions import BasePermission

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


class ApiKeyAuthentication(BaseAuthentication):
    def authenticate(self, request):  # noqa: ANN001, ANN201 - DRF signature
        header = get_authorization_header(request).split()
        if not header:
            return None
        if header[0].lower() != b"bearer" or len(header) != 2:
            raise AuthenticationFailed("Authorization must be 'Bearer <api-key>'")
        try:
            key = header[1].decode("ascii")
        except UnicodeDecodeError as exc:
            raise AuthenticationFailed("invalid API key") from exc
        principal = principal_for_key(key)
        if principal is None:
            raise AuthenticationFailed("invalid or revoked API key")
        return principal, principal.api_key

    def authenticate_header(self, request) -> str:  # noqa: ANN001
        return "Bearer"


class IsWorkspace(BasePermission):
    """Allows workspace principals only (an API key was presented and valid)."""

    def has_permission(self, request, view) -> bool:  # noqa: ANN001
        return isinstance(request.user, WorkspacePrincipal)


try:  # OpenAPI: describe the API key as a bearer scheme (drf-spectacular extension, auto-registered)
    from drf_spectacular.extensions import OpenApiAuthenticationExtension

    class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
        target_class = "sessions.auth.ApiKeyAuthentication"
        name = "ApiKey"

        def get_security_definition(self, auto_schema):  # noqa: ANN001, ANN201
            return {
                "type": "http",
                "scheme": "bearer",
                "description": "Workspace API key: `Authorization: Bearer mt5b_<prefix>_<secret>`",
            }
except ImportError:  # pragma: no cover - drf-spectacular is a pinned requirement
    pass

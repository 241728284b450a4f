"""Who may use the ops endpoints: a staff user (Django admin login) or the ops token.

``Authorization: Bearer <BRIDGE_OPS_TOKEN>`` identifies an operator's tooling (Prometheus, scripts);
a logged-in staff user (the admin's session cookie) identifies a person. Nothing else: no
credentials or a wrong token is ``401``; a valid workspace API key or a non-staff user is ``403``
(authenticated, but workspaces never see across workspaces).

Every ops request is rate limited (``BRIDGE_THROTTLE_OPS_RATE``) before its credentials are looked at:
one bucket for the ops token, one per client IP for everything else (staff logins, wrong tokens,
no credentials). Over it: ``429 RateLimited`` with ``Retry-After``.
"""

from __future__ import annotations

import functools
import hmac
from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import exceptions as drf
from rest_framework.authentication import BaseAuthentication, SessionAuthentication, get_authorization_header
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from bridge_project import ratelimit
from bridge_project.errors import error_body, exception_handler
from bridge_project.ratelimit import limited_response
from sessions.auth import ApiKeyAuthentication, WorkspacePrincipal


@dataclass
class OpsPrincipal:
    """The request's user when it presented the ops token."""

    is_authenticated: bool = True
    is_staff: bool = True
    is_active: bool = True
    pk: str = "ops-token"


def ops_token_matches(token: str) -> bool:
    expected = settings.BRIDGE_OPS_TOKEN
    return bool(expected) and hmac.compare_digest(token.encode(), expected.encode())


class OpsTokenAuthentication(BaseAuthentication):
    """``Bearer <ops token>``; anything else is left to the next authenticator (API key, session)."""

    def authenticate(self, request):  # DRF signature
        header = get_authorization_header(request).split()
        if len(header) != 2 or header[0].lower() != b"bearer":
            return None
        try:
            token = header[1].decode("ascii")
        except UnicodeDecodeError:
            return None
        if ops_token_matches(token):
            return OpsPrincipal(), None
        return None

    def authenticate_header(self, request) -> str:
        return "Bearer"


def ops_rate_limit(request: HttpRequest | Request) -> float | None:
    """Count an ops request (``BRIDGE_THROTTLE_OPS_RATE``): per ops token when it presents the valid
    one, else per client IP. None: allowed; else the seconds to wait."""
    header = get_authorization_header(request).split()
    key = f"ip:{ratelimit.client_ip(request)}"
    if len(header) == 2 and header[0].lower() == b"bearer":
        try:
            if ops_token_matches(header[1].decode("ascii")):
                key = "token:" + ratelimit.digest(settings.BRIDGE_OPS_TOKEN)
        except UnicodeDecodeError:
            pass
    return ratelimit.check_request(request, [("ops", key, getattr(settings, "BRIDGE_THROTTLE_OPS_RATE", ""))])


OPS_RATE_LIMITED = "too many ops requests"

OPS_AUTHENTICATION = [OpsTokenAuthentication, ApiKeyAuthentication, SessionAuthentication]


def is_ops_user(user: object) -> bool:
    if isinstance(user, OpsPrincipal):
        return True
    if user is None or isinstance(user, WorkspacePrincipal):
        return False
    return bool(getattr(user, "is_active", False) and getattr(user, "is_staff", False))


class IsStaffOrOpsToken(BasePermission):
    def has_permission(self, request, view) -> bool:
        return is_ops_user(request.user)


def ops_access_denied(request: HttpRequest) -> JsonResponse | None:
    """For plain Django views (``/metrics``): None when allowed, else the 401/403 error response."""
    drf_request = Request(request, authenticators=[cls() for cls in OPS_AUTHENTICATION])
    try:
        user = drf_request.user
    except drf.APIException as exc:
        response = exception_handler(exc, {"request": drf_request})
        return JsonResponse(response.data, status=response.status_code, headers={"WWW-Authenticate": "Bearer"})
    if is_ops_user(user):
        return None
    if user is None:
        return JsonResponse(
            error_body("Unauthorized", "a staff login or the ops token is required"),
            status=401,
            headers={"WWW-Authenticate": "Bearer"},
        )
    return JsonResponse(error_body("Forbidden", "ops endpoints need a staff user or the ops token"), status=403)


READ_METHODS = ("GET", "HEAD")


def method_not_allowed(request: HttpRequest) -> JsonResponse:
    """405 with the API error body, for a read-only plain view asked with another method."""
    return JsonResponse(error_body("MethodNotAllowed", f"method {request.method} not allowed"), status=405,
                        headers={"Allow": ", ".join(READ_METHODS)})


def ops_endpoint(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """A plain (non-DRF) read-only ops view, guarded as the DRF ones are, in this order: the ops rate
    limit (429), a staff login or the ops token (401/403), GET or HEAD (405)."""

    @functools.wraps(view)
    def guarded(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        wait = ops_rate_limit(request)
        if wait is not None:
            return limited_response(wait, OPS_RATE_LIMITED)
        denied = ops_access_denied(request)
        if denied is not None:
            return denied
        if request.method not in READ_METHODS:
            return method_not_allowed(request)
        return view(request, *args, **kwargs)

    return guarded


class OpsTokenScheme(OpenApiAuthenticationExtension):
    """OpenAPI: the ops token as a bearer scheme (drf-spectacular registers extensions when defined)."""

    target_class = "ops.auth.OpsTokenAuthentication"
    name = "opsToken"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "BRIDGE_OPS_TOKEN (or a staff login)"}

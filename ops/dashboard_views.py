"""The staff dashboard: ``/ops/`` (the page) and ``/ops/data`` (what it polls).

The page is for people: a staff user logged in through the admin (anonymous: the admin login, which
comes back here; a logged-in non-staff user: 403). The data endpoint answers like the other ops
endpoints (``ops.auth``: a staff login or the ops token, rate limited, JSON errors), so a page whose
login expired gets a 401 it can show instead of an HTML login form it cannot parse.
"""

from __future__ import annotations

from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt

from bridge_project.errors import error_body
from bridge_project.ratelimit import limited_response
from ops import dashboard
from ops.auth import OPS_RATE_LIMITED, ops_access_denied, ops_rate_limit


def _method_not_allowed(request: HttpRequest) -> JsonResponse:
    return JsonResponse(error_body("MethodNotAllowed", f"method {request.method} not allowed"), status=405,
                        headers={"Allow": "GET, HEAD"})


@never_cache
def dashboard_page(request: HttpRequest) -> HttpResponse:
    """The page (its charts are drawn by ``ops/static/ops/dashboard.js`` from ``/ops/data``)."""
    user = request.user
    if not user.is_authenticated:
        return redirect_to_login(request.get_full_path(), reverse("admin:login"))
    if not (user.is_active and user.is_staff):
        return JsonResponse(error_body("Forbidden", "the ops dashboard is for staff users"), status=403)
    if request.method not in ("GET", "HEAD"):
        return _method_not_allowed(request)
    return render(request, "ops/dashboard.html", {
        "data_url": reverse("ops-dashboard-data"),
        "refresh_ms": int(dashboard.refresh_seconds() * 1000),
    })


@csrf_exempt  # read-only (any other method is 405); a token client has no CSRF cookie
@never_cache
def dashboard_data(request: HttpRequest) -> JsonResponse:
    """The figures of the page, as JSON (``ops.dashboard.dashboard_data``)."""
    wait = ops_rate_limit(request)
    if wait is not None:
        return limited_response(wait, OPS_RATE_LIMITED)
    denied = ops_access_denied(request)
    if denied is not None:
        return denied
    if request.method not in ("GET", "HEAD"):
        return _method_not_allowed(request)
    return JsonResponse(dashboard.dashboard_data())

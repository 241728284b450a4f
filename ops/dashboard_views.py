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
from ops import dashboard
from ops.auth import method_not_allowed, ops_endpoint


@never_cache
def dashboard_page(request: HttpRequest) -> HttpResponse:
    """The page (its charts are drawn by ``ops/static/ops/dashboard.js`` from ``/ops/data``)."""
    user = request.user
    if not user.is_authenticated:
        return redirect_to_login(request.get_full_path(), reverse("admin:login"))
    if not (user.is_active and user.is_staff):
        return JsonResponse(error_body("Forbidden", "the ops dashboard is for staff users"), status=403)
    if request.method not in ("GET", "HEAD"):
        return method_not_allowed(request)
    return render(request, "ops/dashboard.html", {
        "data_url": reverse("ops-dashboard-data"),
        "refresh_ms": int(dashboard.refresh_seconds() * 1000),
    })


@csrf_exempt  # read-only (any other method is 405); a token client has no CSRF cookie
@never_cache
@ops_endpoint
def dashboard_data(request: HttpRequest) -> JsonResponse:
    """The figures of the page, as JSON (``ops.dashboard.dashboard_data``)."""
    return JsonResponse(dashboard.dashboard_data())

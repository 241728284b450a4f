"""Admin for workspaces, API keys (create shows the key once; revoke/rotate) and sessions.

Login attempts (POSTs to the admin login) are rate limited per client IP
(``BRIDGE_THROTTLE_ADMIN_IP_RATE``) and per username (``BRIDGE_THROTTLE_ADMIN_USER_RATE``), counted
before the password is checked: over either limit the answer is ``429`` with ``Retry-After`` and the
password is not tried (a right guess is refused too). The 429 carries the API's error body
(``RateLimited``, ``details.retryAfter``), as every error answer of the bridge. Redis down: the limit
fails open.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from django.conf import settings
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.utils.cache import add_never_cache_headers

from bridge_project import ratelimit

from .api_keys import create_api_key, revoke_api_key, rotate_api_key
from .models import LIVE_STATUSES, ApiKey, BridgeSession, Workspace
from .services import sessions_expire


@admin.register(Workspace)
class WorkspaceAdmin(admin.ModelAdmin):
    list_display = ("name", "created_at")
    search_fields = ("name",)


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ("prefix", "workspace", "name", "created_at", "last_used_at", "revoked_at")
    list_filter = ("workspace",)
    search_fields = ("prefix", "name", "workspace__name")
    list_select_related = ("workspace",)
    fields = ("workspace", "name", "prefix", "created_at", "revoked_at")
    readonly_fields = ("prefix", "created_at", "revoked_at")
    actions = ["revoke", "rotate"]

    def save_model(self, request: HttpRequest, obj: ApiKey, form, change: bool) -> None:
        if change:
            obj.save(update_fields=["name"])
            return
        row, key = create_api_key(obj.workspace, obj.name)
        obj.pk, obj.prefix, obj.digest = row.pk, row.prefix, row.digest
        self.message_user(request, f"New API key (copy it now, it is not shown again): {key}", messages.WARNING)

    @admin.action(description="Revoke selected keys")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        for row in queryset:
            revoke_api_key(row)
        self.message_user(request, f"revoked {queryset.count()} key(s); their open /events sockets are closed (4401)")

    @admin.action(description="Rotate selected keys (revoke and issue a replacement)")
    def rotate(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        for row in queryset.filter(revoked_at__isnull=True):
            new, key = rotate_api_key(row)
            self.message_user(request, f"{row.prefix} rotated; new key (shown once): {key}", messages.WARNING)


class PausedFilter(admin.SimpleListFilter):
    """Sessions paused (``paused_at`` set: writes refused, queued tasks waiting) or not."""

    title = "paused"
    parameter_name = "paused"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("yes", "Yes"), ("no", "No")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[BridgeSession]) -> QuerySet[BridgeSession]:
        if self.value() == "yes":
            return queryset.filter(paused_at__isnull=False)
        if self.value() == "no":
            return queryset.filter(paused_at__isnull=True)
        return queryset


@admin.register(BridgeSession)
class BridgeSessionAdmin(admin.ModelAdmin):
    list_display = ("id", "workspace", "terminal", "login", "server", "status", "paused", "expires_at",
                    "created_at")
    list_filter = ("status", PausedFilter, "terminal", "workspace")
    search_fields = ("id", "login", "account_id", "server")
    list_select_related = ("workspace", "terminal")
    exclude = ("password_encrypted",)
    readonly_fields = [f.name for f in BridgeSession._meta.fields if f.name != "password_encrypted"]
    actions = ["expire"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.display(boolean=True, description="paused", ordering="paused_at")
    def paused(self, obj: BridgeSession) -> bool:
        return obj.paused

    @admin.action(description="Expire selected sessions (frees their terminals)")
    def expire(self, request: HttpRequest, queryset: QuerySet[BridgeSession]) -> None:
        ids = list(queryset.filter(status__in=LIVE_STATUSES).values_list("id", flat=True))
        count = sessions_expire(session_ids=ids, by=f"admin:{request.user.get_username()}")
        self.message_user(request, f"expired {count} session(s): terminals freed, queued tasks cancelled")


def admin_login_refused(wait: float) -> HttpResponse:
    """The 429: the API's error body (as every error answer of the bridge) with ``Retry-After``,
    readable in a browser too."""
    seconds = ratelimit.retry_after(wait)
    response = ratelimit.limited_response(wait, f"too many login attempts: try again in {seconds} seconds")
    add_never_cache_headers(response)
    return response


def rate_limited_login(login: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Wrap an admin site's login view: every POST counts per client IP and per username."""

    @functools.wraps(login)
    def limited(request: HttpRequest, extra_context: dict | None = None) -> HttpResponse:
        if request.method == "POST":
            username = str(request.POST.get("username", "")).strip().casefold()[:150]
            wait = ratelimit.check_request(request, [
                ("admin-ip", ratelimit.client_ip(request), getattr(settings, "BRIDGE_THROTTLE_ADMIN_IP_RATE", "")),
                ("admin-user", ratelimit.digest(username),
                 getattr(settings, "BRIDGE_THROTTLE_ADMIN_USER_RATE", "")),
            ])
            if wait is not None:
                return admin_login_refused(wait)
        return login(request, extra_context)

    limited.bridge_rate_limited = True  # type: ignore[attr-defined]
    return limited


if not getattr(admin.site.login, "bridge_rate_limited", False):
    # AdminSite.get_urls() routes "login/" to ``self.login``: the instance attribute takes its place.
    admin.site.login = rate_limited_login(admin.site.login)  # type: ignore[method-assign]

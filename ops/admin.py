from django.contrib import admin
from django.db.models import OuterRef, QuerySet, Subquery
from django.http import HttpRequest
from django.utils import timezone

from sessions.models import LIVE_STATUSES, BridgeSession
from terminals.models import Terminal


@admin.register(Terminal)
class TerminalAdmin(admin.ModelAdmin):
    list_display = ("name", "backend", "address", "utc_offset", "enabled", "worker_up", "worker_heartbeat_at",
                    "worker_hostname", "bound_session")
    list_filter = ("backend", "enabled")
    search_fields = ("name", "address")
    readonly_fields = ("worker_heartbeat_at", "worker_hostname", "created_at", "updated_at")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Terminal]:
        # The live session bound to each terminal, in the same query (no query per row).
        live = BridgeSession.objects.filter(terminal=OuterRef("pk"), status__in=LIVE_STATUSES)
        return super().get_queryset(request).annotate(live_session_id=Subquery(live.values("id")[:1]))

    @admin.display(boolean=True, description="worker alive")
    def worker_up(self, obj: Terminal) -> bool:
        return obj.worker_alive(timezone.now())

    @admin.display(description="bound session")
    def bound_session(self, obj: Terminal) -> str:
        return getattr(obj, "live_session_id", None) or "-"

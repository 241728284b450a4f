"""Tasks in the Django admin: find (state, kind, terminal, session, age; request id, task id, ticket),
read (request, result, state history: read-only) and act (cancel queued, re-publish stuck, reconcile).

Built for a ledger of millions of rows: every list filter and search is one index range scan, rows
come with their relations in the same query (no N+1), and the changelist never counts the whole
table (an estimated total, a capped count when filtered).
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from typing import Any

from django.contrib import admin, messages
from django.core.paginator import Paginator
from django.db import connection
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.functional import cached_property
from django.utils.html import format_html

from bridge_project import metrics
from sessions.models import LIVE_STATUSES, BridgeSession

from .models import TaskState, TaskTransition, TradeTask
from .outbox import publish_task
from .reconciliation import reconciliation_request
from .states import task_change

logger = logging.getLogger("bridge.trading.admin")

# A filtered changelist counts at most this many rows (bounded work on a huge ledger).
COUNT_CAP = 10_000


class EstimatedCountPaginator(Paginator):
    """Counts that stay cheap on a million-row ledger.

    Unfiltered: PostgreSQL's own row estimate (``pg_class.reltuples``, kept by autovacuum/ANALYZE)
    when it is large; filtered: an exact count of at most ``COUNT_CAP`` rows (a ``LIMIT`` subquery),
    so a broad filter cannot make the page scan the whole table to print its total.
    """

    @cached_property
    def count(self) -> int:
        qs = self.object_list
        if not isinstance(qs, QuerySet):
            return len(qs)
        if not qs.query.where and connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass", [qs.model._meta.db_table])
                row = cursor.fetchone()
            if row and row[0] and row[0] > COUNT_CAP:
                return int(row[0])
        return qs.order_by()[: COUNT_CAP].count()


class AgeFilter(admin.SimpleListFilter):
    """How long ago the task was accepted (the stuck ones are the old ones not yet final)."""

    title = "age"
    parameter_name = "age"
    CHOICES = {"1m": 60, "5m": 300, "1h": 3600, "1d": 86400, "7d": 7 * 86400}

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [(key, f"older than {key}") for key in self.CHOICES]

    def queryset(self, request: HttpRequest, queryset: QuerySet[TradeTask]) -> QuerySet[TradeTask]:
        seconds = self.CHOICES.get(self.value() or "")
        if seconds is None:
            return queryset
        return queryset.filter(created_at__lte=timezone.now() - timedelta(seconds=seconds))


class SessionFilter(admin.SimpleListFilter):
    """By bridge session: the live sessions are offered; any session id works via ``?session=``."""

    title = "session"
    parameter_name = "session"
    OFFERED = 20

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        live = (
            BridgeSession.objects.filter(status__in=LIVE_STATUSES)
            .select_related("terminal")
            .order_by("-created_at")[: self.OFFERED]
        )
        return [(s.id, f"{s.id} ({s.terminal.name}, {s.login})") for s in live]

    def queryset(self, request: HttpRequest, queryset: QuerySet[TradeTask]) -> QuerySet[TradeTask]:
        return queryset.filter(session_id=self.value()) if self.value() else queryset


class TaskTransitionInline(admin.TabularInline):
    model = TaskTransition
    fields = ("at", "from_state", "to_state", "detail")
    readonly_fields = fields
    extra = 0
    can_delete = False
    ordering = ("at", "id")
    show_change_link = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def _pretty(value: Any) -> str:
    if value is None:
        return "-"
    return format_html("<pre style='white-space:pre-wrap;margin:0'>{}</pre>", json.dumps(value, indent=2, sort_keys=True))


@admin.register(TradeTask)
class TaskAdmin(admin.ModelAdmin):
    list_display = (
        "id", "request_id", "kind", "state", "terminal", "session_ref", "workspace", "order_ticket",
        "attempts", "created_at", "age",
    )
    list_filter = ("state", "kind", "terminal", SessionFilter, AgeFilter)
    list_select_related = ("terminal", "workspace")
    list_per_page = 100
    list_max_show_all = 500
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    paginator = EstimatedCountPaginator
    ordering = ("-created_at", "-id")
    search_fields = ("=id", "=request_id")  # overridden below: exact, index-backed lookups only
    search_help_text = "task id (tsk_…), request id, or an order/deal/position ticket (exact)"
    inlines = [TaskTransitionInline]
    actions = ["cancel_queued", "republish", "reconcile"]
    fieldsets = (
        (None, {"fields": ("id", "request_id", "kind", "state", "attempts", "workspace", "session", "terminal",
                           "parent")}),
        ("At the terminal", {"fields": ("tag", "order_ticket", "deal_ticket", "position_ticket")}),
        ("Request and result", {"fields": ("request_pretty", "mt5_request_pretty", "result_pretty")}),
        ("Times", {"fields": ("created_at", "published_at", "dispatched_at", "finished_at", "updated_at")}),
    )

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        shown = [f for fs in self.fieldsets for f in fs[1]["fields"]]
        return shown

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # tasks come from the API, with their idempotency key

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # the ledger is the truth: it is purged by retention, not by hand

    def get_queryset(self, request: HttpRequest) -> QuerySet[TradeTask]:
        # The changelist shows neither request nor result: do not read the JSON of 100 rows.
        qs = super().get_queryset(request)
        if request.resolver_match and request.resolver_match.url_name == "trading_task_changelist":
            qs = qs.defer("request", "mt5_request", "result", "fingerprint")
        return qs

    def get_search_results(self, request: HttpRequest, queryset: QuerySet[TradeTask], search_term: str):
        """Exact matches only, each served by an index: task id, request id, or a ticket."""
        term = search_term.strip()
        if not term:
            return queryset, False
        condition = Q(id=term) | Q(request_id=term)
        if term.isdigit() and len(term) <= 18:
            ticket = int(term)
            condition |= Q(order_ticket=ticket) | Q(deal_ticket=ticket) | Q(position_ticket=ticket)
        return queryset.filter(condition), False

    @admin.display(description="session", ordering="session_id")
    def session_ref(self, obj: TradeTask) -> str:
        return obj.session_id

    @admin.display(description="age")
    def age(self, obj: TradeTask) -> str:
        seconds = int((timezone.now() - obj.created_at).total_seconds())
        if seconds < 120:
            return f"{seconds}s"
        if seconds < 7200:
            return f"{seconds // 60}m"
        if seconds < 172800:
            return f"{seconds // 3600}h"
        return f"{seconds // 86400}d"

    @admin.display(description="request")
    def request_pretty(self, obj: TradeTask) -> str:
        return _pretty(obj.request)

    @admin.display(description="order_send request")
    def mt5_request_pretty(self, obj: TradeTask) -> str:
        return _pretty(obj.mt5_request)

    @admin.display(description="result")
    def result_pretty(self, obj: TradeTask) -> str:
        return _pretty(obj.result)

    # -- actions: each calls the trading service that owns the rule ----------------------------------
    @admin.action(description="Cancel selected queued tasks")
    def cancel_queued(self, request: HttpRequest, queryset: QuerySet[TradeTask]) -> None:
        done = skipped = 0
        for task_id in queryset.values_list("id", flat=True):
            moved = task_change(task_id=task_id, from_states=[TaskState.QUEUED], to_state=TaskState.CANCELLED, detail={"by": "admin", "user": request.user.get_username()})
            done, skipped = (done + 1, skipped) if moved else (done, skipped + 1)
        self.message_user(request, f"cancelled {done} task(s)")
        if skipped:
            self.message_user(request, f"{skipped} task(s) were not queued any more: left as they are",
                              messages.WARNING)

    @admin.action(description="Re-publish selected stuck (queued) tasks to their terminal")
    def republish(self, request: HttpRequest, queryset: QuerySet[TradeTask]) -> None:
        rows = list(queryset.filter(state=TaskState.QUEUED).values_list("id", "terminal__name"))
        ok = sum(1 for task_id, terminal in rows if publish_task(task_id, terminal))
        if ok:
            metrics.task_republished("admin", ok)
        self.message_user(request, f"re-published {ok} of {len(rows)} queued task(s)")
        if ok < len(rows):
            self.message_user(request, "the broker refused some publishes: see the log", messages.ERROR)
        others = queryset.exclude(state=TaskState.QUEUED).count()
        if others:
            self.message_user(request, f"{others} selected task(s) are not queued: only queued tasks are "
                              "re-published (a dispatched one is reconciled)", messages.WARNING)

    @admin.action(description="Reconcile the terminals of the selected tasks now (every dispatched/unknown "
                  "task of each such terminal)")
    def reconcile(self, request: HttpRequest, queryset: QuerySet[TradeTask]) -> None:
        ids = list(queryset.values_list("id", flat=True))
        names = reconciliation_request(task_ids=ids)
        asked = ", ".join(names) or "none (no dispatched/unknown task selected)"
        self.message_user(request, f"terminals asked to reconcile every dispatched/unknown task: {asked}")

"""Ops endpoints: ``/mt5/client/ops/terminals``, ``/mt5/client/ops/tasks`` and ``/metrics``.

Thin: the figures come from ``ops.selectors`` and ``ops.metrics``; access is ``ops_auth``'s.
"""

from __future__ import annotations

import re

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.utils import extend_schema, inline_serializer
from prometheus_client import CONTENT_TYPE_LATEST
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from bridge_project.errors import ValidationFailed
from bridge_project.ratelimit import RateLimited
from bridge_project.schema import (
    NO_NUL_PATTERN,
    api_errors,
    csv_enum,
    error,
    operation_parameters,
    query,
)
from ops import metrics as ops_metrics, selectors as ops
from ops.auth import (
    OPS_AUTHENTICATION,
    OPS_RATE_LIMITED,
    IsStaffOrOpsToken,
    ops_endpoint,
    ops_rate_limit,
)

OPS_ERRORS = api_errors({
    401: error("Unauthorized: neither a staff login nor the ops token"),
    403: error("Forbidden: a workspace API key or a non-staff user"),
    429: error("RateLimited: over BRIDGE_THROTTLE_OPS_RATE (per ops token or client IP); Retry-After set"),
})
MAX_OLDER_THAN = 10 * 365 * 86400
NUMBER_RE = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")  # a JSON number
INTEGER_RE = re.compile(r"-?(0|[1-9][0-9]*)")  # a JSON integer


class OpsView(APIView):
    authentication_classes = OPS_AUTHENTICATION
    permission_classes = [IsStaffOrOpsToken]
    throttle_classes: list = []  # ops_rate_limit instead, before authentication

    def initial(self, request: Request, *args, **kwargs) -> None:
        wait = ops_rate_limit(request)
        if wait is not None:
            raise RateLimited(wait, OPS_RATE_LIMITED)
        super().initial(request, *args, **kwargs)


class OpsTerminalsView(OpsView):
    @extend_schema(
        operation_id="ops_terminals",
        parameters=operation_parameters(session=False),
        responses={
            200: inline_serializer(
                name="OpsTerminals",
                fields={"terminals": serializers.ListField(child=serializers.DictField()), "asOf": serializers.FloatField()},
            ),
            **OPS_ERRORS,
        },
        description="Each terminal: backend, bound session (with `paused`/`pausedAt`), pinned worker alive and last heartbeat, queue "
        "depth read from the broker, queued tasks and the oldest one's age (seconds). Staff or ops token.",
    )
    def get(self, request: Request) -> Response:
        now = timezone.now()
        return Response(
            {
                "terminals": [s.as_json() for s in ops.terminal_statuses(now)],
                "heartbeatInterval": settings.BRIDGE_WORKER_HEARTBEAT_INTERVAL,
                "asOf": round(now.timestamp(), 3),
            }
        )


def _parse_tasks_query(request: Request) -> dict:
    """The query of /ops/tasks, checked as its schema states it (JSON numbers, known states)."""
    params = request.query_params
    details: dict[str, list[str]] = {}
    states: list[str] = []
    for raw in params.getlist("state"):
        for value in raw.split(","):
            if value not in ops.TASK_STATES:
                details.setdefault("state", []).append(f"unknown state {value!r}; one of {', '.join(ops.TASK_STATES)}")
            else:
                states.append(value)
    older_than = None
    if "older_than" in params:
        raw = params["older_than"]
        if NUMBER_RE.fullmatch(raw) and 0 <= float(raw) <= MAX_OLDER_THAN:
            older_than = float(raw)
        else:
            details["older_than"] = [f"must be a number of seconds from 0 to {MAX_OLDER_THAN}"]
    limit = 100
    if "limit" in params:
        raw = params["limit"]
        if INTEGER_RE.fullmatch(raw) and 1 <= int(raw) <= ops.MAX_TASKS:
            limit = int(raw)
        else:
            details["limit"] = [f"must be an integer from 1 to {ops.MAX_TASKS}"]
    terminal = params.get("terminal") or None
    if terminal is not None and (len(terminal) > 63 or "\x00" in terminal):
        details["terminal"] = ["a terminal name: at most 63 characters, no NUL"]
    if details:
        raise ValidationFailed("invalid query parameters", details)
    return {"states": states or None, "older_than": older_than, "limit": limit, "terminal": terminal}


class OpsTasksView(OpsView):
    @extend_schema(
        operation_id="ops_tasks",
        parameters=operation_parameters(
            csv_enum("state", ops.TASK_STATES, "comma-separated states; default: every state"),
            query("older_than", {"type": "number", "minimum": 0, "maximum": MAX_OLDER_THAN},
                  "only tasks accepted at least this many seconds ago"),
            query("terminal", {"type": "string", "maxLength": 63, "pattern": NO_NUL_PATTERN},
                  "only this terminal's tasks (empty: all)"),
            query("limit", {"type": "integer", "minimum": 1, "maximum": ops.MAX_TASKS},
                  f"1-{ops.MAX_TASKS}, default 100"),
            session=False,
        ),
        responses={
            200: inline_serializer(
                name="OpsTasks",
                fields={"tasks": serializers.ListField(child=serializers.DictField()), "stuckAfter": serializers.FloatField()},
            ),
            **OPS_ERRORS,
        },
        description="Tasks across every session: in-flight ones first, oldest first (the stuck lead), then "
        "final ones newest first. `stuck`: not final and older than BRIDGE_OPS_STUCK_AFTER seconds.",
    )
    def get(self, request: Request) -> Response:
        return Response(ops.tasks_for_ops(**_parse_tasks_query(request)))


@csrf_exempt
@ops_endpoint
def metrics_view(request: HttpRequest) -> HttpResponse:
    """Prometheus text exposition (staff or ops token, like the other ops endpoints)."""
    return HttpResponse(ops_metrics.render(), content_type=CONTENT_TYPE_LATEST)

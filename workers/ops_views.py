"""Ops endpoints: ``/mt5/client/ops/terminals``, ``/mt5/client/ops/tasks`` and ``/metrics``.

Thin: the figures come from ``workers.ops`` and ``workers.ops_metrics``; access is ``ops_auth``'s.
"""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from prometheus_client import CONTENT_TYPE_LATEST
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from bridge_project.errors import ValidationFailed, error_body
from bridge_project.ratelimit import RateLimited, limited_response
from bridge_project.schema import error

from . import ops, ops_metrics
from .ops_auth import (
    OPS_AUTHENTICATION,
    OPS_RATE_LIMITED,
    IsStaffOrOpsToken,
    ops_access_denied,
    ops_rate_limit,
)

OPS_ERRORS = {
    401: error("Unauthorized: neither a staff login nor the ops token"),
    403: error("Forbidden: a workspace API key or a non-staff user"),
    429: error("RateLimited: over BRIDGE_THROTTLE_OPS_RATE (per ops token or client IP); Retry-After set"),
}


class OpsView(APIView):
    authentication_classes = OPS_AUTHENTICATION
    permission_classes = [IsStaffOrOpsToken]
    throttle_classes: list = []  # ops_rate_limit instead, before authentication

    def initial(self, request: Request, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        wait = ops_rate_limit(request)
        if wait is not None:
            raise RateLimited(wait, OPS_RATE_LIMITED)
        super().initial(request, *args, **kwargs)


class OpsTerminalsView(OpsView):
    @extend_schema(
        operation_id="ops_terminals",
        responses={
            200: inline_serializer(
                name="OpsTerminals",
                fields={"terminals": serializers.ListField(child=serializers.DictField()), "asOf": serializers.FloatField()},
            ),
            **OPS_ERRORS,
        },
        description="Each terminal: backend, bound session, pinned worker alive and last heartbeat, queue "
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
    params = request.query_params
    details: dict[str, list[str]] = {}
    states: list[str] = []
    for raw in params.getlist("state"):
        for value in raw.split(","):
            value = value.strip()
            if value not in ops.TASK_STATES:
                details.setdefault("state", []).append(f"unknown state {value!r}; one of {', '.join(ops.TASK_STATES)}")
            else:
                states.append(value)
    older_than = None
    if "older_than" in params:
        try:
            older_than = float(params["older_than"])
            if not 0 <= older_than <= 10 * 365 * 86400 or older_than != older_than:
                raise ValueError
        except ValueError:
            details["older_than"] = ["must be a number of seconds, 0 or more"]
    limit = 100
    if "limit" in params:
        try:
            limit = int(params["limit"])
            if not 1 <= limit <= ops.MAX_TASKS:
                raise ValueError
        except ValueError:
            details["limit"] = [f"must be an integer from 1 to {ops.MAX_TASKS}"]
    terminal = params.get("terminal") or None
    if terminal is not None and len(terminal) > 63:
        details["terminal"] = ["too long"]
    if details:
        raise ValidationFailed("invalid query parameters", details)
    return {"states": states or None, "older_than": older_than, "limit": limit, "terminal": terminal}


class OpsTasksView(OpsView):
    @extend_schema(
        operation_id="ops_tasks",
        parameters=[
            OpenApiParameter("state", str, description="comma-separated states; default: queued,dispatched,unknown"),
            OpenApiParameter("older_than", float, description="only tasks accepted at least this many seconds ago"),
            OpenApiParameter("terminal", str, description="only this terminal's tasks"),
            OpenApiParameter("limit", int, description="1-1000, default 100"),
        ],
        responses={
            200: inline_serializer(
                name="OpsTasks",
                fields={"tasks": serializers.ListField(child=serializers.DictField()), "stuckAfter": serializers.FloatField()},
            ),
            400: error("ValidationError: unknown state, bad older_than or limit"),
            **OPS_ERRORS,
        },
        description="Tasks across every session: in-flight ones first, oldest first (the stuck lead), then "
        "final ones newest first. `stuck`: not final and older than BRIDGE_OPS_STUCK_AFTER seconds.",
    )
    def get(self, request: Request) -> Response:
        return Response(ops.list_tasks(**_parse_tasks_query(request)))


@csrf_exempt
def metrics_view(request: HttpRequest) -> HttpResponse:
    """Prometheus text exposition (staff or ops token, like the other ops endpoints)."""
    wait = ops_rate_limit(request)
    if wait is not None:
        return limited_response(wait, OPS_RATE_LIMITED)
    denied = ops_access_denied(request)
    if denied is not None:
        return denied
    if request.method not in ("GET", "HEAD"):
        return JsonResponse(error_body("MethodNotAllowed", f"method {request.method} not allowed"), status=405)
    return HttpResponse(ops_metrics.render(), content_type=CONTENT_TYPE_LATEST)

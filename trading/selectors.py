"""Reading tasks back: one by id (workspace-scoped) and the session's list (filters, cursor pages)."""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db.models import Q

from bridge_project.errors import NotFound, ValidationFailed
from sessions.models import BridgeSession, Workspace
from trading.models import TaskKind, TaskState, TradeTask

MAX_LIMIT = 200
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)
DEFAULT_LIMIT = 50


def task_of_workspace(workspace: Workspace, task_id: str) -> TradeTask:
    task = TradeTask.objects.filter(id=task_id, workspace=workspace).first()
    if task is None:
        raise NotFound("unknown task", {"taskId": task_id})
    return task


def _encode_cursor(task: TradeTask) -> str:
    micros = (task.created_at - EPOCH) // MICROSECOND
    return base64.urlsafe_b64encode(f"{micros}|{task.id}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        micros, task_id = raw.split("|", 1)
        return EPOCH + int(micros) * MICROSECOND, task_id
    except (ValueError, binascii.Error, UnicodeDecodeError, OverflowError, OSError) as exc:
        raise ValidationFailed("invalid cursor", {"cursor": ["not a cursor this API returned"]}) from exc


def _choices(raw: str | None, allowed: list[str], name: str) -> list[str] | None:
    if raw is None:
        return None
    values = [v for v in raw.split(",") if v]
    bad = [v for v in values if v not in allowed]
    if bad or not values:
        raise ValidationFailed(f"invalid {name}", {name: [f"one or more of {', '.join(allowed)}"]})
    return values


def task_list(session: BridgeSession, params: Any) -> tuple[list[TradeTask], str | None]:
    """The session's tasks, newest first: ``state``/``kind`` (comma lists), ``requestId``, ``since``
    (unix seconds, created at or after), ``limit`` (1-200), ``cursor`` (from the previous page)."""
    unknown = sorted(set(params) - {"state", "kind", "requestId", "since", "limit", "cursor"})
    if unknown:
        raise ValidationFailed("unknown query parameter", {name: ["unknown parameter"] for name in unknown})
    qs = TradeTask.objects.filter(session=session)
    states = _choices(params.get("state"), list(TaskState.values), "state")
    if states:
        qs = qs.filter(state__in=states)
    kinds = _choices(params.get("kind"), list(TaskKind.values), "kind")
    if kinds:
        qs = qs.filter(kind__in=kinds)
    if params.get("requestId") is not None:
        qs = qs.filter(request_id=params["requestId"])
    if params.get("since") is not None:
        try:
            since = float(params["since"])
            qs = qs.filter(created_at__gte=datetime.fromtimestamp(since, tz=UTC))
        except (ValueError, OverflowError, OSError) as exc:
            raise ValidationFailed("invalid since", {"since": ["unix seconds"]}) from exc
    limit = DEFAULT_LIMIT
    if params.get("limit") is not None:
        try:
            limit = int(params["limit"])
        except ValueError as exc:
            raise ValidationFailed("invalid limit", {"limit": ["an integer"]}) from exc
        if not 1 <= limit <= MAX_LIMIT:
            raise ValidationFailed("invalid limit", {"limit": [f"between 1 and {MAX_LIMIT}"]})
    if params.get("cursor"):
        at, task_id = _decode_cursor(params["cursor"])
        qs = qs.filter(Q(created_at__lt=at) | Q(created_at=at, id__lt=task_id))
    rows = list(qs.order_by("-created_at", "-id")[: limit + 1])
    next_cursor = _encode_cursor(rows[limit - 1]) if len(rows) > limit else None
    return rows[:limit], next_cursor

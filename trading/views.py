"""Write and task endpoints. Thin: validation of the body here, the rules in ``trading.writes``."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from bridge_project.errors import NotFound, Unauthorized
from bridge_project.schema import COMMON_ERRORS, REQUEST_ID_HEADER, SESSION_HEADER, error
from sessions.services import get_session, require_active_session

from . import writes
from .ledger import Outcome
from .queries import list_tasks, task_of_workspace
from .serializers import (
    OrderCreateSerializer,
    OrderPatchSerializer,
    PositionCloseSerializer,
    PositionModifySerializer,
    TaskListSerializer,
    TaskSerializer,
)

MAX_TICKET = 2**63 - 1
REPLAY_NOTE = (" A replay of the same request id and payload answers the same task with the same status and "
               "`Idempotent-Replayed: true`; another payload is 409 TaskConflict.")
WRITE_ERRORS = {
    **COMMON_ERRORS,
    401: error("Unauthorized / SessionExpired"),
    409: error("TaskConflict: request id reused with another payload (or for another account), or the task can "
               "no longer change / SessionNotReady: the session is still `opening`, nothing was queued"),
    502: error("BridgeUnavailable: the terminal's symbol specs could not be obtained"),
}
TASK_ACCEPTED = OpenApiResponse(TaskSerializer, description="accepted: the task (state queued), or its replay")


def _answer(outcome: Outcome) -> Response:
    response = Response(TaskSerializer(outcome.task).data, status=outcome.status_code)
    if outcome.replayed:
        response["Idempotent-Replayed"] = "true"
    return response


def _fresh(request: Request) -> bool:
    """The client sent no request id: the bridge made a new one (nothing to replay)."""
    return not request._request.bridge_request_id_given


def _body(serializer_class: type, request: Request) -> dict:
    body = serializer_class(data=request.data)
    body.is_valid(raise_exception=True)
    return dict(body.validated_data)


def _ticket(ticket: int) -> int:
    if not 0 < ticket <= MAX_TICKET:
        raise NotFound("unknown ticket", {"ticket": str(ticket)})
    return ticket


def _delegate_read(name: str, request: Request, *args: object) -> Response:
    """GETs on shared paths belong to the read endpoints (trading.reads), when they exist."""
    try:
        from trading.reads import views as reads
    except ImportError:
        reads = None
    target = getattr(reads, name, None)
    if target is None:
        return Response({"error": {"code": "MethodNotAllowed", "message": "GET is not available here",
                                   "details": {}}}, status=405)
    if isinstance(target, type):
        return target().get(request, *args)
    return target(request, *args)


class OrdersView(APIView):
    """POST /orders (an order.create task); GET /orders is the reads' pending-order list."""

    @extend_schema(operation_id="order_create", request=OrderCreateSerializer,
                   parameters=[SESSION_HEADER, REQUEST_ID_HEADER],
                   responses={202: TASK_ACCEPTED, **WRITE_ERRORS},
                   description="Places an order: an `order.create` task executed once by the terminal's pinned "
                   "worker. Validated against the symbol's volume limits/step and digits first. `comment`: at "
                   "most 16 characters (the bridge tag takes the rest of MT5's 29)." + REPLAY_NOTE)
    def post(self, request: Request) -> Response:
        session = require_active_session(request)
        data = _body(OrderCreateSerializer, request)
        return _answer(writes.place_order(session, request._request.bridge_request_id, data,
                                       fresh_id=_fresh(request)))

    @extend_schema(operation_id="orders_list_pending", parameters=[SESSION_HEADER],
                   responses={200: OpenApiTypes.OBJECT}, description="Pending orders (the read endpoints).")
    def get(self, request: Request) -> Response:
        return _delegate_read("OrdersView", request)


class OrderDetailView(APIView):
    @extend_schema(operation_id="order_patch", request=OrderPatchSerializer,
                   parameters=[SESSION_HEADER, REQUEST_ID_HEADER],
                   responses={200: OpenApiResponse(TaskSerializer, description="queued task changed in place"),
                              202: OpenApiResponse(TaskSerializer, description="a new order.modify task"),
                              404: error("NotFound: unknown task"), **WRITE_ERRORS},
                   description="Still queued: changed in place (200, same task). A pending order working at the "
                   "broker: a new `order.modify` task (202; volume and comment cannot change there). "
                   "Otherwise 409." + REPLAY_NOTE)
    def patch(self, request: Request, task_id: str) -> Response:
        session = require_active_session(request)
        data = _body(OrderPatchSerializer, request)
        return _answer(writes.patch_order(session, request._request.bridge_request_id, task_id, data,
                                       fresh_id=_fresh(request)))

    @extend_schema(operation_id="order_cancel", request=None, parameters=[SESSION_HEADER, REQUEST_ID_HEADER],
                   responses={200: OpenApiResponse(TaskSerializer, description="queued task cancelled"),
                              202: OpenApiResponse(TaskSerializer, description="a new order.cancel task"),
                              404: error("NotFound: unknown task"), **WRITE_ERRORS},
                   description="Still queued: cancelled (200). A pending order at the broker: a new "
                   "`order.cancel` task (202). Otherwise 409." + REPLAY_NOTE)
    def delete(self, request: Request, task_id: str) -> Response:
        session = require_active_session(request)
        return _answer(writes.cancel_order(session, request._request.bridge_request_id, task_id,
                                       fresh_id=_fresh(request)))


class PositionView(APIView):
    """GET /positions/{ticket} is the reads' (position_detail); PATCH is the SL/TP task."""

    @extend_schema(operation_id="position_get", parameters=[SESSION_HEADER], responses={200: OpenApiTypes.OBJECT},
                   description="One open position (the read endpoints).")
    def get(self, request: Request, ticket: int) -> Response:
        return _delegate_read("position_detail", request, ticket)

    @extend_schema(operation_id="position_modify", request=PositionModifySerializer,
                   parameters=[SESSION_HEADER, REQUEST_ID_HEADER],
                   responses={202: TASK_ACCEPTED, 404: error("NotFound: ticket out of range"), **WRITE_ERRORS},
                   description="Sets the position's SL and/or TP (0 removes one): a `position.modify` task. "
                   "A level not given keeps its current value." + REPLAY_NOTE)
    def patch(self, request: Request, ticket: int) -> Response:
        session = require_active_session(request)
        data = _body(PositionModifySerializer, request)
        return _answer(writes.modify_position(session, request._request.bridge_request_id, _ticket(ticket), data,
                                       fresh_id=_fresh(request)))


class PositionCloseView(APIView):
    @extend_schema(operation_id="position_close", request=PositionCloseSerializer,
                   parameters=[SESSION_HEADER, REQUEST_ID_HEADER],
                   responses={202: TASK_ACCEPTED, 404: error("NotFound: ticket out of range"), **WRITE_ERRORS},
                   description="Closes the position (partially when `volume` is less than its volume): a "
                   "`position.close` task; a position the terminal does not have ends `rejected` (10036)."
                   + REPLAY_NOTE)
    def post(self, request: Request, ticket: int) -> Response:
        session = require_active_session(request)
        data = _body(PositionCloseSerializer, request)
        return _answer(writes.close_position(session, request._request.bridge_request_id, _ticket(ticket), data,
                                       fresh_id=_fresh(request)))


class TaskDetailView(APIView):
    @extend_schema(operation_id="task_get", responses={200: TaskSerializer, 404: error("NotFound"), **COMMON_ERRORS},
                   description="One task of this workspace, by id (reconcile by task id). Works after the "
                   "session closed or expired: `x-session-id` is not needed.")
    def get(self, request: Request, task_id: str) -> Response:
        return Response(TaskSerializer(task_of_workspace(request.user.workspace, task_id)).data)


class TaskListView(APIView):
    @extend_schema(
        operation_id="task_list",
        parameters=[
            SESSION_HEADER,
            OpenApiParameter("state", str, description="comma list of states"),
            OpenApiParameter("kind", str, description="comma list of kinds"),
            OpenApiParameter("requestId", str),
            OpenApiParameter("since", float, description="unix seconds: created at or after"),
            OpenApiParameter("limit", int, description="1-200 (default 50)"),
            OpenApiParameter("cursor", str, description="nextCursor of the previous page"),
        ],
        responses={200: TaskListSerializer, 401: error("Unauthorized"), **COMMON_ERRORS},
        description="The session's tasks, newest first. The session may be closed or expired (its tasks "
        "stay readable).",
    )
    def get(self, request: Request) -> Response:
        session_id = request.META.get("HTTP_X_SESSION_ID")
        if not session_id:
            raise Unauthorized("x-session-id header is required", {"x-session-id": ["required"]})
        try:
            session = get_session(request.user.workspace, session_id)
        except NotFound as exc:  # unknown, or another workspace's
            raise Unauthorized("unknown session", {"x-session-id": ["unknown"]}) from exc
        tasks, cursor = list_tasks(session, request.query_params)
        return Response({"tasks": TaskSerializer(tasks, many=True).data, "nextCursor": cursor})

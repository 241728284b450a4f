"""Write and task endpoints. Thin: validation of the body here, the rules in ``trading.services``."""

from __future__ import annotations

import re

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from bridge_project.errors import NotFound, Unauthorized, ValidationFailed
from bridge_project.schema import (
    NOT_READY,
    PAUSED,
    REPLAYED_HEADER,
    REQUEST_ID_PATTERN,
    RESPONSE_HEADERS,
    SESSION_ERRORS,
    SESSION_HEADER,
    TASK_ID_PATTERN,
    api_errors,
    body_required,
    csv_enum,
    error,
    operation_parameters,
    path_id,
    query,
)
from sessions.services import require_active_session, session_get
from trading.reads import views as reads

from . import services
from .ledger import CallOutcome, Outcome
from .models import TaskKind, TaskState
from .reads.views import READ_ERRORS, SYMBOL_QUERY
from .selectors import MAX_LIMIT, task_list, task_of_workspace
from .serializers import (
    CURSOR_PATTERN,
    MAX_SINCE,
    CallTasksSerializer,
    OrderCreateSerializer,
    OrderPatchSerializer,
    PositionCloseSerializer,
    PositionModifySerializer,
    PositionsCloseAllSerializer,
    TaskListQuery,
    TaskListSerializer,
    TaskSerializer,
)

MAX_TICKET = 2**63 - 1
REPLAY_NOTE = (" A replay of the same request id and payload answers the same task with the same status and "
               "`Idempotent-Replayed: true`; another payload is 409 TaskConflict.")
DATA_RULES = (" 400 also when the body does not fit the terminal's data: an unknown `symbol`, a `volume` outside "
              "the symbol's limits or off its step, prices with more digits than the symbol's or off its tick "
              "size, `price` missing on a pending order, `stoplimit` on a type that has none (or missing on a "
              "STOP_LIMIT one), `expiration` without type_time SPECIFIED/SPECIFIED_DAY (or in the past).")
WRITE_ERRORS = api_errors(SESSION_ERRORS, {
    409: error("TaskConflict: request id reused with another payload (or for another account), or the task can "
               "no longer change / " + NOT_READY + " / " + PAUSED),
    502: error("BridgeUnavailable: the terminal's symbol specs could not be obtained"),
}, body=True)
TASK_ACCEPTED = OpenApiResponse(TaskSerializer, description="accepted: the task (state queued), or its replay")
TASK_ID = path_id("task_id", TASK_ID_PATTERN, "a task id (`taskId`)")
TICKET = OpenApiParameter("ticket", {"type": "integer", "minimum": 1, "maximum": MAX_TICKET},
                          OpenApiParameter.PATH, description="a position ticket; 0 or over 2**63-1: 404")
UNKNOWN_TASK = {404: error("NotFound: unknown task (or another workspace's)")}
UNKNOWN_POSITION = {404: error("NotFound: no such position (ticket out of range)")}
MONEY_ERRORS = {502: error("BridgeUnavailable: the terminal's symbol specs, or (with slMoney/tpMoney) the "
                           "position or its symbol, could not be read from the terminal")}


def _write_parameters(*extra: OpenApiParameter) -> list[OpenApiParameter]:
    return operation_parameters(*extra, REPLAYED_HEADER)


def _answer(outcome: Outcome) -> Response:
    response = Response(TaskSerializer(outcome.task).data, status=outcome.status_code)
    if outcome.replayed:
        response["Idempotent-Replayed"] = "true"
    return response


def _answer_call(outcome: CallOutcome) -> Response:
    response = Response({"tasks": TaskSerializer(outcome.tasks, many=True).data}, status=outcome.status_code)
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


def _task_id(task_id: str) -> str:
    """A task id from the path; another shape cannot be a task (and must not reach the database)."""
    if not re.fullmatch(TASK_ID_PATTERN, task_id):
        raise NotFound("unknown task", {"taskId": task_id[:64]})
    return task_id


class OrderCollectionView(APIView):
    """POST /orders (an order.create task); GET /orders is the reads' pending-order list."""

    @extend_schema(operation_id="order_create", request=OrderCreateSerializer, parameters=_write_parameters(),
                   responses={202: TASK_ACCEPTED, **WRITE_ERRORS},
                   examples=[OpenApiExample("a market buy", request_only=True,
                                            value={"symbol": "EURUSD", "type": "BUY", "volume": 0.01})],
                   description="Places an order: an `order.create` task executed once by the terminal's pinned "
                   "worker. Validated against the symbol's volume limits/step and digits first. `comment`: at "
                   "most 16 characters (the bridge tag takes the rest of MT5's 29)." + DATA_RULES + REPLAY_NOTE)
    def post(self, request: Request) -> Response:
        session = require_active_session(request)
        data = _body(OrderCreateSerializer, request)
        return _answer(services.order_place(session=session, request_id=request._request.bridge_request_id, data=data,
                                             fresh_id=_fresh(request)))

    @extend_schema(operation_id="orders_list_pending", parameters=operation_parameters(SYMBOL_QUERY),
                   responses={200: OpenApiTypes.OBJECT, **READ_ERRORS},
                   description="`{orders: [...]}`: pending orders at the terminal (the read endpoints).")
    def get(self, request: Request) -> Response:
        return reads.orders_list(request)


class OrderDetailView(APIView):
    @extend_schema(operation_id="order_patch", request=OrderPatchSerializer, parameters=_write_parameters(TASK_ID),
                   responses={200: OpenApiResponse(TaskSerializer, description="queued task changed in place"),
                              202: OpenApiResponse(TaskSerializer, description="a new order.modify task"),
                              **WRITE_ERRORS, **UNKNOWN_TASK},
                   description="Still queued: changed in place (200, same task), the order validated again as a "
                   "whole. A pending order working at the broker: a new `order.modify` task (202; volume and "
                   "comment cannot change there: 400). Otherwise 409." + DATA_RULES + REPLAY_NOTE)
    @body_required
    def patch(self, request: Request, task_id: str) -> Response:
        session = require_active_session(request)
        data = _body(OrderPatchSerializer, request)
        return _answer(services.order_patch(session=session, request_id=request._request.bridge_request_id,
                                             task_id=_task_id(task_id), changes=data, fresh_id=_fresh(request)))

    @extend_schema(operation_id="order_cancel", request=None, parameters=_write_parameters(TASK_ID),
                   responses={200: OpenApiResponse(TaskSerializer, description="queued task cancelled"),
                              202: OpenApiResponse(TaskSerializer, description="a new order.cancel task"),
                              **api_errors(SESSION_ERRORS, {409: WRITE_ERRORS[409]}), **UNKNOWN_TASK},
                   description="Still queued: cancelled (200). A pending order at the broker: a new "
                   "`order.cancel` task (202). Otherwise 409." + REPLAY_NOTE)
    def delete(self, request: Request, task_id: str) -> Response:
        session = require_active_session(request)
        return _answer(services.order_cancel(session=session, request_id=request._request.bridge_request_id,
                                              task_id=_task_id(task_id), fresh_id=_fresh(request)))


class PositionView(APIView):
    """GET /positions/{ticket} is the reads' (position_detail); PATCH is the SL/TP task."""

    @extend_schema(operation_id="position_get", parameters=operation_parameters(TICKET),
                   responses={200: OpenApiTypes.OBJECT, **READ_ERRORS,
                              404: error("NotFound: no open position with this ticket")},
                   description="One open position (the read endpoints).")
    def get(self, request: Request, ticket: int) -> Response:
        if not 0 < ticket <= MAX_TICKET:
            require_active_session(request)
            raise NotFound(f"no open position {ticket}", {"ticket": str(ticket)})
        return reads.position_detail(request, ticket)

    @extend_schema(operation_id="position_modify", request=PositionModifySerializer,
                   parameters=_write_parameters(TICKET),
                   responses={202: TASK_ACCEPTED, **WRITE_ERRORS, **MONEY_ERRORS,
                              404: error("NotFound: no such position (ticket out of range; with slMoney/tpMoney: "
                                         "no open position with this ticket at the terminal)")},
                   description="Sets the position's SL and/or TP (0 removes one): a `position.modify` task. "
                   "A level not given keeps its current value. A position the bridge opened: prices with more "
                   "digits than its symbol's, or off its tick size, are a 400. A level may be given as money "
                   "instead (`slMoney`, `tpMoney`: account currency, > 0; not with `sl`/`tp` of the same level: "
                   "400): converted to a price when accepted, from the open position (price_open, volume, type) "
                   "and its symbol's tick value and size as the terminal shows them: distance = money / (volume "
                   "× tick value / tick size), on the tick grid on the safe side (the SL toward the open price: "
                   "its loss is at most slMoney; the TP away from it: its profit is at least tpMoney; within one "
                   "tick). The task's `request` holds the prices in `sl`/`tp` and `moneyLevels` (what each "
                   "price really means). 400 naming slMoney/tpMoney when no such price exists (less than a "
                   "tick's worth, a price at or below 0)." + REPLAY_NOTE + " (A replay is the same task even if "
                   "prices moved since: the fingerprint is of the body as sent.)")
    @body_required
    def patch(self, request: Request, ticket: int) -> Response:
        session = require_active_session(request)
        data = _body(PositionModifySerializer, request)
        return _answer(services.position_modify(session=session, request_id=request._request.bridge_request_id,
                                                 ticket=_ticket(ticket), data=data, fresh_id=_fresh(request)))


class PositionCloseView(APIView):
    @extend_schema(operation_id="position_close", request=PositionCloseSerializer,
                   parameters=_write_parameters(TICKET),
                   responses={202: TASK_ACCEPTED, **WRITE_ERRORS, **UNKNOWN_POSITION},
                   description="Closes the position (partially when `volume` is less than its volume): a "
                   "`position.close` task; a position the terminal does not have ends `rejected` (10036). A "
                   "position the bridge opened: a `volume` outside its symbol's limits or off its step is a 400."
                   + REPLAY_NOTE)
    def post(self, request: Request, ticket: int) -> Response:
        session = require_active_session(request)
        data = _body(PositionCloseSerializer, request)
        return _answer(services.position_close(session=session, request_id=request._request.bridge_request_id,
                                                ticket=_ticket(ticket), data=data, fresh_id=_fresh(request)))


CALL_REQUEST_ID_HEADER = OpenApiParameter(
    "x-request-id", {"type": "string", "pattern": REQUEST_ID_PATTERN, "minLength": 1,
                     "maxLength": services.MAX_CALL_REQUEST_ID},
    OpenApiParameter.HEADER, required=False,
    description=f"idempotency key of the call, 1-{services.MAX_CALL_REQUEST_ID} printable ASCII characters, no "
    "space or comma (each task's is `<this>/<ticket>`, within 128: a longer one is a 400); absent: the bridge "
    "makes one. Echoed on every response",
)


class PositionsCloseView(APIView):
    """POST /positions/close: close every open position of the account matching the filters."""

    @extend_schema(
        operation_id="positions_close_all", request=PositionsCloseAllSerializer,
        parameters=[SESSION_HEADER, CALL_REQUEST_ID_HEADER, *RESPONSE_HEADERS, REPLAYED_HEADER],
        responses={202: OpenApiResponse(CallTasksSerializer, description="a `position.close` task per matching "
                                        "position (state queued), or the replay of the call"),
                   200: OpenApiResponse(CallTasksSerializer, description="no open position matched: `{tasks: []}` "
                                        "(nothing queued), or the replay of such a call"),
                   **WRITE_ERRORS,
                   409: error("TaskConflict: the request id was used with another body (`details.taskIds`: the "
                              "call's tasks) or by another write, or a task's id `<request id>/<ticket>` is "
                              "another write's / " + NOT_READY + " / " + PAUSED),
                   502: error("BridgeUnavailable: the account's open positions could not be read from the "
                              "terminal")},
        examples=[OpenApiExample("every EURUSD buy", request_only=True, value={"symbol": "EURUSD", "side": "BUY"})],
        description="Closes every open position of the session's account that matches all the filters given "
        "(`symbol`, `side`, `magic`; none: every position), read from the terminal as GET /positions reads it: "
        "one `position.close` task per position (a full close; `deviation` for each), by ticket, each under "
        "the request id `<request id>/<ticket>`. The call's request id is recorded with its body and its "
        "tasks: a replay (same request id and body) answers the same tasks as they are now, with the same "
        "status and `Idempotent-Replayed: true`, without reading the terminal again (even if positions closed "
        "or opened since); another body is 409 TaskConflict. Counted as one request by the rate limits.")
    def post(self, request: Request) -> Response:
        session = require_active_session(request)
        data = _body(PositionsCloseAllSerializer, request)
        return _answer_call(services.positions_close_all(session=session,
                                                         request_id=request._request.bridge_request_id,
                                                         data=data, fresh_id=_fresh(request)))


class TaskDetailView(APIView):
    @extend_schema(operation_id="task_get", parameters=operation_parameters(TASK_ID, session=False),
                   responses={200: TaskSerializer, **api_errors(), **UNKNOWN_TASK},
                   description="One task of this workspace, by id (reconcile by task id). Works after the "
                   "session closed or expired: `x-session-id` is not needed.")
    def get(self, request: Request, task_id: str) -> Response:
        return Response(TaskSerializer(task_of_workspace(request.user.workspace, _task_id(task_id))).data)


class TaskListView(APIView):
    @extend_schema(
        operation_id="task_list",
        parameters=operation_parameters(
            csv_enum("state", list(TaskState.values), "comma-separated states"),
            csv_enum("kind", list(TaskKind.values), "comma-separated kinds"),
            query("requestId", {"type": "string", "pattern": REQUEST_ID_PATTERN}, "the task of this request id"),
            query("since", {"type": "number", "minimum": 0, "maximum": MAX_SINCE},
                  "unix seconds: created at or after"),
            query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
                  f"1-{MAX_LIMIT} (default 50)"),
            query("cursor", {"type": "string", "pattern": CURSOR_PATTERN},
                  "`nextCursor` of the previous page (another value: 400)"),
        ),
        responses={200: TaskListSerializer, **api_errors(SESSION_ERRORS)},
        description="The session's tasks, newest first. The session may be closed or expired (its tasks "
        "stay readable).",
    )
    def get(self, request: Request) -> Response:
        session_id = request.META.get("HTTP_X_SESSION_ID")
        if not session_id:
            raise Unauthorized("x-session-id header is required", {"x-session-id": ["required"]})
        try:
            session = session_get(workspace=request.user.workspace, session_id=session_id)
        except NotFound as exc:  # unknown, or another workspace's
            raise Unauthorized("unknown session", {"x-session-id": ["unknown"]}) from exc
        _task_query(request)
        tasks, cursor = task_list(session, request.query_params)
        return Response({"tasks": TaskSerializer(tasks, many=True).data, "nextCursor": cursor})


def _task_query(request: Request) -> None:
    """The query of GET /tasks checked as the schema states it (task_list refuses unknown parameters)."""
    params = request.query_params
    query_serializer = TaskListQuery(data={k: params.get(k) for k in params})
    if not query_serializer.is_valid():
        raise ValidationFailed("invalid query parameters",
                               {k: [str(m) for m in v] for k, v in query_serializer.errors.items()})

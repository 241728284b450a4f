"""Session endpoints: open, read, heartbeat, close. Thin: the rules live in services."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from bridge_project.errors import ValidationFailed
from bridge_project.schema import COMMON_ERRORS, error

from . import services
from .serializers import SessionOpenSerializer, SessionSerializer, session_payload


def _wait_seconds(request: Request) -> float:
    raw = request.query_params.get("wait")
    if raw is None:
        return 0.0
    try:
        value = float(raw)
    except ValueError as exc:
        raise ValidationFailed("wait must be a number of seconds", {"wait": ["not a number"]}) from exc
    if not 0 <= value <= 30:
        raise ValidationFailed("wait must be between 0 and 30 seconds", {"wait": ["out of range"]})
    return value


class SessionOpenView(APIView):
    @extend_schema(
        operation_id="session_open",
        request=SessionOpenSerializer,
        parameters=[
            OpenApiParameter(
                "wait", float, description="seconds (0-30) to wait for the login outcome before answering"
            )
        ],
        responses={
            201: SessionSerializer,
            **COMMON_ERRORS,
            404: error("NotFound: unknown terminal"),
            409: error("TerminalBusy: the terminal asked for, or every terminal, has a live session"),
        },
        description="Pins a free terminal (or `terminal`), stores the password encrypted and queues the "
        "login on that terminal's worker. `status` goes opening → active | login_failed.",
    )
    def post(self, request: Request) -> Response:
        wait = _wait_seconds(request)
        body = SessionOpenSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        session = services.session_open(
            workspace=request.user.workspace,
            account_id=data["accountId"],
            server=data["server"],
            login=data["login"],
            password=data["password"],
            terminal=data.get("terminal"),
        )
        if wait:
            session = services.session_wait_for_outcome(session=session, seconds=wait)
        return Response(session_payload(session), status=status.HTTP_201_CREATED)


class SessionDetailView(APIView):
    @extend_schema(operation_id="session_get", responses={200: SessionSerializer, 404: error("NotFound")})
    def get(self, request: Request, session_id: str) -> Response:
        return Response(session_payload(services.session_get(workspace=request.user.workspace, session_id=session_id)))

    @extend_schema(
        operation_id="session_close",
        request=None,
        responses={200: SessionSerializer, 404: error("NotFound")},
        description="Closes the session, revokes its id and frees the terminal (its account binding is "
        "cleared: the terminal serves nothing of that account until the next login). Tasks still `queued` end "
        "`cancelled` with `result.error.code` `SessionEnded`; a task already executing finishes.",
    )
    def delete(self, request: Request, session_id: str) -> Response:
        session = services.session_get(workspace=request.user.workspace, session_id=session_id)
        return Response(session_payload(services.session_close(session=session)))


class SessionHeartbeatView(APIView):
    @extend_schema(
        operation_id="session_heartbeat",
        request=None,
        responses={200: SessionSerializer, 401: error("SessionExpired"), 404: error("NotFound")},
    )
    def post(self, request: Request, session_id: str) -> Response:
        session = services.session_get(workspace=request.user.workspace, session_id=session_id)
        return Response(session_payload(services.session_heartbeat(session=session)))

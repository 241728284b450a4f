"""Session endpoints: open, read, heartbeat, pause, resume, close. Thin: the rules live in services."""

from __future__ import annotations

import re

from drf_spectacular.utils import OpenApiExample, extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from bridge_project.errors import NotFound, ValidationFailed
from bridge_project.schema import (
    NOT_READY,
    SESSION_ID_PATTERN,
    api_errors,
    error,
    operation_parameters,
    path_id,
    query,
)

from . import services
from .serializers import SessionOpenSerializer, SessionPauseSerializer, SessionSerializer, session_payload

MAX_WAIT = 30.0
NUMBER_RE = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")  # a JSON number
SESSION_ID = path_id("session_id", SESSION_ID_PATTERN, "a session id (`sessionId`)")
UNKNOWN_SESSION = {404: error("NotFound: unknown session (or another workspace's)")}
PAUSE_ERRORS = {
    401: error("Unauthorized: API key missing, wrong or revoked / SessionExpired: the session is closed, expired "
               "or its login failed"),
    409: error(NOT_READY + " (only an active session can be paused or resumed)"),
}


def _wait_seconds(request: Request) -> float:
    raw = request.query_params.get("wait")
    if raw is None:
        return 0.0
    if not NUMBER_RE.fullmatch(raw):
        raise ValidationFailed("wait must be a number of seconds", {"wait": ["not a number"]})
    value = float(raw)
    if not 0 <= value <= MAX_WAIT:
        raise ValidationFailed("wait must be between 0 and 30 seconds", {"wait": ["out of range"]})
    return value


def _session_id(session_id: str) -> str:
    """A session id from the path; another shape cannot be a session (and must not reach the database)."""
    if not re.fullmatch(SESSION_ID_PATTERN, session_id):
        raise NotFound("unknown session", {"sessionId": session_id[:64]})
    return session_id


class SessionOpenView(APIView):
    @extend_schema(
        operation_id="session_open",
        request=SessionOpenSerializer,
        parameters=operation_parameters(
            query("wait", {"type": "number", "minimum": 0, "maximum": MAX_WAIT},
                  "seconds (0-30) to wait for the login outcome before answering"),
            session=False,
        ),
        responses={
            201: SessionSerializer,
            **api_errors({
                404: error("NotFound: unknown terminal"),
                409: error("TerminalBusy: the terminal asked for, or every terminal, has a live session"),
            }, body=True),
        },
        examples=[OpenApiExample("a demo account", request_only=True, value={
            "accountId": "acc-1", "server": "Demo", "login": 5001, "password": "s3cret-pw"})],
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
    @extend_schema(operation_id="session_get", parameters=operation_parameters(SESSION_ID, session=False),
                   responses={200: SessionSerializer, **api_errors(UNKNOWN_SESSION)},
                   description="The session whatever its status (an ended one stays readable): health, status, "
                   "broker metadata, last heartbeat, expiry.")
    def get(self, request: Request, session_id: str) -> Response:
        session = services.session_get(workspace=request.user.workspace, session_id=_session_id(session_id))
        return Response(session_payload(session))

    @extend_schema(
        operation_id="session_close",
        request=None,
        parameters=operation_parameters(SESSION_ID, session=False),
        responses={200: SessionSerializer, **api_errors(UNKNOWN_SESSION)},
        description="Closes the session, revokes its id and frees the terminal (its account binding is "
        "cleared: the terminal serves nothing of that account until the next login). Tasks still `queued` end "
        "`cancelled` with `result.error.code` `SessionEnded`; a task already executing finishes. The session "
        "stays readable (GET answers it `closed`); closing an ended session answers it as it is.",
    )
    def delete(self, request: Request, session_id: str) -> Response:
        session = services.session_get(workspace=request.user.workspace, session_id=_session_id(session_id))
        return Response(session_payload(services.session_close(session=session)))


class SessionHeartbeatView(APIView):
    @extend_schema(
        operation_id="session_heartbeat",
        request=None,
        parameters=operation_parameters(SESSION_ID, session=False),
        responses={200: SessionSerializer, **api_errors({
            401: error("Unauthorized: API key missing, wrong or revoked / SessionExpired: the session is closed, "
                       "expired or its login failed"),
        }, UNKNOWN_SESSION)},
        description="Extends a live session by its TTL (`expiresAt`).",
    )
    def post(self, request: Request, session_id: str) -> Response:
        session = services.session_get(workspace=request.user.workspace, session_id=_session_id(session_id))
        return Response(session_payload(services.session_heartbeat(session=session)))


class SessionPauseView(APIView):
    @extend_schema(
        operation_id="session_pause",
        request=SessionPauseSerializer,
        parameters=operation_parameters(SESSION_ID, session=False),
        responses={200: SessionSerializer, **api_errors(PAUSE_ERRORS, UNKNOWN_SESSION, body=True)},
        examples=[OpenApiExample("pause and drop what is queued", request_only=True, value={"cancelQueued": True})],
        description="Pauses an active session (`paused` true, `pausedAt` set): from then on its new writes "
        "(orders, order and position changes, closes) answer 409 SessionPaused and nothing is queued; a replay of a "
        "request id the bridge already holds is answered as before. Its `queued` tasks are not sent to the "
        "terminal while paused: they run after the resume, or end `cancelled` now with `cancelQueued: true`. A "
        "task the terminal's worker already claimed (`dispatched`) finishes. Reads, GET /tasks, heartbeats and "
        "events go on (the session still expires without heartbeats). Pausing a paused session changes nothing "
        "(with `cancelQueued: true` its queued tasks are cancelled). The body is optional.",
    )
    def post(self, request: Request, session_id: str) -> Response:
        session = services.session_get(workspace=request.user.workspace, session_id=_session_id(session_id))
        body = SessionPauseSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        paused = services.session_pause(session=session, cancel_queued=body.validated_data["cancelQueued"])
        return Response(session_payload(paused))


class SessionResumeView(APIView):
    @extend_schema(
        operation_id="session_resume",
        request=None,
        parameters=operation_parameters(SESSION_ID, session=False),
        responses={200: SessionSerializer, **api_errors(PAUSE_ERRORS, UNKNOWN_SESSION)},
        description="Resumes a paused session (`paused` false, `pausedAt` null): writes are accepted again and its "
        "queued tasks go to the terminal's worker, oldest first. Resuming a session that is not paused changes "
        "nothing.",
    )
    def post(self, request: Request, session_id: str) -> Response:
        session = services.session_get(workspace=request.user.workspace, session_id=_session_id(session_id))
        return Response(session_payload(services.session_resume(session=session)))

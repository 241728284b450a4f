"""One error body for every failure: ``{"error": {"code", "message", "details"}}``.

DRF's own errors (validation, parse, authentication, permission, 404, throttling), Django's
(oversized body, unknown URL) and unexpected exceptions all leave here in that shape with the
status of API.md's table. Unexpected exceptions are logged with the request id and answered as a
500 without internals. Django's handlers (``json_400`` ... ``json_500``, wired in ``urls.py``) answer
in the same shape; any other bare error answer is rewritten by ``middleware.with_error_body``, and the
web server's own refusals by ``workers.stack`` (``code_for_status``). Bad input and its limits:
docs/operations.md, "Bad input and limits".

A dependency of the bridge itself that cannot be reached (Redis as cache, broker or store: a
``redis`` connection/timeout error or kombu's ``OperationalError`` from a Celery publish) is not a
bug: it is answered ``503 Unavailable`` with ``Retry-After``, and the client retries with the same
request id (the ledger makes that safe). Code that knows it cannot go on without Redis raises
``Unavailable`` itself.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

import kombu.exceptions
import redis
from django import db as django_db
from django.conf import settings
from django.core.exceptions import (
    PermissionDenied as DjangoPermissionDenied,
    RequestDataTooBig,
    SuspiciousOperation,
)
from django.http import Http404, JsonResponse
from rest_framework import exceptions as drf, status

# DRF's Response is imported inside the two functions that make one: its module pulls in DRF's serializers,
# requests, pygments and django.contrib.postgres (~20 MB RSS) that a terminal's process, which imports
# this module for the error classes only, never uses (docs/reads.md, "Two paths to the terminal").
if TYPE_CHECKING:
    from rest_framework.response import Response

from . import metrics

logger = logging.getLogger("bridge.errors")


class BridgeError(drf.APIException):
    """An API error with an explicit code; subclasses fix the status."""

    status_code = status.HTTP_400_BAD_REQUEST
    code = "ValidationError"

    def __init__(self, message: str, details: dict[str, Any] | None = None, code: str | None = None):
        super().__init__(detail=message)
        self.message = message
        self.details = details or {}
        if code:
            self.code = code


class ValidationFailed(BridgeError):
    status_code = 400
    code = "ValidationError"


class Unauthorized(BridgeError):
    status_code = 401
    code = "Unauthorized"


class SessionExpired(BridgeError):
    status_code = 401
    code = "SessionExpired"


class NotFound(BridgeError):
    status_code = 404
    code = "NotFound"


class Conflict(BridgeError):
    status_code = 409
    code = "TaskConflict"


class SessionPaused(BridgeError):
    """The session is paused (``POST /session/{id}/pause``): a new write is refused and nothing is queued;
    a replay of a request id the ledger already holds is still answered (docs/sessions.md, "Pause and resume")."""

    status_code = 409
    code = "SessionPaused"


class LengthRequired(BridgeError):
    """A request body without Content-Length (``Transfer-Encoding: chunked``): the API needs the length."""

    status_code = 411
    code = "LengthRequired"


class PayloadTooLarge(BridgeError):
    """The request body is over ``BRIDGE_MAX_BODY_BYTES``."""

    status_code = 413
    code = "PayloadTooLarge"


class RequestHeaderFieldsTooLarge(BridgeError):
    """A request header field is over ``BRIDGE_MAX_HEADER_BYTES`` (or the head over the server's limit)."""

    status_code = 431
    code = "RequestHeaderFieldsTooLarge"


class BridgeUnavailable(BridgeError):
    status_code = 502
    code = "BridgeUnavailable"


class Unavailable(BridgeError):
    """A dependency of the bridge itself (Redis, the database) is down: 503 with ``Retry-After``."""

    status_code = 503
    code = "Unavailable"


def retry_after_unavailable() -> int:
    """Seconds a client is told to wait after a 503 (``BRIDGE_UNAVAILABLE_RETRY_AFTER``: Django
    setting, else environment; default 5)."""
    value = getattr(settings, "BRIDGE_UNAVAILABLE_RETRY_AFTER", None)
    if value is None:
        value = os.environ.get("BRIDGE_UNAVAILABLE_RETRY_AFTER", 5)
    return max(1, int(float(value)))


# What a Redis outage looks like when it reaches a view: redis-py's connection and timeout errors
# (cache, specs, streams, read queue) and kombu's OperationalError (a Celery publish that could not
# reach the broker after its retries). BusyLoadingError (Redis still loading its data) is a
# ConnectionError; ReadOnlyError is a replica that has not been promoted yet.
DEPENDENCY_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.ReadOnlyError,
    kombu.exceptions.OperationalError,
    kombu.exceptions.ConnectionError,
)


def dependency_outage(exc: BaseException) -> BaseException | None:
    """The Redis/broker connection error behind ``exc`` (itself or an explicit ``raise ... from``)."""
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 5:
        if isinstance(current, DEPENDENCY_ERRORS):
            return current
        current, seen = current.__cause__, seen + 1
    return None


def unavailable_response(message: str, details: dict[str, Any] | None = None) -> Response:
    """The 503 answer: standard error body, ``Retry-After`` header (also in ``details``)."""
    from rest_framework.response import Response  # here, not at the top: see the note on the imports

    wait = retry_after_unavailable()
    return Response(error_body("Unavailable", message, {**(details or {}), "retryAfter": wait}), status=503,
                    headers={"Retry-After": str(wait)})


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details or {}}}


# The code of an error answered by a layer that has no better one (Django's own responses, the HTTP
# server): the API's code for the status. 415 keeps DRF's historical ValidationError.
STATUS_CODES: dict[int, str] = {
    400: "ValidationError",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    406: "NotAcceptable",
    408: "RequestTimeout",
    409: "TaskConflict",
    411: "LengthRequired",
    413: "PayloadTooLarge",
    414: "URITooLong",
    415: "ValidationError",
    429: "RateLimited",
    431: "RequestHeaderFieldsTooLarge",
    500: "InternalError",
    501: "NotImplemented",
    502: "BridgeUnavailable",
    503: "Unavailable",
}


def code_for_status(status_code: int) -> str:
    return STATUS_CODES.get(status_code, "InternalError" if status_code >= 500 else "BadRequest")


def _field_details(detail: Any) -> dict[str, Any]:
    """DRF validation detail (nested dicts/lists of ErrorDetail) as plain field -> messages."""
    if isinstance(detail, dict):
        return {str(k): _field_details(v) for k, v in detail.items()}
    if isinstance(detail, list):
        if all(not isinstance(x, dict | list) for x in detail):
            return [str(x) for x in detail]  # type: ignore[return-value]
        return [_field_details(x) for x in detail]  # type: ignore[return-value]
    return [str(detail)]  # type: ignore[return-value]


def _request_id(context: dict[str, Any]) -> str:
    request = context.get("request")
    return getattr(getattr(request, "_request", request), "bridge_request_id", "-")


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response:
    """DRF EXCEPTION_HANDLER: map every exception to the API's error body and status."""
    from rest_framework.response import Response  # here, not at the top: see the note on the imports

    headers: dict[str, str] = {}
    if isinstance(exc, Unavailable):
        logger.warning("503 Unavailable (request id %s): %s", _request_id(context), exc.message)
        _count_outage("request")
        return unavailable_response(exc.message, exc.details)
    if isinstance(exc, BridgeError):
        return Response(error_body(exc.code, exc.message, exc.details), status=exc.status_code)
    outage = dependency_outage(exc)
    if outage is not None:
        logger.warning("503 Unavailable (request id %s): Redis unreachable: %s: %s", _request_id(context),
                       type(outage).__name__, outage)
        _count_outage("request")
        return unavailable_response("a dependency of the bridge (Redis) cannot be reached; retry with the "
                                    "same request id", {"dependency": "redis"})
    if isinstance(exc, django_db.OperationalError | django_db.InterfaceError):
        # The database is down, restarting or refusing connections (a deadlock victim or SQLite's
        # "database is locked" too): nothing was committed; the client retries with the same request id.
        logger.warning("503 Unavailable (request id %s): database: %s: %s", _request_id(context),
                       type(exc).__name__, exc)
        return unavailable_response("the bridge's database cannot be reached; retry with the same request id",
                                    {"dependency": "database"})
    if isinstance(exc, drf.ValidationError):
        details = _field_details(exc.detail)
        if not isinstance(details, dict):
            details = {"non_field_errors": details}
        return Response(error_body("ValidationError", "request validation failed", details), status=400)
    if isinstance(exc, drf.ParseError):
        return Response(error_body("ValidationError", f"malformed request body: {exc.detail}"), status=400)
    if isinstance(exc, drf.UnsupportedMediaType):
        return Response(error_body("ValidationError", str(exc.detail)), status=415)
    if isinstance(exc, (drf.NotAuthenticated, drf.AuthenticationFailed)):
        return Response(
            error_body("Unauthorized", str(exc.detail)), status=401, headers={"WWW-Authenticate": "Bearer"}
        )
    if isinstance(exc, (drf.PermissionDenied, DjangoPermissionDenied)):
        return Response(error_body("Forbidden", "permission denied"), status=403)
    if isinstance(exc, (drf.NotFound, Http404)):
        return Response(error_body("NotFound", "not found"), status=404)
    if isinstance(exc, drf.MethodNotAllowed):
        return Response(error_body("MethodNotAllowed", str(exc.detail)), status=405)
    if isinstance(exc, drf.NotAcceptable):
        return Response(error_body("NotAcceptable", str(exc.detail)), status=406)
    if isinstance(exc, drf.Throttled):
        wait = int(exc.wait or 1)
        headers["Retry-After"] = str(max(wait, 1))
        return Response(
            error_body("RateLimited", getattr(exc, "message", "workspace rate limit exceeded"),
                       {"retryAfter": max(wait, 1)}),
            status=429,
            headers=headers,
        )
    if isinstance(exc, RequestDataTooBig):
        return Response(error_body("PayloadTooLarge", "request body too large"), status=413)
    if isinstance(exc, SuspiciousOperation):
        return Response(error_body("ValidationError", "bad request"), status=400)
    if isinstance(exc, drf.APIException):
        return Response(error_body(type(exc).__name__, str(exc.detail)), status=exc.status_code)
    logger.exception("unhandled error (request id %s)", _request_id(context))
    return Response(
        error_body("InternalError", "internal error", {"requestId": _request_id(context)}), status=500
    )


def _count_outage(where: str) -> None:
    metrics.redis_unavailable(where)


def _json(request, status_code: int, code: str, message: str,
          details: dict[str, Any] | None = None) -> JsonResponse:
    """A Django-level error answer; it carries ``x-request-id`` itself when the request id is known
    (an error raised inside RequestIdMiddleware never passes back through it)."""
    response = JsonResponse(error_body(code, message, details), status=status_code)
    rid = getattr(request, "bridge_request_id", None)
    if rid:
        response["x-request-id"] = rid
    return response


def json_404(request, exception=None) -> JsonResponse:  # Django handler signature
    return _json(request, 404, "NotFound", "not found")


def json_400(request, exception=None) -> JsonResponse:
    """Django's 400 (``SuspiciousOperation``, ``BadRequest``): an oversized body read by Django itself
    (``RequestDataTooBig``) is 413 as everywhere else."""
    if isinstance(exception, RequestDataTooBig):
        return _json(request, 413, "PayloadTooLarge", "request body too large")
    return _json(request, 400, "ValidationError", "bad request")


def json_403(request, exception=None) -> JsonResponse:
    return _json(request, 403, "Forbidden", "permission denied")


def json_500(request) -> JsonResponse:
    rid = getattr(request, "bridge_request_id", "-")
    return _json(request, 500, "InternalError", "internal error", {"requestId": rid})

"""Request id: every response echoes ``x-request-id``; the bridge makes one when it is absent."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse

from .errors import error_body

REQUEST_ID_RE = re.compile(r"^[\x21-\x7e]{1,128}$")
IDEMPOTENCY_HEADERS = ("HTTP_X_REQUEST_ID", "HTTP_IDEMPOTENCY_KEY")
WRITE_METHODS = {"POST", "PATCH", "PUT", "DELETE"}


def new_request_id() -> str:
    return f"req_{uuid.uuid4().hex}"


class RequestIdMiddleware:
    """Validates or makes the request id and echoes it on every response.

    ``x-request-id`` and its alias ``Idempotency-Key`` must be 1 to 128 printable ASCII characters.
    ``request.bridge_request_id`` is the id; ``request.bridge_request_id_given`` says whether the
    client sent it (only a client-given id makes a write idempotent across retries).
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        given = None
        for header in IDEMPOTENCY_HEADERS:
            value = request.META.get(header)
            if value is not None:
                given = value
                break
        if given is not None and not REQUEST_ID_RE.match(given):
            response = JsonResponse(
                error_body(
                    "ValidationError",
                    "x-request-id must be 1 to 128 printable ASCII characters",
                    {"x-request-id": ["invalid format"]},
                ),
                status=400,
            )
            return response
        if (
            given is None
            and settings.BRIDGE_REQUIRE_REQUEST_ID
            and request.method in WRITE_METHODS
            and request.path.startswith("/mt5/client/")
        ):
            return JsonResponse(
                error_body("ValidationError", "x-request-id is required", {"x-request-id": ["required"]}),
                status=400,
            )
        request.bridge_request_id = given or new_request_id()
        request.bridge_request_id_given = given is not None
        response = self.get_response(request)
        response["x-request-id"] = request.bridge_request_id
        return response

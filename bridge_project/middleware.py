"""Request checks around every view, and the request id and error body on every answer.

The answer to a bad request follows one order (docs/operations.md, "Bad input and limits"):

1. a header field over ``BRIDGE_MAX_HEADER_BYTES`` (name + value; default 8 KiB): ``431
   RequestHeaderFieldsTooLarge``; a body sent without Content-Length (``Transfer-Encoding``):
   ``411 LengthRequired`` (Django and DRF would read it as empty). Both at once, before anything
   else reads the request;
2. authentication (``401``) and DRF's other checks (``403``, ``429``), then the method (``405``);
3. header errors (``400 ValidationError``, ``details`` naming each header): ``x-request-id`` or its
   alias ``Idempotency-Key`` not 1 to 128 printable ASCII characters, sent more than once (WSGI and
   ASGI join repeated headers with a comma, so a comma is refused: never one key made of two), both
   sent with different values, missing on a write when ``BRIDGE_REQUIRE_REQUEST_ID`` is on; a
   ``multipart/*`` Content-Type without a boundary;
4. the view (body validation, ...).

For DRF views (the whole client API) step 3 runs DRF's own checks first (``APIView.initial``: auth,
permissions, throttles) and then the method check, without running the handler: a request refused
there changed nothing. Plain Django views (``/health``, ``/metrics``, the admin) have no such hook: a
safe method (GET, HEAD, OPTIONS) runs and a successful answer is replaced by the 400 (so a 401/405
of the view wins); an unsafe one is refused at once.

Every answer leaving here carries ``x-request-id`` (the client's when valid, else one made here) and,
when it is an error, the error body: a bare error answer of Django or of a plain view (an empty 405,
an HTML 403, ...) is rewritten into ``{"error": {"code", "message", "details"}}`` with its status
and its ``Allow``/``Retry-After``/``WWW-Authenticate`` headers.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.http import parse_header_parameters
from rest_framework.exceptions import MethodNotAllowed
from rest_framework.views import APIView

from .errors import (
    BridgeError,
    LengthRequired,
    RequestHeaderFieldsTooLarge,
    ValidationFailed,
    code_for_status,
    error_body,
)

REQUEST_ID_RE = re.compile(r"^[\x21-\x7e]{1,128}$")
IDEMPOTENCY_HEADERS = (("HTTP_X_REQUEST_ID", "x-request-id"), ("HTTP_IDEMPOTENCY_KEY", "Idempotency-Key"))
WRITE_METHODS = {"POST", "PATCH", "PUT", "DELETE"}
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
DEFAULT_MAX_HEADER_BYTES = 8192
# Headers of a bare error answer kept when it is rewritten into the error body.
KEPT_HEADERS = ("Allow", "Retry-After", "WWW-Authenticate")


def new_request_id() -> str:
    return f"req_{uuid.uuid4().hex}"


def max_header_bytes() -> int:
    return int(getattr(settings, "BRIDGE_MAX_HEADER_BYTES", DEFAULT_MAX_HEADER_BYTES))


def oversized_header(meta: dict[str, Any], limit: int) -> tuple[str, int] | None:
    """The first header field whose name + value is over ``limit`` bytes, and its size."""
    for key, value in meta.items():
        if not isinstance(value, str):
            continue
        if key.startswith("HTTP_"):
            name = key[5:]
        elif key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            name = key
        else:
            continue
        size = len(name) + len(value)
        if size > limit:
            return name.lower().replace("_", "-"), size
    return None


def framing_error(request: HttpRequest) -> BridgeError | None:
    """What is wrong with the request's size or framing, checked before anything reads it."""
    limit = max_header_bytes()
    oversized = oversized_header(request.META, limit)
    if oversized is not None:
        name, size = oversized
        return RequestHeaderFieldsTooLarge(f"header {name} is {size} bytes, over the limit of {limit}",
                                           {name: [f"over {limit} bytes (name + value)"]})
    if request.META.get("HTTP_TRANSFER_ENCODING") and not request.META.get("CONTENT_LENGTH"):
        return LengthRequired("a request body needs Content-Length (Transfer-Encoding is not accepted)",
                              {"content-length": ["required with a body"]})
    return None


def read_request_id(request: HttpRequest) -> tuple[str | None, dict[str, str]]:
    """The client's request id (``x-request-id``, else ``Idempotency-Key``) and the problems found,
    by header name."""
    values = {name: request.META.get(key) for key, name in IDEMPOTENCY_HEADERS}
    problems: dict[str, str] = {}
    for name, value in values.items():
        if value is None:
            continue
        if "," in value:
            problems[name] = "was sent more than once (or as a list): send exactly one value"
        elif not REQUEST_ID_RE.match(value):
            problems[name] = "must be 1 to 128 printable ASCII characters"
    rid, alias = values["x-request-id"], values["Idempotency-Key"]
    if not problems and rid is not None and alias is not None and rid != alias:
        problems["Idempotency-Key"] = "differs from x-request-id: send one of them, or both with the same value"
    given = rid if rid is not None else alias
    if (
        given is None
        and settings.BRIDGE_REQUIRE_REQUEST_ID
        and request.method in WRITE_METHODS
        and request.path.startswith("/mt5/client/")
    ):
        problems["x-request-id"] = "is required"
    return given, problems


def content_type_problems(request: HttpRequest) -> dict[str, str]:
    content_type = request.META.get("CONTENT_TYPE", "")
    if not content_type:
        return {}
    media_type, params = parse_header_parameters(content_type)
    if media_type.startswith("multipart/") and not params.get("boundary"):
        return {"content-type": f"is {media_type} without a boundary parameter"}
    return {}


def header_error(problems: dict[str, str]) -> ValidationFailed:
    return ValidationFailed("; ".join(f"{name} {text}" for name, text in problems.items()),
                            {name: [text] for name, text in problems.items()})


def error_response(exc: BridgeError) -> JsonResponse:
    return JsonResponse(error_body(exc.code, exc.message, exc.details), status=exc.status_code)


def with_error_body(response: HttpResponse) -> HttpResponse:
    """A bare error answer (empty, HTML, text) rewritten into the error body; others unchanged."""
    if response.status_code < 400 or response.streaming:
        return response
    if response.get("Content-Type", "").split(";")[0].strip().lower() in ("application/json", "application/problem+json"):
        return response
    rewritten = JsonResponse(
        error_body(code_for_status(response.status_code), response.reason_phrase.lower()),
        status=response.status_code,
    )
    for header in KEPT_HEADERS:
        if header in response:
            rewritten[header] = response[header]
    return rewritten


def refuse_after_drf_checks(request: HttpRequest, view_func: Callable, args: tuple, kwargs: dict,
                            error: BridgeError) -> HttpResponse:
    """What the DRF view would answer before its handler runs (authentication, permissions,
    throttles, then the method), else ``error``. The handler never runs."""
    view: APIView = view_func.cls(**getattr(view_func, "initkwargs", {}))  # type: ignore[attr-defined]
    view.setup(request, *args, **kwargs)
    drf_request = view.initialize_request(request, *args, **kwargs)
    view.request = drf_request
    view.headers = view.default_response_headers
    try:
        view.initial(drf_request, *args, **kwargs)
        method = drf_request.method.lower()
        if method not in view.http_method_names or not hasattr(view, method):
            raise MethodNotAllowed(drf_request.method)
        raise error
    except Exception as exc:  # DRF's dispatch does the same: every exception is answered
        response = view.handle_exception(exc)
    return view.finalize_response(drf_request, response, *args, **kwargs)


class RequestIdMiddleware:
    """Validates or makes the request id, applies the order above, and echoes the id on every answer.

    ``request.bridge_request_id`` is the id; ``request.bridge_request_id_given`` says whether the
    client sent it (only a client-given id makes a write idempotent across retries).
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        given, problems = read_request_id(request)
        problems.update(content_type_problems(request))
        valid_id = given is not None and not ({"x-request-id", "Idempotency-Key"} & problems.keys())
        request.bridge_request_id = given if valid_id else new_request_id()
        request.bridge_request_id_given = valid_id
        request.bridge_header_error = header_error(problems) if problems else None
        request.bridge_header_error_after_view = False

        refused = framing_error(request)
        if refused is not None:
            response: HttpResponse = error_response(refused)
        else:
            response = self.get_response(request)
            error = request.bridge_header_error
            if error is not None and request.bridge_header_error_after_view and 200 <= response.status_code < 300:
                response = error_response(error)
        response = with_error_body(response)
        response["x-request-id"] = request.bridge_request_id
        return response

    def process_view(self, request: HttpRequest, view_func: Callable, view_args: tuple,
                     view_kwargs: dict) -> HttpResponse | None:
        error = getattr(request, "bridge_header_error", None)
        if error is None:
            return None
        view_class = getattr(view_func, "cls", None)
        if isinstance(view_class, type) and issubclass(view_class, APIView):
            return refuse_after_drf_checks(request, view_func, view_args, view_kwargs, error)
        if request.method in SAFE_METHODS:
            request.bridge_header_error_after_view = True
            return None
        return error_response(error)

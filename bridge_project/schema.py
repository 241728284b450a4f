"""OpenAPI pieces shared by every endpoint: the error body, the common headers, the statuses every
operation can answer, and the drf-spectacular extensions that make request bodies strict.

The schema is the contract: a client generated from it is refused only where it says so, and gets
only the statuses it lists (``tests/foundation/test_schema_fuzz.py`` fuzzes the served schema
against a live stack to prove it). So every rule the server enforces on its own is written here or
next to the serializer/view that enforces it, from the same constants.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.validators import RegexValidator
from drf_spectacular.extensions import (
    OpenApiSerializerExtension,
    OpenApiSerializerFieldExtension,
)
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    inline_serializer,
)
from rest_framework import serializers

# The request id (x-request-id / Idempotency-Key): 1 to 128 printable ASCII characters, no space and
# no comma (a repeated header arrives joined with commas), as bridge_project.middleware checks it.
REQUEST_ID_PATTERN = r"^[\x21-\x2b\x2d-\x7e]{1,128}$"
# Ids the bridge makes (sessions.models.new_session_id, trading.models.new_task_id). A path id of
# another shape is an unknown one: 404.
SESSION_ID_PATTERN = r"^sess_[A-Za-z0-9_-]{24}$"
TASK_ID_PATTERN = r"^tsk_[0-9a-f]{24}$"
# Free text stored in the database: any characters but NUL (DRF refuses it; PostgreSQL cannot keep it).
NO_NUL_PATTERN = r"^[^\x00]*$"

ERROR_CODES = (
    "ValidationError, Unauthorized, SessionExpired, Forbidden, NotFound, MethodNotAllowed, NotAcceptable, "
    "TaskConflict, SessionNotReady, SessionPaused, TerminalBusy, LengthRequired, PayloadTooLarge, RateLimited, "
    "RequestHeaderFieldsTooLarge, BridgeUnavailable, Unavailable, InternalError"
)

ErrorSerializer = inline_serializer(
    name="Error",
    fields={
        "error": inline_serializer(
            name="ErrorBody",
            fields={
                "code": serializers.CharField(help_text=f"one of {ERROR_CODES}"),
                "message": serializers.CharField(help_text="for people: what went wrong"),
                "details": serializers.DictField(
                    help_text="for programs: the fields or headers at fault (each with its messages), or the "
                    "ids involved; `retryAfter` (seconds) on 429 and 503"
                ),
            },
        )
    },
)


def error(description: str) -> OpenApiResponse:
    return OpenApiResponse(ErrorSerializer, description=description)


# What any operation of the client API can answer, whatever it does: a request id or a query value
# that fails validation, the API key, an Accept without JSON, a chunked body, the rate limit,
# oversized headers, and the bridge's own dependencies (Redis, the database) being down.
COMMON_ERRORS = {
    400: error("ValidationError: a parameter, header (x-request-id: 1-128 printable ASCII, no space or comma) or "
               "the body failed validation; details name each one"),
    401: error("Unauthorized: API key missing, wrong or revoked"),
    406: error("NotAcceptable: the Accept header excludes application/json"),
    411: error("LengthRequired: a body sent without Content-Length (Transfer-Encoding is not accepted)"),
    429: error("RateLimited: rate limit exceeded; wait Retry-After seconds"),
    431: error("RequestHeaderFieldsTooLarge: a request header, or all of them, over the server's limit"),
    503: error("Unavailable: a dependency of the bridge (Redis, the database) cannot be reached; retry after "
               "Retry-After seconds with the same request id"),
}
# ... and what an operation that reads a JSON body can answer besides.
BODY_ERRORS = {
    413: error("PayloadTooLarge: body over BRIDGE_MAX_BODY_BYTES (64 KiB)"),
    415: error("ValidationError: the body is not `application/json`"),
}
SESSION_ERRORS = {
    401: error("Unauthorized: API key missing, wrong or revoked, or x-session-id missing or unknown / "
               "SessionExpired: the session is closed, expired or its login failed"),
}
NOT_READY = ("SessionNotReady: the session is still `opening` (its login has not succeeded yet): nothing was "
             "queued or read")
PAUSED = ("SessionPaused: the session is paused (POST /session/{id}/pause): nothing was queued (a replay of a "
          "request id the bridge already holds is answered as before)")


def api_errors(*extra: dict[int, OpenApiResponse], body: bool = False) -> dict[int, OpenApiResponse]:
    """COMMON_ERRORS (+ BODY_ERRORS), then each of ``extra`` (later ones win)."""
    responses: dict[int, OpenApiResponse] = {**COMMON_ERRORS, **(BODY_ERRORS if body else {})}
    for more in extra:
        responses.update(more)
    return responses


REQUEST_ID_SCHEMA = {"type": "string", "pattern": REQUEST_ID_PATTERN, "minLength": 1, "maxLength": 128}

SESSION_HEADER = OpenApiParameter(
    "x-session-id", {"type": "string", "minLength": 1}, OpenApiParameter.HEADER, required=True,
    description="the bridge session id (`sessionId` of POST /session/open)",
)
REQUEST_ID_HEADER = OpenApiParameter(
    "x-request-id",
    REQUEST_ID_SCHEMA,
    OpenApiParameter.HEADER,
    required=False,
    description="idempotency key, 1-128 printable ASCII characters, no space or comma (alias: Idempotency-Key, "
    "same value if both are sent); absent: the bridge makes one. Echoed on every response",
)
# Response headers (OpenApiParameter(response=...)): on every answer, and on the ones that ask to wait.
RESPONSE_HEADERS = [
    OpenApiParameter(
        "x-request-id", REQUEST_ID_SCHEMA, OpenApiParameter.HEADER, response=True, required=True,
        description="the request id: the client's, or the one the bridge made",
    ),
    OpenApiParameter(
        "Retry-After", {"type": "integer", "minimum": 1}, OpenApiParameter.HEADER, required=True,
        response=[429, 503], description="seconds to wait before trying again",
    ),
]


def operation_parameters(*extra: OpenApiParameter, session: bool = True) -> list[OpenApiParameter]:
    """The parameters of an operation: x-session-id (when it acts under a session), x-request-id,
    ``extra``, and the response headers."""
    return [*([SESSION_HEADER] if session else []), REQUEST_ID_HEADER, *extra, *RESPONSE_HEADERS]


REPLAYED_HEADER = OpenApiParameter(
    "Idempotent-Replayed", {"type": "string", "enum": ["true"]}, OpenApiParameter.HEADER, response=[200, 202],
    description="present on the replay of an earlier request (same request id and payload)",
)


def path_id(name: str, pattern: str, description: str) -> OpenApiParameter:
    return OpenApiParameter(name, {"type": "string", "pattern": pattern}, OpenApiParameter.PATH,
                            description=f"{description}; another shape is unknown (404)")


def csv_enum(name: str, values: list[str], description: str) -> OpenApiParameter:
    """A query parameter taking a comma-separated list of ``values`` (``state=queued,filled``)."""
    return OpenApiParameter(
        name, {"type": "array", "items": {"type": "string", "enum": list(values)}, "minItems": 1},
        style="form", explode=False, description=description,
    )


def query(name: str, schema: dict[str, Any], description: str = "", required: bool = False) -> OpenApiParameter:
    return OpenApiParameter(name, schema, OpenApiParameter.QUERY, required=required, description=description)


class FullMatch(RegexValidator):
    """A regex validator over the whole value (``re.fullmatch``: ``$`` does not let a trailing newline
    through, as it would with ``re.search``). drf-spectacular writes its pattern into the schema."""

    def __init__(self, pattern: str, message: str = "Does not have the required format."):
        super().__init__(pattern, message=message)

    def __call__(self, value: Any) -> None:
        if not self.regex.fullmatch(str(value)):
            raise ValidationError(self.message, code=self.code)


# --- strict request bodies ------------------------------------------------------------------------

class StrictBodyExtension(OpenApiSerializerExtension):
    """Request bodies of serializers that refuse unknown fields (``RejectUnknownFieldsMixin``):
    ``additionalProperties: false``, and ``minProperties`` when the serializer sets ``min_fields``
    (a PATCH that must change something)."""

    target_class = "bridge_project.fields.RejectUnknownFieldsMixin"
    match_subclasses = True

    def map_serializer(self, auto_schema, direction):  # drf-spectacular signature
        schema = auto_schema._map_serializer(self.target, direction, bypass_extensions=True)
        if direction == "request":
            schema["additionalProperties"] = False
            min_fields = getattr(self.target, "min_fields", 0)
            if min_fields:
                schema["minProperties"] = min_fields
        return schema


class RequiredBodySchema(AutoSchema):
    """drf-spectacular marks a body required only when one of its fields is; a PATCH whose fields are
    all optional but that must change something (``min_fields``) needs its body all the same."""

    def _get_request_body(self, direction="request"):  # drf-spectacular signature
        body = super()._get_request_body(direction)
        if body is not None:
            body["required"] = True
        return body


def body_required(method: Any) -> Any:
    """Under ``@extend_schema``: the operation's JSON body is required (RequiredBodySchema)."""
    method.schema = RequiredBodySchema
    return method


class ExclusiveMinimumExtension(OpenApiSerializerFieldExtension):
    """A number field whose ``min_value`` is excluded (``ExclusiveMinFloatField``, e.g. a volume > 0)."""

    target_class = "bridge_project.schema.ExclusiveMinFloatField"
    match_subclasses = True

    def map_serializer_field(self, auto_schema, direction):
        schema = auto_schema._map_serializer_field(self.target, direction, bypass_extensions=True)
        schema["minimum"] = self.target.exclusive_min
        schema["exclusiveMinimum"] = True
        return schema


class ExclusiveMinFloatField(serializers.FloatField):
    """A float field that refuses ``exclusive_min`` itself and anything below it (e.g. a volume must
    be > 0); the schema says ``minimum`` with ``exclusiveMinimum: true``."""

    exclusive_min = 0.0
    default_error_messages = {"exclusive_min": "must be greater than {limit}"}

    def to_internal_value(self, data: Any) -> float:
        value = super().to_internal_value(data)
        if value <= self.exclusive_min:
            self.fail("exclusive_min", limit=self.exclusive_min)
        return value

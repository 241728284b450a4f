"""OpenAPI pieces shared by every endpoint: the error body and the common headers."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, inline_serializer
from rest_framework import serializers

ErrorSerializer = inline_serializer(
    name="Error",
    fields={
        "error": inline_serializer(
            name="ErrorBody",
            fields={
                "code": serializers.CharField(
                    help_text="ValidationError, Unauthorized, SessionExpired, NotFound, TaskConflict, "
                    "TerminalBusy, RateLimited, PayloadTooLarge, BridgeUnavailable, InternalError"
                ),
                "message": serializers.CharField(),
                "details": serializers.DictField(),
            },
        )
    },
)


def error(description: str) -> OpenApiResponse:
    return OpenApiResponse(ErrorSerializer, description=description)


COMMON_ERRORS = {
    400: error("ValidationError: body or headers failed validation; details name each field"),
    401: error("Unauthorized: API key missing, wrong or revoked"),
    413: error("PayloadTooLarge: body over BRIDGE_MAX_BODY_BYTES (64 KiB)"),
    429: error("RateLimited: workspace rate exceeded; see Retry-After"),
}

SESSION_HEADER = OpenApiParameter(
    "x-session-id", str, OpenApiParameter.HEADER, required=True, description="the bridge session id"
)
REQUEST_ID_HEADER = OpenApiParameter(
    "x-request-id",
    str,
    OpenApiParameter.HEADER,
    required=False,
    description="idempotency key, 1-128 printable ASCII (alias: Idempotency-Key); echoed on every response",
)

"""Request and response shapes of the session endpoints."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from rest_framework import serializers

from bridge_project.fields import RejectUnknownFieldsMixin, StrictCharField, StrictIntegerField
from bridge_project.schema import NO_NUL_PATTERN, FullMatch

from .models import BridgeSession


def _text(max_length: int, **kwargs: Any) -> StrictCharField:
    """A string taken as sent (no trimming): 1 to ``max_length`` characters, no NUL."""
    return StrictCharField(max_length=max_length, trim_whitespace=False,
                           validators=[FullMatch(NO_NUL_PATTERN, "NUL characters are not allowed.")], **kwargs)


class SessionOpenSerializer(RejectUnknownFieldsMixin, serializers.Serializer):
    accountId = _text(100, help_text="the client's name for the account")  # API field name
    server = _text(200, help_text="the MT5 trade server, e.g. `MetaQuotes-Demo`")
    login = StrictIntegerField(min_value=1, max_value=2**63 - 1)
    password = _text(200, write_only=True)
    terminal = _text(63, required=False, help_text="a terminal by name (unknown: 404); default: a free one")


class StrictBooleanField(serializers.BooleanField):
    """A JSON boolean only: ``"true"``, 1 and the like are refused (no silent coercion)."""

    default_error_messages = {"invalid": "A JSON boolean is required."}

    def to_internal_value(self, data: Any) -> bool:
        if not isinstance(data, bool):
            self.fail("invalid")
        return data


class SessionPauseSerializer(RejectUnknownFieldsMixin, serializers.Serializer):
    cancelQueued = StrictBooleanField(  # API field name
        required=False, default=False,
        help_text="true: the session's queued tasks end `cancelled` (result.error.code SessionPaused) instead of "
        "waiting for the resume")


def _ts(value) -> int | None:
    return int(value.timestamp()) if value else None


def session_payload(session: BridgeSession) -> dict[str, Any]:
    """The session as the API shows it (never the password)."""
    body: dict[str, Any] = {
        "sessionId": session.id,
        "status": session.status,
        "terminal": session.terminal.name,
        "accountId": session.account_id,
        "login": session.login,
        "server": session.server,
        "createdAt": _ts(session.created_at),
        "lastHeartbeatAt": _ts(session.last_heartbeat_at),
        "expiresAt": _ts(session.expires_at),
        "heartbeatInterval": max(1, settings.BRIDGE_SESSION_TTL // 3),
        "broker": session.broker or {},
        "paused": session.paused,
        "pausedAt": _ts(session.paused_at),
    }
    if session.error_code is not None:
        body["error"] = {"code": session.error_code, "message": session.error_message}
    if session.ended_at:
        body["endedAt"] = _ts(session.ended_at)
    return body


class SessionSerializer(serializers.Serializer):
    """Schema-only description of ``session_payload`` for the OpenAPI document."""

    sessionId = serializers.CharField()
    status = serializers.ChoiceField(
        choices=["opening", "active", "login_failed", "closed", "expired"],
        help_text="opening → active → closed | expired, or opening → login_failed (also after "
        "BRIDGE_SESSION_LOGIN_TIMEOUT: LoginTimeout). Writes and terminal reads need `active` (409 "
        "SessionNotReady while opening); an ended session's queued tasks end cancelled (SessionEnded).",
    )
    terminal = serializers.CharField()
    accountId = serializers.CharField()
    login = serializers.IntegerField()
    server = serializers.CharField()
    createdAt = serializers.IntegerField(help_text="unix seconds, UTC")
    lastHeartbeatAt = serializers.IntegerField(help_text="unix seconds, UTC")
    expiresAt = serializers.IntegerField(help_text="unix seconds, UTC")
    heartbeatInterval = serializers.IntegerField(help_text="seconds; send a heartbeat at least this often")
    broker = serializers.DictField(help_text="company, server, currency, leverage, connected (once active)")
    paused = serializers.BooleanField(help_text="true while the session is paused (POST /session/{id}/pause): "
                                      "writes answer 409 SessionPaused and queued tasks wait for the resume")
    pausedAt = serializers.IntegerField(allow_null=True, help_text="unix seconds, UTC: when the pause began; null "
                                        "when not paused")
    error = serializers.DictField(required=False, help_text="`{code, message}`: MT5's error when login_failed "
                                  "(code null for the bridge's own, e.g. LoginTimeout)")
    endedAt = serializers.IntegerField(required=False, help_text="unix seconds, UTC; once ended")

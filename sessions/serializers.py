"""Request and response shapes of the session endpoints."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from rest_framework import serializers

from bridge_project.fields import RejectUnknownFieldsMixin, StrictCharField, StrictIntegerField

from .models import BridgeSession


class SessionOpenSerializer(RejectUnknownFieldsMixin, serializers.Serializer):
    accountId = StrictCharField(max_length=100)  # noqa: N815 - API field name
    server = StrictCharField(max_length=200)
    login = StrictIntegerField(min_value=1, max_value=2**63 - 1)
    password = StrictCharField(max_length=200, trim_whitespace=False, write_only=True)
    terminal = StrictCharField(max_length=63, required=False)


def _ts(value) -> int | None:  # noqa: ANN001
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
    }
    if session.error_code is not None:
        body["error"] = {"code": session.error_code, "message": session.error_message}
    if session.ended_at:
        body["endedAt"] = _ts(session.ended_at)
    return body


class SessionSerializer(serializers.Serializer):
    """Schema-only description of ``session_payload`` for the OpenAPI document."""

    sessionId = serializers.CharField()  # noqa: N815
    status = serializers.ChoiceField(
        choices=["opening", "active", "login_failed", "closed", "expired"],
        help_text="opening → active → closed | expired, or opening → login_failed (also after "
        "BRIDGE_SESSION_LOGIN_TIMEOUT: LoginTimeout). Writes and terminal reads need `active` (409 "
        "SessionNotReady while opening); an ended session's queued tasks end cancelled (SessionEnded).",
    )
    terminal = serializers.CharField()
    accountId = serializers.CharField()  # noqa: N815
    login = serializers.IntegerField()
    server = serializers.CharField()
    createdAt = serializers.IntegerField(help_text="unix seconds, UTC")  # noqa: N815
    lastHeartbeatAt = serializers.IntegerField(help_text="unix seconds, UTC")  # noqa: N815
    expiresAt = serializers.IntegerField(help_text="unix seconds, UTC")  # noqa: N815
    heartbeatInterval = serializers.IntegerField(help_text="seconds; send a heartbeat at least this often")  # noqa: N815
    broker = serializers.DictField(help_text="company, server, currency, leverage, connected (once active)")
    error = serializers.DictField(required=False, help_text="MT5's (code, message) when login_failed")
    endedAt = serializers.IntegerField(required=False)  # noqa: N815

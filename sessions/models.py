"""Workspaces, their API keys and bridge sessions."""

from __future__ import annotations

import secrets

from django.db import models
from django.db.models import Q
from django.utils import timezone


class Workspace(models.Model):
    """A tenant: owns API keys, sessions, tasks and events; never sees another's."""

    name = models.CharField(max_length=100, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.name


class ApiKey(models.Model):
    """An API key, stored as a SHA-256 digest; only its prefix is kept in clear (to find and show it)."""

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100, blank=True, default="")
    prefix = models.CharField(max_length=16, unique=True, editable=False)
    digest = models.CharField(max_length=64, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.workspace})"

    @property
    def active(self) -> bool:
        return self.revoked_at is None


class SessionStatus(models.TextChoices):
    OPENING = "opening"
    ACTIVE = "active"
    LOGIN_FAILED = "login_failed"
    CLOSED = "closed"
    EXPIRED = "expired"


LIVE_STATUSES = (SessionStatus.OPENING, SessionStatus.ACTIVE)
END_STATUSES = (SessionStatus.CLOSED, SessionStatus.EXPIRED, SessionStatus.LOGIN_FAILED)


def new_session_id() -> str:
    return f"sess_{secrets.token_urlsafe(18)}"


class BridgeSession(models.Model):
    """A client's bridge session for one broker account, pinned to one terminal for its life.

    Invariant (a database constraint): a terminal holds at most one live (opening/active) session.
    """

    id = models.CharField(primary_key=True, max_length=40, default=new_session_id, editable=False)
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="sessions")
    terminal = models.ForeignKey("terminals.Terminal", on_delete=models.PROTECT, related_name="sessions")
    account_id = models.CharField(max_length=100)
    login = models.BigIntegerField()
    server = models.CharField(max_length=200)
    password_encrypted = models.BinaryField(editable=False)
    status = models.CharField(max_length=16, choices=SessionStatus.choices, default=SessionStatus.OPENING)
    error_code = models.IntegerField(null=True, blank=True)
    error_message = models.CharField(max_length=500, blank=True, default="")
    broker = models.JSONField(default=dict, blank=True, help_text="company, server, currency, leverage, ...")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    last_heartbeat_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    ended_at = models.DateTimeField(null=True, blank=True)
    login_published_at = models.DateTimeField(
        null=True, blank=True, help_text="last publish of the login to the terminal's queue (the login outbox)"
    )
    paused_at = models.DateTimeField(
        null=True, blank=True,
        help_text="set while the session is paused (docs/sessions.md): new writes are refused, queued tasks wait",
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["terminal"],
                condition=Q(status__in=["opening", "active"]),
                name="one_live_session_per_terminal",
            )
        ]
        indexes = [
            models.Index(fields=["status", "expires_at"], name="session_status_expiry"),
            models.Index(fields=["workspace", "-created_at"], name="session_ws_created"),
        ]

    def __str__(self) -> str:
        return self.id

    @property
    def live(self) -> bool:
        return self.status in LIVE_STATUSES

    @property
    def paused(self) -> bool:
        return self.paused_at is not None


class SessionTransitionQuerySet(models.QuerySet):
    def status_changes(self) -> models.QuerySet:
        """Only the changes of status (not the changes of fields such as a heartbeat)."""
        return self.exclude(from_status=models.F("to_status"))


class SessionTransition(models.Model):
    """Every change of a session, with its time and why (written by ``session_change`` only): a change
    of status, or of fields only (``from_status == to_status``, ``detail["change"]``: heartbeat,
    login_published, reencrypted, paused, resumed)."""

    objects = SessionTransitionQuerySet.as_manager()

    session = models.ForeignKey(BridgeSession, on_delete=models.CASCADE, related_name="transitions")
    from_status = models.CharField(max_length=16, blank=True, default="")
    to_status = models.CharField(max_length=16)
    at = models.DateTimeField(auto_now_add=True)
    detail = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["at", "id"]
        indexes = [models.Index(fields=["session", "at"], name="session_transition_at")]

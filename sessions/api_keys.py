"""API keys: made, shown once, stored as a digest, revoked and rotated.

Revoking a key closes its open ``/events`` sockets within a second (4401): every path that ends a key
tells them after its transaction commits. ``revoke_api_key`` (used by ``rotate_api_key``, the admin's
revoke and rotate actions and the ``revoke_api_key`` / ``rotate_api_key`` management commands) does it
itself; a ``revoked_at`` set by ``save()`` anywhere else and a deleted key (also through its workspace)
do it through the model signals below. ``QuerySet.update(revoked_at=...)`` sends no signal: sockets
opened with such a key close at their periodic key check (``BRIDGE_EVENTS_KEY_CHECK_INTERVAL``).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from django.utils import timezone

from .epoch import access_epoch_rotate
from .models import ApiKey, Workspace
from .signals import api_key_revoked

KEY_PREFIX = "mt5b_"


def key_digest(key: str) -> str:
    # Keys carry 192 bits of randomness, so a plain SHA-256 is enough (no slow KDF needed).
    return hashlib.sha256(key.encode()).hexdigest()


def create_api_key(workspace: Workspace, name: str = "") -> tuple[ApiKey, str]:
    """Make a key for ``workspace``; returns the row and the key in clear (shown once)."""
    prefix = secrets.token_hex(6)
    secret = secrets.token_urlsafe(24)
    key = f"{KEY_PREFIX}{prefix}_{secret}"
    row = ApiKey.objects.create(workspace=workspace, name=name, prefix=prefix, digest=key_digest(key))
    return row, key


def api_key_by_prefix(prefix: str) -> ApiKey | None:
    """The key row of ``prefix`` (the part after ``mt5b_``, as the admin shows it), with its workspace."""
    return ApiKey.objects.select_related("workspace").filter(prefix=prefix.strip()).first()


def authenticate_key(key: str) -> ApiKey | None:
    """The active key row for ``key``, or None. Constant-time digest comparison."""
    if not key.startswith(KEY_PREFIX):
        return None
    prefix, _, secret = key[len(KEY_PREFIX):].partition("_")
    if not prefix or not secret:
        return None
    row = ApiKey.objects.select_related("workspace").filter(prefix=prefix, revoked_at__isnull=True).first()
    if row is None or not hmac.compare_digest(row.digest, key_digest(key)):
        return None
    return row


def close_key_sockets(key_id: int) -> None:
    """After the current transaction commits (at once outside one): tell the key's open sockets to
    close (4401). Never raises; a lost message is caught by the sockets' periodic key check."""
    def publish() -> None:
        access_epoch_rotate()  # cached grants of the hot read path (sessions.access) go at once
        api_key_revoked.send(sender=ApiKey, key_id=key_id)

    transaction.on_commit(publish)


def revoke_api_key(row: ApiKey) -> None:
    """Revoke ``row`` (idempotent) and close the sockets opened with it once that commits."""
    if row.revoked_at is None:
        now = timezone.now()
        if ApiKey.objects.filter(pk=row.pk, revoked_at__isnull=True).update(revoked_at=now):
            row.revoked_at = now
        else:
            row.refresh_from_db(fields=["revoked_at"])
    close_key_sockets(row.pk)


@transaction.atomic
def rotate_api_key(row: ApiKey) -> tuple[ApiKey, str]:
    """Revoke ``row`` and make its replacement in the same workspace (same name)."""
    revoke_api_key(row)
    return create_api_key(row.workspace, row.name)


@receiver(post_save, sender=ApiKey, dispatch_uid="api_key_revoked_by_save")
def _revoked_by_save(sender, instance: ApiKey, created: bool, update_fields=None, **kwargs) -> None:
    if instance.revoked_at is not None and (update_fields is None or "revoked_at" in update_fields):
        close_key_sockets(instance.pk)


@receiver(post_delete, sender=ApiKey, dispatch_uid="api_key_deleted")
def _deleted(sender, instance: ApiKey, **kwargs) -> None:
    close_key_sockets(instance.pk)

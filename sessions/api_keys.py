"""API keys: made, shown once, stored as a digest, revoked and rotated."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from django.db import transaction
from django.utils import timezone

from .models import ApiKey, Workspace

KEY_PREFIX = "mt5b_"


def _digest(key: str) -> str:
    # Keys carry 192 bits of randomness, so a plain SHA-256 is enough (no slow KDF needed).
    return hashlib.sha256(key.encode()).hexdigest()


def create_api_key(workspace: Workspace, name: str = "") -> tuple[ApiKey, str]:
    """Make a key for ``workspace``; returns the row and the key in clear (shown once)."""
    prefix = secrets.token_hex(6)
    secret = secrets.token_urlsafe(24)
    key = f"{KEY_PREFIX}{prefix}_{secret}"
    row = ApiKey.objects.create(workspace=workspace, name=name, prefix=prefix, digest=_digest(key))
    return row, key


def authenticate_key(key: str) -> ApiKey | None:
    """The active key row for ``key``, or None. Constant-time digest comparison."""
    if not key.startswith(KEY_PREFIX):
        return None
    prefix, _, secret = key[len(KEY_PREFIX):].partition("_")
    if not prefix or not secret:
        return None
    row = ApiKey.objects.select_related("workspace").filter(prefix=prefix, revoked_at__isnull=True).first()
    if row is None or not hmac.compare_digest(row.digest, _digest(key)):
        return None
    return row


def revoke_api_key(row: ApiKey) -> None:
    if row.revoked_at is None:
        row.revoked_at = timezone.now()
        row.save(update_fields=["revoked_at"])


@transaction.atomic
def rotate_api_key(row: ApiKey) -> tuple[ApiKey, str]:
    """Revoke ``row`` and make its replacement in the same workspace (same name)."""
    revoke_api_key(row)
    return create_api_key(row.workspace, row.name)

"""API keys: made, hashed, authenticated, revoked, rotated; auth failures in the error shape."""

from __future__ import annotations

import hashlib

import pytest
from django.core.management import call_command
from rest_framework.test import APIClient

from sessions.api_keys import authenticate_key, create_api_key, revoke_api_key, rotate_api_key
from sessions.models import ApiKey, Workspace

pytestmark = pytest.mark.django_db


def _get(key: str | None, path: str = "/mt5/client/session/sess_nope") -> tuple[int, dict]:
    api = APIClient()
    if key is not None:
        api.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    response = api.get(path)
    return response.status_code, response.json()


def test_key_is_stored_as_digest_with_prefix_only(workspace: Workspace) -> None:
    row, key = create_api_key(workspace, "ci")
    stored = ApiKey.objects.get(pk=row.pk)
    assert key.startswith(f"mt5b_{stored.prefix}_")
    assert stored.digest == hashlib.sha256(key.encode()).hexdigest()
    # The secret is everything after the prefix: it may itself contain "_" (URL-safe base64), so a split on
    # the last "_" could leave a one-character tail that any hex digest contains (CI, 2026-12-07).
    secret = key.removeprefix(f"mt5b_{stored.prefix}_")
    assert len(secret) >= 32, key
    for value in (stored.prefix, stored.digest, stored.name):
        assert secret not in value
    assert authenticate_key(key).pk == row.pk


def test_wrong_missing_and_malformed_keys_are_401(workspace: Workspace) -> None:
    _, key = create_api_key(workspace)
    for bad in [None, "", key[:-1] + ("x" if key[-1] != "x" else "y"), "mt5b_nothing", "garbage"]:
        status, body = _get(bad)
        assert status == 401, bad
        assert body["error"]["code"] == "Unauthorized"
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Basic {key}")
    assert api.get("/mt5/client/session/x").status_code == 401


def test_valid_key_authenticates(workspace: Workspace) -> None:
    _, key = create_api_key(workspace)
    status, body = _get(key)
    assert status == 404 and body["error"]["code"] == "NotFound"  # authenticated; the session is unknown


def test_revoked_key_is_refused(workspace: Workspace) -> None:
    row, key = create_api_key(workspace)
    revoke_api_key(row)
    assert authenticate_key(key) is None
    assert _get(key)[0] == 401


def test_rotation_revokes_old_and_issues_working_new(workspace: Workspace) -> None:
    row, old = create_api_key(workspace, "bot")
    new_row, new = rotate_api_key(row)
    assert new != old and new_row.workspace_id == workspace.pk and new_row.name == "bot"
    assert _get(old)[0] == 401
    assert _get(new)[0] == 404


def test_create_api_key_command_prints_key_last(capsys: pytest.CaptureFixture[str]) -> None:
    call_command("create_api_key", "--workspace", "cli-ws")
    out = capsys.readouterr().out.strip().splitlines()
    key = out[-1]
    assert authenticate_key(key).workspace.name == "cli-ws"
    assert Workspace.objects.filter(name="cli-ws").count() == 1


def test_throttling_answers_429_with_retry_after(workspace: Workspace, settings) -> None:
    from django.core.cache import cache

    settings.BRIDGE_THROTTLE_RATE = "3/min"
    cache.delete(f"throttle:ws:{workspace.pk}")
    _, key = create_api_key(workspace)
    statuses = [_get(key)[0] for _ in range(3)]
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    response = api.get("/mt5/client/session/sess_nope")
    cache.delete(f"throttle:ws:{workspace.pk}")
    assert statuses == [404, 404, 404]
    assert response.status_code == 429 and response.json()["error"]["code"] == "RateLimited"
    assert int(response["Retry-After"]) >= 1
    assert response.json()["error"]["details"]["retryAfter"] == int(response["Retry-After"])

"""Ops endpoints: a staff login or the ops token only; 401/403 otherwise, in the error shape."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db

OPS_PATHS = ["/mt5/client/ops/terminals", "/mt5/client/ops/tasks", "/metrics"]


def _bearer(value: str) -> APIClient:
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {value}")
    return api


def _assert_error(response, status: int, code: str) -> None:
    assert response.status_code == status, (response.status_code, response.content)
    assert response.json()["error"]["code"] == code
    assert set(response.json()["error"]) == {"code", "message", "details"}


@pytest.mark.parametrize("path", OPS_PATHS)
def test_no_credentials_is_401(path: str, ops_token: str) -> None:
    _assert_error(APIClient().get(path), 401, "Unauthorized")


@pytest.mark.parametrize("path", OPS_PATHS)
def test_wrong_ops_token_is_401(path: str, ops_token: str) -> None:
    _assert_error(_bearer(ops_token + "x").get(path), 401, "Unauthorized")
    _assert_error(_bearer("").get(path), 401, "Unauthorized")


@pytest.mark.parametrize("path", OPS_PATHS)
def test_no_token_configured_means_no_token_works(path: str, settings) -> None:
    settings.BRIDGE_OPS_TOKEN = ""
    _assert_error(_bearer("").get(path), 401, "Unauthorized")
    _assert_error(_bearer("anything").get(path), 401, "Unauthorized")


@pytest.mark.parametrize("path", OPS_PATHS)
def test_workspace_api_key_is_403(path: str, client: APIClient, ops_token: str) -> None:
    _assert_error(client.get(path), 403, "Forbidden")


@pytest.mark.parametrize("path", OPS_PATHS)
def test_non_staff_user_is_403(path: str, ops_token: str) -> None:
    user = get_user_model().objects.create_user("plain", "p@example.com", "pw-plain-user-1")
    browser = Client()
    browser.force_login(user)
    _assert_error(browser.get(path), 403, "Forbidden")


@pytest.mark.parametrize("path", OPS_PATHS)
def test_ops_token_and_staff_are_allowed(path: str, ops_client: APIClient, staff_client: Client) -> None:
    assert ops_client.get(path).status_code == 200
    assert staff_client.get(path).status_code == 200


def test_inactive_staff_is_refused(ops_token: str) -> None:
    user = get_user_model().objects.create_user("gone", "g@example.com", "pw-gone-user-1", is_staff=True)
    browser = Client()
    browser.force_login(user)
    user.is_active = False
    user.save()
    assert browser.get("/mt5/client/ops/terminals").status_code in (401, 403)


def test_metrics_is_prometheus_text(ops_client: APIClient) -> None:
    response = ops_client.get("/metrics", HTTP_ACCEPT="application/openmetrics-text;version=1.0.0,*/*;q=0.1")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    text = response.content.decode()
    assert "# TYPE bridge_tasks gauge" in text
    assert "# TYPE bridge_queue_depth gauge" in text
    assert "# TYPE bridge_task_accept_to_final_seconds histogram" in text


@pytest.mark.parametrize(
    "query, field",
    [
        ("state=bogus", "state"),
        ("state=queued,nope", "state"),
        ("older_than=-1", "older_than"),
        ("older_than=abc", "older_than"),
        ("older_than=nan", "older_than"),
        ("limit=0", "limit"),
        ("limit=5000", "limit"),
        ("limit=1.5", "limit"),
    ],
)
def test_bad_ops_tasks_query_is_400(query: str, field: str, ops_client: APIClient) -> None:
    response = ops_client.get(f"/mt5/client/ops/tasks?{query}")
    _assert_error(response, 400, "ValidationError")
    assert field in response.json()["error"]["details"]


def test_ops_endpoints_are_read_only(ops_client: APIClient) -> None:
    assert ops_client.post("/mt5/client/ops/terminals", {}, format="json").status_code == 405
    assert ops_client.delete("/mt5/client/ops/tasks").status_code == 405
    assert ops_client.post("/metrics", {}, format="json").status_code == 405

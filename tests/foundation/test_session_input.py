"""Bad input to the session endpoints: a 4xx in the error shape, and nothing changed."""

from __future__ import annotations

import json

import pytest
import yaml
from rest_framework.test import APIClient

from sessions.models import BridgeSession
from terminals.models import Terminal

pytestmark = pytest.mark.django_db

OPEN = "/mt5/client/session/open"
GOOD = {"accountId": "acc-1", "server": "Demo", "login": 5001, "password": "s3cret-pw"}


@pytest.fixture(autouse=True)
def terminals_file(tmp_path, settings):
    path = tmp_path / "terminals.yaml"
    path.write_text(
        yaml.safe_dump({"terminals": [{"name": "t-1", "backend": "sim", "address": "127.0.0.1:1", "utc_offset": 0}]})
    )
    settings.BRIDGE_TERMINALS_FILE = str(path)
    return path


def _assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert isinstance(body["error"]["details"], dict)
    return body["error"]


@pytest.mark.parametrize(
    "body, field",
    [
        ({k: v for k, v in GOOD.items() if k != "login"}, "login"),
        ({k: v for k, v in GOOD.items() if k != "password"}, "password"),
        ({k: v for k, v in GOOD.items() if k != "server"}, "server"),
        ({k: v for k, v in GOOD.items() if k != "accountId"}, "accountId"),
        ({**GOOD, "login": "5001"}, "login"),
        ({**GOOD, "login": 50.5}, "login"),
        ({**GOOD, "login": True}, "login"),
        ({**GOOD, "login": -3}, "login"),
        ({**GOOD, "login": 2**70}, "login"),
        ({**GOOD, "password": 1234}, "password"),
        ({**GOOD, "server": None}, "server"),
        ({**GOOD, "accountId": ""}, "accountId"),
        ({**GOOD, "server": "x" * 201}, "server"),
        ({**GOOD, "terminal": 7}, "terminal"),
        ({**GOOD, "logn": 5001}, "logn"),
    ],
)
def test_invalid_open_bodies_are_400_naming_the_field(client: APIClient, body: dict, field: str) -> None:
    error = _assert_error(client.post(OPEN, body, format="json"), 400, "ValidationError")
    assert field in error["details"]
    assert BridgeSession.objects.count() == 0


def test_malformed_json_is_400(client: APIClient) -> None:
    response = client.post(OPEN, data='{"login": 5001,', content_type="application/json")
    _assert_error(response, 400, "ValidationError")
    assert BridgeSession.objects.count() == 0


def test_non_object_json_is_400(client: APIClient) -> None:
    for raw in ("[]", "42", '"text"', "null"):
        _assert_error(client.post(OPEN, data=raw, content_type="application/json"), 400, "ValidationError")
    assert BridgeSession.objects.count() == 0


def test_wrong_content_type_is_415(client: APIClient) -> None:
    response = client.post(OPEN, data="login=5001", content_type="application/x-www-form-urlencoded")
    _assert_error(response, 415, "ValidationError")


def test_huge_body_is_413(client: APIClient) -> None:
    body = json.dumps({**GOOD, "accountId": "a" * (70 * 1024)})
    _assert_error(client.post(OPEN, data=body, content_type="application/json"), 413, "PayloadTooLarge")
    assert BridgeSession.objects.count() == 0


def test_unknown_terminal_is_404(client: APIClient) -> None:
    error = _assert_error(client.post(OPEN, {**GOOD, "terminal": "nope"}, format="json"), 404, "NotFound")
    assert error["details"] == {"terminal": "nope"}
    assert BridgeSession.objects.count() == 0


@pytest.mark.parametrize("wait", ["abc", "-1", "31", "nan"])
def test_bad_wait_is_400(client: APIClient, wait: str) -> None:
    _assert_error(client.post(f"{OPEN}?wait={wait}", GOOD, format="json"), 400, "ValidationError")
    assert BridgeSession.objects.count() == 0


def test_busy_terminal_is_409_and_opens_nothing(client: APIClient) -> None:
    first = client.post(OPEN, GOOD, format="json")
    assert first.status_code == 201, first.content
    _assert_error(client.post(OPEN, {**GOOD, "terminal": "t-1"}, format="json"), 409, "TerminalBusy")
    _assert_error(client.post(OPEN, GOOD, format="json"), 409, "TerminalBusy")
    assert BridgeSession.objects.count() == 1
    assert Terminal.objects.filter(name="t-1").count() == 1


def test_bad_request_id_header_is_400(client: APIClient) -> None:
    for bad in ["", "x" * 129, "has space", "ünïcode"]:
        response = client.post(OPEN, GOOD, format="json", HTTP_X_REQUEST_ID=bad)
        _assert_error(response, 400, "ValidationError")
    assert BridgeSession.objects.count() == 0


def test_request_id_is_echoed_or_made(client: APIClient) -> None:
    given = client.get("/mt5/client/session/nope", HTTP_X_REQUEST_ID="req-42")
    assert given["x-request-id"] == "req-42"
    made = client.get("/mt5/client/session/nope")
    assert made["x-request-id"].startswith("req_")


def test_unknown_url_and_method_use_the_error_shape(client: APIClient) -> None:
    _assert_error(client.get("/mt5/client/no/such/path"), 404, "NotFound")
    _assert_error(client.put("/mt5/client/session/open", GOOD, format="json"), 405, "MethodNotAllowed")


def test_unexpected_exception_is_500_in_shape_without_internals(client: APIClient, monkeypatch) -> None:
    from sessions import services

    def boom(*args, **kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(services, "session_open", boom)
    response = client.post(OPEN, GOOD, format="json", HTTP_X_REQUEST_ID="req-500")
    error = _assert_error(response, 500, "InternalError")
    assert "secret internals" not in response.content.decode()
    assert error["details"]["requestId"] == "req-500"


def test_schema_and_docs_are_served(client: APIClient) -> None:
    schema = APIClient().get("/api/schema/?format=json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    assert "/mt5/client/session/open" in paths
    assert APIClient().get("/api/docs/").status_code == 200

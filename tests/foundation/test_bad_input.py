"""Bad input on the REST tier (issue #11): a clear 4xx in the error body, with ``x-request-id``, and
nothing changed; never a 500, a bare answer or a dropped connection.

Pure Django behaviour through the test client; the web servers' own limits (the header sizes, Twisted's
form parsing, duplicate header lines) through a real daphne started the way ``run_bridge`` starts it
(``workers.stack.daphne_argv``) and a real gunicorn started with docker-compose.yml's ``web`` command.
"""

from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from django.http import HttpRequest, HttpResponse
from django.test import Client
from django.urls import include, path
from django.views.decorators.http import require_POST
from rest_framework.test import APIClient

from bridge_project.errors import PayloadTooLarge, ValidationFailed
from bridge_project.parsers import loads_bounded, nesting_exceeds
from sessions.models import BridgeSession, Workspace
from tests.conftest import _db_env
from tests.factories import make_api_key, make_session, make_task, make_workspace
from tests.procs import PYTHON, ROOT, Proc, free_port
from trading.models import RequestReceipt, TaskTransition, TradeTask
from workers.stack import daphne_argv

API = "/mt5/client"
OPEN = f"{API}/session/open"
GOOD_OPEN = {"accountId": "acc-1", "server": "Demo", "login": 5001, "password": "s3cret-pw"}
DEPTH = 32  # BRIDGE_MAX_JSON_DEPTH's default


def deep_json(levels: int) -> str:
    """An object nesting ``levels`` arrays/objects: ``{"a": [[...]]}`` (about 2 bytes a level)."""
    return '{"a":' + "[" * (levels - 1) + "]" * (levels - 1) + "}"


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, (response.status_code, response.content[:500])
    body = json.loads(response.content)
    assert set(body) == {"error"}, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert isinstance(body["error"]["details"], dict)
    assert response["x-request-id"], "every answer carries x-request-id"
    return body["error"]


# --- fixtures ----------------------------------------------------------------------------------------


@dataclass
class Live:
    key: str
    workspace: Workspace
    session: BridgeSession
    task: TradeTask


@pytest.fixture
def live(db) -> Live:
    """An active session (a terminal row, no process behind it) and a queued task of it."""
    workspace = make_workspace()
    key = make_api_key(workspace)[1]
    session = make_session(workspace)
    task = make_task(session, request_id="req-existing",
                     request={"symbol": "EURUSD", "type": "BUY_LIMIT", "volume": 0.1, "price": 1.0})
    return Live(key, workspace, session, task)


def session_client(live: Live) -> APIClient:
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {live.key}", HTTP_X_SESSION_ID=live.session.id)
    return api


def snapshot() -> tuple:
    """Everything a refused request must leave as it was."""
    return (
        BridgeSession.objects.count(), TradeTask.objects.count(), TaskTransition.objects.count(),
        RequestReceipt.objects.count(),
        sorted((t.id, t.state, json.dumps(t.request, sort_keys=True), t.updated_at) for t in TradeTask.objects.all()),
    )


def json_endpoints(live: Live) -> list[tuple[str, str]]:
    ticket = 424242
    return [
        ("post", OPEN),
        ("post", f"{API}/orders"),
        ("patch", f"{API}/orders/{live.task.id}"),
        ("post", f"{API}/positions/{ticket}/close"),
        ("patch", f"{API}/positions/{ticket}"),
        ("post", f"{API}/positions/close"),
    ]


# --- JSON depth and size -----------------------------------------------------------------------------


def test_depth_scan_is_flat_and_skips_strings() -> None:
    assert not nesting_exceeds(deep_json(DEPTH).encode(), DEPTH)
    assert nesting_exceeds(deep_json(DEPTH + 1).encode(), DEPTH)
    assert nesting_exceeds(b"[" * 1_000_000, DEPTH)  # no recursion: a million levels is a flat scan
    assert not nesting_exceeds(json.dumps({"s": "[" * 500 + '\\"{{{'}).encode(), DEPTH)  # brackets in strings
    assert loads_bounded(deep_json(DEPTH)) == json.loads(deep_json(DEPTH))
    with pytest.raises(ValidationFailed):
        loads_bounded(deep_json(DEPTH + 1))
    with pytest.raises(ValidationFailed):
        loads_bounded("[" * 5000)
    with pytest.raises(PayloadTooLarge):
        loads_bounded(b"[" + b"1," * 40_000 + b"1]")


@pytest.mark.django_db
def test_deep_json_is_400_on_every_json_endpoint_and_writes_nothing(live: Live) -> None:
    api = session_client(live)
    body = "[" * 1000 + "]" * 1000  # 2 KB, 1,000 levels: a RecursionError (500) before
    before = snapshot()
    for n, (method, url) in enumerate(json_endpoints(live)):
        for payload in (body, deep_json(1000), deep_json(DEPTH + 1)):
            response = getattr(api, method)(url, data=payload, content_type="application/json",
                                            HTTP_X_REQUEST_ID=f"deep-{n}")
            error = assert_error(response, 400, "ValidationError")
            assert f"deeper than {DEPTH}" in error["message"], (url, error)
            assert "body" in error["details"]
            assert response["x-request-id"] == f"deep-{n}"
    assert snapshot() == before
    # The request ids were not consumed: the same id with a valid body is a new request, not a replay.
    assert not RequestReceipt.objects.filter(request_id__startswith="deep-").exists()


@pytest.mark.django_db
def test_depth_limit_is_exact_and_a_setting(live: Live, settings) -> None:
    api = session_client(live)
    at_limit = json.dumps({**GOOD_OPEN, "extra": json.loads(deep_json(DEPTH - 1))})
    error = assert_error(api.post(OPEN, data=at_limit, content_type="application/json"), 400, "ValidationError")
    assert "extra" in error["details"], error  # parsed: the serializer names the unknown field
    settings.BRIDGE_MAX_JSON_DEPTH = 4
    over = json.dumps({**GOOD_OPEN, "extra": [[[[1]]]]})
    error = assert_error(api.post(OPEN, data=over, content_type="application/json"), 400, "ValidationError")
    assert "deeper than 4" in error["message"]
    assert BridgeSession.objects.count() == 1


# --- header order: authentication, method, headers ---------------------------------------------------


@pytest.mark.django_db
def test_no_key_and_a_bad_request_id_is_401(live: Live) -> None:
    anonymous = APIClient()
    for bad in ("has space", "x" * 129, "a,b", ""):
        response = anonymous.post(OPEN, GOOD_OPEN, format="json", HTTP_X_REQUEST_ID=bad)
        assert_error(response, 401, "Unauthorized")
        assert response["x-request-id"].startswith("req_")  # the invalid id is not echoed
    wrong = APIClient(HTTP_AUTHORIZATION="Bearer mt5b_nope_nope")
    assert_error(wrong.post(OPEN, GOOD_OPEN, format="json", HTTP_X_REQUEST_ID="has space"), 401, "Unauthorized")
    assert BridgeSession.objects.count() == 1


@pytest.mark.django_db
def test_method_before_headers(live: Live) -> None:
    api = session_client(live)
    assert_error(api.generic("TRACE", OPEN, HTTP_X_REQUEST_ID="has space"), 405, "MethodNotAllowed")
    assert_error(api.generic("TRACE", OPEN), 405, "MethodNotAllowed")
    assert_error(api.put(OPEN, GOOD_OPEN, format="json", HTTP_X_REQUEST_ID="a,b"), 405, "MethodNotAllowed")
    assert_error(APIClient().generic("TRACE", OPEN, HTTP_X_REQUEST_ID="has space"), 401, "Unauthorized")
    # Authenticated, allowed method: now the header is refused, naming it.
    error = assert_error(api.post(OPEN, GOOD_OPEN, format="json", HTTP_X_REQUEST_ID="has space"), 400,
                         "ValidationError")
    assert error["details"] == {"x-request-id": ["must be 1 to 128 printable ASCII characters"]}
    assert BridgeSession.objects.count() == 1


@pytest.mark.django_db
def test_two_request_ids_are_refused_never_joined(live: Live) -> None:
    api = session_client(live)
    order = {"symbol": "EURUSD", "type": "BUY", "volume": 0.1}
    before = snapshot()
    # A header sent twice reaches Django joined with a comma (WSGI and ASGI alike).
    error = assert_error(api.post(f"{API}/orders", order, format="json", HTTP_X_REQUEST_ID="r-1,r-2"), 400,
                         "ValidationError")
    assert list(error["details"]) == ["x-request-id"]
    error = assert_error(api.post(f"{API}/orders", order, format="json", HTTP_X_REQUEST_ID="r-1",
                                  HTTP_IDEMPOTENCY_KEY="r-2"), 400, "ValidationError")
    assert list(error["details"]) == ["Idempotency-Key"]
    error = assert_error(api.post(f"{API}/orders", order, format="json", HTTP_IDEMPOTENCY_KEY="k-1, k-1"), 400,
                         "ValidationError")
    assert list(error["details"]) == ["Idempotency-Key"]
    assert snapshot() == before
    # The same value in both headers is one id (not refused at the header stage).
    response = api.post(OPEN, {}, format="json", HTTP_X_REQUEST_ID="same-1", HTTP_IDEMPOTENCY_KEY="same-1")
    error = assert_error(response, 400, "ValidationError")
    assert "x-request-id" not in error["details"] and "accountId" in error["details"]
    assert response["x-request-id"] == "same-1"


@pytest.mark.django_db
def test_required_request_id_is_checked_after_auth(live: Live, settings) -> None:
    settings.BRIDGE_REQUIRE_REQUEST_ID = True
    assert_error(APIClient().post(OPEN, GOOD_OPEN, format="json"), 401, "Unauthorized")
    error = assert_error(session_client(live).post(OPEN, GOOD_OPEN, format="json"), 400, "ValidationError")
    assert error["details"] == {"x-request-id": ["is required"]}


@pytest.mark.django_db
def test_multipart_without_boundary_is_400_after_auth(live: Live) -> None:
    api = session_client(live)
    assert_error(APIClient().post(OPEN, data=b"abc", content_type="multipart/form-data"), 401, "Unauthorized")
    response = api.post(OPEN, data=b"abc", content_type="multipart/form-data", HTTP_X_REQUEST_ID="mp-1")
    error = assert_error(response, 400, "ValidationError")
    assert list(error["details"]) == ["content-type"]
    assert response["x-request-id"] == "mp-1"
    # With a boundary it is well formed, and not a type the API takes.
    assert_error(api.post(OPEN, data=b"--xx--", content_type="multipart/form-data; boundary=xx"), 415,
                 "ValidationError")
    assert BridgeSession.objects.count() == 1


# --- oversized headers -------------------------------------------------------------------------------


@pytest.mark.django_db
def test_oversized_header_is_431_before_anything_else(live: Live, settings) -> None:
    huge = "Bearer " + "k" * 40_000
    response = APIClient().get(f"{API}/account", HTTP_AUTHORIZATION=huge, HTTP_X_REQUEST_ID="big-1")
    error = assert_error(response, 431, "RequestHeaderFieldsTooLarge")
    assert list(error["details"]) == ["authorization"]
    assert response["x-request-id"] == "big-1"
    before = snapshot()
    api = session_client(live)
    error = assert_error(api.post(OPEN, GOOD_OPEN, format="json", HTTP_X_JUNK="j" * 9000), 431,
                         "RequestHeaderFieldsTooLarge")
    assert list(error["details"]) == ["x-junk"]
    assert snapshot() == before
    # At the limit (name + value = 8192 bytes) the request goes on; the limit is a setting.
    fits = "j" * (8192 - len("X_JUNK"))
    assert api.get(f"{API}/session/{live.session.id}", HTTP_X_JUNK=fits).status_code == 200
    settings.BRIDGE_MAX_HEADER_BYTES = 100
    assert_error(api.get(f"{API}/session/{live.session.id}", HTTP_X_JUNK="j" * 100), 431,
                 "RequestHeaderFieldsTooLarge")


# --- Django's own answers ----------------------------------------------------------------------------


def _boom(request: HttpRequest):
    raise RuntimeError("secret internals")


@require_POST
def _post_only(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


# This module doubles as a URLconf (ROOT_URLCONF in test_django_level_errors) with the project's handlers.
urlpatterns = [path("boom", _boom), path("post-only", _post_only), path("", include("bridge_project.urls"))]
handler400 = "bridge_project.errors.json_400"
handler404 = "bridge_project.errors.json_404"
handler500 = "bridge_project.errors.json_500"


@pytest.mark.django_db
def test_django_level_errors_carry_the_body_and_request_id(settings) -> None:
    settings.ROOT_URLCONF = __name__
    client = Client(raise_request_exception=False)
    response = client.get("/no/such/page", HTTP_X_REQUEST_ID="nf-1")
    assert_error(response, 404, "NotFound")
    assert response["x-request-id"] == "nf-1"
    # A bare Django 405 (an empty HttpResponseNotAllowed): rewritten, its Allow header kept.
    response = client.get("/post-only")
    assert_error(response, 405, "MethodNotAllowed")
    assert response["Allow"] == "POST"
    # Django reading an oversized body itself (the admin's form): 413, not a 400 or a 500.
    response = client.post("/admin/login/", data="a=" + "b" * (70 * 1024),
                           content_type="application/x-www-form-urlencoded")
    assert_error(response, 413, "PayloadTooLarge")
    # handler400: a Host outside ALLOWED_HOSTS.
    settings.ALLOWED_HOSTS = ["testserver"]
    assert_error(client.get("/health", HTTP_HOST="evil.example"), 400, "ValidationError")
    # handler500: an exception in a plain Django view.
    response = client.get("/boom", HTTP_X_REQUEST_ID="boom-1")
    error = assert_error(response, 500, "InternalError")
    assert error["details"] == {"requestId": "boom-1"} and response["x-request-id"] == "boom-1"
    assert b"secret internals" not in response.content


@pytest.mark.django_db
def test_plain_views_answer_their_own_refusals_before_header_errors(settings) -> None:
    settings.BRIDGE_OPS_TOKEN = "ops-token-for-tests"
    client = Client()
    assert_error(client.get("/metrics", HTTP_X_REQUEST_ID="has space"), 401, "Unauthorized")
    ops = {"HTTP_AUTHORIZATION": "Bearer ops-token-for-tests"}
    assert_error(client.post("/metrics", HTTP_X_REQUEST_ID="has space", **ops), 400, "ValidationError")
    assert_error(client.get("/metrics", HTTP_X_REQUEST_ID="has space", **ops), 400, "ValidationError")
    assert client.get("/metrics", HTTP_X_REQUEST_ID="ok-1", **ops).status_code == 200


# --- real servers ------------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def error(self) -> dict:
        assert self.headers.get("content-type", "").startswith("application/json"), (self.status, self.headers)
        body = json.loads(self.body)
        assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}, body
        assert self.headers.get("x-request-id"), self.headers
        return body["error"]


def raw_http(port: int, method: str, target: str, headers: list[tuple[str, str]], body: bytes = b"",
             timeout: float = 15.0) -> Answer:
    """One request over a new connection, headers exactly as given (repeats included); the answer is
    read to the end of its body (Content-Length, chunked, or the connection's close)."""
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close",
             *(f"{name}: {value}" for name, value in headers)]
    if body and not any(name.lower() == "transfer-encoding" for name, _ in headers):
        lines.append(f"Content-Length: {len(body)}")
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before reading it all: read its answer
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
    head, _, rest = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1."), f"no HTTP answer: {received[:200]!r}"
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        parsed[name.strip().lower()] = value.strip()
    if parsed.get("transfer-encoding", "").lower() == "chunked":
        rest = _dechunk(rest)
    elif "content-length" in parsed:
        rest = rest[: int(parsed["content-length"])]
    return Answer(int(status_line.split()[1]), parsed, rest)


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out, data = out + data[:size], data[size + 2:]
    return out


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _compose_web_argv(port: int) -> list[str]:
    """docker-compose.yml's ``web`` command, its ``${VAR:-default}`` at their defaults (one worker),
    bound to ``port``."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    command = compose["services"]["web"]["command"]
    defaults = {"WEB_WORKERS": "1"}
    argv = [re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: defaults.get(m[1], m[2]), arg) for arg in command]
    argv[argv.index("-b") + 1] = f"127.0.0.1:{port}"
    assert argv[0] == "gunicorn"
    return [PYTHON, "-m", "gunicorn", *argv[1:]]


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory, django_db_setup, django_db_blocker
            ) -> Iterator[dict[str, int]]:
    """A daphne as run_bridge starts it and a gunicorn as compose starts it, on free ports."""
    log_dir: Path = tmp_path_factory.mktemp("bad-input-servers")
    with django_db_blocker.unblock():
        env = {**os.environ, **_db_env()}
    procs: dict[str, Proc] = {}
    ports = {"daphne": free_port(), "gunicorn": free_port()}
    try:
        argv = daphne_argv("127.0.0.1", ports["daphne"], PYTHON)
        procs["daphne"] = Proc("daphne", argv, env, log_dir).start()
        procs["gunicorn"] = Proc("gunicorn", _compose_web_argv(ports["gunicorn"]), env, log_dir).start()
        for name, proc in procs.items():
            proc.wait_for(lambda port=ports[name]: _port_open(port), 60, "listening")
        yield ports
    finally:
        for proc in procs.values():
            proc.stop()


@pytest.fixture
def server_key(transactional_db) -> str:
    """An API key committed where the servers see it."""
    return make_api_key()[1]


SERVERS = ["daphne", "gunicorn"]


@pytest.mark.parametrize("server", SERVERS)
def test_40kb_authorization_reaches_the_app_and_is_431(servers: dict[str, int], server: str) -> None:
    answer = raw_http(servers[server], "GET", f"{API}/account",
                      [("Authorization", "Bearer " + "k" * 40_000), ("x-request-id", "big-srv")])
    assert answer.status == 431
    error = answer.error()
    assert error["code"] == "RequestHeaderFieldsTooLarge"
    assert list(error["details"]) == ["authorization"]  # the application's answer, not the server's
    assert answer.headers["x-request-id"] == "big-srv"


@pytest.mark.parametrize("server", SERVERS)
def test_multipart_without_boundary_on_a_real_server(servers: dict[str, int], server: str,
                                                     server_key: str) -> None:
    sessions_before = BridgeSession.objects.count()
    no_key = raw_http(servers[server], "POST", OPEN, [("Content-Type", "multipart/form-data")], b"abc")
    assert no_key.status == 401 and no_key.error()["code"] == "Unauthorized"
    answer = raw_http(servers[server], "POST", OPEN,
                      [("Authorization", f"Bearer {server_key}"), ("Content-Type", "multipart/form-data"),
                       ("x-request-id", "mp-srv")], b"abc")
    assert answer.status == 400
    assert list(answer.error()["details"]) == ["content-type"]
    assert answer.headers["x-request-id"] == "mp-srv"
    assert BridgeSession.objects.count() == sessions_before


@pytest.mark.parametrize("server", SERVERS)
def test_request_id_sent_twice_on_a_real_server(servers: dict[str, int], server: str, server_key: str) -> None:
    answer = raw_http(servers[server], "POST", OPEN,
                      [("Authorization", f"Bearer {server_key}"), ("Content-Type", "application/json"),
                       ("x-request-id", "twice-1"), ("x-request-id", "twice-2")], json.dumps(GOOD_OPEN).encode())
    assert answer.status == 400
    assert list(answer.error()["details"]) == ["x-request-id"]
    assert answer.headers["x-request-id"] not in {"twice-1", "twice-2", "twice-1,twice-2"}
    assert BridgeSession.objects.count() == 0  # nothing opened


@pytest.mark.parametrize("server", SERVERS)
def test_auth_then_method_then_headers_on_a_real_server(servers: dict[str, int], server: str,
                                                        server_key: str) -> None:
    """The order of the checks through the web server itself: no key and a bad request id is 401, TRACE
    with a key is 405, and only then the header is refused (400 naming it); never the invalid id echoed."""
    port, body = servers[server], json.dumps(GOOD_OPEN).encode()
    no_key = raw_http(port, "POST", OPEN, [("Content-Type", "application/json"), ("x-request-id", "has space")], body)
    assert no_key.status == 401 and no_key.error()["code"] == "Unauthorized"
    assert no_key.headers["x-request-id"].startswith("req_")
    auth = ("Authorization", f"Bearer {server_key}")
    trace = raw_http(port, "TRACE", OPEN, [auth, ("x-request-id", "has space")])
    assert trace.status == 405 and trace.error()["code"] == "MethodNotAllowed"
    bad_id = raw_http(port, "POST", OPEN, [auth, ("Content-Type", "application/json"), ("x-request-id", "has space")],
                      body)
    assert bad_id.status == 400 and list(bad_id.error()["details"]) == ["x-request-id"]
    assert BridgeSession.objects.count() == 0  # nothing opened


@pytest.mark.parametrize("server", SERVERS)
def test_deep_json_on_a_real_server(servers: dict[str, int], server: str, server_key: str) -> None:
    answer = raw_http(servers[server], "POST", OPEN,
                      [("Authorization", f"Bearer {server_key}"), ("Content-Type", "application/json")],
                      ("[" * 1000 + "]" * 1000).encode())
    assert answer.status == 400
    assert "deeper than" in answer.error()["message"]


@pytest.mark.parametrize("server", SERVERS)
def test_chunked_body_is_411_on_a_real_server(servers: dict[str, int], server: str, server_key: str) -> None:
    """Without Content-Length DRF would read the body as empty ("fields required"): refused as such."""
    body = json.dumps({**GOOD_OPEN, "accountId": "a" * (70 * 1024)}).encode()
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 8192]), body[i:i + 8192])
                       for i in range(0, len(body), 8192)) + b"0\r\n\r\n"
    answer = raw_http(servers[server], "POST", OPEN,
                      [("Authorization", f"Bearer {server_key}"), ("Content-Type", "application/json"),
                       ("Transfer-Encoding", "chunked")], chunked)
    assert answer.status == 411 and answer.error()["code"] == "LengthRequired"
    assert BridgeSession.objects.count() == 0


def test_daphne_beyond_its_limits_answers_in_the_error_body(servers: dict[str, int]) -> None:
    """Over the server limit (64 KiB a line, 128 KiB the head) daphne itself answers: 431 (414 for
    the request line), in the error body, and closes; never a dropped connection."""
    port = servers["daphne"]
    answer = raw_http(port, "GET", f"{API}/account", [("Authorization", "Bearer " + "k" * 70_000)])
    assert answer.status == 431 and answer.error()["code"] == "RequestHeaderFieldsTooLarge"
    answer = raw_http(port, "GET", f"{API}/account", [(f"X-Fill-{i}", "f" * 50_000) for i in range(3)])
    assert answer.status == 431 and answer.error()["code"] == "RequestHeaderFieldsTooLarge"
    answer = raw_http(port, "GET", "/" + "p" * 70_000, [])
    assert answer.status == 414 and answer.error()["code"] == "URITooLong"
    answer = raw_http(port, "GET", f"{API}/account", [("Bad Header Name", "x")])
    assert answer.status == 400 and answer.error()["code"] == "ValidationError"
    answer = raw_http(port, "GET", f"{API}/account?\xff", [("x-request-id", "dq-1")])  # not ASCII: Twisted's 400
    assert answer.status == 400 and answer.error()["code"] == "ValidationError"
    # daphne's own refusals (here: a vertical tab in a header value) too, with the client's request id.
    answer = raw_http(port, "GET", f"{API}/account", [("X-Odd", "a\x0bb"), ("x-request-id", "dq-1")])
    assert answer.status == 400 and answer.error()["code"] == "ValidationError"
    assert answer.headers["x-request-id"] == "dq-1"


def test_gunicorn_beyond_its_limit_still_answers_431(servers: dict[str, int]) -> None:
    """Over --limit-request-field_size gunicorn answers 431 itself (its own HTML body: documented)."""
    answer = raw_http(servers["gunicorn"], "GET", f"{API}/account", [("Authorization", "Bearer " + "k" * 70_000)])
    assert answer.status == 431


@pytest.mark.django_db
def test_health_answers_get_and_head_only() -> None:
    assert APIClient().get("/health").status_code in (200, 503)
    assert APIClient().head("/health").status_code in (200, 503)
    for method in ("POST", "PUT", "DELETE", "TRACE"):
        assert_error(APIClient().generic(method, "/health"), 405, "MethodNotAllowed")

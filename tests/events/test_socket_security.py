"""The /events socket under abuse and with revoked credentials, on a real daphne with the real channel
layer, Redis and PostgreSQL: bad input answered (never 1011), a revoked or rotated key's sockets closed
with 4401 within a second, single-use tickets instead of the key in the URL, connect and message limits.
"""

from __future__ import annotations

import json
import random
import socket
import time
from collections.abc import Callable, Iterator
from io import StringIO
from urllib.parse import urlparse

import pytest
import redis
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from drf_spectacular.generators import SchemaGenerator
from rest_framework.test import APIClient
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from sessions.api_keys import revoke_api_key
from sessions.models import ApiKey, BridgeSession
from streams import tickets
from streams.publisher import publish_session_event
from tests.events.conftest import LiveSession, WsClient, start_daphne
from tests.waiting import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

TICKET = "/mt5/client/events/ticket"


def _api(session: LiveSession, key: str | None = None) -> APIClient:
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {key or session.key}", HTTP_X_SESSION_ID=session.id)
    return api


def _ticket(session: LiveSession, key: str | None = None) -> str:
    response = _api(session, key).post(TICKET)
    assert response.status_code == 201, response.content
    return response.json()["ticket"]


def _ping(client: WsClient, rid: str = "p") -> dict:
    client.send({"type": "ping", "request_id": rid})
    reply, _ = client.recv_until(lambda m: m.get("request_id") == rid)
    assert reply["type"] == "pong", reply
    return reply


def _closed(client: WsClient, timeout: float = 5.0) -> tuple[int | None, list[dict], float]:
    """(close code, the messages before it, seconds it took) for a socket the server closes."""
    from websockets.exceptions import ConnectionClosed

    seen: list[dict] = []
    start = time.monotonic()
    try:
        while True:
            left = timeout - (time.monotonic() - start)
            if left <= 0:
                return None, seen, time.monotonic() - start
            try:
                seen.append(json.loads(client.conn.recv(timeout=left)))
            except TimeoutError:
                continue
    except ConnectionClosed as exc:
        return (exc.rcvd.code if exc.rcvd else None), seen, time.monotonic() - start


def _nested(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


# -- bad input ---------------------------------------------------------------------------------------------
def test_deep_or_huge_messages_get_a_validation_error_and_the_socket_stays_open(ws, make_session) -> None:
    client = ws(make_session())
    limit = settings.BRIDGE_EVENTS_MAX_DEPTH
    refused = [
        _nested(1000),  # what closed the socket with 1011 before (RecursionError in the parser)
        '{"a":' * 1000 + "1" + "}" * 1000,
        _nested(30_000),  # far beyond the recursion limit, and still under the size limit
        json.dumps({"type": "ping", "x": json.loads(_nested(limit))}),  # one level too deep (object + list)
        json.dumps({"type": "ping", "pad": "x" * (settings.BRIDGE_EVENTS_MAX_MESSAGE_BYTES + 1)}),
        json.dumps({"type": "ping", "pad": "é" * (settings.BRIDGE_EVENTS_MAX_MESSAGE_BYTES // 2)},
                   ensure_ascii=False),  # under the limit in characters, over it in UTF-8 bytes
    ]
    for n, text in enumerate(refused):
        client.send(text)
        reply = client.recv()
        assert reply["type"] == "error" and reply["error"]["code"] == "ValidationError", (n, reply)
        assert ("deeper" in reply["error"]["message"]) == (n < 4), reply
        _ping(client, f"alive-{n}")
    # At the limit itself the message is read.
    client.send(json.dumps({"type": "ping", "request_id": "deep-ok", "x": json.loads(_nested(limit - 1))}))
    assert client.recv()["type"] == "pong"


# -- revocation ------------------------------------------------------------------------------------------
def _admin_action(action: str, key_id: int) -> Callable[[], None]:
    """A logged-in staff browser, ready to run the admin's ``action`` on the key."""
    user = get_user_model().objects.create_superuser(f"admin-{time.time_ns()}", "a@example.com", "pw-123456789")
    browser = Client()
    browser.force_login(user)

    def run() -> None:
        response = browser.post(reverse("admin:bridge_sessions_apikey_changelist"),
                                {"action": action, "_selected_action": [str(key_id)]})
        assert response.status_code in (200, 302), response.content[:500]

    return run


def _saved_revoked(row: ApiKey) -> None:
    row.revoked_at = timezone.now()
    row.save()


# Each: prepared before the clock starts, returns what revokes.
REVOKE_PATHS: dict[str, Callable[[ApiKey], Callable[[], object]]] = {
    "function": lambda row: lambda: revoke_api_key(row),
    "admin-revoke": lambda row: _admin_action("revoke", row.pk),
    "admin-rotate": lambda row: _admin_action("rotate", row.pk),
    "command-revoke": lambda row: lambda: call_command("revoke_api_key", row.prefix, stdout=StringIO()),
    "command-rotate": lambda row: lambda: call_command("rotate_api_key", row.prefix, stdout=StringIO(),
                                                       stderr=StringIO()),
    "save": lambda row: lambda: _saved_revoked(row),
    "delete": lambda row: lambda: row.delete(),
}


@pytest.mark.parametrize("path", sorted(REVOKE_PATHS))
def test_revoking_or_rotating_a_key_closes_its_sockets_with_4401_within_a_second(ws, make_session, path: str) -> None:
    session = make_session()
    other = make_session(workspace=session.workspace)  # same workspace, another key: unaffected
    by_header = ws(session)
    by_ticket = ws(None, query=f"ticket={_ticket(session)}")
    bystander = ws(other)
    for n, client in enumerate((by_header, by_ticket, bystander)):
        _ping(client, f"ready-{n}")  # connect() has finished: the socket is in its key's group
    row = ApiKey.objects.get(prefix=session.key.split("_")[1])
    revoke = REVOKE_PATHS[path](row)
    start = time.monotonic()
    revoke()
    for client in (by_header, by_ticket):
        code, seen, _ = _closed(client, timeout=5.0)
        took = time.monotonic() - start  # observed after the close: never less than the real time
        assert code == 4401, (code, seen)
        assert took < 1.0, f"closed {took:.2f}s after the revocation began"
        assert seen and seen[-1]["error"]["code"] == "Unauthorized", seen
    _ping(bystander, "still-open")
    # and the key opens nothing any more
    assert ws(session).close_code() == 4401


def test_a_revoked_socket_gets_no_more_events(ws, make_session) -> None:
    session = make_session()
    client = ws(session)
    client.send({"type": "subscribe", "channels": ["order"], "request_id": "s"})
    client.recv_until(lambda m: m.get("request_id") == "s")
    revoke_api_key(ApiKey.objects.get(prefix=session.key.split("_")[1]))
    code, seen, _ = _closed(client)
    for n in range(3):
        publish_session_event(session.id, "order", {"taskId": f"tsk_{n}", "state": "queued"})
    assert code == 4401
    assert not [m for m in seen if m["type"] == "order"], seen


# -- a daphne with small limits, and a key check every 0.3 s ---------------------------------------------------
STRICT_ENV = {
    "BRIDGE_EVENTS_KEY_CHECK_INTERVAL": "0.3",
    "BRIDGE_EVENTS_CONNECT_RATE": "3/min",
    "BRIDGE_EVENTS_CONNECT_FAIL_RATE_IP": "3/min",
    "BRIDGE_EVENTS_MESSAGE_RATE": "5/s",
}


@pytest.fixture(scope="module")
def strict_url(tmp_path_factory, django_db_setup, django_db_blocker, events_redis) -> Iterator[str]:
    with django_db_blocker.unblock():
        proc, url = start_daphne(tmp_path_factory.mktemp("daphne-strict"), STRICT_ENV, name="daphne-strict")
    try:
        yield url
    finally:
        proc.stop()


def _connect(url: str, session: LiveSession | None = None, *, token: str | None = None, source: str | None = None,
             query: str = "") -> WsClient:
    """A socket to ``url``, optionally from another loopback address (its own per-IP counters)."""
    headers = {"Authorization": f"Bearer {token or session.key}", "x-session-id": session.id} if session else {}
    sock = None
    if source is not None:
        parsed = urlparse(url)
        sock = socket.create_connection((parsed.hostname, parsed.port), timeout=10, source_address=(source, 0))
    conn = connect(f"{url}/events" + (f"?{query}" if query else ""), additional_headers=headers, open_timeout=10,
                   sock=sock)
    return WsClient(conn.__enter__())  # the context-manager form; closed by the fixture


@pytest.fixture
def strict(strict_url: str) -> Iterator:
    opened: list[WsClient] = []

    def open_ws(*args, **kwargs) -> WsClient:
        client = _connect(strict_url, *args, **kwargs)
        opened.append(client)
        return client

    yield open_ws
    for client in opened:
        try:
            client.close()
        except Exception:
            pass


def test_the_periodic_key_check_closes_a_socket_whose_revocation_sent_nothing(strict, make_session) -> None:
    session = make_session()
    client = strict(session)
    _ping(client)
    # QuerySet.update sends no signal and publishes nothing: only the socket's own key check can see it.
    ApiKey.objects.filter(prefix=session.key.split("_")[1]).update(revoked_at=timezone.now())
    code, seen, took = _closed(client, timeout=5.0)
    assert code == 4401, (code, seen)
    assert took < 2.0


def test_connects_per_key_are_limited_with_4429_and_retry_after(strict, make_session) -> None:
    session = make_session()
    other = make_session(workspace=session.workspace)
    for n in range(3):
        _ping(strict(session), f"ok-{n}")
    code, seen, _ = _closed(strict(session))
    assert code == 4429, (code, seen)
    assert seen[-1]["error"]["code"] == "RateLimited" and seen[-1]["error"]["details"]["retryAfter"] >= 1, seen
    _ping(strict(other), "another-key")  # the limit is the key's, not the workspace's or the address's


def test_failed_connects_per_address_are_limited_but_a_valid_key_still_connects(strict, make_session) -> None:
    session = make_session()
    source, elsewhere = (f"127.{random.randint(1, 250)}.{random.randint(1, 250)}.{random.randint(2, 250)}"
                         for _ in range(2))
    for n in range(3):
        code, seen, _ = _closed(strict(session, token="mt5b_nope_nope", source=source))
        assert code == 4401, (n, code, seen)
    for query in ("ticket=wst_" + "x" * 43, "token=mt5b_bad_bad&session=" + session.id):
        code, seen, _ = _closed(strict(None, source=source, query=query))
        assert code == 4429, (code, seen)
        assert seen[-1]["error"]["code"] == "RateLimited" and seen[-1]["error"]["details"]["retryAfter"] >= 1
    _ping(strict(session, source=source), "good-key")  # valid credentials are not refused by the address limit
    code, _, _ = _closed(strict(session, token="mt5b_nope_nope", source=elsewhere))  # other addresses: unaffected
    assert code == 4401


def test_messages_over_the_rate_get_rate_limited_and_a_flood_closes_the_socket(strict, make_session) -> None:
    client = strict(make_session())
    for n in range(8):
        client.send({"type": "ping", "request_id": f"b{n}"})
    replies = [client.recv() for _ in range(8)]
    pongs = [r for r in replies if r["type"] == "pong"]
    limited = [r for r in replies if r["type"] == "error"]
    assert 5 <= len(pongs) < 8 and limited, replies
    assert {r["error"]["code"] for r in limited} == {"RateLimited"}
    wait = max(r["error"]["details"]["retryAfter"] for r in limited)
    assert 0 < wait <= 0.2 + 1e-6, wait
    deadline = time.monotonic() + 3
    while True:  # the socket is still open, and answers again once a token is back
        client.send({"type": "ping", "request_id": "again"})
        reply = client.recv()
        if reply["type"] == "pong":
            break
        assert reply["error"]["code"] == "RateLimited" and time.monotonic() < deadline, reply
        time.sleep(reply["error"]["details"]["retryAfter"])  # the subject: the wait the server asked for
    for n in range(40):  # a flood: far more than a burst without waiting
        try:
            client.send({"type": "ping", "request_id": f"f{n}"})
        except Exception:  # closed under the flood
            break
    code, seen, _ = _closed(client)
    assert code == 4429, (code, seen[-3:])
    assert seen[-1]["error"]["code"] == "RateLimited", seen[-3:]


# -- tickets -------------------------------------------------------------------------------------------------
def test_a_ticket_opens_one_socket_once(ws, make_session) -> None:
    session = make_session()
    response = _api(session).post(TICKET)
    assert response.status_code == 201, response.content
    body = response.json()
    assert set(body) == {"ticket", "expiresAt"}
    assert time.time() + 20 < body["expiresAt"] <= time.time() + 31
    assert response["Cache-Control"] == "no-store"
    client = ws(None, query=f"ticket={body['ticket']}")
    client.send({"type": "subscribe", "channels": ["order"], "request_id": "s"})
    client.recv_until(lambda m: m.get("request_id") == "s")
    publish_session_event(session.id, "order", {"taskId": "tsk_t", "state": "queued"})
    assert client.recv_until(lambda m: m["type"] == "order")[0]["sessionId"] == session.id
    again = ws(None, query=f"ticket={body['ticket']}")  # used: refused
    code, seen, _ = _closed(again)
    assert code == 4401 and seen[-1]["error"]["code"] == "Unauthorized"
    _ping(client, "first-still-open")
    # the query token still works (compatibility), the ticket takes precedence over it
    _ping(ws(None, query=f"token={session.key}&session={session.id}"), "token")
    assert ws(None, query=f"ticket={body['ticket']}&token={session.key}&session={session.id}").close_code() == 4401


def test_expired_revoked_or_foreign_tickets_are_refused(ws, make_session, settings) -> None:
    session = make_session()
    settings.BRIDGE_EVENTS_TICKET_TTL = 0.3
    expired = _ticket(session)
    store = redis.Redis.from_url(settings.REDIS_URL)
    wait_until(lambda: not store.exists(tickets._redis_key(expired)), 5, "the ticket expired")
    assert ws(None, query=f"ticket={expired}").close_code() == 4401
    settings.BRIDGE_EVENTS_TICKET_TTL = 30
    assert ws(None, query="ticket=wst_" + "A" * 43).close_code() == 4401
    assert ws(None, query="ticket=garbage").close_code() == 4401
    # a ticket whose key is revoked before it is used
    unused = _ticket(session)
    revoke_api_key(ApiKey.objects.get(prefix=session.key.split("_")[1]))
    assert ws(None, query=f"ticket={unused}").close_code() == 4401
    # a ticket whose session ended before it is used
    live = make_session()
    pending = _ticket(live)
    BridgeSession.objects.filter(id=live.id).update(status="closed")
    assert ws(None, query=f"ticket={pending}").close_code() == 4401


def test_ticket_endpoint_answers_401_without_a_live_session_and_is_in_the_schema(make_session) -> None:
    session = make_session()
    no_session = APIClient()
    no_session.credentials(HTTP_AUTHORIZATION=f"Bearer {session.key}")
    response = no_session.post(TICKET)
    assert response.status_code == 401 and response.json()["error"]["code"] == "Unauthorized"
    response = APIClient().post(TICKET, HTTP_X_SESSION_ID=session.id)
    assert response.status_code == 401
    other = make_session()
    response = _api(session, other.key).post(TICKET)  # another workspace's key for this session
    assert response.status_code == 401
    BridgeSession.objects.filter(id=session.id).update(status="expired")
    response = _api(session).post(TICKET)
    assert response.status_code == 401 and response.json()["error"]["code"] == "SessionExpired"
    assert APIClient().get(TICKET).status_code in (401, 405)
    schema = SchemaGenerator().get_schema(request=None, public=True)
    operation = schema["paths"]["/mt5/client/events/ticket"]["post"]
    assert operation["operationId"] == "events_ticket"
    assert {"201", "400", "401", "429", "503"} <= set(operation["responses"])
    assert set(operation["responses"]["201"]["content"]["application/json"]["schema"].keys()) >= {"$ref"}


@pytest.mark.parametrize("path", ["/mt5/client/events", "/nope", "/events/extra"])
def test_a_socket_to_a_path_with_no_socket_is_refused_at_the_handshake_not_a_500(daphne, daphne_url: str,
                                                                                  path: str) -> None:
    """A wrong URL is the client's error (a 4xx it should not retry), never a server fault."""
    proc, _ = daphne
    with pytest.raises(InvalidStatus) as refused:
        connect(f"{daphne_url}{path}", open_timeout=10)
    assert refused.value.response.status_code == 403
    assert "No route found" not in proc.log()

"""The hot read path (trading/reads/hotpath.py): same answers as the full path, sooner, and never one
the full path would not give.

Real Redis and the test database throughout. The in-process tests drive the ASGI middleware with a
stand-in for Django behind it that answers 599, so every test sees which path answered; the live tests
run two real daphnes on the real ASGI application, one with the hot path and one without
(``BRIDGE_HOT_READS=false``), and compare their answers byte for byte.

The faults: a key revoked and a session closed after the cache was filled (the very next request must
not be served), a change the bridge made at the terminal after the snapshot (read-your-writes), Redis
losing the access epoch (a restart), a snapshot of another session or login, 16 concurrent requests
against a limit of 5 (exactly 5 pass, counted once even when the hot path hands a request on).
"""

from __future__ import annotations

import asyncio
import gzip
import http.client
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connections
from django.test import override_settings

from sessions.api_keys import revoke_api_key
from sessions.epoch import ACCESS_EPOCH_KEY
from sessions.models import ApiKey, BridgeSession
from sessions.services import session_close
from tests.events.conftest import start_daphne
from tests.factories import make_api_key, make_session, make_workspace
from tests.procs import Proc
from trading.reads.hotpath import HotReads
from trading.reads.snapshots import (
    TerminalSnapshot,
    note_terminal_changed,
    snapshot_version_key,
    store_snapshot,
)

pytestmark = pytest.mark.django_db(transaction=True)
FULL_PATH_STATUS = 599  # what the stand-in for Django answers: "the hot path handed this on"


def _redis() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL)


def _snapshot(session: BridgeSession, *, taken_at: float | None = None, login: int | None = None,
              session_id: str | None = None, connected: bool = True, positions_count: int = 1) -> TerminalSnapshot:
    login = session.login if login is None else login
    positions = [{"ticket": 77 + i, "symbol": "EURUSD", "type": 0, "volume": 0.1, "price_open": 1.1,
                  "profit": -1.5, "comment": "élan"} for i in range(positions_count)]
    return TerminalSnapshot(
        account={"login": login, "trade_mode": 0, "leverage": 100, "limit_orders": 200, "margin_so_mode": 0,
                 "trade_allowed": True, "trade_expert": True, "margin_mode": 2, "currency_digits": 2,
                 "fifo_close": False, "balance": 10000.0, "credit": 0.0, "profit": -1.5, "equity": 9998.5,
                 "margin": 110.0, "margin_free": 9888.5, "margin_level": 9089.5, "margin_so_call": 50.0,
                 "margin_so_so": 30.0, "name": "Demo account of the hot path tests", "server": "MT5Sim-Demo",
                 "currency": "USD", "company": "mt5sim"},
        positions=positions, orders=[{"ticket": 88, "symbol": "GBPUSD", "type": 2, "volume_current": 0.2}],
        ticks={}, books={}, deals=[], taken_at=time.time() if taken_at is None else taken_at,
        connected=connected, session_id=session.id if session_id is None else session_id)


class Live:
    """A session with a key and a snapshot of its terminal in Redis."""

    def __init__(self, login: int = 6101) -> None:
        self.workspace = make_workspace()
        self.key_row, self.key = make_api_key(self.workspace)
        self.session = make_session(self.workspace, login=login)
        self.terminal = self.session.terminal.name
        self.store()

    def store(self, **kw: Any) -> TerminalSnapshot:
        snapshot = _snapshot(self.session, **kw)
        store_snapshot(_redis(), self.terminal, snapshot)
        return snapshot

    def headers(self, **extra: str) -> list[tuple[bytes, bytes]]:
        extra = {"host": "127.0.0.1:8000", **extra}
        return [(b"authorization", f"Bearer {self.key}".encode()), (b"x-session-id", self.session.id.encode()),
                *[(k.encode(), v.encode()) for k, v in extra.items()]]


async def _full_path(scope, receive, send) -> None:
    await send({"type": "http.response.start", "status": FULL_PATH_STATUS, "headers": []})
    await send({"type": "http.response.body", "body": b""})


async def _get(app: HotReads, path: str, headers: list[tuple[bytes, bytes]], query: bytes = b""
               ) -> tuple[int, dict[bytes, bytes], bytes]:
    scope = {"type": "http", "method": "GET", "path": path, "query_string": query, "headers": headers,
             "scheme": "http", "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 80)}
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start, body = sent[0], b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], dict(start["headers"]), body


def get(app: HotReads, path: str, headers: list[tuple[bytes, bytes]], query: bytes = b""):
    return asyncio.run(_get(app, path, headers, query))


@pytest.fixture
def live() -> Iterator[Live]:
    yield Live()
    # The hot path loads grants in asgiref's thread-sensitive thread: close its database connection, or
    # the test database cannot be flushed and dropped.
    asyncio.run(sync_to_async(connections.close_all)())


# --- which path answers ------------------------------------------------------------------------------

def test_a_fresh_snapshot_of_the_session_is_served_by_the_hot_path(live: Live) -> None:
    app = HotReads(_full_path)
    status, headers, body = get(app, "/mt5/client/account", live.headers(**{"x-request-id": "req-hot-1"}))
    assert status == 200, body
    data = json.loads(body)
    assert data["login"] == live.session.login and data["source"] == "snapshot" and data["equity"] == 9998.5
    assert headers[b"x-request-id"] == b"req-hot-1"
    status, _, body = get(app, "/mt5/client/positions", live.headers())
    assert status == 200 and [p["ticket"] for p in json.loads(body)["positions"]] == [77]
    status, _, body = get(app, "/mt5/client/orders", live.headers())
    assert status == 200 and [o["ticket"] for o in json.loads(body)["orders"]] == [88]


@pytest.mark.parametrize(("path", "query", "extra"), [
    ("/mt5/client/account", b"x=1", {}),  # a query string: the full path validates it
    ("/mt5/client/positions", b"symbol=EURUSD", {}),
    ("/mt5/client/history/deals", b"", {}),  # not a hot route
    ("/mt5/client/account", b"", {"x-request-id": "two,values"}),  # a repeated request id: 400 there
    ("/mt5/client/account", b"", {"x-request-id": "x" * 200}),
    ("/mt5/client/account", b"", {"idempotency-key": "k1"}),
    ("/mt5/client/account", b"", {"transfer-encoding": "chunked"}),
    ("/mt5/client/account", b"", {"x-big": "y" * 9000}),  # over BRIDGE_MAX_HEADER_BYTES: 431 there
    ("/mt5/client/account", b"", {"host": "evil.example"}),  # not in ALLOWED_HOSTS: 400 there
])
def test_what_the_hot_path_cannot_vouch_for_goes_the_full_way(live: Live, path: str, query: bytes,
                                                               extra: dict[str, str]) -> None:
    with override_settings(ALLOWED_HOSTS=["127.0.0.1"]):
        status, _, _ = get(HotReads(_full_path), path, live.headers(**extra), query)
    assert status == FULL_PATH_STATUS


def test_bad_credentials_go_the_full_way(live: Live) -> None:
    app = HotReads(_full_path)
    no_session = [(b"authorization", f"Bearer {live.key}".encode()), (b"host", b"127.0.0.1")]
    assert get(app, "/mt5/client/account", no_session)[0] == FULL_PATH_STATUS
    wrong_key = [(b"authorization", b"Bearer mt5b_000000000000_nope"), (b"x-session-id", live.session.id.encode()),
                 (b"host", b"127.0.0.1")]
    assert get(app, "/mt5/client/account", wrong_key)[0] == FULL_PATH_STATUS
    other = Live(login=6102)  # a session of another workspace, with this workspace's key
    cross = [(b"authorization", f"Bearer {live.key}".encode()), (b"x-session-id", other.session.id.encode()),
             (b"host", b"127.0.0.1")]
    assert get(app, "/mt5/client/account", cross)[0] == FULL_PATH_STATUS


@pytest.mark.parametrize("change", ["other_session", "other_login", "disconnected", "stale", "missing"])
def test_a_snapshot_that_may_not_answer_this_session_goes_the_full_way(live: Live, change: str) -> None:
    if change == "other_session":
        live.store(session_id="sess_someone_else")
    elif change == "other_login":
        live.store(login=99999)
    elif change == "disconnected":
        live.store(connected=False)
    elif change == "stale":
        live.store(taken_at=time.time() - settings.BRIDGE_SNAPSHOT_MAX_AGE - 1)
    else:
        _redis().delete(f"bridge:snap:{live.terminal}", f"bridge:snap:{live.terminal}:at")
    assert get(HotReads(_full_path), "/mt5/client/account", live.headers())[0] == FULL_PATH_STATUS


# --- revocation and session changes take effect at once -------------------------------------------------

def test_a_revoked_key_is_refused_from_the_next_request_on(live: Live) -> None:
    app = HotReads(_full_path)
    assert get(app, "/mt5/client/account", live.headers())[0] == 200  # the key is cached now
    revoke_api_key(ApiKey.objects.get(pk=live.key_row.pk))
    assert get(app, "/mt5/client/account", live.headers())[0] == FULL_PATH_STATUS  # the full path: 401


def test_a_closed_session_is_refused_from_the_next_request_on(live: Live) -> None:
    app = HotReads(_full_path)
    assert get(app, "/mt5/client/account", live.headers())[0] == 200
    session_close(session=BridgeSession.objects.get(id=live.session.id))
    live.store()  # even a snapshot still naming the session (a poller cycle that raced the close)
    assert get(app, "/mt5/client/account", live.headers())[0] == FULL_PATH_STATUS


def test_a_lost_epoch_invalidates_every_cached_grant(live: Live) -> None:
    app = HotReads(_full_path)
    assert get(app, "/mt5/client/account", live.headers())[0] == 200
    # Redis restarted empty while a key was revoked (the rotation itself was lost): the epoch is gone.
    ApiKey.objects.filter(pk=live.key_row.pk).update(revoked_at=live.key_row.created_at)
    _redis().delete(ACCESS_EPOCH_KEY)
    assert get(app, "/mt5/client/account", live.headers())[0] == FULL_PATH_STATUS


def test_a_grant_is_reloaded_after_its_ttl_even_without_a_rotation(live: Live) -> None:
    with override_settings(BRIDGE_ACCESS_CACHE_TTL=2.0):
        app = HotReads(_full_path)
        assert get(app, "/mt5/client/account", live.headers())[0] == 200
        loaded = time.monotonic()
        ApiKey.objects.filter(pk=live.key_row.pk).update(revoked_at=live.key_row.created_at)  # no signal, no rotation
        assert get(app, "/mt5/client/account", live.headers())[0] == 200  # within the TTL: the documented bound
        assert time.monotonic() - loaded < 2.0, "the machine was too slow to observe the TTL's window"
        time.sleep(2.05)  # the TTL itself is what is under test
        assert get(app, "/mt5/client/account", live.headers())[0] == FULL_PATH_STATUS


# --- read-your-writes -----------------------------------------------------------------------------------

def test_a_snapshot_older_than_the_last_change_is_not_served(live: Live) -> None:
    app = HotReads(_full_path)
    before = live.store()
    assert get(app, "/mt5/client/positions", live.headers())[0] == 200
    note_terminal_changed(_redis(), live.terminal, at=before.taken_at + 0.001)  # a task settled after it
    assert get(app, "/mt5/client/positions", live.headers())[0] == FULL_PATH_STATUS
    after = live.store(taken_at=before.taken_at + 0.01)  # the poller's next cycle
    status, _, body = get(app, "/mt5/client/positions", live.headers())
    assert status == 200 and json.loads(body)["asOf"] == after.taken_at


# --- rate limits: exact, and counted once ----------------------------------------------------------------

def test_concurrent_requests_pass_a_limit_exactly_and_are_counted_once(live: Live) -> None:
    with override_settings(BRIDGE_THROTTLE_RATE="5/min", BRIDGE_THROTTLE_KEY_RATE=""):
        app = HotReads(_full_path)

        async def burst() -> list[int]:
            answers = await asyncio.gather(*[_get(app, "/mt5/client/account", live.headers()) for _ in range(16)])
            return [status for status, _, _ in answers]

        statuses = asyncio.run(burst())
        assert statuses.count(200) == 5, statuses
        assert statuses.count(FULL_PATH_STATUS) == 11  # the full path counts them and answers 429
    keys = [k for k in _redis().scan_iter(f"bridge:rl:workspace:{live.workspace.pk}")]
    assert _redis().zcard(keys[0]) == 5  # the refused ones were not recorded


def test_a_request_counted_here_and_handed_on_is_not_counted_again(live: Live) -> None:
    """A counted request that the hot path hands on (a stale snapshot) carries the mark in its scope."""
    seen: list[dict] = []

    async def django(scope, receive, send) -> None:
        seen.append(scope)
        await _full_path(scope, receive, send)

    live.store(taken_at=time.time() - 60)
    with override_settings(BRIDGE_THROTTLE_RATE="100/min"):
        assert get(HotReads(django), "/mt5/client/account", live.headers())[0] == FULL_PATH_STATUS
    from bridge_project.ratelimit import SCOPE_CHECKED

    assert seen and seen[0].get(SCOPE_CHECKED) is True


# --- the same answers as the full path, on real daphnes -----------------------------------------------------

@pytest.fixture(scope="module")
def daphnes(tmp_path_factory, django_db_setup, django_db_blocker) -> Iterator[tuple[int, int]]:
    """Two daphnes on the real ASGI application: with the hot path, and without it."""
    with django_db_blocker.unblock():
        hot, hot_url = start_daphne(tmp_path_factory.mktemp("hot"), {"BRIDGE_SNAPSHOT_MAX_AGE": "30"}, "hot")
        full, full_url = start_daphne(tmp_path_factory.mktemp("full"),
                                      {"BRIDGE_HOT_READS": "false", "BRIDGE_SNAPSHOT_MAX_AGE": "30"}, "full")
    procs: list[Proc] = [hot, full]
    try:
        yield int(hot_url.rsplit(":", 1)[1]), int(full_url.rsplit(":", 1)[1])
    finally:
        for proc in procs:
            proc.stop()


def _http(port: int, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


class RedisMonitor:
    """The commands Redis runs while the block runs (MONITOR): which daphne read what."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __enter__(self) -> RedisMonitor:
        self._monitor = _redis().monitor()
        self._conn = self._monitor.__enter__()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        for command in self._conn.listen():
            self.lines.append(command["command"])
            if self._stop.is_set():
                return

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        _redis().ping()  # one more command, so the reader sees the stop
        self._thread.join(5)


def _body(answer: tuple[int, dict[str, str], bytes]) -> bytes:
    return gzip.decompress(answer[2]) if answer[1].get("content-encoding") == "gzip" else answer[2]


@pytest.mark.parametrize("path", ["/mt5/client/account", "/mt5/client/positions", "/mt5/client/orders"])
@pytest.mark.parametrize("gzip_ok", [False, True])
def test_the_hot_answer_is_the_full_answer(daphnes: tuple[int, int], live: Live, path: str, gzip_ok: bool) -> None:
    hot_port, full_port = daphnes
    live.store(positions_count=3)  # bodies over 200 bytes: gzip and Vary come into play
    headers = {"Authorization": f"Bearer {live.key}", "x-session-id": live.session.id, "x-request-id": "req-same"}
    if gzip_ok:
        headers["Accept-Encoding"] = "gzip"
    hot_read = snapshot_version_key(live.terminal)  # what only the hot path reads (this test's terminal)
    with RedisMonitor() as monitor:
        hot = _http(hot_port, path, headers)
    assert any(hot_read in line for line in monitor.lines), "the hot path did not answer"
    with RedisMonitor() as monitor:
        full = _http(full_port, path, headers)
    assert not any(hot_read in line for line in monitor.lines)
    assert hot[0] == full[0] == 200, (hot, full)
    assert _body(hot) == _body(full)  # the same snapshot, so the same asOf too
    assert hot[1].get("content-encoding") == full[1].get("content-encoding")
    # Content-Length differs between two gzipped answers: each carries a random file name (Django's too).
    ignore = {"date", "server", *(["content-length"] if full[1].get("content-encoding") else [])}
    assert {k: v for k, v in hot[1].items() if k not in ignore} == {k: v for k, v in full[1].items() if k not in ignore}


def test_a_revoked_key_is_refused_by_the_hot_daphne_with_the_full_answer(daphnes: tuple[int, int], live: Live) -> None:
    hot_port, _ = daphnes
    headers = {"Authorization": f"Bearer {live.key}", "x-session-id": live.session.id}
    assert _http(hot_port, "/mt5/client/account", headers)[0] == 200
    revoke_api_key(ApiKey.objects.get(pk=live.key_row.pk))
    status, _, body = _http(hot_port, "/mt5/client/account", headers)
    assert status == 401 and json.loads(body)["error"]["code"] == "Unauthorized", body


# --- production settings: https only, HSTS --------------------------------------------------------------------

PRODUCTION_TLS = {"SECURE_SSL_REDIRECT": True, "SECURE_PROXY_SSL_HEADER": ("HTTP_X_FORWARDED_PROTO", "https"),
                  "SECURE_HSTS_SECONDS": 3600, "SECURE_HSTS_INCLUDE_SUBDOMAINS": True}


def test_behind_a_tls_proxy_the_hot_path_answers_https_requests_with_hsts(live: Live) -> None:
    with override_settings(**PRODUCTION_TLS):
        status, headers, _ = get(HotReads(_full_path), "/mt5/client/account",
                                 live.headers(**{"x-forwarded-proto": "https"}))
    assert status == 200
    assert headers[b"strict-transport-security"] == b"max-age=3600; includeSubDomains"


def test_a_plain_http_request_is_left_to_djangos_redirect(live: Live) -> None:
    with override_settings(**PRODUCTION_TLS):
        assert get(HotReads(_full_path), "/mt5/client/account", live.headers())[0] == FULL_PATH_STATUS
        assert get(HotReads(_full_path), "/mt5/client/account",
                   live.headers(**{"x-forwarded-proto": "http"}))[0] == FULL_PATH_STATUS

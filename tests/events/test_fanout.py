"""The fan-out path with two daphne processes on one Redis: each reads the fan-out stream itself and
delivers every event to its own sockets exactly once, without a channel-layer message or a Redis call per
event or per socket (proved with the private Redis server's own command statistics).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import redis

import streams.publisher as publisher
from streams.publisher import publish_session_event
from tests.events.conftest import PrivateRedis, WsClient, start_daphne, ws_connect
from tests.procs import Proc

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def two_daphnes(tmp_path_factory: pytest.TempPathFactory, django_db_setup,
                django_db_blocker) -> Iterator[tuple[PrivateRedis, list[tuple[Proc, str]]]]:
    server = PrivateRedis(tmp_path_factory.mktemp("fanout-redis"))
    server.start()
    started: list[tuple[Proc, str]] = []
    try:
        with django_db_blocker.unblock():
            for name in ("daphne-a", "daphne-b"):
                started.append(start_daphne(tmp_path_factory.mktemp(name), {"REDIS_URL": server.url}, name=name))
        yield server, started
    finally:
        for proc, _url in started:
            proc.stop()
        server.stop()


@pytest.fixture
def fanout(two_daphnes, settings) -> Iterator[tuple[PrivateRedis, list[str]]]:
    """This process's publisher (and ``make_session``) write to the private Redis for the test."""
    server, started = two_daphnes
    settings.REDIS_URL = server.url
    publisher._clients.clear()
    yield server, [url for _proc, url in started]
    publisher._clients.clear()


def _open(url: str, session, channels: list[str], query: str = "") -> WsClient:
    client = ws_connect(url, session, query=query)
    client.send({"type": "subscribe", "channels": channels, "request_id": "s"})
    client.recv_until(lambda m: m.get("request_id") == "s")
    return client


def _order(n: int) -> dict:
    return {"taskId": f"tsk_{n}", "requestId": f"req_{n}", "kind": "order.create", "state": "filled", "result": None}


def _until(client: WsClient, last_seq: int, timeout: float = 20) -> list[dict]:
    """Every message the socket gets up to the ``order`` event with ``last_seq``."""
    last, before = client.recv_until(lambda m: m["type"] == "order" and m["seq"] >= last_seq, timeout=timeout)
    return [*before, last]


def _orders_until(client: WsClient, last_seq: int, timeout: float = 20) -> list[int]:
    """The seqs of every ``order`` event the socket gets, up to the one with ``last_seq``."""
    return [m["seq"] for m in _until(client, last_seq, timeout) if m["type"] == "order"]


def test_two_daphne_processes_each_deliver_every_event_to_their_own_sockets_exactly_once(
        fanout, make_session) -> None:
    _server, (url_a, url_b) = fanout
    session = make_session()
    sockets = [_open(url, session, ["order", "quote:EURUSD"]) for url in (url_a, url_a, url_a, url_b, url_b)]
    try:
        count = 40
        for n in range(count):
            assert publish_session_event(session.id, "order", _order(n)) == n + 1
            publish_session_event(session.id, "quote:EURUSD", {"symbol": "EURUSD", "bid": n, "ask": n + 1})
        publish_session_event(session.id, "quote:EURUSD", {"symbol": "EURUSD", "bid": 999, "ask": 1000})
        assert publish_session_event(session.id, "order", _order(count)) == count + 1
        for client in sockets:
            # every event once, in order: a second relay reading the same entry, or an event handed to a
            # socket twice, would show here as a repeated seq before the last one
            got = _until(client, count + 1)
            assert [m["seq"] for m in got if m["type"] == "order"] == list(range(1, count + 2))
            # the newest quote reaches every socket of both processes, last (older ones may be coalesced:
            # a newer quote takes the place of one still waiting)
            quotes = [(m["seq"], m["data"]["bid"]) for m in got if m["type"] == "quote:EURUSD"]
            assert quotes[-1] == (count, 999), quotes[-3:]
        # resume across event processes: a client of process A comes back on process B with since=
        back = ws_connect(url_b, session, query="since=20")
        try:
            done, replayed = back.recv_until(lambda m: m["type"] == "resumed")
            assert [m["seq"] for m in replayed if m["type"] == "order"] == list(range(21, count + 2))
            assert done["seq"] == count + 1
            publish_session_event(session.id, "order", _order(count + 1))
            assert back.recv_until(lambda m: m["type"] == "order")[0]["seq"] == count + 2
        finally:
            back.close()
    finally:
        for client in sockets:
            client.close()


# Commands that are neither per event nor per socket: the publisher's script call, the relays' XREAD (one
# per process per batch, whatever the number of sockets), their run_id check (INFO, every second) and ours.
_PATH_COMMANDS = {"evalsha", "script|load", "script", "xread", "info", "config|resetstat", "config"}
# What the publisher's script runs inside Redis for one order event (counted by Redis like any command):
# HINCRBY + HGET of the counter, XADD to the session stream and to the fan-out stream, an XRANGE for the age
# cut, EXPIRE of both keys; its first event of a session also sets the epoch (TIME, HSET, DEL).
_PER_PUBLISHED_EVENT = {"hincrby": 1, "hget": 1, "xadd": 2, "xrange": 1, "expire": 2}
_ONCE = {"time", "hset", "del"}


def _calls(client: redis.Redis) -> dict[str, int]:
    return {name.removeprefix("cmdstat_"): int(stat["calls"]) for name, stat in client.info("commandstats").items()}


def test_no_channel_layer_message_and_no_redis_call_per_event_or_per_socket(fanout, make_session) -> None:
    server, (url_a, url_b) = fanout
    session = make_session()
    per_process = 4
    sockets = [_open(url, session, ["order"]) for url in [url_a] * per_process + [url_b] * per_process]
    r = redis.Redis.from_url(server.url)
    try:
        events = 200
        r.config_resetstat()
        for n in range(events):
            publish_session_event(session.id, "order", _order(n))
        for client in sockets:
            assert _orders_until(client, events) == list(range(1, events + 1))
        calls = _calls(r)
    finally:
        for client in sockets:
            client.close()
        r.close()
    deliveries = events * len(sockets)
    assert calls.get("evalsha", 0) >= events  # the publisher's script ran (the statistics saw the run)
    # No channel layer on the path: channels-redis' group_send is a ZRANGE of the group, a capacity EVAL and
    # a ZADD per message; its ``send`` a ZADD. None of these per event.
    channel_layer = {name: calls.get(name, 0) for name in ("zadd", "zrange", "zcount", "eval", "zremrangebyscore")}
    assert channel_layer["zadd"] == channel_layer["zrange"] == channel_layer["zcount"] == 0, channel_layer
    # The publisher's script: exactly its own commands for each event (nobody else ran these per event).
    for name, per_event in _PER_PUBLISHED_EVENT.items():
        assert calls.get(name, 0) == per_event * events, (name, calls.get(name), calls)
    # Everything else, together, is background work of the sockets (the 5-second sequence check: HMGET and
    # XRANGE; the channel layer's idle BZPOPMIN): far fewer than one per event, let alone one per delivery.
    others = {name: n for name, n in calls.items()
              if name not in _PATH_COMMANDS and name not in _PER_PUBLISHED_EVENT and name not in _ONCE}
    assert sum(others.values()) < events // 4, others
    # The relays' reads: at most one per event per process (they batch when events come faster), never
    # one per socket.
    assert calls.get("xread", 0) <= 2 * events + 60, (calls.get("xread"), deliveries)


def test_revoking_a_key_closes_its_sockets_on_both_processes_within_a_second(fanout, make_session) -> None:
    from websockets.exceptions import ConnectionClosed

    from sessions.api_keys import revoke_api_key
    from sessions.models import ApiKey

    _server, (url_a, url_b) = fanout
    session = make_session()
    other = make_session(workspace=session.workspace)  # another key: its sockets stay open
    revoked = [_open(url, session, ["order"]) for url in (url_a, url_b)]
    bystanders = [_open(url, other, ["order"]) for url in (url_a, url_b)]
    try:
        start = time.monotonic()
        revoke_api_key(ApiKey.objects.get(prefix=session.key.split("_")[1]))
        for client in revoked:
            seen = []
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    seen.append(json.loads(client.conn.recv(timeout=5)))
            took = time.monotonic() - start  # observed after the close: never less than the real time
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401, seen
            assert took < 1.0, f"closed {took:.2f}s after the revocation began"
            assert seen and seen[-1]["error"]["code"] == "Unauthorized", seen
        for n, client in enumerate(bystanders):
            client.send({"type": "ping", "request_id": f"p{n}"})
            assert client.recv_until(lambda m, n=n: m.get("request_id") == f"p{n}")[0]["type"] == "pong"
    finally:
        for client in revoked + bystanders:
            client.close()

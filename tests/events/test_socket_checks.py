"""The periodic checks of a daphne process's sockets are made once per process, not once per socket
(``streams.checks``): many sockets on one session make one sequence read per turn, counted by a private
Redis server's own command statistics; a refresh of the poller's symbol records does not make pollers
re-read them, a record that expired is written back and does."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio as aioredis

import streams.publisher as publisher
from streams import subscriptions
from streams.checks import GAP_CHECK_SECONDS
from streams.keys import subs_key, subs_version_key
from tests.events.conftest import PrivateRedis, WsClient, start_daphne, ws_connect
from tests.waiting import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

SOCKETS = 30


@pytest.fixture
def private_daphne(tmp_path, settings) -> Iterator[tuple[PrivateRedis, str]]:
    (tmp_path / "redis").mkdir()
    (tmp_path / "daphne").mkdir()
    server = PrivateRedis(tmp_path / "redis")
    server.start()
    settings.REDIS_URL = server.url  # make_session's sequence and this test's reads: the private server
    publisher._clients.clear()
    proc, url = start_daphne(tmp_path / "daphne", {"REDIS_URL": server.url}, name="daphne-checks")
    try:
        yield server, url
    finally:
        proc.stop()
        server.stop()
        publisher._clients.clear()


def _hmget_calls(client: redis.Redis) -> int:
    return int(client.info("commandstats").get("cmdstat_hmget", {}).get("calls", 0))


def test_thirty_sockets_of_one_session_make_one_sequence_read_per_turn(private_daphne, make_session) -> None:
    server, url = private_daphne
    session = make_session()
    sockets: list[WsClient] = []
    r = redis.Redis.from_url(server.url)
    try:
        for n in range(SOCKETS):
            client = ws_connect(url, session)
            client.send({"type": "subscribe", "channels": ["order"], "request_id": f"s{n}"})
            client.recv_until(lambda m, n=n: m.get("request_id") == f"s{n}")
            sockets.append(client)
        r.config_resetstat()
        wait_until(lambda: _hmget_calls(r) >= 1, timeout=GAP_CHECK_SECONDS + 5, what="the first check after the reset")
        first = _hmget_calls(r)
        # The window is the subject: over one more full period every socket would have been checked once
        # if each ran its own timer (30 reads); one process makes one read per turn for the session.
        time.sleep(GAP_CHECK_SECONDS + 0.5)
        calls = _hmget_calls(r)
    finally:
        for client in sockets:
            client.close()
        r.close()
    assert first == 1, first
    assert 2 <= calls <= 3, f"{calls} sequence reads in one period with {SOCKETS} sockets"


def test_a_refresh_keeps_the_version_unless_a_record_had_expired(private_daphne) -> None:
    server, _url = private_daphne

    async def scenario() -> tuple[bytes | None, bytes | None, bytes | None, bytes | None]:
        client = aioredis.Redis.from_url(server.url)
        try:
            await subscriptions.register(client, "t1", "sock-a", {"EURUSD"}, set())
            await subscriptions.register(client, "t1", "sock-b", {"GBPUSD"}, {"GBPUSD"})
            registered = await client.get(subs_version_key("t1"))
            records = {"sock-a": subscriptions.record({"EURUSD"}, set()),
                       "sock-b": subscriptions.record({"GBPUSD"}, {"GBPUSD"})}
            await subscriptions.refresh(client, "t1", records)
            refreshed = await client.get(subs_version_key("t1"))
            await client.hdel(subs_key("t1"), "sock-b")  # as a poller drops an expired record
            dropped = await client.get(subs_version_key("t1"))
            await subscriptions.refresh(client, "t1", records)
            return registered, refreshed, dropped, await client.get(subs_version_key("t1"))
        finally:
            await client.aclose()

    registered, refreshed, dropped, rewritten = asyncio.run(scenario())
    assert registered == refreshed == dropped == b"2"
    assert rewritten == b"3"
    watched = subscriptions.watched(redis.Redis.from_url(server.url), "t1")
    assert watched == {"EURUSD", "GBPUSD"} and watched.depth == {"GBPUSD"}

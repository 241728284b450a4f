"""daphne's sends for many sockets. ``server_text_writer``: the events writer's synchronous path into
daphne's WebSocket protocol is taken only while the connection is open; otherwise (or with another
server) the writer goes through ``send`` (the path itself carries every event of the socket tests, on a
real daphne). Keep-alive pings of sockets opened together are spread over the interval
(``workers.daphne_sends``), on a real daphne, seen by a client that records the ping frames
(``bench.raw_ws``)."""

from __future__ import annotations

import asyncio
import os
import time
from functools import partial

import pytest
from daphne.ws_protocol import WebSocketProtocol

from bench.raw_ws import PING, RawSocket
from streams.consumers import server_text_writer
from tests.events.conftest import DAPHNE_ENV, db_env
from tests.procs import PYTHON, Proc, free_port
from workers.stack import daphne_argv


class _Protocol:
    """What the writer uses of daphne's protocol: its states and ``serverSend``."""

    STATE_OPEN = WebSocketProtocol.STATE_OPEN
    STATE_CLOSING = WebSocketProtocol.STATE_CLOSING

    def __init__(self) -> None:
        self.state = self.STATE_OPEN
        self.sent: list[tuple[str, bool]] = []

    def serverSend(self, content: str, binary: bool = False) -> None:  # daphne's name
        self.sent.append((content, binary))


async def _handle_reply(protocol, message) -> None:  # the shape of daphne's Server.handle_reply
    raise AssertionError("not called by the synchronous path")


def test_writes_while_open_and_hands_back_once_closing() -> None:
    protocol = _Protocol()
    write = server_text_writer(partial(_handle_reply, protocol))
    assert write is not None
    assert write('{"type":"order","seq":1}') is True
    protocol.state = protocol.STATE_CLOSING
    assert write('{"type":"order","seq":2}') is False
    assert protocol.sent == [('{"type":"order","seq":1}', False)]


def test_another_server_gets_no_synchronous_path() -> None:
    async def send(message) -> None:
        return None

    assert server_text_writer(send) is None
    assert server_text_writer(partial(_handle_reply, object())) is None


PING_INTERVAL = 16.0


@pytest.mark.django_db(transaction=True)  # the session must be visible to daphne
def test_sockets_opened_together_are_pinged_at_phases_of_their_own(tmp_path, make_session) -> None:
    """daphne pings a socket ``--ping-interval`` after it last heard from it; sockets subscribed together
    were pinged in the same pass of its checker (every 2 s). Each connection now pings up to half an
    interval early, by its own phase: over 20 sockets the delays spread over most of half an interval."""
    port = free_port()
    argv = [*daphne_argv("127.0.0.1", port, PYTHON), "--ping-interval", str(int(PING_INTERVAL))]
    proc = Proc(f"daphne-pings-{port}", argv, {**os.environ, **db_env(), **DAPHNE_ENV}, tmp_path).start()
    session = make_session()
    try:
        proc.wait_log("Listening on TCP address", timeout=60)
        delays = asyncio.run(_first_ping_delays(f"ws://127.0.0.1:{port}/events",
                                                {"Authorization": f"Bearer {session.key}",
                                                 "x-session-id": session.id}, 20))
    finally:
        proc.stop()
    # Never before half the interval; and spread: daphne's own schedule puts them all within one or two
    # passes of its checker (2 s apart), the phases over half the interval (8 s).
    assert min(delays) >= PING_INTERVAL / 2 - 0.5, delays
    assert max(delays) - min(delays) > 4.0, sorted(delays)


async def _first_ping_delays(url: str, headers: dict[str, str], count: int) -> list[float]:
    """Open ``count`` sockets, subscribe each, and return per socket the seconds from its subscribe to
    the first ping it got."""
    subscribed: list[float] = []
    pings: list[list[float]] = []

    class Recorder(RawSocket):
        def _frame(self, first: int, payload: bytes, now: float) -> None:
            if first & 0x0F == PING:
                pings[self.index].append(now)
            super()._frame(first, payload, now)

    sockets = []
    for index in range(count):
        socket = await Recorder.connect(url, headers, lambda raw, now: None)
        socket.index = index
        pings.append([])
        socket.send_text('{"type": "subscribe", "channels": ["order"], "request_id": "s"}')
        subscribed.append(time.time())
        sockets.append(socket)
    deadline = time.monotonic() + PING_INTERVAL + 10
    while any(not got for got in pings) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    for socket in sockets:
        socket.close()
    assert all(pings), f"{sum(1 for got in pings if not got)} sockets got no ping"
    return [got[0] - at for got, at in zip(pings, subscribed, strict=True)]

"""daphne's sends, for many sockets: installed by ``workers.stack.run_daphne`` (the daphne process only).

Profiled with 300 sockets (``bench/events.py``): per message and socket, autobahn framed the text again,
evaluated the arguments of a debug log line (highlighting included) whether or not debug was on, and
Twisted buffered the frame and registered the socket for writability, to write it on the next turn of
the loop and unregister it (two ``epoll_ctl`` calls and their Python per message and socket). Half of
daphne's time went there. Now:

* one event sent to every socket of a process is framed once (an autobahn ``PreparedMessage``, kept for
  the same text: the relay hands every socket the same string);
* what a turn of the event loop wrote to an idle connection is sent in one call at the start of the
  next turn (several events to one socket: one send), with ``TCP_NODELAY`` as asyncio's transports have;
  only what the kernel does not take is buffered and waits for writability, as before. (Writing each
  message at once instead was measured too: a segment per message made the clients slower at 1,000
  sockets.) The events consumer's backpressure counts the kernel's send queue (``server_backlog``);
* keep-alive pings spread over the interval: daphne pings a socket ``ping_interval`` (20 s) after it
  last heard from it, so sockets opened and subscribed together were pinged together (at 1,000 sockets,
  a pass of 500 pings and their timers per process every 20 s, with every event of the process behind
  it). Each connection now pings up to half an interval earlier, by a phase of its own;
* one accept per readiness of the listening socket: the web processes share one socket
  (``BRIDGE_WEB_PROCESSES``), and Twisted's accept loop (up to 100 per readiness, more under a burst)
  let one process take a whole burst of WebSocket connects for their lifetime (measured: 60 and 240 of
  300 sockets). One at a time, the less busy process takes more.
"""

from __future__ import annotations

import random
from typing import Any

from autobahn.websocket.protocol import PreparedMessage
from daphne import ws_protocol
from twisted.internet import tcp

FRAME_CACHE = 512  # prepared frames kept (the events of the last moments, sent to many sockets)
_frames: dict[str, PreparedMessage] = {}
_deferred: list[Any] = []  # connections written to in this turn of the event loop


def tune_websocket_sends() -> None:
    """Install the prepared frames, the turn-batched sends and the one-at-a-time accepts (this process)."""
    ws_protocol.WebSocketFactory.protocol = PreparedFramesProtocol
    tcp.Port.transport = TurnBatchedServer
    tcp.Port.numberAccepts = property(lambda port: 1, lambda port, value: None)


def _prepared(text: str) -> PreparedMessage:
    prepared = _frames.get(text)
    if prepared is None:
        prepared = PreparedMessage(text.encode("utf8"), False, False, False)
        if len(_frames) >= FRAME_CACHE:
            del _frames[next(iter(_frames))]  # the oldest
        _frames[text] = prepared
    return prepared


class PreparedFramesProtocol(ws_protocol.WebSocketProtocol):
    """daphne's WebSocket protocol, sending a text it sent a moment ago as the frame it built then, and
    pinging at a phase of its own."""

    ping_phase = 0.0  # seconds this connection pings ahead of daphne's schedule

    def onOpen(self):  # autobahn's name
        super().onOpen()
        self.ping_phase = random.uniform(0.0, self.server.ping_interval / 2)
        self.last_ping -= self.ping_phase

    def onMessage(self, payload, isBinary):  # autobahn's names (daphne resets last_ping here)
        super().onMessage(payload, isBinary)
        self.last_ping -= self.ping_phase

    def serverSend(self, content, binary=False):  # daphne's signature
        if binary or self.state != self.STATE_OPEN:
            return super().serverSend(content, binary)
        prepared = _prepared(content)
        if self._perMessageCompress is not None or self.send_queue:  # autobahn's own path then
            self.sendPreparedMessage(prepared)
            return None
        frame = prepared.payloadHybi
        self.transport.write(frame)
        self.trafficStats.outgoingOctetsWireLevel += len(frame)
        self.trafficStats.outgoingWebSocketFrames += 1
        return None


def _send_deferred() -> None:
    batch = _deferred[:]
    _deferred.clear()
    for connection in batch:
        connection.send_deferred()


def _schedule(connection: Any) -> None:
    _deferred.append(connection)
    if len(_deferred) == 1:  # the first this turn: one call at the start of the next, for all
        loop = getattr(connection.reactor, "_asyncioEventloop", None)  # daphne's asyncio reactor
        if loop is not None:
            loop.call_soon(_send_deferred)
        else:
            connection.reactor.callLater(0, _send_deferred)


class TurnBatchedServer(tcp.Server):
    """Twisted's TCP server connection, sending what one turn of the loop wrote in one call."""

    writes_deferred = False  # written to in this turn of the loop: sent at the start of the next

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Sent as soon as written, an answer's parts may leave as separate segments: without
        # TCP_NODELAY, Nagle would hold the second until the first is acknowledged.
        self.setTcpNoDelay(True)

    def write(self, data: bytes) -> None:
        if not self._may_defer(data):
            super().write(data)
            return
        self._tempDataBuffer.append(data)
        self._tempDataLen += len(data)
        if not self.writes_deferred:
            self.writes_deferred = True
            _schedule(self)

    def writeSequence(self, iovec) -> None:  # Twisted's signature
        self.write(b"".join(iovec))

    def _may_defer(self, data: bytes) -> bool:
        if type(data) is not bytes or not data or self.TLS or not self.connected or self._writeDisconnected:
            return False
        idle = not self._tempDataLen and self.offset == len(self.dataBuffer) and not self.disconnecting
        return self.writes_deferred or idle

    def send_deferred(self) -> None:
        """This turn's writes in one send; what the kernel does not take waits for writability, as with
        Twisted's own writes."""
        self.writes_deferred = False
        if not self.connected or not self._tempDataLen:
            return
        if self.disconnecting or self._writeDisconnected:
            self.startWriting()  # Twisted's own path writes the rest, then closes
            return
        data = b"".join(self._tempDataBuffer)
        self._tempDataBuffer, self._tempDataLen = [], 0
        sent = self.writeSomeData(data)  # an int, or the error a later doWrite reports
        if isinstance(sent, int) and sent >= 0:
            if sent == len(data):
                return
            data = data[sent:]
        self.dataBuffer, self.offset = data, 0  # it was empty: this connection was idle
        self._maybePauseProducer()
        self.startWriting()

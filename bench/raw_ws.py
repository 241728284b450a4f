"""A bare asyncio WebSocket client for the event benches: hundreds of sockets in one process.

The ``websockets`` client costs tens of microseconds of Python per message (a future per ``recv``,
its assembler and queues). With 300-1,000 sockets in the bench's two client processes, a burst of
events then waits in the *clients* as long as in the server, and two daphne processes cannot show
more throughput than one because the clients have already taken both cores. This client does the
least RFC 6455 asks of a client (the upgrade, masked frames out, unmasked frames in, pong and close)
and hands each text message to a callback as ``bytes`` with the time it was read, so a bench can
measure the server rather than itself. Not a general client: no extensions, no TLS.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
import time
from collections.abc import Callable
from urllib.parse import urlsplit

TEXT, BINARY, CLOSE, PING, PONG, CONTINUATION = 0x1, 0x2, 0x8, 0x9, 0xA, 0x0


def client_frame(opcode: int, payload: bytes) -> bytes:
    """One final client frame, masked with a random key as a client must (only small control and
    subscribe frames go out, so the Python XOR costs nothing that matters)."""
    head = bytes([0x80 | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class RawSocket(asyncio.Protocol):
    """One client socket: ``await RawSocket.connect(url, headers, on_text)``; ``on_text(payload, now)``
    is called for every text message with ``now = time.time()`` of the read that completed it."""

    def __init__(self, on_text: Callable[[bytes, float], None]):
        self.on_text = on_text
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.upgraded: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self.fragments: list[bytes] = []

    @classmethod
    async def connect(cls, url: str, headers: dict[str, str], on_text: Callable[[bytes, float], None],
                      timeout: float = 120.0) -> RawSocket:
        parts = urlsplit(url)
        loop = asyncio.get_running_loop()
        _, protocol = await asyncio.wait_for(
            loop.create_connection(lambda: cls(on_text), parts.hostname, parts.port or 80), timeout)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [f"GET {path} HTTP/1.1", f"Host: {parts.hostname}:{parts.port}", "Upgrade: websocket",
                 "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13",
                 *(f"{name}: {value}" for name, value in headers.items())]
        protocol.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        await asyncio.wait_for(protocol.upgraded, timeout)
        return protocol

    def send_text(self, text: str) -> None:
        self.transport.write(client_frame(TEXT, text.encode()))

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(client_frame(CLOSE, struct.pack("!H", 1000)))
            self.transport.close()

    # --- asyncio.Protocol ---
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.upgraded.done():
            self.upgraded.set_exception(ConnectionError(f"closed before the upgrade: {exc}"))
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.upgraded.done():
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(self.buffer[:self.buffer.find(b"\r\n")])
            del self.buffer[:end + 4]
            if b" 101 " not in status:
                self.upgraded.set_exception(ConnectionError(status.decode("latin-1")))
                self.transport.close()
                return
            self.upgraded.set_result(None)
        self._frames(time.time())

    def _frames(self, now: float) -> None:
        at = 0
        while (frame := _frame_at(self.buffer, at)) is not None:
            first, payload, at = frame
            self._frame(first, payload, now)
        del self.buffer[:at]

    def _frame(self, first: int, payload: bytes, now: float) -> None:
        opcode = first & 0x0F
        if opcode in (TEXT, BINARY, CONTINUATION):
            if not first & 0x80:  # a fragment: kept until the final one
                self.fragments.append(payload)
                return
            if self.fragments:
                payload = b"".join([*self.fragments, payload])
                self.fragments = []
            self.on_text(payload, now)
        elif opcode == PING:
            self.transport.write(client_frame(PONG, payload))
        elif opcode == CLOSE:
            code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
            if not self.closed.done():
                self.closed.set_result(code)
            self.close()


def _frame_at(buf: bytearray, at: int) -> tuple[int, bytes, int] | None:
    """The complete frame at ``at`` as (first byte, payload, where the next one starts), or None."""
    size = len(buf)
    if size - at < 2:
        return None
    n = buf[at + 1] & 0x7F
    head = 2
    if n == 126:
        if size - at < 4:
            return None
        n = struct.unpack_from("!H", buf, at + 2)[0]
        head = 4
    elif n == 127:
        if size - at < 10:
            return None
        n = struct.unpack_from("!Q", buf, at + 2)[0]
        head = 10
    if size - at < head + n:
        return None
    return buf[at], bytes(buf[at + head:at + head + n]), at + head + n  # a server does not mask

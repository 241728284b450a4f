"""Wire framing shared by the client, the control client and the terminal server.

A frame is a 4-byte big-endian length followed by a msgpack body. Requests are
``[call_id, method, kwargs]``; replies are ``[call_id, status, payload]`` with status ``"ok"``,
``"err"`` (payload ``[code, message]``) or ``"ipc_timeout"``. numpy structured arrays travel as
``{"__nd__": "rates" | "ticks", "b": <raw bytes>}``.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

import msgpack
import numpy as np

from .structs import RATES_DTYPE, TICKS_DTYPE

HEADER = struct.Struct(">I")
MAX_FRAME = 256 * 1024 * 1024

STATUS_OK = "ok"
STATUS_ERR = "err"
STATUS_IPC_TIMEOUT = "ipc_timeout"

_ND_KEY = "__nd__"
_DTYPES = {"rates": RATES_DTYPE, "ticks": TICKS_DTYPE}


class ConnectionClosed(Exception):
    """The peer closed the connection (or it broke) before a whole frame arrived."""


def _default(obj: Any) -> Any:
    """msgpack hook for what it cannot pack natively: numpy arrays and scalars, sets."""
    if isinstance(obj, np.ndarray):
        names = obj.dtype.names or ()
        kind = "rates" if "open" in names else "ticks"
        arr = np.ascontiguousarray(obj, dtype=_DTYPES[kind])
        return {_ND_KEY: kind, "b": arr.tobytes()}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (set, frozenset)):
        return list(obj)
    raise TypeError(f"cannot serialize {type(obj).__name__}")


def _object_hook(obj: dict) -> Any:
    kind = obj.get(_ND_KEY) if len(obj) == 2 else None
    if kind is not None:
        return np.frombuffer(obj["b"], dtype=_DTYPES[kind]).copy()
    return obj


def pack(message: Any) -> bytes:
    """Encode one message into a complete frame (header + body)."""
    body = msgpack.packb(message, default=_default, use_bin_type=True)
    return HEADER.pack(len(body)) + body


def unpack(body: bytes) -> Any:
    return msgpack.unpackb(body, raw=False, object_hook=_object_hook, strict_map_key=False)


class FrameReader:
    """Reads whole frames from a blocking socket with as few recv() calls as possible."""

    __slots__ = ("sock", "buf")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()

    def read(self) -> Any:
        return unpack(self.read_body())

    def read_body(self) -> bytes:
        """The next frame's msgpack body, undecoded (a terminal relays broker replies as they are)."""
        buf = self.buf
        while True:
            if len(buf) >= 4:
                (size,) = HEADER.unpack_from(buf)
                if size > MAX_FRAME:
                    raise ConnectionClosed(f"frame too large ({size} bytes)")
                end = 4 + size
                if len(buf) >= end:
                    body = bytes(buf[4:end])
                    del buf[:end]
                    return body
                want = max(65536, end - len(buf))
            else:
                want = 65536
            chunk = self.sock.recv(want)
            if not chunk:
                raise ConnectionClosed("connection closed by peer")
            buf += chunk


def frame(body: bytes) -> bytes:
    """A complete frame around an already packed body."""
    return HEADER.pack(len(body)) + body


def send(sock: socket.socket, message: Any) -> None:
    sock.sendall(pack(message))


def parse_address(address: str) -> tuple[str, int] | None:
    """``"host:port"`` -> ``(host, port)``; anything else (e.g. a Windows path) -> None."""
    if not isinstance(address, str):
        return None
    host, sep, port = address.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or "\\" in host or "/" in host:
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    value = int(port)
    if not 0 <= value <= 65535:
        return None
    return host, value

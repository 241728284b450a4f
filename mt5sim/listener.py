"""A TCP listener with one thread per connection: the part the terminal, the remote terminal and the
broker servers share (accept loop, connection bookkeeping, frame loop, stop).

Blocking sockets and a thread per connection give the lowest latency for request/reply traffic on
CPython. A subclass says what one connection does (``_serve_connection``); the frame loop
(``_serve_frames``) reads requests and sends what its ``answer`` returns.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from . import protocol

CALL_FAILED = [-1, "Terminal: Call failed"]
STOP_JOIN_SECONDS = 3.0  # a connection thread sleeping in ctl.delay is not worth waiting for longer


class ThreadedListener:
    """``start()`` binds and listens; ``stop()`` stops accepting, cuts every connection and waits (bounded)
    for the connection threads to end."""

    log_name = "mt5sim"  # prefix of what the server prints
    thread_name = "mt5sim"  # prefix of its threads' names

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self.listener: socket.socket | None = None
        self.stopping = threading.Event()
        self.connections: set[socket.socket] = set()
        self.threads: set[threading.Thread] = set()
        self.connections_lock = threading.Lock()
        self.accept_thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        listener = socket.create_server((self.host, self.port), family=family, backlog=128)
        self.port = listener.getsockname()[1]
        self.listener = listener
        self.accept_thread = threading.Thread(target=self._accept_loop, name=f"{self.thread_name}-accept",
                                              daemon=True)
        self.accept_thread.start()

    def stop(self) -> None:
        self.stopping.set()
        if self.listener is not None:
            try:
                self.listener.close()
            except OSError:
                pass
        with self.connections_lock:
            conns = list(self.connections)
        for sock in conns:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        deadline = time.monotonic() + STOP_JOIN_SECONDS
        with self.connections_lock:
            threads = list(self.threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _accept_loop(self) -> None:
        assert self.listener is not None
        while not self.stopping.is_set():
            try:
                sock, _ = self.listener.accept()
            except OSError:
                if self.stopping.is_set():
                    return
                time.sleep(0.05)
                continue
            thread = threading.Thread(target=self._connection_thread, args=(sock,),
                                      name=f"{self.thread_name}-conn", daemon=True)
            with self.connections_lock:
                self.threads.add(thread)
                self.connections.add(sock)
            thread.start()

    def _connection_thread(self, sock: socket.socket) -> None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._serve_connection(sock)
        finally:
            with self.connections_lock:
                self.connections.discard(sock)
                self.threads.discard(threading.current_thread())
            try:
                sock.close()
            except OSError:
                pass

    def _serve_connection(self, sock: socket.socket) -> None:
        """One connection, until it closes or the server stops (the socket is closed afterwards)."""
        raise NotImplementedError

    def _serve_frames(self, sock: socket.socket, answer: Callable[[Any], bytes | None]) -> None:
        """Read requests and send back the frame ``answer`` makes of each; None from it closes the connection."""
        reader = protocol.FrameReader(sock)
        while not self.stopping.is_set():
            try:
                message = reader.read()
            except (protocol.ConnectionClosed, OSError, ValueError, TypeError):
                return
            frame = answer(message)
            if frame is None:
                return
            try:
                sock.sendall(frame)
            except OSError:
                return

    def _reply_frame(self, call_id: Any, method: Any, status: str, payload: Any) -> bytes:
        """The reply frame; a value that cannot be serialized answers "call failed" (the link lives on)."""
        try:
            return protocol.pack([call_id, status, payload])
        except Exception as exc:
            print(f"{self.log_name}: cannot serialize reply to {method}: {exc!r}", file=sys.stderr, flush=True)
            return protocol.pack([call_id, protocol.STATUS_ERR, CALL_FAILED])

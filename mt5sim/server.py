"""The terminal process: accepts client connections and runs their calls on the engine.

One thread per connection (blocking sockets: the lowest latency for request/reply traffic on
CPython); every engine call and control runs under one lock, as the Engine API requires. IPC-level
faults live here, not in the engine: ``ctl.delay`` sleeps in the caller's connection thread before
taking the lock (other connections go on), and ``ctl.ipc_timeout`` answers ``ipc_timeout`` for the
next calls of a method, executing them or not.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
import traceback
from typing import Any

from . import protocol

_CALL_FAILED = (-1, "Terminal: Call failed")
_SERVER_CONTROLS = frozenset({"delay", "ipc_timeout", "ping", "server_state"})


class IpcFaults:
    """The IPC-level faults set by ``ctl.delay`` and ``ctl.ipc_timeout``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.delay_seconds = 0.0
        self.delay_methods: frozenset[str] | None = None
        self.timeouts: dict[str, list] = {}  # method -> [remaining count, execute]

    def reset(self) -> None:
        with self.lock:
            self.delay_seconds = 0.0
            self.delay_methods = None
            self.timeouts.clear()

    def set_delay(self, seconds: float, methods: list[str] | None) -> dict:
        seconds = float(seconds)
        if seconds < 0:
            raise ValueError("seconds must be >= 0")
        with self.lock:
            self.delay_seconds = seconds
            self.delay_methods = frozenset(methods) if methods else None
        return {"seconds": seconds, "methods": sorted(methods) if methods else None}

    def set_timeout(self, method: str, count: int, execute: bool) -> dict:
        count = int(count)
        with self.lock:
            if count <= 0:
                self.timeouts.pop(method, None)
            else:
                self.timeouts[method] = [count, bool(execute)]
        return {"method": method, "count": count, "execute": bool(execute)}

    def delay_for(self, method: str) -> float:
        seconds = self.delay_seconds
        if seconds and (self.delay_methods is None or method in self.delay_methods):
            return seconds
        return 0.0

    def take_timeout(self, method: str) -> bool | None:
        """None: answer normally; True/False: answer ``ipc_timeout``, executing the call or not."""
        if not self.timeouts:
            return None
        with self.lock:
            entry = self.timeouts.get(method)
            if entry is None:
                return None
            entry[0] -= 1
            if entry[0] <= 0:
                del self.timeouts[method]
            return entry[1]

    def describe(self) -> dict:
        with self.lock:
            return {
                "delay": {"seconds": self.delay_seconds,
                          "methods": sorted(self.delay_methods) if self.delay_methods else None},
                "ipc_timeout": {m: {"count": c, "execute": e} for m, (c, e) in self.timeouts.items()},
            }


class TerminalServer:
    """TCP front of one engine. ``start()`` binds and listens; ``stop()`` closes everything."""

    def __init__(self, engine: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        self.engine = engine
        self.engine_lock = threading.Lock()
        self.faults = IpcFaults()
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
        self.accept_thread = threading.Thread(target=self._accept_loop, name="mt5sim-accept", daemon=True)
        self.accept_thread.start()

    def stop(self) -> None:
        """Stop accepting, cut every connection, wait for in-flight engine calls to end."""
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
        # Let connection threads detach their sessions before the engine closes (bounded wait:
        # a thread sleeping in ctl.delay is not worth waiting for).
        deadline = time.monotonic() + 3.0
        with self.connections_lock:
            threads = list(self.threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        # Taking the lock once means no engine call is still running.
        with self.engine_lock:
            pass

    # ----------------------------------------------------------------------------------------------

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
            thread = threading.Thread(target=self._serve_connection, args=(sock,), name="mt5sim-conn", daemon=True)
            with self.connections_lock:
                self.threads.add(thread)
            thread.start()

    def _serve_connection(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.connections_lock:
            self.connections.add(sock)
        reader = protocol.FrameReader(sock)
        session: list[Any] = []  # the engine session, attached at the first terminal call
        try:
            while not self.stopping.is_set():
                try:
                    message = reader.read()
                except (protocol.ConnectionClosed, OSError, ValueError):
                    return
                try:
                    call_id, method, kwargs = message
                except (TypeError, ValueError):
                    return
                status, payload = self._dispatch(session, str(method), kwargs or {})
                try:
                    frame = protocol.pack([call_id, status, payload])
                except Exception as exc:  # an unserializable engine value must not kill the link
                    print(f"mt5sim: cannot serialize reply to {method}: {exc!r}", file=sys.stderr, flush=True)
                    frame = protocol.pack([call_id, protocol.STATUS_ERR, list(_CALL_FAILED)])
                try:
                    sock.sendall(frame)
                except OSError:
                    return
        finally:
            with self.connections_lock:
                self.connections.discard(sock)
                self.threads.discard(threading.current_thread())
            if session:
                with self.engine_lock:
                    try:
                        self.engine.detach(session[0])
                    except Exception:
                        traceback.print_exc()
            try:
                sock.close()
            except OSError:
                pass

    def _dispatch(self, session: list, method: str, kwargs: dict) -> tuple[str, Any]:
        if method.startswith("ctl."):
            return self._control(method[4:], kwargs)
        delay = self.faults.delay_for(method)
        if delay:
            time.sleep(delay)  # outside the engine lock: other connections are not held up
        timeout = self.faults.take_timeout(method)
        if timeout is not None:
            if timeout:
                self._engine_call(session, method, kwargs)
            return protocol.STATUS_IPC_TIMEOUT, None
        return self._engine_call(session, method, kwargs)

    def _engine_call(self, session: list, method: str, kwargs: dict) -> tuple[str, Any]:
        with self.engine_lock:
            try:
                if not session:
                    session.append(self.engine.attach())
                status, value = self.engine.call(session[0], method, kwargs)
            except Exception:  # an engine bug answers "call failed", the terminal lives on
                print(f"mt5sim: engine call {method} failed", file=sys.stderr, flush=True)
                traceback.print_exc()
                return protocol.STATUS_ERR, list(_CALL_FAILED)
        if status == "err":
            return protocol.STATUS_ERR, [int(value[0]), str(value[1])]
        if status == protocol.STATUS_IPC_TIMEOUT:  # the engine's own "no answer in time" (ctl.slow_execution)
            return protocol.STATUS_IPC_TIMEOUT, None
        return protocol.STATUS_OK, value

    def _control(self, name: str, kwargs: dict) -> tuple[str, Any]:
        try:
            if name == "delay":
                return protocol.STATUS_OK, self.faults.set_delay(kwargs.get("seconds", 0.0), kwargs.get("methods"))
            if name == "ipc_timeout":
                return protocol.STATUS_OK, self.faults.set_timeout(
                    str(kwargs.get("method", "order_send")), kwargs.get("count", 1), kwargs.get("execute", True))
            if name == "ping":
                return protocol.STATUS_OK, True
            if name == "server_state":
                return protocol.STATUS_OK, self.faults.describe()
            if name == "reset":
                self.faults.reset()
        except (TypeError, ValueError) as exc:
            return protocol.STATUS_ERR, [-2, f"Invalid params: {exc}"]
        with self.engine_lock:
            try:
                status, value = self.engine.control(name, kwargs)
            except Exception as exc:
                traceback.print_exc()
                return protocol.STATUS_ERR, [-1, f"control {name} failed: {exc!r}"]
        if status == "err":
            return protocol.STATUS_ERR, [int(value[0]), str(value[1])]
        if name == "state" and isinstance(value, dict):
            value = dict(value, ipc_faults=self.faults.describe())
        return protocol.STATUS_OK, value

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
from .listener import CALL_FAILED, ThreadedListener


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

    def control(self, name: str, kwargs: dict) -> tuple[str, Any] | None:
        """The controls every terminal answers itself (``delay``, ``ipc_timeout``, ``ping``,
        ``server_state``); None: the control goes on to the engine or broker (``reset`` after
        clearing the faults)."""
        try:
            if name == "delay":
                return protocol.STATUS_OK, self.set_delay(kwargs.get("seconds", 0.0), kwargs.get("methods"))
            if name == "ipc_timeout":
                return protocol.STATUS_OK, self.set_timeout(
                    str(kwargs.get("method", "order_send")), kwargs.get("count", 1), kwargs.get("execute", True))
            if name == "ping":
                return protocol.STATUS_OK, True
            if name == "server_state":
                return protocol.STATUS_OK, self.describe()
            if name == "reset":
                self.reset()
        except (TypeError, ValueError) as exc:
            return protocol.STATUS_ERR, [-2, f"Invalid params: {exc}"]
        return None

    def describe(self) -> dict:
        with self.lock:
            return {
                "delay": {"seconds": self.delay_seconds,
                          "methods": sorted(self.delay_methods) if self.delay_methods else None},
                "ipc_timeout": {m: {"count": c, "execute": e} for m, (c, e) in self.timeouts.items()},
            }


class TerminalServer(ThreadedListener):
    """TCP front of one engine. ``start()`` binds and listens; ``stop()`` closes everything."""

    def __init__(self, engine: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        self.engine = engine
        self.engine_lock = threading.Lock()
        self.faults = IpcFaults()

    def stop(self) -> None:
        """Stop accepting, cut every connection, wait for in-flight engine calls to end."""
        super().stop()  # connection threads detach their sessions before the engine closes
        # Taking the lock once means no engine call is still running.
        with self.engine_lock:
            pass

    # ----------------------------------------------------------------------------------------------

    def _serve_connection(self, sock: socket.socket) -> None:
        session: list[Any] = []  # the engine session, attached at the first terminal call
        try:
            self._serve_frames(sock, lambda message: self._answer(session, message))
        finally:
            if session:
                with self.engine_lock:
                    try:
                        self.engine.detach(session[0])
                    except Exception:
                        traceback.print_exc()

    def _answer(self, session: list, message: Any) -> bytes | None:
        try:
            call_id, method, kwargs = message
        except (TypeError, ValueError):
            return None
        status, payload = self._dispatch(session, str(method), kwargs or {})
        return self._reply_frame(call_id, method, status, payload)

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
                return protocol.STATUS_ERR, list(CALL_FAILED)
        if status == "err":
            return protocol.STATUS_ERR, [int(value[0]), str(value[1])]
        if status == protocol.STATUS_IPC_TIMEOUT:  # the engine's own "no answer in time" (ctl.slow_execution)
            return protocol.STATUS_IPC_TIMEOUT, None
        return protocol.STATUS_OK, value

    def _control(self, name: str, kwargs: dict) -> tuple[str, Any]:
        answered = self.faults.control(name, kwargs)
        if answered is not None:
            return answered
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

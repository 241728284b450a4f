"""Wire framing and the server's robustness, with a throwaway in-test engine (protocol only).

Everything MetaTrader-visible is tested against the real engine elsewhere; here the engine is a
stub so that the transport's own cases (split frames, garbage, engine exceptions) are exact.
"""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest

from mt5sim import protocol
from mt5sim.server import TerminalServer
from mt5sim.structs import RATES_DTYPE, TICKS_DTYPE


class StubEngine:
    def __init__(self) -> None:
        self.attached = 0
        self.detached = 0
        self.calls: list[str] = []

    def attach(self):
        self.attached += 1
        return self.attached

    def detach(self, session):
        self.detached += 1

    def call(self, session, method, kwargs):
        self.calls.append(method)
        if method == "boom":
            raise RuntimeError("engine bug")
        if method == "rates":
            rates = np.zeros(3, RATES_DTYPE)
            rates["time"] = [1, 2, 3]
            return "ok", rates
        if method == "weird":
            return "ok", object()
        if method == "missing":
            return "err", (-4, "Terminal: Not found")
        return "ok", {"method": method, "kwargs": kwargs, "session": session}

    def control(self, name, kwargs):
        return "ok", {"control": name}

    def close(self):
        pass


@pytest.fixture
def stub_server():
    engine = StubEngine()
    server = TerminalServer(engine, "127.0.0.1", 0)
    server.start()
    yield server, engine
    server.stop()


def connect(server) -> tuple[socket.socket, protocol.FrameReader]:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    return sock, protocol.FrameReader(sock)


def test_numpy_arrays_round_trip_with_their_dtypes():
    rates = np.zeros(4, RATES_DTYPE)
    rates["close"] = [1.5, 2.5, 3.5, 4.5]
    ticks = np.zeros(2, TICKS_DTYPE)
    ticks["flags"] = [6, 134]
    decoded = protocol.unpack(protocol.pack([1, "ok", {"r": rates, "t": ticks, "n": np.int64(7)}])[4:])
    assert decoded[2]["r"].dtype == RATES_DTYPE and list(decoded[2]["r"]["close"]) == [1.5, 2.5, 3.5, 4.5]
    assert decoded[2]["t"].dtype == TICKS_DTYPE and list(decoded[2]["t"]["flags"]) == [6, 134]
    assert decoded[2]["r"].flags.writeable and decoded[2]["n"] == 7
    empty = protocol.unpack(protocol.pack(np.zeros(0, TICKS_DTYPE))[4:])
    assert empty.dtype == TICKS_DTYPE and len(empty) == 0


def test_parse_address():
    assert protocol.parse_address("127.0.0.1:5") == ("127.0.0.1", 5)
    assert protocol.parse_address("localhost:18812") == ("localhost", 18812)
    assert protocol.parse_address(r"C:\Program Files\MetaTrader 5\terminal64.exe") is None
    assert protocol.parse_address("C:/mt5/terminal64.exe") is None
    assert protocol.parse_address("host:99999") is None
    assert protocol.parse_address("nohost") is None


def test_frames_split_byte_by_byte_and_pipelined(stub_server):
    server, engine = stub_server
    sock, reader = connect(server)
    data = protocol.pack([1, "a", {"x": 1}]) + protocol.pack([2, "b", {}])
    for byte in data:
        sock.send(bytes([byte]))
    assert reader.read()[:2] == [1, "ok"]
    assert reader.read()[:2] == [2, "ok"]
    sock.close()


def test_engine_exception_and_unserializable_value_answer_call_failed(stub_server):
    server, engine = stub_server
    sock, reader = connect(server)
    protocol.send(sock, [1, "boom", {}])
    assert reader.read() == [1, "err", [-1, "Terminal: Call failed"]]
    protocol.send(sock, [2, "weird", {}])
    assert reader.read() == [2, "err", [-1, "Terminal: Call failed"]]
    protocol.send(sock, [3, "missing", {}])
    assert reader.read() == [3, "err", [-4, "Terminal: Not found"]]
    protocol.send(sock, [4, "rates", {}])
    call_id, status, rates = reader.read()
    assert status == "ok" and rates.dtype == RATES_DTYPE and list(rates["time"]) == [1, 2, 3]
    sock.close()


def test_garbage_closes_only_that_connection_and_sessions_are_detached(stub_server):
    server, engine = stub_server
    good, good_reader = connect(server)
    protocol.send(good, [1, "ping_engine", {}])
    assert good_reader.read()[1] == "ok"
    bad, _ = connect(server)
    bad.sendall(b"\x00\x00\x00\x05\xc1\xc1\xc1\xc1\xc1")  # 0xc1 is never valid msgpack
    bad.settimeout(5)
    assert bad.recv(10) == b""  # the server hung up on it
    bad.close()
    protocol.send(good, [2, "still_here", {}])
    assert good_reader.read()[:2] == [2, "ok"]
    good.close()
    deadline = time.monotonic() + 5
    while engine.detached < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.attached == 1 and engine.detached == 1  # the garbage connection never attached


def test_control_calls_do_not_attach_a_session(stub_server):
    server, engine = stub_server
    sock, reader = connect(server)
    protocol.send(sock, [1, "ctl.state", {}])
    call_id, status, payload = reader.read()
    assert status == "ok" and payload["control"] == "state" and "ipc_faults" in payload
    protocol.send(sock, [2, "ctl.delay", {"seconds": -1}])
    assert reader.read()[1] == "err"
    assert engine.attached == 0
    sock.close()

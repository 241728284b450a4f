"""The client's pure parts, without a bridge: the retry decisions, the exception of each error code, models
keeping unknown fields, the event protocol's state (resume position, duplicates, close codes), the
configuration from the environment. (Everything that talks to the bridge is tested against a real one in
test_client.py and test_events.py.)"""

from __future__ import annotations

import json

import httpx
import mt5bridge
import pytest
from mt5bridge._core import RetryPolicy, resolve_config, retry_decision, ws_url
from mt5bridge._events import Reconnect, Stop, StreamState
from mt5bridge.errors import error_from_response
from mt5bridge.models import Symbol, Task


def _response(status: int, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, headers=headers or {})


def test_retry_decisions() -> None:
    policy = RetryPolicy(max_attempts=4, backoff=0.2, max_backoff=1.0, max_retry_after=30)
    assert retry_decision(policy, 1, _response(429, {"Retry-After": "3"})) == 3.0
    assert retry_decision(policy, 1, _response(503, {"Retry-After": "5"})) == 5.0
    assert retry_decision(policy, 1, _response(429, {"Retry-After": "31"})) is None  # longer than accepted
    for status in (400, 401, 403, 404, 409, 413, 415, 422, 500):
        assert retry_decision(policy, 1, _response(status)) is None, status
    for attempt, ceiling in ((1, 0.2), (2, 0.4), (3, 0.8)):
        delays = {retry_decision(policy, attempt, _response(502)) for _ in range(50)}
        assert all(ceiling / 2 <= d <= ceiling for d in delays) and len(delays) > 1  # jittered
        assert all(ceiling / 2 <= retry_decision(policy, attempt, None) <= ceiling for _ in range(20))
    assert retry_decision(policy, 4, _response(503)) is None  # attempts used up
    assert retry_decision(policy, 4, None) is None


@pytest.mark.parametrize(("status", "code", "cls"), [
    (400, "ValidationError", mt5bridge.ValidationError),
    (401, "Unauthorized", mt5bridge.Unauthorized),
    (401, "SessionExpired", mt5bridge.SessionExpired),
    (404, "NotFound", mt5bridge.NotFound),
    (409, "TaskConflict", mt5bridge.TaskConflict),
    (409, "SessionNotReady", mt5bridge.SessionNotReady),
    (409, "SessionPaused", mt5bridge.SessionPaused),
    (409, "TerminalBusy", mt5bridge.TerminalBusy),
    (429, "RateLimited", mt5bridge.RateLimited),
    (502, "BridgeUnavailable", mt5bridge.BridgeUnavailable),
    (503, "Unavailable", mt5bridge.Unavailable),
    (409, "SomethingNew", mt5bridge.Conflict),  # a code this client does not know: its status's class
])
def test_error_codes_map_to_exceptions(status: int, code: str, cls: type) -> None:
    body = {"error": {"code": code, "message": "m", "details": {"taskId": "tsk_1", "retryAfter": 2}}}
    exc = error_from_response(status, body, {"Retry-After": "7", "x-request-id": "r1"}, "r1")
    assert type(exc) is cls and isinstance(exc, mt5bridge.BridgeError)
    assert (exc.status, exc.code, exc.message, exc.request_id) == (status, code, "m", "r1")
    assert exc.details["taskId"] == "tsk_1"
    if cls in (mt5bridge.RateLimited, mt5bridge.Unavailable):
        assert exc.retry_after == 7.0


def test_models_keep_unknown_fields() -> None:
    task = Task.from_dict({"taskId": "tsk_1", "requestId": "r", "state": "filled", "kind": "order.create",
                           "result": {"retcode": 10009, "order": 5}, "newField": 1})
    assert (task.task_id, task.request_id, task.retcode, task.order, task.final) == ("tsk_1", "r", 10009, 5, True)
    assert task.newField == 1 and task.new_field == 1 and task["newField"] == 1 and task.raw["state"] == "filled"
    symbol = Symbol.from_dict({"name": "EURUSD", "digits": 5, "trade_contract_size": 100000.0})
    assert symbol.trade_contract_size == 100000.0
    with pytest.raises(AttributeError):
        _ = symbol.nothing_like_this


def test_stream_state_resumes_from_the_last_seq_and_drops_duplicates() -> None:
    state = StreamState(["order", "quote:EURUSD"])
    assert [json.loads(m)["type"] for m in state.hello()] == ["subscribe"]  # first connect: no position yet
    state.on_text(json.dumps({"type": "subscribed", "channels": ["order"], "seq": 4, "epoch": 77}))
    assert (state.last_seq, state.epoch) == (4, 77)
    event = state.on_text(json.dumps({"type": "order", "seq": 5, "epoch": 77, "data": {"taskId": "t"}}))
    assert event is not None and event.seq == 5 and event.data == {"taskId": "t"}
    assert state.on_text(json.dumps({"type": "order", "seq": 5, "epoch": 77, "data": {}})) is None  # duplicate
    assert state.on_text(json.dumps({"type": "position", "seq": 6, "epoch": 77, "data": {}})) is None  # not wanted
    quote = state.on_text(json.dumps({"type": "quote:EURUSD", "seq": 9, "epoch": 77, "data": {"bid": 1}}))
    assert quote is not None and state.last_seq == 6  # latest-value channels never move the position
    assert isinstance(state.on_close(1006), Reconnect)
    resume, subscribe = (json.loads(m) for m in state.hello())
    assert resume == {"type": "resume", "since": 6, "epoch": 77, "channels": ["order"]}
    assert subscribe == {"type": "subscribe", "channels": ["order", "quote:EURUSD"]}
    notice = state.on_text(json.dumps({"type": "resync_required", "since": 6, "epoch": 99, "oldestSeq": 1,
                                       "seq": 0}))
    assert notice is not None and notice.resync_required and (state.last_seq, state.epoch) == (0, 99)
    assert state.on_text(json.dumps({"type": "order", "seq": 1, "epoch": 99, "data": {}})) is not None


def test_stream_state_close_codes() -> None:
    state = StreamState(["order"])
    state.on_text(json.dumps({"type": "error", "error": {"code": "Unauthorized", "message": "bad key"}}))
    raised = state.on_close(4401)
    assert isinstance(raised, mt5bridge.Unauthorized) and raised.message == "bad key"
    assert isinstance(state.on_close(4410), Stop)
    state.on_text(json.dumps({"type": "error", "error": {"code": "RateLimited", "message": "slow down",
                                                         "details": {"retryAfter": 3}}}))
    assert state.on_close(4429) == Reconnect(3.0)
    assert isinstance(state.on_close(4503), Reconnect) and isinstance(state.on_close(1011), Reconnect)


def test_configuration_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MT5BRIDGE_API_KEY", raising=False)
    monkeypatch.delenv("MT5BRIDGE_URL", raising=False)
    with pytest.raises(mt5bridge.BridgeError):
        resolve_config(None, None)
    monkeypatch.setenv("MT5BRIDGE_API_KEY", "k1")
    assert resolve_config(None, None) == ("k1", "http://127.0.0.1:8000")
    monkeypatch.setenv("MT5BRIDGE_URL", "https://bridge.example.com/mt5/client/")
    assert resolve_config(None, None) == ("k1", "https://bridge.example.com")
    assert resolve_config("k2", "http://h:1") == ("k2", "http://h:1")  # arguments win
    assert ws_url("https://bridge.example.com") == "wss://bridge.example.com/events"

"""Bad parameters: a 4xx with the API's error body, naming the parameter, never a 500."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db(transaction=True)

BARS = "/mt5/client/quotes/history"
GOOD_BARS = {"symbol": "EURUSD", "timeframe": "M1", "count": 5}

CASES = [
    # (path, query, field named in details)
    (BARS, {"timeframe": "M1", "count": 5}, "symbol"),
    (BARS, {"symbol": "EURUSD", "count": 5}, "timeframe"),
    (BARS, {**GOOD_BARS, "timeframe": "M7"}, "timeframe"),
    (BARS, {**GOOD_BARS, "timeframe": "m1"}, "timeframe"),
    (BARS, {**GOOD_BARS, "count": 0}, "count"),
    (BARS, {**GOOD_BARS, "count": "ten"}, "count"),
    (BARS, {**GOOD_BARS, "count": "1.5"}, "count"),
    (BARS, {**GOOD_BARS, "count": str(2**40)}, "count"),
    (BARS, {"symbol": "EURUSD", "timeframe": "M1"}, "count"),
    (BARS, {**GOOD_BARS, "from": "yesterday"}, "from"),
    (BARS, {**GOOD_BARS, "from": "-5"}, "from"),
    (BARS, {**GOOD_BARS, "from": "99999999999"}, "from"),
    (BARS, {**GOOD_BARS, "from": "2024-13-45T00:00:00Z"}, "from"),
    (BARS, {**GOOD_BARS, "from": "nan"}, "from"),
    (BARS, {"symbol": "EURUSD", "timeframe": "M1", "to": 1700000000}, "to"),
    (BARS, {**GOOD_BARS, "from": 1700000000, "to": 1700003600}, "to"),
    (BARS, {"symbol": "EURUSD", "timeframe": "M1", "from": 1700003600, "to": 1700000000}, "from"),
    (BARS, {**GOOD_BARS, "limit": 10}, "limit"),
    (BARS, {"symbol": "EURUSD", "timeframe": "M1", "from": 1700000000, "limit": 0}, "limit"),
    (BARS, {**GOOD_BARS, "cnt": 5}, "cnt"),
    (BARS, {**GOOD_BARS, "symbol": "X" * 30}, "symbol"),
    (BARS, {**GOOD_BARS, "symbol": "EUR USD"}, "symbol"),
    ("/mt5/client/ticks/EURUSD", {"count": 5, "flags": "BAD"}, "flags"),
    ("/mt5/client/ticks/EURUSD", {"count": "many"}, "count"),
    ("/mt5/client/ticks/EURUSD", {"count": 100_001}, "count"),
    ("/mt5/client/ticks/EURUSD", {}, "count"),
    ("/mt5/client/ticks/EURUSD", {"count": 5, "to": 1700000000}, "to"),
    ("/mt5/client/history/deals", {"from": "garbage"}, "from"),
    ("/mt5/client/history/deals", {"from": 1700003600, "to": 1700000000}, "from"),
    ("/mt5/client/history/deals", {"position": -1}, "position"),
    ("/mt5/client/history/orders", {"position": "abc"}, "position"),
    ("/mt5/client/history/orders", {"symbol": "*USD*"}, "symbol"),
    ("/mt5/client/symbols", {"group": "with space"}, "group"),
    ("/mt5/client/symbols", {"group": "*" * 300}, "group"),
    ("/mt5/client/account", {"foo": "1"}, "foo"),
    ("/mt5/client/positions", {"symbol": "EUR,USD"}, "symbol"),
    ("/mt5/client/orders", {"ticket": "5"}, "ticket"),
    ("/mt5/client/quotes/EURUSD", {"x": "1"}, "x"),
    ("/mt5/client/depth/" + "Y" * 30, {}, "symbol"),
]


@pytest.mark.parametrize(("path", "query", "field"), CASES)
def test_bad_parameters_are_400_with_the_field_named(session_a, path, query, field):
    r = session_a.get(path, query)
    assert r.status_code == 400, (path, query, r.content)
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == "ValidationError"
    assert field in body["error"]["details"], body


def test_repeated_parameter_is_400(session_a):
    r = session_a.get(f"{BARS}?symbol=EURUSD&timeframe=M1&count=5&count=6")
    assert r.status_code == 400 and "count" in r.json()["error"]["details"]


def test_reads_need_a_live_session_of_the_callers_workspace(session_a, other_client, client):
    sid = session_a._credentials["HTTP_X_SESSION_ID"]
    other_client.credentials(**{**other_client._credentials, "HTTP_X_SESSION_ID": sid})
    for path in ("/mt5/client/account", "/mt5/client/symbols", f"{BARS}?symbol=EURUSD&timeframe=M1&count=1"):
        r = other_client.get(path)
        assert r.status_code == 401 and r.json()["error"]["code"] == "Unauthorized", path
    bare = APIClient()
    bare.credentials(HTTP_AUTHORIZATION=client._credentials["HTTP_AUTHORIZATION"])
    no_session = bare.get("/mt5/client/account")
    assert no_session.status_code == 401 and no_session.json()["error"]["code"] == "Unauthorized"
    session_a.delete(f"/mt5/client/session/{sid}")
    closed = session_a.get("/mt5/client/account")
    assert closed.status_code == 401 and closed.json()["error"]["code"] == "SessionExpired"

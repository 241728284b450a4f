"""Reads serve only the session that owns the terminal, and only while the terminal shows its account:
a login switched by hand under the running reader and poller serves nothing of either account."""

from __future__ import annotations

import pytest

from tests.reads.conftest import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def _status(client, path: str) -> tuple[int, dict]:
    response = client.get(path)
    return response.status_code, response.json()


def test_an_account_switched_by_hand_is_served_to_nobody(session_a, terminal_a) -> None:
    wait_until(lambda: _status(session_a, "/mt5/client/account")[1].get("source") == "snapshot", timeout=5)
    assert terminal_a.mt5.login(5999, password="pw", server="Demo"), terminal_a.mt5.last_error()
    for path in ("/mt5/client/account", "/mt5/client/positions", "/mt5/client/history/deals",
                 "/mt5/client/symbols/EURUSD", "/mt5/client/stats", "/mt5/client/stats?magic=1"):
        code, body = wait_until(lambda p=path: (r := _status(session_a, p))[0] == 502 and r, timeout=5)
        assert body["error"]["code"] == "BridgeUnavailable" and body["error"]["details"]["reason"] == "account_mismatch"
    assert terminal_a.mt5.login(5001, password="pw", server="Demo"), terminal_a.mt5.last_error()
    code, body = wait_until(lambda: (r := _status(session_a, "/mt5/client/account"))[0] == 200 and r, timeout=5)
    assert body["login"] == 5001

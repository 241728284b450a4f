"""GET /stats end to end: a history seeded at a real mt5sim terminal (prices set by its control, a commission
on the symbol), read by the real reader, checked against the figures worked out by hand and against a
recomputation from the terminal's own ``history_deals_get``; bad parameters are 400s, no session a 401."""

from __future__ import annotations

import json
import math
import secrets
import threading
import time

import pytest
import redis
from django.db import connection
from rest_framework.test import APIClient

from tests.reads.conftest import Terminal, wait_until
from trading.reads.readqueue import heartbeat_key

pytestmark = pytest.mark.django_db(transaction=True)

STATS = "/mt5/client/stats"
OFFSET_A = 10800  # sim-a's broker clock is UTC+3
NO_COMMISSION = {"per_lot": 0.0, "per_deal": 0.0, "charge": "both"}  # mt5sim's default for forex symbols


def _send(terminal: Terminal, symbol: str, type_: int, volume: float, magic: int, position: int | None = None):
    mt5 = terminal.mt5
    request = {"action": mt5.TRADE_ACTION_DEAL, "symbol": symbol, "volume": volume, "type": type_, "magic": magic,
               "type_filling": mt5.ORDER_FILLING_IOC, **({"position": position} if position else {})}
    result = mt5.order_send(request)
    assert result is not None and result.retcode == mt5.TRADE_RETCODE_DONE, (result, mt5.last_error())
    return result


def _by_hand(deals: list, magic: int | None = None, symbol: str | None = None) -> dict:
    """The figures from the terminal's deals, written out independently of trading/reads/stats.py."""
    mine = [d for d in deals if d.type in (0, 1) and (magic is None or d.magic == magic)
            and (symbol is None or d.symbol.lower() == symbol.lower())]
    results = [round(d.profit + d.swap + d.commission + d.fee, 2) for d in mine if d.entry in (1, 2, 3)]
    wins, losses = [r for r in results if r > 0], [r for r in results if r < 0]
    return {"trades": len(results), "wins": len(wins), "losses": len(losses),
            "breakeven": len(results) - len(wins) - len(losses),
            "grossProfit": round(sum(wins), 2), "grossLoss": round(sum(losses), 2),
            "netProfit": round(sum(d.profit + d.swap + d.commission + d.fee for d in mine), 2),
            "commission": round(sum(d.commission for d in mine), 2), "deals": len(mine)}


def test_stats_of_a_seeded_history_match_the_terminals_deals(session_a, terminal_a, stack):
    mt5, ctl = terminal_a.mt5, terminal_a.ctl
    magic, other_magic = 700_000 + secrets.randbelow(99_999), 1
    ctl.call("set_symbol", symbol="NZDUSD", commission={"per_lot": 7.0, "per_deal": 0.0, "charge": "both"})
    ctl.freeze_feed("NZDUSD")
    ctl.freeze_feed("AUDUSD")
    try:
        ctl.set_price("NZDUSD", 0.60000, 0.60010)
        ctl.set_price("AUDUSD", 0.65000, 0.65010)
        start = mt5.account_info()
        assert start.currency == "USD" and start.currency_digits == 2
        t0 = math.floor(time.time() * 1000) / 1000  # deal times are whole milliseconds
        # NZDUSD pays 7.00 a lot on every deal: 0.2 lot -1.40, 0.1 lot -0.70. Profit = price move x lots x 100,000.
        opened = _send(terminal_a, "NZDUSD", mt5.ORDER_TYPE_BUY, 0.2, magic)            # D1 buy 0.2 @0.60010: -1.40
        ctl.set_price("NZDUSD", 0.60110, 0.60120)
        _send(terminal_a, "NZDUSD", mt5.ORDER_TYPE_SELL, 0.1, magic, opened.order)       # D2 @0.60110: +10.00 -0.70 = 9.30
        ctl.set_price("NZDUSD", 0.59960, 0.59970)
        _send(terminal_a, "NZDUSD", mt5.ORDER_TYPE_SELL, 0.1, magic, opened.order)       # D3 @0.59960: -5.00 -0.70 = -5.70
        sold = _send(terminal_a, "NZDUSD", mt5.ORDER_TYPE_SELL, 0.1, magic)              # D4 sell @0.59960: -0.70
        ctl.set_price("NZDUSD", 0.59900, 0.59910)
        _send(terminal_a, "NZDUSD", mt5.ORDER_TYPE_BUY, 0.1, magic, sold.order)          # D5 @0.59910: +5.00 -0.70 = 4.30
        mark = math.floor(time.time() * 1000)  # D5 is at or before this millisecond, D6 after it
        wait_until(lambda: time.time() * 1000 >= mark + 1, 1, "the next millisecond")
        t_mid = mark / 1000
        other = _send(terminal_a, "NZDUSD", mt5.ORDER_TYPE_BUY, 0.1, other_magic)        # D6 buy @0.59910: -0.70
        ctl.set_price("NZDUSD", 0.59917, 0.59927)
        _send(terminal_a, "NZDUSD", mt5.ORDER_TYPE_SELL, 0.1, other_magic, other.order)  # D7 @0.59917: +0.70 -0.70 = 0
        aud = _send(terminal_a, "AUDUSD", mt5.ORDER_TYPE_BUY, 0.1, magic)                # D8 buy @0.65010 (no commission)
        ctl.set_price("AUDUSD", 0.64990, 0.65000)
        _send(terminal_a, "AUDUSD", mt5.ORDER_TYPE_SELL, 0.1, magic, aud.order)          # D9 @0.64990: -2.00
        t1 = math.ceil(time.time() * 1000) / 1000
    finally:
        ctl.call("set_symbol", symbol="NZDUSD", commission=NO_COMMISSION)
        ctl.freeze_feed("NZDUSD", frozen=False)
        ctl.freeze_feed("AUDUSD", frozen=False)

    # The terminal's own history of the window: exactly the nine deals above (nothing else traded meanwhile).
    found = mt5.history_deals_get(int(t0) + OFFSET_A - 1, int(t1) + OFFSET_A + 2)
    deals = sorted((d for d in found if t0 * 1000 <= d.time_msc - OFFSET_A * 1000 <= t1 * 1000),
                   key=lambda d: (d.time_msc, d.ticket))
    assert len(deals) == 9, deals
    assert [d.entry for d in deals] == [0, 1, 1, 0, 1, 0, 1, 0, 1]
    assert mt5.account_info().balance == pytest.approx(start.balance + 3.10, abs=1e-6)  # the balance is the deals'
    assert all(d.time_msc - OFFSET_A * 1000 > round(t_mid * 1000) for d in deals[5:])  # D6.. after t_mid

    # The whole account from t0 (to: now by default). Trades: 9.30, -5.70, 4.30, 0.00, -2.00.
    whole = session_a.get(STATS, {"from": t0})
    assert whole.status_code == 200, whole.content
    body = whole.json()
    assert body | _by_hand(deals) == body  # the figures recomputed from history_deals_get
    assert (body["trades"], body["wins"], body["losses"], body["breakeven"], body["deals"]) == (5, 2, 2, 1, 9)
    assert body["currency"] == "USD" and body["symbol"] is None and body["magic"] is None
    assert body["from"] == pytest.approx(t0) and body["to"] >= t1
    assert body["grossProfit"] == 13.60 and body["grossLoss"] == -7.70   # 9.30 + 4.30; -5.70 - 2.00
    assert body["winRate"] == 0.4 and body["profitFactor"] == 1.7662      # 2/5; 13.60 / 7.70 = 1.76623...
    assert body["expectancy"] == 1.18                                     # (13.60 - 7.70) / 5
    assert (body["averageWin"], body["averageLoss"]) == (6.80, -3.85)
    assert (body["largestWin"], body["largestLoss"]) == (9.30, -5.70)
    assert body["commission"] == -5.60                                    # 8 NZDUSD lots-legs: 1.40 + 6 x 0.70
    assert body["netProfit"] == 3.10                                      # 5.90 + entries (-1.40 - 0.70 - 0.70)
    assert (body["swap"], body["fee"]) == (0.0, 0.0)
    # Balance from S = the balance before D1: S-1.40, S+7.90 (peak), S+2.20, S+1.50 (fall 6.40), S+5.80, ...
    assert body["startBalance"] == pytest.approx(start.balance)
    assert body["maxDrawdown"] == 6.40
    assert body["maxDrawdownPercent"] == round(100 * 6.40 / (start.balance + 7.90), 2)

    # Up to t_mid only (D1..D5): the start is still the balance at t0 (the deals after `to` are taken off).
    early = session_a.get(STATS, {"from": t0, "to": t_mid}).json()
    assert early["startBalance"] == pytest.approx(start.balance) and early["deals"] == 5
    assert (early["trades"], early["wins"], early["losses"], early["netProfit"]) == (3, 2, 1, 5.80)
    assert early["maxDrawdown"] == 6.40

    # magic: D1-D5, D8, D9. Trades 9.30, -5.70, 4.30, -2.00; the curve from 0: -1.40, 7.90, 2.20, 1.50 (fall 6.40).
    by_magic = session_a.get(STATS, {"from": t0, "to": t1, "magic": magic}).json()
    assert by_magic | _by_hand(deals, magic=magic) == by_magic
    assert (by_magic["trades"], by_magic["wins"], by_magic["losses"], by_magic["breakeven"]) == (4, 2, 2, 0)
    assert by_magic["netProfit"] == 3.80 and by_magic["magic"] == magic         # 3.10 less D6, D7 (-0.70 + 0)
    assert by_magic["maxDrawdown"] == 6.40 and by_magic["maxDrawdownPercent"] is None
    assert by_magic["startBalance"] is None

    # symbol (any case) and magic: D1-D5. Trades 9.30, -5.70, 4.30.
    both = session_a.get(STATS, {"from": t0, "to": t1, "symbol": "nzdusd", "magic": magic}).json()
    assert both | _by_hand(deals, magic=magic, symbol="NZDUSD") == both
    assert (both["trades"], both["wins"], both["losses"], both["netProfit"], both["deals"]) == (3, 2, 1, 5.80, 5)

    # A symbol with no deals in the window: nothing traded, the ratios are null.
    none = session_a.get(STATS, {"from": t0, "to": t1, "symbol": "EURUSD"}).json()
    assert none["trades"] == 0 and none["deals"] == 0 and none["winRate"] is None and none["profitFactor"] is None
    assert none["netProfit"] == 0.0 and none["maxDrawdown"] == 0.0


BAD = [
    ({"magic": "-1"}, "magic"),
    ({"magic": str(2**64)}, "magic"),
    ({"magic": "abc"}, "magic"),
    ({"magic": "1.5"}, "magic"),
    ({"magic": "+5"}, "magic"),
    ({"symbol": "*USD*"}, "symbol"),
    ({"symbol": "EUR USD"}, "symbol"),
    ({"symbol": "X" * 30}, "symbol"),
    ({"from": "garbage"}, "from"),
    ({"from": "0"}, "from"),
    ({"to": "2147483648"}, "to"),
    ({"from": 1700003600, "to": 1700000000}, "from"),
    ({"position": 5}, "position"),
    ({"frm": 1700000000}, "frm"),
]


@pytest.mark.parametrize(("query", "field"), BAD)
def test_bad_parameters_are_400_with_the_field_named(session_a, query, field):
    r = session_a.get(STATS, query)
    assert r.status_code == 400, (query, r.content)
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == "ValidationError" and field in body["error"]["details"], body


def test_repeated_magic_is_400(session_a):
    r = session_a.get(f"{STATS}?magic=1&magic=2")
    assert r.status_code == 400 and "magic" in r.json()["error"]["details"]


def test_largest_magic_is_accepted(session_a):
    r = session_a.get(STATS, {"magic": str(2**64 - 1), "from": "2020-01-01", "to": "2020-01-02T00:00:00Z"})
    assert r.status_code == 200, r.content
    assert r.json()["magic"] == 2**64 - 1 and r.json()["trades"] == 0


def test_stats_need_a_session(client: APIClient):
    r = client.get(STATS)
    assert r.status_code == 401 and r.json()["error"]["code"] == "Unauthorized"


def test_a_deal_during_the_read_is_read_again_so_the_start_balance_stays_right(session_a, terminal_a, settings):
    """A deal that moves the balance between the two account readings around the history: the selector
    reads again (6 reader requests instead of 3), and the start balance is still the one at `from`."""
    mt5, ctl = terminal_a.mt5, terminal_a.ctl
    settings.BRIDGE_READ_TIMEOUT = 6.0  # this process's reads wait for the slowed history below
    redis_client = redis.Redis.from_url(settings.REDIS_URL)

    def reader() -> dict:
        return json.loads(redis_client.get(heartbeat_key("sim-a")) or b"{}")

    ctl.call("set_symbol", symbol="NZDUSD", commission={"per_lot": 7.0, "per_deal": 0.0, "charge": "both"})
    try:
        start = mt5.account_info().balance
        t0 = math.floor(time.time() * 1000) / 1000
        served = wait_until(lambda: reader().get("busy_with") is None and reader(), 5, "an idle reader")["served"]
        ctl.delay(1.0, ["history_deals_get"])
        answer: dict = {}

        def fetch() -> None:
            try:  # `to` a minute ahead: the default (now, at validation) could end before the deal below
                answer["r"] = session_a.get(STATS, {"from": t0, "to": t0 + 60})
            finally:
                connection.close()  # this thread's own database connection

        thread = threading.Thread(target=fetch)
        thread.start()
        # The first account reading is done and the history is being read (held by the delay): a deal now.
        wait_until(lambda: (h := reader()).get("served", 0) >= served + 1 and h.get("busy_with"), 5,
                   "the reader inside the history read")
        _send(terminal_a, "NZDUSD", mt5.ORDER_TYPE_BUY, 0.1, 4242)  # entry commission: the balance -0.70
        thread.join(15)
        assert not thread.is_alive()
    finally:
        ctl.delay(0)
        ctl.call("set_symbol", symbol="NZDUSD", commission=NO_COMMISSION)
    assert mt5.account_info().balance == pytest.approx(start - 0.70)
    body = answer["r"].json()
    assert answer["r"].status_code == 200, body
    # Read once more: account, history, account twice over (the heartbeat counts what the reader served).
    wait_until(lambda: reader().get("served", 0) >= served + 6, 3, "six reads served")
    assert body["startBalance"] == pytest.approx(start)  # not start + 0.70, as one reading would give
    assert (body["deals"], body["trades"], body["netProfit"], body["commission"]) == (1, 0, -0.70, -0.70)
    assert body["maxDrawdown"] == 0.70

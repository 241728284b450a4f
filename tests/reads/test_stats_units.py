"""GET /stats, the pure computation (trading/reads/stats.py) on hand-made deals, every figure worked out by hand.

Account currency with 2 digits. Deal types: BUY 0, SELL 1, BALANCE 2, CREDIT 3; entries: IN 0, OUT 1,
INOUT 2, OUT_BY 3.
"""

from __future__ import annotations

import pytest

import mt5sim
from trading.reads import stats as S
from trading.reads.stats import Deal, balance_at, compute_stats, stats_from_rows

BUY, SELL, BALANCE, CREDIT = 0, 1, 2, 3
IN, OUT, INOUT, OUT_BY = 0, 1, 2, 3


def deal(ticket: int, t: int, type_: int, entry: int, profit: float = 0.0, commission: float = 0.0,
         swap: float = 0.0, fee: float = 0.0, magic: int = 0, symbol: str = "EURUSD") -> Deal:
    return Deal(ticket=ticket, time_msc=t * 1000, type=type_, entry=entry, magic=magic,
                symbol=symbol if type_ in (BUY, SELL) else "", profit=profit, commission=commission, swap=swap,
                fee=fee)


# A history with two symbols, two magics, a partial close, a breakeven trade, a deposit in the middle
# and a credit deal (credit is not balance). Listed out of time order on purpose.
HISTORY = [
    deal(10, 10, SELL, OUT, profit=1.00, commission=-1.00, magic=7),                 # D10 result  0.00 (breakeven)
    deal(1, 1, BUY, IN, commission=-3.50, magic=7),                                  # D1  entry  -3.50
    deal(2, 2, SELL, OUT, profit=50.00, commission=-3.50, swap=-1.20, magic=7),      # D2  result 45.30 (win)
    deal(3, 3, SELL, IN, commission=-2.00, magic=8, symbol="GBPUSD"),                # D3  entry  -2.00
    deal(4, 4, BUY, OUT, profit=-120.00, commission=-2.00, fee=-0.50, magic=8, symbol="GBPUSD"),  # D4 -122.50 (loss)
    deal(5, 5, BALANCE, IN, profit=500.00),                                          # D5  deposit +500.00
    deal(6, 6, BUY, IN, commission=-1.75, magic=7),                                  # D6  entry  -1.75 (0.5 lot)
    deal(7, 7, SELL, OUT, profit=10.00, commission=-0.70, magic=7),                  # D7  partial close 0.2: 9.30 (win)
    deal(8, 8, SELL, OUT, profit=-20.00, commission=-1.05, magic=7),                 # D8  the rest 0.3: -21.05 (loss)
    deal(9, 9, BUY, IN, magic=7),                                                    # D9  entry   0.00
    deal(11, 11, CREDIT, IN, profit=200.00),                                         # D11 credit: not in the balance
]


def test_constants_are_metatrader5s():
    assert (S.DEAL_TYPE_BUY, S.DEAL_TYPE_SELL, S.DEAL_TYPE_CREDIT) == (
        mt5sim.DEAL_TYPE_BUY, mt5sim.DEAL_TYPE_SELL, mt5sim.DEAL_TYPE_CREDIT)
    assert (S.DEAL_ENTRY_IN, S.DEAL_ENTRY_OUT, S.DEAL_ENTRY_INOUT, S.DEAL_ENTRY_OUT_BY) == (
        mt5sim.DEAL_ENTRY_IN, mt5sim.DEAL_ENTRY_OUT, mt5sim.DEAL_ENTRY_INOUT, mt5sim.DEAL_ENTRY_OUT_BY)


def test_whole_account_with_a_deposit_in_the_middle():
    got = compute_stats(HISTORY, start_balance=1000.00)
    # Trades (closing BUY/SELL deals): D2 45.30, D4 -122.50, D7 9.30, D8 -21.05, D10 0.00.
    assert (got["trades"], got["wins"], got["losses"], got["breakeven"]) == (5, 2, 2, 1)
    assert got["winRate"] == 0.4                                   # 2 / 5
    assert got["grossProfit"] == 54.60                             # 45.30 + 9.30
    assert got["grossLoss"] == -143.55                             # -122.50 - 21.05
    assert got["profitFactor"] == 0.3804                           # 54.60 / 143.55 = 0.380355...
    assert got["expectancy"] == -17.79                             # (54.60 - 143.55) / 5 = -88.95 / 5
    assert got["averageWin"] == 27.30                              # 54.60 / 2
    assert got["averageLoss"] == -71.78                            # -143.55 / 2 = -71.775, half away from 0
    assert (got["largestWin"], got["largestLoss"]) == (45.30, -122.50)
    # Entry deals cost -3.50 - 2.00 - 1.75 + 0 = -7.25, so netProfit = 54.60 - 143.55 - 7.25.
    assert got["netProfit"] == -96.20
    assert got["commission"] == -15.50   # -3.50 -3.50 -2.00 -2.00 -1.75 -0.70 -1.05 +0 -1.00
    assert (got["swap"], got["fee"]) == (-1.20, -0.50)
    # Balance curve from 1000.00: D1 996.50, D2 1041.80 (peak), D3 1039.80, D4 917.30 (fall 124.50),
    # D5 1417.30 (deposit: new peak), D6 1415.55, D7 1424.85 (peak), D8 1403.80 (fall 21.05), D9, D10 1403.80.
    # Largest fall: 1041.80 -> 917.30 = 124.50, i.e. 124.50 / 1041.80 = 11.9505 %. (Without the deposit the
    # curve would fall 1041.80 -> 903.80 = 138.00: the deposit is part of the balance.)
    assert got["maxDrawdown"] == 124.50
    assert got["maxDrawdownPercent"] == 11.95
    assert got["startBalance"] == 1000.00
    assert got["deals"] == 10  # every deal but the credit one


def test_unknown_start_balance_starts_the_curve_at_zero():
    got = compute_stats(HISTORY)
    # Same curve less 1000.00: 0 -> -3.50 -> 41.80 (peak) -> ... -> -82.70: same 124.50 fall, no percent.
    assert got["maxDrawdown"] == 124.50 and got["maxDrawdownPercent"] is None and got["startBalance"] is None


def test_magic_filter():
    got = compute_stats(HISTORY, magic=7, start_balance=1000.00)
    # D1, D2, D6, D7, D8, D9, D10. Trades: 45.30, 9.30, -21.05, 0.00.
    assert (got["trades"], got["wins"], got["losses"], got["breakeven"]) == (4, 2, 1, 1)
    assert got["winRate"] == 0.5                                   # 2 / 4
    assert got["profitFactor"] == 2.5938                           # 54.60 / 21.05 = 2.59382...
    assert got["expectancy"] == 8.39                               # 33.55 / 4 = 8.3875
    assert got["averageLoss"] == -21.05 and got["largestLoss"] == -21.05
    assert got["netProfit"] == 28.30                               # -3.50 + 45.30 - 1.75 + 9.30 - 21.05 + 0 + 0
    assert got["commission"] == -11.50                             # -3.50 -3.50 -1.75 -0.70 -1.05 -1.00
    assert (got["swap"], got["fee"]) == (-1.20, 0.0)
    # The curve is the filtered deals' running sum from 0 (no deposit, no start balance):
    # -3.50 (fall 3.50), 41.80 (peak), 40.05, 49.35 (peak), 28.30 (fall 21.05), 28.30, 28.30.
    assert got["maxDrawdown"] == 21.05
    assert got["maxDrawdownPercent"] is None and got["startBalance"] is None
    assert got["deals"] == 7


def test_symbol_filter_ignores_case():
    got = compute_stats(HISTORY, symbol="gbpusd", start_balance=1000.00)
    # D3 (entry -2.00), D4 (-122.50).
    assert (got["trades"], got["wins"], got["losses"], got["breakeven"]) == (1, 0, 1, 0)
    assert got["winRate"] == 0.0 and got["profitFactor"] == 0.0  # 0 / 122.50
    assert got["expectancy"] == -122.50 and got["averageWin"] is None and got["largestWin"] is None
    assert got["netProfit"] == -124.50 and got["grossProfit"] == 0.0
    assert got["maxDrawdown"] == 124.50                            # 0 -> -2.00 -> -124.50
    assert got["deals"] == 2


def test_filters_that_match_nothing():
    got = compute_stats(HISTORY, symbol="EURUSD", magic=8)
    assert (got["trades"], got["wins"], got["losses"], got["breakeven"], got["deals"]) == (0, 0, 0, 0, 0)
    assert all(got[k] is None for k in ("winRate", "profitFactor", "expectancy", "averageWin", "averageLoss",
                                        "largestWin", "largestLoss", "maxDrawdownPercent"))
    assert (got["netProfit"], got["grossProfit"], got["grossLoss"], got["maxDrawdown"]) == (0.0, 0.0, 0.0, 0.0)


def test_no_trades_only_a_deposit():
    got = compute_stats([deal(1, 1, BALANCE, IN, profit=250.00)], start_balance=100.00)
    # The curve only rises (100 -> 350): no fall, 0 %, and nothing traded.
    assert got["trades"] == 0 and got["winRate"] is None and got["profitFactor"] is None
    assert got["netProfit"] == 0.0 and got["maxDrawdown"] == 0.0 and got["maxDrawdownPercent"] == 0.0
    assert got["deals"] == 1


def test_only_wins_has_no_profit_factor():
    deals = [deal(1, 1, BUY, IN), deal(2, 2, SELL, OUT, profit=12.34),
             deal(3, 3, SELL, IN), deal(4, 4, BUY, INOUT, profit=7.66, commission=-0.50)]  # INOUT: a trade
    got = compute_stats(deals, start_balance=1000.00)
    # Trades 12.34 and 7.16 (7.66 - 0.50): both wins.
    assert (got["trades"], got["wins"], got["losses"]) == (2, 2, 0)
    assert got["winRate"] == 1.0 and got["profitFactor"] is None and got["averageLoss"] is None
    assert got["expectancy"] == 9.75                               # (12.34 + 7.16) / 2
    assert got["maxDrawdown"] == 0.0 and got["maxDrawdownPercent"] == 0.0
    assert got["netProfit"] == 19.50


def test_close_by_is_two_trades_and_balance_operations_are_never_trades():
    deals = [deal(1, 1, BUY, IN), deal(2, 1, SELL, IN),
             deal(3, 2, SELL, OUT_BY, profit=-4.00, commission=-0.10),           # the profit is on one deal: -4.10
             deal(4, 2, BUY, OUT_BY, commission=-0.10),                          # the other: -0.10 (a loss)
             deal(5, 3, BALANCE, OUT, profit=-50.00)]                            # a withdrawal is no trade
    got = compute_stats(deals, start_balance=100.00)
    assert (got["trades"], got["losses"]) == (2, 2) and got["grossLoss"] == -4.20
    # Balance: 100 -> 100 -> 100 -> 95.90 -> 95.80 -> 45.80: a withdrawal is a fall of the balance: 54.20.
    assert got["maxDrawdown"] == 54.20 and got["maxDrawdownPercent"] == 54.20   # 54.20 / 100
    assert got["netProfit"] == -4.20


def test_equal_times_follow_the_ticket_order():
    # Same millisecond: ticket 2 (a loss of 30) comes after ticket 1 (a gain of 30), so the fall is 30 from
    # the peak 130; in the other order the curve would go 100 -> 70 -> 100 with a fall of 30 from 100.
    deals = [deal(2, 5, SELL, OUT, profit=-30.00), deal(1, 5, SELL, OUT, profit=30.00)]
    got = compute_stats(deals, start_balance=100.00)
    assert got["maxDrawdown"] == 30.00 and got["maxDrawdownPercent"] == 23.08   # 30 / 130 = 23.077 %


def test_balance_at_from_and_the_range():
    rows = [
        {"ticket": 1, "time_msc": 999, "type": BUY, "entry": OUT, "profit": 99.0},      # before from: ignored
        {"ticket": 2, "time_msc": 1000, "type": BUY, "entry": IN, "commission": -1.0, "symbol": "EURUSD"},
        {"ticket": 3, "time_msc": 1500, "type": SELL, "entry": OUT, "profit": 11.0, "commission": -1.0,
         "symbol": "EURUSD", "magic": 0, "swap": 0.0, "fee": 0.0},
        {"ticket": 4, "time_msc": 2001, "type": BALANCE, "entry": IN, "profit": 40.0},     # after to, before now
        {"ticket": 5, "time_msc": 2500, "type": CREDIT, "entry": IN, "profit": 500.0},    # credit: not balance
    ]
    # Balance now 1049.00 = start + (-1) + 10 + 40  =>  start = 1049 - 49 = 1000.00.
    assert balance_at([Deal.from_row(r) for r in rows[1:]], balance_now=1049.0, since_msc=1000) == 1000.0
    got = stats_from_rows(rows[1:], date_from=1.0, date_to=2.0, balance_now=1049.0)
    assert got["startBalance"] == 1000.0 and got["deals"] == 2 and got["trades"] == 1
    assert got["netProfit"] == 9.0 and got["maxDrawdown"] == 1.0 and got["maxDrawdownPercent"] == 0.1  # 1 / 1000
    # With a filter the start is not used: the curve is the filtered deals' sum from 0.
    filtered = stats_from_rows(rows[1:], date_from=1.0, date_to=2.0, symbol="EURUSD", balance_now=1049.0)
    assert filtered["startBalance"] is None and filtered["maxDrawdownPercent"] is None


@pytest.mark.parametrize(("digits", "expected"), [(2, 0.33), (0, 0.0)])
def test_rounding_follows_the_currency_digits(digits, expected):
    deals = [deal(1, 1, SELL, OUT, profit=1.0), deal(2, 2, SELL, OUT, profit=0.0), deal(3, 3, SELL, OUT)]
    # digits 2: 100 minor units / 3 trades = 33.33 -> 33 -> 0.33; digits 0: 1 unit / 3 = 0.33 -> 0.
    assert compute_stats(deals, digits=digits)["expectancy"] == expected


def test_a_balance_that_keeps_moving_leaves_the_start_unknown(monkeypatch):
    """The selector's bound (the real race is played end to end in tests/reads/test_stats.py): a balance that
    differs at every pair of readings is tried STATS_BALANCE_TRIES times, then the curve starts from 0."""
    from types import SimpleNamespace

    from trading.reads import selectors

    balances = iter(range(1000, 2000))
    calls: list[str] = []

    def reader(terminal, op, args, timeout=None, raw=False, *, session):
        calls.append(op)
        if op == "account":
            return {"login": 5001, "balance": float(next(balances)), "currency": "USD", "currency_digits": 2}
        return {"deals": [{"ticket": 1, "time_msc": 1500, "type": SELL, "entry": OUT, "profit": -5.0}]}

    monkeypatch.setattr(selectors, "call_reader", reader)
    session = SimpleNamespace(id="sess_x", login=5001, terminal=SimpleNamespace(name="sim-a"))
    got = selectors.stats(session, {"date_from": 1.0, "date_to": 2.0})
    assert calls == ["account", "history", "account"] * selectors.STATS_BALANCE_TRIES
    assert got["startBalance"] is None and got["maxDrawdownPercent"] is None
    assert got["maxDrawdown"] == 5.0 and got["currency"] == "USD" and got["trades"] == 1


def test_an_account_currency_without_decimals_rounds_to_units(monkeypatch):
    """A JPY account (currency_digits 0): amounts in whole yen, and a steady balance gives the start."""
    from types import SimpleNamespace

    from trading.reads import selectors

    def reader(terminal, op, args, timeout=None, raw=False, *, session):
        if op == "account":
            return {"login": 5001, "balance": 100_000.0, "currency": "JPY", "currency_digits": 0}
        return {"deals": [{"ticket": 1, "time_msc": 1500, "type": SELL, "entry": OUT, "profit": 1000.0},
                          {"ticket": 2, "time_msc": 1600, "type": SELL, "entry": OUT, "profit": -1.0},
                          {"ticket": 3, "time_msc": 1700, "type": SELL, "entry": OUT, "profit": -2.0}]}

    monkeypatch.setattr(selectors, "call_reader", reader)
    session = SimpleNamespace(id="sess_x", login=5001, terminal=SimpleNamespace(name="sim-a"))
    got = selectors.stats(session, {"date_from": 1.0, "date_to": 2.0})
    # Balance at from: 100,000 - (1,000 - 1 - 2) = 99,003. Expectancy 997 / 3 = 332.33 -> 332 yen;
    # averageLoss -3 / 2 = -1.5 -> -2 (half away from 0); drawdown 100,003 -> 100,000 = 3 yen.
    assert got["currency"] == "JPY" and got["startBalance"] == 99_003
    assert (got["expectancy"], got["averageLoss"], got["maxDrawdown"]) == (332, -2, 3)

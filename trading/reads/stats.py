"""Trading statistics of a deal history (``GET /stats``): a pure computation over typed deal rows.

No Django, no terminal: the selector reads the deals and the account, this module only counts, so every
rule below is unit-tested on hand-made deals (tests/reads/test_stats_units.py). The rules (also in
docs/reads.md, "GET /stats"):

* A **trade** is a deal that closes (entry OUT, INOUT or OUT_BY) of type BUY or SELL. Its **result** is
  ``profit + swap + commission + fee`` of that deal. A result that is 0 at the currency's digits is
  *breakeven*; above 0 a win, below a loss.
* **Entry deals** (BUY/SELL with entry IN) are not trades, but what they cost (their commission and fee,
  and any swap or profit they carry) is counted in ``commission``/``swap``/``fee`` and ``netProfit``:
  ``netProfit`` is what every BUY/SELL deal of the range did to the balance, so
  ``netProfit = grossProfit + grossLoss + the entry deals' results``.
* ``symbol`` and ``magic`` filters select the BUY/SELL deals (entries and trades) they match. Balance
  operations (deposits, withdrawals, charges, corrections, ... any type but BUY/SELL) have no symbol or
  magic: they are never trades, and they count only in the balance curve, only without a filter.
* The **curve** for the drawdown is followed deal by deal in time order (``time_msc``, then ticket). With
  no filter it is the account balance: it starts from the balance at ``from`` (``start_balance``) and moves
  by every deal's result but credit deals (credit is kept apart from the balance by MT5). With a filter
  it is the running sum of the filtered deals' results from 0 (the account balance mixes in what the
  filter leaves out). ``maxDrawdown`` is the largest fall from a running peak to a later point; its
  percent is that fall over that peak, only when the curve is the balance and its start is known.
* Money is counted in the account currency's minor units (each amount rounded to ``digits``), so sums
  are exact; averages are rounded half away from zero, ratios to 4 decimals, percents to 2.
* A close-by is two OUT_BY deals and MT5 books its profit on one of them: it counts as two trades, the
  second's result being its own commission and swap (often a breakeven).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# MetaTrader5 values (tests/reads/test_stats_units.py checks them against mt5sim's constants).
DEAL_TYPE_BUY = 0
DEAL_TYPE_SELL = 1
DEAL_TYPE_CREDIT = 3
DEAL_ENTRY_IN = 0
DEAL_ENTRY_OUT = 1
DEAL_ENTRY_INOUT = 2
DEAL_ENTRY_OUT_BY = 3

TRADE_TYPES = frozenset({DEAL_TYPE_BUY, DEAL_TYPE_SELL})
CLOSING_ENTRIES = frozenset({DEAL_ENTRY_OUT, DEAL_ENTRY_INOUT, DEAL_ENTRY_OUT_BY})
RATIO_DIGITS = 4
PERCENT_DIGITS = 2


@dataclass(frozen=True, slots=True)
class Deal:
    """The fields of an MT5 TradeDeal the statistics use."""

    ticket: int
    time_msc: int
    type: int
    entry: int
    magic: int
    symbol: str
    profit: float
    commission: float
    swap: float
    fee: float

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Deal:
        """A deal from a ``history_deals_get`` row as the bridge reads it (a missing ``fee``: 0)."""
        return cls(ticket=int(row["ticket"]), time_msc=int(row["time_msc"]), type=int(row["type"]),
                   entry=int(row["entry"]), magic=int(row.get("magic") or 0), symbol=str(row.get("symbol") or ""),
                   profit=float(row.get("profit") or 0.0), commission=float(row.get("commission") or 0.0),
                   swap=float(row.get("swap") or 0.0), fee=float(row.get("fee") or 0.0))

    @property
    def is_trade_deal(self) -> bool:
        """BUY or SELL: a deal of a position (not a balance operation)."""
        return self.type in TRADE_TYPES

    @property
    def is_trade(self) -> bool:
        """A BUY/SELL deal that closes (all or part of) a position."""
        return self.is_trade_deal and self.entry in CLOSING_ENTRIES

    @property
    def moves_balance(self) -> bool:
        return self.type != DEAL_TYPE_CREDIT

    def result(self) -> float:
        return self.profit + self.swap + self.commission + self.fee


@dataclass(frozen=True, slots=True)
class StatsFilter:
    symbol: str | None = None  # exact broker name, compared ignoring case (as the /history filters)
    magic: int | None = None

    @property
    def empty(self) -> bool:
        return self.symbol is None and self.magic is None

    def matches(self, deal: Deal) -> bool:
        if not deal.is_trade_deal:
            return self.empty
        if self.symbol is not None and deal.symbol.lower() != self.symbol.lower():
            return False
        return self.magic is None or deal.magic == self.magic


def balance_at(deals_since: Iterable[Deal], *, balance_now: float, since_msc: int, digits: int = 2) -> float:
    """The balance right before ``since_msc``: today's balance minus what every balance-moving deal at or
    after that instant added (``deals_since`` must hold every deal from then to now)."""
    unit = 10**digits
    later = sum(_minor(d.result(), unit) for d in deals_since if d.moves_balance and d.time_msc >= since_msc)
    return (_minor(balance_now, unit) - later) / unit


def compute_stats(deals: Iterable[Deal], *, symbol: str | None = None, magic: int | None = None,
                  start_balance: float | None = None, digits: int = 2) -> dict[str, Any]:
    """The statistics of ``deals`` (those of the range, any order) under the filters.

    ``start_balance`` is the balance right before the first deal of the range; it is used only without a
    filter (the curve is then the account balance) and makes ``maxDrawdownPercent`` known."""
    unit = 10**digits
    selected = StatsFilter(symbol, magic)
    chosen = sorted((d for d in deals if selected.matches(d) and d.moves_balance), key=lambda d: (d.time_msc, d.ticket))
    balance_curve = selected.empty and start_balance is not None
    level = _minor(start_balance, unit) if balance_curve else 0
    peak, max_fall, fall_peak = level, 0, level
    results: list[int] = []
    net = commission = swap = fee = 0
    for deal in chosen:
        amount = _minor(deal.result(), unit)
        if deal.is_trade_deal:
            net += amount
            commission += _minor(deal.commission, unit)
            swap += _minor(deal.swap, unit)
            fee += _minor(deal.fee, unit)
            if deal.is_trade:
                results.append(amount)
        level += amount
        if level > peak:
            peak = level
        elif peak - level > max_fall:
            max_fall, fall_peak = peak - level, peak
    wins = [r for r in results if r > 0]
    losses = [r for r in results if r < 0]
    gross_profit, gross_loss = sum(wins), sum(losses)
    trades = len(results)
    percent = None
    if balance_curve and not max_fall:
        percent = 0.0
    elif balance_curve and fall_peak > 0:  # a fall from a peak at or below 0 has no meaningful percent
        percent = round(100 * max_fall / fall_peak, PERCENT_DIGITS)

    def money(minor: int | None) -> float | None:
        return None if minor is None else round(minor / unit, digits)

    return {
        "trades": trades,
        "wins": len(wins),
        "losses": len(losses),
        "breakeven": trades - len(wins) - len(losses),
        "winRate": round(len(wins) / trades, RATIO_DIGITS) if trades else None,
        "profitFactor": round(gross_profit / -gross_loss, RATIO_DIGITS) if losses else None,
        "expectancy": money(_div(gross_profit + gross_loss, trades)),
        "averageWin": money(_div(gross_profit, len(wins))),
        "averageLoss": money(_div(gross_loss, len(losses))),
        "largestWin": money(max(wins)) if wins else None,
        "largestLoss": money(min(losses)) if losses else None,
        "maxDrawdown": money(max_fall),
        "maxDrawdownPercent": percent,
        "startBalance": money(_minor(start_balance, unit)) if balance_curve else None,
        "netProfit": money(net),
        "grossProfit": money(gross_profit),
        "grossLoss": money(gross_loss),
        "commission": money(commission),
        "swap": money(swap),
        "fee": money(fee),
        "deals": len(chosen),
    }


def stats_from_rows(rows: Sequence[Mapping[str, Any]], *, date_from: float, date_to: float,
                    symbol: str | None = None, magic: int | None = None, balance_now: float | None = None,
                    digits: int = 2) -> dict[str, Any]:
    """``compute_stats`` of the rows in [date_from, date_to] (real-UTC seconds, millisecond precision).

    ``rows`` may run past ``date_to`` up to now: with ``balance_now`` (and no filter) they give the balance
    at ``date_from``, hence a known start of the curve."""
    deals = [Deal.from_row(r) for r in rows]
    from_msc, to_msc = round(date_from * 1000), round(date_to * 1000)
    start = None
    if balance_now is not None and symbol is None and magic is None:
        start = balance_at(deals, balance_now=balance_now, since_msc=from_msc, digits=digits)
    in_range = [d for d in deals if from_msc <= d.time_msc <= to_msc]
    return compute_stats(in_range, symbol=symbol, magic=magic, start_balance=start, digits=digits)


def _minor(amount: float, unit: int) -> int:
    return round(amount * unit)


def _div(total: int, count: int) -> int | None:
    """``total / count`` in minor units, rounded half away from zero (as money is); None for no count."""
    if not count:
        return None
    quotient = (2 * abs(total) + count) // (2 * count)
    return quotient if total >= 0 else -quotient

"""Read rules: which reads come from the snapshot, which go over the read queue, and their answers.

Snapshot-backed (``source: "snapshot"``): account, positions, pending orders and last ticks, served
from the terminal poller's snapshot while it is fresh (younger than ``BRIDGE_SNAPSHOT_MAX_AGE``) and
of the session's own account; otherwise the same read goes over the read queue (``source:
"terminal"``), and fails 502 when that cannot answer either. Everything else always goes over the
read queue. Every time on the way out is real UTC (the reader and the poller convert at the source).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
from django.conf import settings

from bridge_project.errors import BridgeUnavailable, NotFound
from sessions.models import BridgeSession
from terminals.reads import TIMEFRAME_SECONDS
from terminals.timeutil import MAX_TIME
from trading.reads.readqueue import RawJSON, call_reader, redis_client
from trading.reads.snapshots import TerminalSnapshot, load_snapshot_and_change, note_quote_interest
from trading.reads.stats import stats_from_rows

logger = logging.getLogger("bridge.reads")


def _terminal(session: BridgeSession) -> str:
    return session.terminal.name


def _snapshot_after_last_change(terminal: str) -> TerminalSnapshot | None:
    """The terminal's snapshot, provided its cycle started after the last change the bridge made at the
    terminal (read-your-writes): when it did not, wait for the poller's next cycle, at most
    BRIDGE_SNAPSHOT_CATCHUP_WAIT; None when none came (the caller then asks the terminal itself)."""
    client = redis_client()
    deadline = time.monotonic() + settings.BRIDGE_SNAPSHOT_CATCHUP_WAIT
    while True:
        snapshot, changed_at = load_snapshot_and_change(client, terminal)
        if snapshot is None or snapshot.taken_at >= changed_at:
            return snapshot
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.01)


def fresh_snapshot(session: BridgeSession) -> TerminalSnapshot | None:
    """The terminal's snapshot if it is fresh, shows every change the bridge made at the terminal, and
    was taken for this session (the poller stamps it with the terminal's bound session only while the
    terminal shows that session's account), else None."""
    try:
        snapshot = _snapshot_after_last_change(_terminal(session))
    except Exception:  # a corrupt or unreachable snapshot just means "ask the terminal"
        logger.exception("cannot load the snapshot of %s", _terminal(session))
        return None
    if snapshot is None or snapshot.age() > settings.BRIDGE_SNAPSHOT_MAX_AGE:
        return None
    if snapshot.session_id != session.id or snapshot.account.get("login") != session.login:
        return None  # taken for another session (or for none): never served to this one
    if not snapshot.connected:
        raise BridgeUnavailable(
            f"terminal {_terminal(session)} has no connection to the trade server",
            {"terminal": _terminal(session), "reason": "broker_disconnected", "asOf": snapshot.taken_at},
        )
    return snapshot


def _own_account(session: BridgeSession, account: dict[str, Any]) -> None:
    if account.get("login") != session.login:
        raise BridgeUnavailable(
            f"terminal {_terminal(session)} is not logged in to this session's account",
            {"terminal": _terminal(session), "reason": "account_mismatch"},
        )


def trading_state(session: BridgeSession) -> dict[str, Any]:
    """Account, positions and pending orders with ``asOf`` and ``source``."""
    snapshot = fresh_snapshot(session)
    if snapshot is not None:
        return {"account": snapshot.account, "positions": snapshot.positions, "orders": snapshot.orders,
                "asOf": snapshot.taken_at, "source": "snapshot"}
    state = call_reader(_terminal(session), "trading_state", {}, session=session.id)
    _own_account(session, state["account"])
    return {**state, "source": "terminal"}


def _of_symbol(items: list[dict[str, Any]], symbol: str | None) -> list[dict[str, Any]]:
    if not symbol:
        return items
    return [i for i in items if i.get("symbol", "").lower() == symbol.lower()]


def account(session: BridgeSession) -> dict[str, Any]:
    state = trading_state(session)
    return {**state["account"], "asOf": state["asOf"], "source": state["source"]}


def positions(session: BridgeSession, symbol: str | None = None) -> dict[str, Any]:
    state = trading_state(session)
    return {"positions": _of_symbol(state["positions"], symbol), "orders": _of_symbol(state["orders"], symbol),
            "asOf": state["asOf"], "source": state["source"]}


def position(session: BridgeSession, ticket: int) -> dict[str, Any]:
    state = trading_state(session)
    for item in state["positions"]:
        if item["ticket"] == ticket:
            return {**item, "asOf": state["asOf"], "source": state["source"]}
    raise NotFound(f"no open position {ticket}", {"ticket": ticket})


def orders(session: BridgeSession, symbol: str | None = None) -> dict[str, Any]:
    state = trading_state(session)
    return {"orders": _of_symbol(state["orders"], symbol), "asOf": state["asOf"], "source": state["source"]}


def quote(session: BridgeSession, symbol: str) -> dict[str, Any]:
    """The last tick: from the snapshot when the poller keeps that symbol, else read now (and from then on
    the poller keeps it for ``BRIDGE_QUOTE_INTEREST_TTL``)."""
    snapshot = fresh_snapshot(session)
    if snapshot is not None and symbol in snapshot.ticks:
        _note_interest(session, symbol)
        return {**snapshot.ticks[symbol], "asOf": snapshot.taken_at, "source": "snapshot"}
    asked = time.time()
    tick = call_reader(_terminal(session), "tick", {"symbol": symbol}, session=session.id)
    _note_interest(session, tick["symbol"])
    return {**tick, "asOf": asked, "source": "terminal"}


def _note_interest(session: BridgeSession, symbol: str) -> None:
    try:
        note_quote_interest(redis_client(), _terminal(session), symbol)
    except redis.RedisError:  # only an optimisation: the quote itself was answered
        logger.warning("cannot note quote interest in %s", symbol)


def symbols(session: BridgeSession, group: str | None = None) -> dict[str, Any]:
    found = call_reader(_terminal(session), "symbols", {"group": group}, session=session.id)
    return {"symbols": found, "count": len(found)}


def symbol_info(session: BridgeSession, symbol: str) -> dict[str, Any]:
    return call_reader(_terminal(session), "symbol", {"symbol": symbol}, session=session.id)


def depth(session: BridgeSession, symbol: str) -> dict[str, Any]:
    asked = time.time()
    return {**call_reader(_terminal(session), "depth", {"symbol": symbol}, session=session.id), "asOf": asked}


def _copy_timeout(size: int) -> float:
    """Deadline of a copy: the base read timeout, plus time to serialize a large answer."""
    return settings.BRIDGE_READ_TIMEOUT + settings.BRIDGE_READ_TIMEOUT_PER_10K * size / 10_000


def bars(session: BridgeSession, query: dict[str, Any]) -> RawJSON:
    count = query.get("count")
    if count is not None:
        size = abs(count)
    elif query.get("limit"):
        size = query["limit"]
    else:
        end = query.get("date_to") or time.time()
        size = min(int((end - query["date_from"]) / TIMEFRAME_SECONDS[query["timeframe"]]) + 1, 100_000)
    return call_reader(_terminal(session), "rates", query, timeout=_copy_timeout(size), raw=True, session=session.id)


def ticks(session: BridgeSession, symbol: str, query: dict[str, Any]) -> RawJSON:
    size = abs(query["count"]) if query.get("count") is not None else query.get("limit") or settings.BRIDGE_READ_MAX_TICKS
    return call_reader(_terminal(session), "ticks", {"symbol": symbol, **query}, timeout=_copy_timeout(size),
                       raw=True, session=session.id)


def history(session: BridgeSession, kind: str, query: dict[str, Any]) -> RawJSON:
    """``{orders|deals: [...], count, from, to}`` as the reader wrote it."""
    return call_reader(_terminal(session), "history", {"kind": kind, **query}, raw=True, session=session.id)


STATS_BALANCE_TRIES = 3  # account reads around the deals that must agree for a known start balance


def stats(session: BridgeSession, query: dict[str, Any]) -> dict[str, Any]:
    """GET /stats: the statistics of the session account's deals in [from, to] (see trading/reads/stats.py).

    Without a filter the curve is the balance and starts from the balance at ``from``: today's balance
    minus every deal since ``from``, so the deals are read up to now (a day past it), between two readings
    of the account that must show the same balance (else a deal came in between: read again; after
    STATS_BALANCE_TRIES the start is unknown and the curve starts from 0)."""
    terminal = _terminal(session)
    date_from, date_to = query["date_from"], query["date_to"]
    symbol, magic = query.get("symbol"), query.get("magic")
    filtered = symbol is not None or magic is not None
    args = {"kind": "deals", "date_from": date_from, "date_to": date_to, "symbol": symbol}
    balance_now = None
    if filtered:
        account_info = account(session)
        rows = call_reader(terminal, "history", args, session=session.id)["deals"]
    else:
        # Up to a day past now: a terminal whose clock runs ahead of this host's still shows every deal since.
        args["date_to"] = min(max(date_to, float(int(time.time()) + 86400)), float(MAX_TIME))
        for _ in range(STATS_BALANCE_TRIES):
            account_info = call_reader(terminal, "account", {}, session=session.id)
            rows = call_reader(terminal, "history", args, session=session.id)["deals"]
            again = call_reader(terminal, "account", {}, session=session.id)
            if again.get("balance") == account_info.get("balance"):
                balance_now = account_info.get("balance")
                break
            logger.info("stats of %s: the balance moved during the read, reading again", session.id)
    _own_account(session, account_info)
    digits = account_info.get("currency_digits")
    digits = 2 if digits is None else int(digits)  # a JPY account has 0
    computed = stats_from_rows(rows, date_from=date_from, date_to=date_to, symbol=symbol, magic=magic,
                               balance_now=balance_now, digits=digits)
    return {"from": date_from, "to": date_to, "symbol": symbol, "magic": magic,
            "currency": account_info.get("currency"), **computed}

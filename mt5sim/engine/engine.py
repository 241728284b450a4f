"""The simulated terminal + trade server behind mt5sim's server process (INTERNALS.md, "Engine API").

One Engine per terminal. Client processes attach (one session each) and all see the same
logged-in account; `call` answers the 32 MT5 functions with values in fields.json order,
`control` serves the test/demo control table. State lives in memory and is journaled to the
state dir, so a restarted terminal keeps the broker's accounts, orders, positions and history.
"""

from __future__ import annotations

import copy
import itertools
import threading
import time
from typing import Any

import numpy as np

from . import _const as C
from .config import account_from_config, build_symbol, load_config, parse_date, server_offset_seconds
from .feed import DAY_MS, RATES_DTYPE, TICKS_DTYPE, SymbolFeed, bar_open, bars_in_days, next_bar_open
from .fields import SYMBOL_INFO_FIELDS
from .groups import group_matches
from .journal import Journal
from .model import Deal, Order, Position
from .outcomes import IpcTimeoutAnswer, OutcomeFaults
from .trading import TradeServer, is_buy

ERR_NOT_FOUND = (-4, "Terminal: Not found")
ERR_CALL_FAILED = (-1, "Terminal: Call failed")
ERR_INVALID_PARAMS = (-2, "Terminal: Invalid params")
ERR_AUTH = (-6, "Terminal: Authorization failed")
ERR_NO_IPC = (-10004, "No IPC connection")
ERR_API_DISABLED = (-8, "Auto-Trading using Python API disabled in Terminal")

_SYMBOL_INDEX = {name: i for i, name in enumerate(SYMBOL_INFO_FIELDS)}
_TICK_SLEEP = 0.1


class EngineError(Exception):
    """A call failure: the client returns its failure value and last_error() gives (code, message)."""

    def __init__(self, err: tuple[int, str]):
        super().__init__(err)
        self.err = err


class Session:
    """One attached client process."""

    _ids = itertools.count(1)

    def __init__(self) -> None:
        self.id = next(Session._ids)
        self.initialized = False
        self.books: set[str] = set()


class TerminalView:
    """What a remote terminal brings to each of its calls at a broker (INTERNALS.md, "Broker and terminals").

    The broker's Engine holds accounts, orders, prices and rules; the terminal-local part of the
    state (which login it is logged in to, its Market Watch, its terminal properties and whether it
    considers itself connected to the trade server) belongs to the terminal and is swapped in for
    the length of one call."""

    __slots__ = ("login", "market_watch", "terminal", "connected")

    def __init__(self, login: int | None, market_watch: set[str], terminal: dict, connected: bool = True) -> None:
        self.login = login
        self.market_watch = market_watch
        self.terminal = terminal
        self.connected = connected


class Engine(OutcomeFaults, TradeServer):
    """Terminal state and trade server; see INTERNALS.md for the contract."""

    def __init__(self, config: dict | str | None = None, state_dir: str | None = None, seed: int = 0,
                 background: bool = True):
        self.cfg = load_config(config)
        self.seed = int(seed)
        server = self.cfg["server"]
        self.server_offset = server_offset_seconds(self.cfg)
        self.always_open = bool(server.get("always_open", False))
        self.history_start = parse_date(server.get("history_start", "2015-01-01"))
        self.terminal = dict(self.cfg["terminal"])
        self.symbols: dict[str, dict] = {}
        self.feeds: dict[str, SymbolFeed] = {}
        for entry in self.cfg["symbols"]:
            spec = build_symbol(entry, self.cfg.get("templates", {}))
            spec["tick_value_cfg"] = float(entry.get("trade_tick_value", 0.0) or 0.0)
            self.symbols[spec["name"]] = spec
            self.feeds[spec["name"]] = SymbolFeed(spec, self.seed, self.always_open, self.history_start,
                                                   self.server_offset)
        self._static_rows = {name: self._static_symbol_row(spec) for name, spec in self.symbols.items()}
        self._spec_originals = copy.deepcopy(self.symbols)
        self._lock = threading.RLock()
        self.clock_offset = 0.0
        self.clock_pinned: float | None = None
        self._conv_routes: dict = {}
        self._journal = Journal(state_dir) if state_dir else None
        self._reset_state()
        if self._journal is not None:
            self._replay(self._journal.read())
            self._journal.rewrite(self._snapshot())
        self._ensure_config_accounts()
        self._processed: dict[str, int] = {}
        now = self.now_ms()
        for name in self.symbols:
            self._processed[name] = now
        self._stop = threading.Event()
        self._thread = None
        if background:
            self._thread = threading.Thread(target=self._run_background, name="mt5sim-engine", daemon=True)
            self._thread.start()

    # ================================================================ state
    def _reset_state(self) -> None:
        self.accounts: dict[int, dict] = {}
        self.orders: dict[int, Order] = {}
        self.positions: dict[int, Position] = {}
        self.hist_orders: dict[int, Order] = {}
        self._orders_by_login: dict[int, dict[int, Order]] = {}
        self._pos_by_login: dict[int, dict[int, Position]] = {}
        self._hist_by_login: dict[int, list[Order]] = {}
        self._deals_by_login: dict[int, list[Deal]] = {}
        self._agg: dict[int, dict[str, list]] = {}
        self._watch_orders: dict[str, set[int]] = {}
        self._watch_pos: dict[str, set[int]] = {}
        self.closed_ids: set[int] = set()
        self.next_order = 100_000_000
        self.next_deal = 50_000_000
        self.request_id = 0
        self.current_login: int | None = None
        self.market_watch = {name for name, s in self.symbols.items() if s["select"]}
        self.connected = True
        self.fault_requote = 0
        self.fault_reject = [0, C.TRADE_RETCODE_REJECT]
        self._last_check_figures = None
        self._info_cache: dict[str, tuple] = {}
        self._reset_outcome_state()

    def _log(self, kind: str, payload: Any) -> None:
        if self._journal is not None:
            self._journal.append([kind, payload])

    def _account_dump(self, acct: dict) -> dict:
        return dict(acct)

    def _meta(self) -> dict:
        return {"current_login": self.current_login, "market_watch": sorted(self.market_watch),
                "request_id": self.request_id}

    def _log_meta(self) -> None:
        self._log("M", self._meta())

    def _replay(self, records) -> None:
        deals: list[Deal] = []
        for kind, payload in records:
            if kind == "A":
                self.accounts[int(payload["login"])] = payload
            elif kind == "O":
                o = Order.load(payload)
                self.orders[o.ticket] = o
            elif kind == "H":
                o = Order.load(payload)
                self.orders.pop(o.ticket, None)
                self.hist_orders[o.ticket] = o
            elif kind == "P":
                p = Position.load(payload)
                self.positions[p.ticket] = p
            elif kind == "X":
                self.positions.pop(payload[0], None)
            elif kind == "D":
                deals.append(Deal.load(payload))
            elif kind == "M":
                self.current_login = payload.get("current_login")
                self.market_watch = set(payload.get("market_watch", [])) & set(self.symbols)
                self.request_id = int(payload.get("request_id", 0))
            elif kind == "F":
                for name, state in payload.items():
                    if name in self.feeds:
                        self.feeds[name].load_overlays(state)
        # indexes
        for o in sorted(self.hist_orders.values(), key=lambda o: (o.time_done_msc, o.ticket)):
            self._hist_by_login.setdefault(o.login, []).append(o)
        for d in deals:
            self._deals_by_login.setdefault(d.login, []).append(d)
        for o in self.orders.values():
            self._orders_by_login.setdefault(o.login, {})[o.ticket] = o
            self._watch_orders.setdefault(o.symbol, set()).add(o.ticket)
        for p in self.positions.values():
            self._pos_by_login.setdefault(p.login, {})[p.ticket] = p
            self._agg_apply(p, 1.0)
            if p.sl or p.tp:
                self._watch_pos.setdefault(p.symbol, set()).add(p.ticket)
        open_ids = {p.identifier for p in self.positions.values()}
        self.closed_ids = {d.position_id for d in deals if d.position_id} - open_ids
        tickets = [*self.orders, *self.hist_orders, *self.positions]
        if tickets:
            self.next_order = max(self.next_order, max(tickets))
        if deals:
            self.next_deal = max(self.next_deal, max(d.ticket for d in deals))
        if self.current_login not in self.accounts:
            self.current_login = None

    def _snapshot(self):
        yield ["M", self._meta()]
        for acct in self.accounts.values():
            yield ["A", self._account_dump(acct)]
        for lst in self._hist_by_login.values():
            for o in lst:
                yield ["H", o.dump()]
        for lst in self._deals_by_login.values():
            for d in lst:
                yield ["D", d.dump()]
        for o in self.orders.values():
            yield ["O", o.dump()]
        for p in self.positions.values():
            yield ["P", p.dump()]
        overlays = {n: f.overlays_state() for n, f in self.feeds.items() if f.seg_start or f.injected}
        if overlays:
            yield ["F", overlays]

    # ================================================================ clock
    def now_ms(self) -> int:
        """Broker (trade-server) clock in milliseconds."""
        utc = self.clock_pinned if self.clock_pinned is not None else time.time() + self.clock_offset
        return int((utc + self.server_offset) * 1000)

    def _tick(self, name: str) -> tuple | None:
        feed = self.feeds.get(name)
        if feed is None:
            return None
        return feed.tick_at(self.now_ms())

    # ================================================================ accounts
    def _create_account(self, entry: dict) -> dict:
        server_name = self.cfg["server"].get("name", "MT5Sim-Demo")
        acct = account_from_config(entry, self.cfg.get("account_defaults", {}), server_name)
        if not acct["company"]:
            acct["company"] = self.cfg["server"].get("company", "")
        initial = acct.pop("initial_balance")
        self.accounts[acct["login"]] = acct
        if initial:
            now = self.now_ms()
            acct["balance"] = round(initial, acct["currency_digits"])
            deal = Deal(ticket=self._new_deal_ticket(), order=0, time=now // 1000, time_msc=now,
                        type=C.DEAL_TYPE_BALANCE, entry=C.DEAL_ENTRY_IN, profit=acct["balance"],
                        comment="Initial deposit", login=acct["login"])
            self._deal_add(deal)
        self._log("A", self._account_dump(acct))
        return acct

    def _ensure_config_accounts(self) -> None:
        for entry in self.cfg.get("accounts") or []:
            if int(entry["login"]) not in self.accounts:
                self._create_account(entry)
        if self._journal is not None:
            self._journal.flush()

    def _authenticate(self, login: int, password: str | None, server: str | None) -> dict:
        servers = self.cfg["server"].get("servers")
        if server is not None and servers and server not in servers:
            raise EngineError(ERR_AUTH)
        acct = self.accounts.get(login)
        if acct is None:
            if not self.cfg["server"].get("allow_unknown_logins", True):
                raise EngineError(ERR_AUTH)
            entry = {"login": login, "password": password}
            if server:
                entry["server"] = server
            return self._create_account(entry)
        if password is not None:
            if acct["password"] is None:
                acct["password"] = password
                self._log("A", self._account_dump(acct))
            elif acct["password"] != password:
                raise EngineError(ERR_AUTH)
        return acct

    def _switch_account(self, login: int) -> None:
        if self.current_login != login:
            self.current_login = login
            self._log_meta()

    def _account(self) -> dict:
        if self.current_login is None:
            raise EngineError(ERR_CALL_FAILED)
        return self.accounts[self.current_login]

    # ================================================================ Engine API
    def attach(self) -> Session:
        return Session()

    def detach(self, sess: Session) -> None:
        sess.initialized = False
        sess.books.clear()

    def call(self, sess: Session, method: str, kwargs: dict) -> tuple[str, Any]:
        fn = _METHODS.get(method)
        if fn is None:
            return ("err", (-7, "Terminal: Unsupported function"))
        with self._lock:
            try:
                if not sess.initialized and method != "initialize":
                    return ("err", ERR_NO_IPC)
                if self._deferred:
                    self._run_deferred()
                return ("ok", fn(self, sess, **kwargs))
            except EngineError as exc:
                return ("err", exc.err)
            except IpcTimeoutAnswer:
                return ("ipc_timeout", None)
            finally:
                if self._journal is not None:
                    self._journal.flush()

    def control(self, name: str, kwargs: dict) -> tuple[str, Any]:
        if name.startswith("ctl."):
            name = name[4:]
        fn = _CONTROLS.get(name)
        if fn is None:
            return ("err", (-2, f"unknown control {name!r}"))
        with self._lock:
            try:
                return ("ok", fn(self, **(kwargs or {})))
            except EngineError as exc:
                return ("err", exc.err)
            except (TypeError, ValueError, KeyError) as exc:
                return ("err", (-2, f"{name}: {exc}"))
            finally:
                if self._journal is not None:
                    self._journal.flush()

    # ================================================================ broker side (remote terminals)
    def _enter_view(self, view: TerminalView) -> tuple:
        saved = (self.current_login, self.market_watch, self.terminal, self.connected)
        self.current_login, self.market_watch = view.login, view.market_watch
        # connected: the terminal's own link to the trade server, and the server's (ctl.trade_server at the broker)
        self.terminal, self.connected = view.terminal, view.connected and self.connected
        return saved

    def _leave_view(self, saved: tuple) -> None:
        self.current_login, self.market_watch, self.terminal, self.connected = saved

    def call_as(self, view: TerminalView, sess: Session, method: str, kwargs: dict) -> tuple[str, Any]:
        """`call` on behalf of a remote terminal: its login, Market Watch and properties for this call."""
        with self._lock:
            saved = self._enter_view(view)
            try:
                return self.call(sess, method, kwargs)
            finally:
                self._leave_view(saved)

    def control_as(self, view: TerminalView, name: str, kwargs: dict) -> tuple[str, Any]:
        """`control` on behalf of a remote terminal (``reset(full=True)`` keeps its login, as locally)."""
        with self._lock:
            saved = self._enter_view(view)
            try:
                return self.control(name, kwargs)
            finally:
                view.login = self.current_login
                self._leave_view(saved)

    def authenticate_remote(self, login: int | None, password: str | None, server: str | None) -> tuple[int, bool]:
        """A terminal's login at this trade server: (login, created). ``login=None`` = the default login.

        Unlike a terminal's own saved password, a remote terminal must present the account's password
        (the terminal sends the one it saved); a wrong or missing one is ``(-6, ...)``."""
        with self._lock:
            if login is None:
                login = int(self.cfg["server"].get("default_login") or 0)
                if not login:
                    raise EngineError(ERR_AUTH)
            acct = self.accounts.get(int(login))
            if acct is not None and password is None and acct["password"] is not None:
                raise EngineError(ERR_AUTH)
            created = acct is None
            try:
                acct = self._authenticate(int(login), password, server)
            finally:
                if self._journal is not None:
                    self._journal.flush()
            return acct["login"], created

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            if self._journal is not None:
                self._journal.rewrite(self._snapshot())
                self._journal.close()
                self._journal = None

    # ================================================================ background events
    def _run_background(self) -> None:
        while not self._stop.wait(_TICK_SLEEP):
            with self._lock:
                try:
                    self._events()
                finally:
                    if self._journal is not None:
                        self._journal.flush()

    def _events(self) -> None:
        """Process the ticks since the last pass: pending triggers, SL/TP, expiry, stop-out; slow requests due."""
        self._run_deferred()
        now = self.now_ms()
        watched = {n for n, s in self._watch_orders.items() if s} | {n for n, s in self._watch_pos.items() if s}
        for aggs in self._agg.values():
            watched.update(aggs)
        for name in watched:
            last = self._processed.get(name, now)
            if now > last:
                frm = max(last + 1, now - 7 * DAY_MS)
                ticks = self.feeds[name].ticks_between(frm, now)
                if len(ticks):
                    self._process_symbol_ticks(name, ticks)
            self._processed[name] = max(now, last) if now >= last else now
        for name in self.symbols:
            if name not in watched:
                self._processed[name] = now
        self._expire_orders(now)
        for login in [lg for lg, aggs in self._agg.items() if aggs]:
            self._check_stop_out(login)

    # ================================================================ connection functions
    def _initialize(self, sess: Session, path=None, login=None, password=None, server=None, timeout=None,
                    portable=None):
        if login is not None:
            acct = self._authenticate(int(login), password, server)
            self._switch_account(acct["login"])
        elif self.current_login is None:
            default = int(self.cfg["server"].get("default_login") or 0)
            if default:
                acct = self._authenticate(default, None, None)
                self._switch_account(acct["login"])
        sess.initialized = True
        return True

    def _login(self, sess: Session, login=None, password=None, server=None, timeout=None):
        acct = self._authenticate(int(login), password, server)
        self._switch_account(acct["login"])
        return True

    def _shutdown(self, sess: Session):
        sess.initialized = False
        sess.books.clear()
        return True

    def _version(self, sess: Session):
        return [500, int(self.terminal.get("build", 5120)), str(self.terminal.get("build_date", "28 Jun 2025"))]

    # ================================================================ account / terminal
    def _account_info(self, sess: Session):
        acct = self._account()
        f = self._account_figures(acct["login"])
        return [acct["login"], acct["trade_mode"], acct["leverage"], acct["limit_orders"], acct["margin_so_mode"],
                acct["trade_allowed"], acct["trade_expert"], acct["margin_mode"], acct["currency_digits"],
                acct["fifo_close"], f["balance"], acct["credit"], f["profit"], f["equity"], f["margin"],
                f["margin_free"], f["margin_level"], acct["margin_so_call"], acct["margin_so_so"], 0.0, 0.0,
                0.0, 0.0, 0.0, acct["name"], acct["server"], acct["currency"], acct["company"]]

    def _terminal_info(self, sess: Session):
        t = self.terminal
        return [False, False, bool(self.connected), False, bool(t.get("trade_allowed", True)),
                bool(t.get("tradeapi_disabled", False)), False, False, False, False, int(t.get("build", 5120)),
                int(t.get("maxbars", 100000)), int(t.get("codepage", 0)),
                int(t.get("ping_last", 35000)) if self.connected else 0, 0.0, 0.0, str(t.get("company", "")),
                str(t.get("name", "")), str(t.get("language", "English")), str(t.get("path", "")),
                str(t.get("data_path", "")), str(t.get("commondata_path", ""))]

    # ================================================================ symbols
    @staticmethod
    def _static_symbol_row(spec: dict) -> list:
        return [spec.get(name, 0) for name in SYMBOL_INFO_FIELDS]

    def _symbol_row(self, name: str) -> list:
        spec = self.symbols[name]
        row = list(self._static_rows[name])
        I = _SYMBOL_INDEX  # noqa: E741
        selected = name in self.market_watch
        row[I["select"]] = selected
        row[I["visible"]] = selected
        now = self.now_ms()
        tick = self.feeds[name].tick_at(now)
        if tick is not None:
            bid, ask = tick[1], tick[2]
            row[I["time"]] = tick[0]
            row[I["bid"]], row[I["ask"]] = bid, ask
            row[I["spread"]] = int(round((ask - bid) / spec["point"]))
            row[I["last"]] = tick[3]
            day = self._day_stats(name, now, tick)
            if day is not None:
                row[I["bidhigh"]], row[I["bidlow"]] = day[0], day[1]
                row[I["askhigh"]], row[I["asklow"]] = day[2], day[3]
                row[I["session_open"]] = day[4]
                row[I["session_close"]] = day[5]
                row[I["price_change"]] = round((bid - day[5]) / day[5] * 100.0, 4) if day[5] else 0.0
                if spec["trade_ticks"]:
                    row[I["lasthigh"]], row[I["lastlow"]] = day[0], day[1]
        else:
            row[I["spread"]] = 0
        if self.current_login is not None:
            acct = self.accounts[self.current_login]
            tv = spec["trade_tick_size"] * self._profit_factor(spec) * self._conv(spec["currency_profit"],
                                                                                     acct["currency"])
            tv = round(tv, 8)
            row[I["trade_tick_value"]] = row[I["trade_tick_value_profit"]] = row[I["trade_tick_value_loss"]] = tv
        return row

    def _day_stats(self, name: str, now: int, tick: tuple) -> tuple | None:
        """(bidhigh, bidlow, askhigh, asklow, session_open, previous close) of the current day, cached per tick."""
        cached = self._info_cache.get(name)
        if cached is not None and cached[0] == tick[5]:
            return cached[1]
        feed = self.feeds[name]
        day = tick[5] // DAY_MS
        arr = feed.day_ticks(day)
        n = int(np.searchsorted(arr["t"], now, side="right"))
        if n == 0:
            stats = None
        else:
            prev = None
            for d in range(day - 1, day - 8, -1):
                s = feed.day_summary(d, now)
                if s is not None:
                    prev = s[4]
                    break
            stats = (float(arr["bid"][:n].max()), float(arr["bid"][:n].min()), float(arr["ask"][:n].max()),
                     float(arr["ask"][:n].min()), float(arr["bid"][0]), float(prev or arr["bid"][0]))
        self._info_cache[name] = (tick[5], stats)
        return stats

    def _symbols_total(self, sess: Session):
        return len(self.symbols)

    def _symbols_get(self, sess: Session, group=None):
        names = [n for n in self.symbols if group is None or group_matches(group, n)]
        return [self._symbol_row(n) for n in names]

    def _symbol_info(self, sess: Session, symbol=None):
        if symbol not in self.symbols:
            raise EngineError(ERR_NOT_FOUND)
        return self._symbol_row(symbol)

    def _symbol_info_tick(self, sess: Session, symbol=None):
        if symbol not in self.symbols or symbol not in self.market_watch:
            raise EngineError(ERR_NOT_FOUND)
        tick = self._tick(symbol)
        if tick is None:
            return [0, 0.0, 0.0, 0.0, 0, 0, 0, 0.0]
        return list(tick)

    def _symbol_select(self, sess: Session, symbol=None, enable=True):
        if symbol not in self.symbols:
            raise EngineError(ERR_NOT_FOUND)
        if enable:
            if symbol not in self.market_watch:
                self.market_watch.add(symbol)
                self._log_meta()
            return True
        if symbol in self.market_watch:
            busy = any(p.symbol == symbol for p in self.positions.values()) or any(
                o.symbol == symbol for o in self.orders.values())
            if busy:
                raise EngineError(ERR_CALL_FAILED)
            self.market_watch.discard(symbol)
            for s in (sess,):
                s.books.discard(symbol)
            self._log_meta()
        return True

    # ================================================================ market book
    def _market_book_add(self, sess: Session, symbol=None):
        if symbol not in self.symbols:
            raise EngineError(ERR_NOT_FOUND)
        if symbol not in self.market_watch:
            self.market_watch.add(symbol)
            self._log_meta()
        sess.books.add(symbol)
        return True

    def _market_book_release(self, sess: Session, symbol=None):
        if symbol not in self.symbols or symbol not in sess.books:
            raise EngineError(ERR_CALL_FAILED)
        sess.books.discard(symbol)
        return True

    def _market_book_get(self, sess: Session, symbol=None):
        if symbol not in self.symbols:
            raise EngineError(ERR_NOT_FOUND)
        if symbol not in sess.books:
            raise EngineError(ERR_CALL_FAILED)
        spec = self.symbols[symbol]
        tick = self._tick(symbol)
        depth = int(spec["ticks_bookdepth"] or 0)
        if tick is None or depth <= 0:
            return []
        bid, ask = tick[1], tick[2]
        step = spec["trade_tick_size"] * max(1, int(round(spec["spread_points"] / 4)))
        digits = spec["digits"]
        seed = (self.seed * 1_000_003 + tick[5]) & 0xFFFFFFFF
        rng = np.random.default_rng([seed, len(symbol), sum(map(ord, symbol))])
        vols = rng.integers(1, 50, size=2 * depth)
        if spec.get("book_volume", 0) > 0:   # the depth market orders fill against (trading._fillable)
            vols = np.full(2 * depth, spec["book_volume"])
        rows = []
        for i in range(depth - 1, -1, -1):
            v = int(vols[i])
            rows.append([C.BOOK_TYPE_SELL, round(ask + i * step, digits), v, float(v)])
        for i in range(depth):
            v = int(vols[depth + i])
            rows.append([C.BOOK_TYPE_BUY, round(bid - i * step, digits), v, float(v)])
        return rows

    # ================================================================ rates and ticks
    def _maxbars(self) -> int:
        return int(self.terminal.get("maxbars", 100000))

    def _rates_feed(self, symbol: str, timeframe: int) -> SymbolFeed:
        if symbol not in self.symbols:
            raise EngineError(ERR_CALL_FAILED)
        if timeframe not in C.TIMEFRAMES_SECONDS:
            raise EngineError(ERR_INVALID_PARAMS)
        return self.feeds[symbol]

    def _oldest_allowed(self, timeframe: int, now_s: int) -> int:
        """Open time of the oldest bar the terminal keeps (maxbars back from the current bar)."""
        span = self._maxbars() * C.TIMEFRAMES_SECONDS[timeframe]
        return max(self.history_start, now_s - span)

    def _bars_back(self, feed: SymbolFeed, tf: int, end_s: int, count: int, now_ms: int) -> np.ndarray:
        """Up to `count` bars with open time <= end_s, oldest first.

        The terminal keeps maxbars *bars*: until the current bar's first tick arrives the newest bar
        is the previous one, so the time floor gets one bar of slack (count is capped by maxbars)."""
        floor_s = self._oldest_allowed(tf, now_ms // 1000) - C.TIMEFRAMES_SECONDS[tf]
        end_day = min(end_s, now_ms // 1000) // 86400
        if tf == C.TIMEFRAME_W1:
            end_day = int(bar_open(tf, np.array([end_s]))[0]) // 86400 + 6
        elif tf == C.TIMEFRAME_MN1:
            end_day = (next_bar_open(tf, int(bar_open(tf, np.array([end_s]))[0])) - 1) // 86400
        end_day = min(end_day, now_ms // DAY_MS)
        secs = C.TIMEFRAMES_SECONDS[tf]
        span_days = max(1, int(count * secs / 86400 * 1.5) + 1)
        parts: list[np.ndarray] = []
        got = 0
        hi = end_day
        while got < count and hi >= floor_s // 86400 - 31:
            lo = hi - span_days + 1
            if tf == C.TIMEFRAME_W1:
                lo = int(bar_open(tf, np.array([lo * 86400]))[0]) // 86400
            elif tf == C.TIMEFRAME_MN1:
                lo = int(bar_open(tf, np.array([lo * 86400]))[0]) // 86400
            bars = bars_in_days(feed, tf, lo, hi, now_ms)
            bars = bars[bars["time"] <= end_s]
            parts.insert(0, bars)
            got += len(bars)
            hi = lo - 1
            span_days = min(span_days * 2, 3660)
        out = np.concatenate(parts) if parts else np.zeros(0, dtype=RATES_DTYPE)
        out = out[out["time"] >= floor_s - (floor_s % 86400 if tf >= C.TIMEFRAME_D1 else 0)]
        return out[-count:] if count < len(out) else out

    def _copy_rates_from(self, sess: Session, symbol=None, timeframe=None, date_from=None, count=None):
        feed = self._rates_feed(symbol, timeframe)
        if count is None or count <= 0:
            raise EngineError(ERR_INVALID_PARAMS)
        if count > self._maxbars():
            raise EngineError(ERR_CALL_FAILED)
        now = self.now_ms()
        if date_from < self._oldest_allowed(timeframe, now // 1000):
            raise EngineError(ERR_CALL_FAILED)
        return self._bars_back(feed, timeframe, int(date_from), int(count), now).copy()

    def _copy_rates_from_pos(self, sess: Session, symbol=None, timeframe=None, start_pos=None, count=None):
        feed = self._rates_feed(symbol, timeframe)
        if count is None or count <= 0 or start_pos is None or start_pos < 0:
            raise EngineError(ERR_INVALID_PARAMS)
        if start_pos + count > self._maxbars():
            raise EngineError(ERR_CALL_FAILED)
        now = self.now_ms()
        bars = self._bars_back(feed, timeframe, now // 1000, int(start_pos + count), now)
        if start_pos >= len(bars):
            raise EngineError(ERR_CALL_FAILED)
        end = len(bars) - start_pos
        return bars[max(0, end - count):end].copy()

    def _copy_rates_range(self, sess: Session, symbol=None, timeframe=None, date_from=None, date_to=None):
        feed = self._rates_feed(symbol, timeframe)
        now = self.now_ms()
        floor_s = self._oldest_allowed(timeframe, now // 1000)
        if date_to < floor_s:
            raise EngineError(ERR_CALL_FAILED)
        date_from = max(int(date_from), floor_s - floor_s % 86400)
        if date_from > date_to:
            return np.zeros(0, dtype=RATES_DTYPE)
        first_open = int(bar_open(timeframe, np.array([date_from]))[0])
        last_open = int(bar_open(timeframe, np.array([min(int(date_to), now // 1000)]))[0])
        day_from = first_open // 86400
        day_to = min((next_bar_open(timeframe, last_open) - 1) // 86400, now // DAY_MS)
        if day_to - day_from > 400 * 365:
            raise EngineError(ERR_CALL_FAILED)
        bars = bars_in_days(feed, timeframe, day_from, day_to, now)
        bars = bars[(bars["time"] >= date_from) & (bars["time"] <= date_to)]
        if len(bars) > self._maxbars():
            raise EngineError(ERR_CALL_FAILED)
        return bars.copy()

    @staticmethod
    def _filter_ticks(ticks: np.ndarray, flags: int) -> np.ndarray:
        if flags == C.COPY_TICKS_INFO:
            return ticks[(ticks["flags"] & (C.TICK_FLAG_BID | C.TICK_FLAG_ASK)) != 0]
        if flags == C.COPY_TICKS_TRADE:
            return ticks[(ticks["flags"] & (C.TICK_FLAG_LAST | C.TICK_FLAG_VOLUME)) != 0]
        return ticks

    def _ticks_feed(self, symbol: str, flags: int) -> SymbolFeed:
        if symbol not in self.symbols:
            raise EngineError(ERR_NOT_FOUND)
        if flags not in (C.COPY_TICKS_ALL, C.COPY_TICKS_INFO, C.COPY_TICKS_TRADE):
            raise EngineError(ERR_INVALID_PARAMS)
        return self.feeds[symbol]

    def _copy_ticks_from(self, sess: Session, symbol=None, date_from=None, count=None, flags=None):
        feed = self._ticks_feed(symbol, flags)
        if count is None or count <= 0:
            raise EngineError(ERR_INVALID_PARAMS)
        now = self.now_ms()
        frm = int(date_from) * 1000
        if flags == C.COPY_TICKS_ALL:
            return feed.ticks_between(frm, now, limit=int(count))
        if flags == C.COPY_TICKS_TRADE and not feed.trade_ticks and feed.csv is None:
            # only injected ticks with a Last price can be trade ticks here
            frm = max(frm, min((x[0] for x in feed.injected if x[3] > 0), default=now + 1))
        out = []
        got = 0
        start = frm
        while got < count and start <= now:
            end = min(now, start + DAY_MS - 1)
            part = self._filter_ticks(feed.ticks_between(start, end), flags)
            out.append(part)
            got += len(part)
            start = end + 1
            if start > now:
                break
        res = np.concatenate(out) if out else np.zeros(0, dtype=TICKS_DTYPE)
        return res[:count]

    def _copy_ticks_range(self, sess: Session, symbol=None, date_from=None, date_to=None, flags=None):
        feed = self._ticks_feed(symbol, flags)
        now = self.now_ms()
        frm = int(date_from) * 1000
        to = min(now, int(date_to) * 1000 + 999)
        if to < frm:
            return np.zeros(0, dtype=TICKS_DTYPE)
        return self._filter_ticks(feed.ticks_between(frm, to), flags)

    # ================================================================ orders / positions
    def _order_row(self, o: Order) -> list:
        if o.state == C.ORDER_STATE_PLACED:
            tick = self._tick(o.symbol)
            if tick is not None:
                o.price_current = tick[2] if is_buy(o.type) else tick[1]
        return o.row()

    def _position_row(self, p: Position) -> list:
        cur, profit = self._position_profit(p, self._tick(p.symbol))
        p.price_current, p.profit = cur, profit
        return p.row()

    @staticmethod
    def _select(items, symbol, group, ticket, ticket_attr="ticket"):
        if symbol is not None:
            return [x for x in items if x.symbol == symbol]
        if group is not None:
            return [x for x in items if group_matches(group, x.symbol)]
        if ticket is not None:
            return [x for x in items if getattr(x, ticket_attr) == ticket]
        return list(items)

    def _orders_total(self, sess: Session):
        self._account()
        return len(self._orders_by_login.get(self.current_login, {})) + len(self._inflight_orders(self.current_login))

    def _orders_get(self, sess: Session, symbol=None, group=None, ticket=None):
        self._account()
        items = [*self._orders_by_login.get(self.current_login, {}).values(), *self._inflight_orders(self.current_login)]
        items.sort(key=lambda o: o.ticket)
        return [self._order_row(o) for o in self._select(items, symbol, group, ticket)]

    def _positions_total(self, sess: Session):
        self._account()
        return len(self._pos_by_login.get(self.current_login, {}))

    def _positions_get(self, sess: Session, symbol=None, group=None, ticket=None):
        self._account()
        items = sorted(self._pos_by_login.get(self.current_login, {}).values(), key=lambda p: p.time_msc)
        return [self._position_row(p) for p in self._select(items, symbol, group, ticket)]

    # ================================================================ history
    def _hist_orders(self, date_from, date_to) -> list[Order]:
        lo, hi = int(date_from), int(date_to)
        items = [o for o in self._hist_by_login.get(self.current_login, []) if lo <= o.time_done <= hi]
        return self._visible_history(items, "o")

    def _hist_deals(self, date_from, date_to) -> list[Deal]:
        lo, hi = int(date_from), int(date_to)
        items = [d for d in self._deals_by_login.get(self.current_login, []) if lo <= d.time <= hi]
        return self._visible_history(items, "d")

    def _history_orders_total(self, sess: Session, date_from=None, date_to=None):
        self._account()
        return len(self._hist_orders(date_from, date_to))

    def _history_deals_total(self, sess: Session, date_from=None, date_to=None):
        self._account()
        return len(self._hist_deals(date_from, date_to))

    def _history_orders_get(self, sess: Session, date_from=None, date_to=None, group=None, ticket=None,
                            position=None):
        self._account()
        items = self._hist_by_login.get(self.current_login, [])
        if ticket is not None:
            sel = self._visible_history([o for o in items if o.ticket == ticket], "o")
        elif position is not None:
            sel = self._visible_history([o for o in items if o.position_id == position], "o")
        else:
            if date_from is None or date_to is None:
                raise EngineError(ERR_INVALID_PARAMS)
            sel = self._hist_orders(date_from, date_to)
            if group is not None:
                sel = [o for o in sel if group_matches(group, o.symbol)]
        return [o.row() for o in sel]

    def _history_deals_get(self, sess: Session, date_from=None, date_to=None, group=None, ticket=None,
                           position=None):
        self._account()
        items = self._deals_by_login.get(self.current_login, [])
        if ticket is not None:
            sel = self._visible_history([d for d in items if d.order == ticket], "d")
        elif position is not None:
            sel = self._visible_history([d for d in items if d.position_id == position], "d")
        else:
            if date_from is None or date_to is None:
                raise EngineError(ERR_INVALID_PARAMS)
            sel = self._hist_deals(date_from, date_to)
            if group is not None:
                sel = [d for d in sel if group_matches(group, d.symbol)]
        return [d.row() for d in sel]

    # ================================================================ calc / trade
    def _order_calc_margin(self, sess: Session, action=None, symbol=None, volume=None, price=None):
        self._account()
        if symbol not in self.symbols:
            raise EngineError(ERR_NOT_FOUND)
        if action not in range(0, 8) or volume is None or volume <= 0 or price is None or price < 0:
            raise EngineError(ERR_INVALID_PARAMS)
        return self.calc_margin(action, symbol, volume, price)

    def _order_calc_profit(self, sess: Session, action=None, symbol=None, volume=None, price_open=None,
                           price_close=None):
        self._account()
        if symbol not in self.symbols:
            raise EngineError(ERR_NOT_FOUND)
        if action not in (C.ORDER_TYPE_BUY, C.ORDER_TYPE_SELL) or volume is None or volume <= 0:
            raise EngineError(ERR_INVALID_PARAMS)
        return self.calc_profit(action, symbol, volume, price_open, price_close)

    def _order_check(self, sess: Session, request=None):
        self._account()
        self._last_check_figures = None
        return self.order_check(dict(request or {}))

    def _order_send(self, sess: Session, request=None):
        self._account()
        if self.terminal.get("tradeapi_disabled"):
            raise EngineError(ERR_API_DISABLED)
        self._last_check_figures = None
        req = dict(request or {})
        result = self._outcome_fault_send(req)
        if result is None:
            result = self.order_send(req)
        self._last_check_figures = None
        return result

    def _after_trade(self, login: int) -> None:
        name_set = self._agg.get(login, {})
        for name in name_set:
            self._processed.setdefault(name, self.now_ms())

    # ================================================================ control
    def _ctl_set_price(self, symbol=None, bid=None, ask=None, last=None):
        if symbol not in self.symbols:
            raise EngineError(ERR_NOT_FOUND)
        if bid is None or ask is None or float(ask) < float(bid):
            raise EngineError(ERR_INVALID_PARAMS)
        self._events()
        now = self.now_ms()
        feed = self.feeds[symbol]
        tick = feed.set_price(now, float(bid), float(ask), last)
        self._log("F", {symbol: feed.overlays_state()})
        arr = np.zeros(1, dtype=TICKS_DTYPE)
        arr["time_msc"], arr["bid"], arr["ask"] = now, tick[1], tick[2]
        self._process_symbol_ticks(symbol, arr)
        self._processed[symbol] = now
        self._expire_orders(now)
        for login in [lg for lg, aggs in self._agg.items() if aggs]:
            self._check_stop_out(login)
        return list(tick)

    def _ctl_freeze_feed(self, symbol=None, frozen=True):
        if symbol is not None and symbol not in self.symbols:
            raise EngineError(ERR_NOT_FOUND)
        self._events()
        now = self.now_ms()
        names = [symbol] if symbol is not None else list(self.symbols)
        for name in names:
            self.feeds[name].freeze(now, bool(frozen))
        self._log("F", {n: self.feeds[n].overlays_state() for n in names})
        return True

    def _ctl_trade_server(self, connected=True):
        self.connected = bool(connected)
        return self.connected

    def _ctl_requote(self, count=1):
        self.fault_requote = max(0, int(count))
        return self.fault_requote

    def _ctl_reject(self, count=1, retcode=C.TRADE_RETCODE_REJECT):
        self.fault_reject = [max(0, int(count)), int(retcode)]
        return self.fault_reject[0]

    def _ctl_set_clock(self, offset_seconds=None, at=None, running=False):
        self._events()
        if at is not None:
            if running:
                self.clock_pinned = None
                self.clock_offset = float(at) - time.time()
            else:
                self.clock_pinned = float(at)
        else:
            self.clock_pinned = None
            self.clock_offset = float(offset_seconds or 0.0)
        now = self.now_ms()
        for name in self.symbols:
            if self._processed.get(name, 0) > now:
                self._processed[name] = now
        for feed in self.feeds.values():
            feed._live = (0, -1, None)
        self._info_cache.clear()
        self._events()
        return now // 1000

    def _ctl_reset(self, full=False):
        """Prices, faults, clock, connection, terminal and symbol properties back to the configuration;
        `full` also clears accounts, orders, positions and history (the logged-in login is recreated)."""
        for feed in self.feeds.values():
            feed.reset_overlays()
        self.fault_requote = 0
        self.fault_reject = [0, C.TRADE_RETCODE_REJECT]
        self._reset_outcome_faults()
        self.connected = True
        self.clock_pinned = None
        self.clock_offset = 0.0
        self.terminal = dict(self.cfg["terminal"])
        for name, original in self._spec_originals.items():
            self.symbols[name].clear()
            self.symbols[name].update(copy.deepcopy(original))
            self._static_rows[name] = self._static_symbol_row(self.symbols[name])
        self._info_cache.clear()
        if full:
            login = self.current_login
            password = self.accounts[login]["password"] if login in self.accounts else None
            self._reset_state()
            if self._journal is not None:
                self._journal.rewrite([])
            self._ensure_config_accounts()
            if login is not None and (login in self.accounts or self.cfg["server"].get("allow_unknown_logins", True)):
                acct = self._authenticate(login, password, None)
                self.current_login = acct["login"]
            self._log_meta()
        now = self.now_ms()
        for name in self.symbols:
            self._processed[name] = now
        self._log("F", {n: f.overlays_state() for n, f in self.feeds.items()})
        return True

    def _ctl_state(self):
        accounts = {}
        for login, acct in self.accounts.items():
            f = self._account_figures(login)
            accounts[str(login)] = {
                "server": acct["server"], "currency": acct["currency"], "margin_mode": acct["margin_mode"],
                "leverage": acct["leverage"], **f,
                "positions": len(self._pos_by_login.get(login, {})),
                "orders": len(self._orders_by_login.get(login, {})),
                "deals": len(self._deals_by_login.get(login, [])),
                "history_orders": len(self._hist_by_login.get(login, [])),
            }
        return {
            "login": self.current_login, "connected": self.connected, "time": self.now_ms() // 1000,
            "clock_pinned": self.clock_pinned, "clock_offset": self.clock_offset,
            "server_offset": self.server_offset, "always_open": self.always_open,
            "accounts": accounts, "orders": len(self.orders), "positions": len(self.positions),
            "deals": sum(len(v) for v in self._deals_by_login.values()),
            "history_orders": len(self.hist_orders), "request_id": self.request_id,
            "faults": {"requote": self.fault_requote, "reject": list(self.fault_reject), **self._outcome_state()},
            "frozen": sorted(n for n, f in self.feeds.items() if f.is_frozen(self.now_ms())),
        }

    def _ctl_set_terminal(self, **props):
        """Change terminal properties at run time (trade_allowed, tradeapi_disabled, maxbars...)."""
        for key, value in props.items():
            if key not in self.terminal:
                raise EngineError(ERR_INVALID_PARAMS)
            self.terminal[key] = value
        return dict(self.terminal)

    def _ctl_set_symbol(self, symbol=None, **props):
        """Change symbol properties at run time (trade_mode, stops level, sessions...) for tests."""
        if symbol not in self.symbols:
            raise EngineError(ERR_NOT_FOUND)
        spec = self.symbols[symbol]
        for key, value in props.items():
            if key not in spec:
                raise EngineError(ERR_INVALID_PARAMS)
            spec[key] = value
        self._static_rows[symbol] = self._static_symbol_row(spec)
        return True

    def _ctl_set_account(self, login=None, **props):
        """Change account properties (balance, leverage, trade_allowed, margin_so_so...) for tests."""
        login = self.current_login if login is None else int(login)
        if login not in self.accounts:
            raise EngineError(ERR_NOT_FOUND)
        acct = self.accounts[login]
        for key, value in props.items():
            if key not in acct or key == "login":
                raise EngineError(ERR_INVALID_PARAMS)
            acct[key] = type(acct[key])(value) if acct[key] is not None else value
        self._log("A", self._account_dump(acct))
        return True


_METHODS = {
    "initialize": Engine._initialize,
    "login": Engine._login,
    "shutdown": Engine._shutdown,
    "version": Engine._version,
    "account_info": Engine._account_info,
    "terminal_info": Engine._terminal_info,
    "symbols_total": Engine._symbols_total,
    "symbols_get": Engine._symbols_get,
    "symbol_info": Engine._symbol_info,
    "symbol_info_tick": Engine._symbol_info_tick,
    "symbol_select": Engine._symbol_select,
    "market_book_add": Engine._market_book_add,
    "market_book_get": Engine._market_book_get,
    "market_book_release": Engine._market_book_release,
    "copy_rates_from": Engine._copy_rates_from,
    "copy_rates_from_pos": Engine._copy_rates_from_pos,
    "copy_rates_range": Engine._copy_rates_range,
    "copy_ticks_from": Engine._copy_ticks_from,
    "copy_ticks_range": Engine._copy_ticks_range,
    "orders_total": Engine._orders_total,
    "orders_get": Engine._orders_get,
    "positions_total": Engine._positions_total,
    "positions_get": Engine._positions_get,
    "history_orders_total": Engine._history_orders_total,
    "history_orders_get": Engine._history_orders_get,
    "history_deals_total": Engine._history_deals_total,
    "history_deals_get": Engine._history_deals_get,
    "order_calc_margin": Engine._order_calc_margin,
    "order_calc_profit": Engine._order_calc_profit,
    "order_check": Engine._order_check,
    "order_send": Engine._order_send,
}

_CONTROLS = {
    "set_price": Engine._ctl_set_price,
    "freeze_feed": Engine._ctl_freeze_feed,
    "trade_server": Engine._ctl_trade_server,
    "requote": Engine._ctl_requote,
    "reject": Engine._ctl_reject,
    "set_clock": Engine._ctl_set_clock,
    "reset": Engine._ctl_reset,
    "state": Engine._ctl_state,
    "set_terminal": Engine._ctl_set_terminal,
    "set_symbol": Engine._ctl_set_symbol,
    "set_account": Engine._ctl_set_account,
    "comment_fault": Engine._ctl_comment_fault,
    "history_delay": Engine._ctl_history_delay,
    "retcode_fault": Engine._ctl_retcode_fault,
    "slow_execution": Engine._ctl_slow_execution,
    "switch_account": Engine._ctl_switch_account,
}

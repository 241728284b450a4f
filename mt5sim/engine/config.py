"""Configuration: the default demo broker (mt5sim/default_config.yaml) merged with a user config.

A user config is a dict or a YAML file path. Mappings merge key by key; `symbols:` entries merge
by name onto the default symbols (set `symbols_replace: true` to use only the given ones);
`accounts:` is taken as given.
"""

from __future__ import annotations

import calendar
import copy
import datetime as _dt
import os
from typing import Any

import yaml

from . import _const as C
from .fields import SYMBOL_INFO_FIELDS

DEFAULT_CONFIG_PATH = os.path.join(os.path.dirname(os.path.dirname(__file__)), "default_config.yaml")

# Session presets, in broker time: weekday (0=Monday) -> list of (start_minute, end_minute).
_FULL_DAY = [(0, 1440)]
SESSION_PRESETS: dict[str, dict[int, list[tuple[int, int]]]] = {
    "forex": {0: _FULL_DAY, 1: _FULL_DAY, 2: _FULL_DAY, 3: _FULL_DAY, 4: [(0, 1435)]},
    "metal": {d: [(60, 1438)] for d in range(5)},
    "index": {d: [(60, 1435)] for d in range(5)},
    "crypto": {d: _FULL_DAY for d in range(7)},
    "stocks": {d: [(990, 1380)] for d in range(5)},      # NYSE/Nasdaq 09:30-16:00 New York at UTC+2
    "always": {d: _FULL_DAY for d in range(7)},
}
_DAY_NAMES = {"mon": 0, "tue": 1, "wed": 2, "thu": 3, "fri": 4, "sat": 5, "sun": 6}

# Internal symbol parameters that are not SymbolInfo fields.
SYMBOL_EXTRA_DEFAULTS: dict[str, Any] = {
    "base_price": 1.0,
    "volatility": 0.005,
    "spread_points": 10,
    "ticks_per_minute": 12,
    "sessions": "forex",
    "margin_rate": 1.0,
    "trade_ticks": False,      # generate Last/Volume (trade) ticks as well as Bid/Ask
    "no_prices": False,        # a symbol without quotes (order_send -> 10021)
    "history_csv": None,       # replay ticks or bars from this CSV inside its time span
    "path_prefix": "",
    "execution": None,         # instant | market (None: the broker's server.execution)
    "market_return": None,     # RETURN accepted for market orders in market execution (None: from the profile)
    "commission": None,        # {per_lot, per_deal, charge: entry|exit|both} (None: the broker's server.commission)
    "book_volume": 0.0,        # lots on each market-book level; > 0: market orders fill against that depth
}

EXECUTION_PROFILES = ("instant", "market")
COMMISSION_CHARGES = ("entry", "exit", "both")
# terminal.maxbars for "Unlimited" (the terminal reports a number; INT_MAX is what mt5sim reports).
MAXBARS_UNLIMITED = 2_147_483_647

# SymbolInfo defaults (every one of the 96 fields has one).
SYMBOL_INFO_DEFAULTS: dict[str, Any] = {name: 0 for name in SYMBOL_INFO_FIELDS}
SYMBOL_INFO_DEFAULTS.update({
    "custom": False, "select": True, "visible": True, "spread_float": True, "margin_hedged_use_leg": False,
    "trade_mode": C.SYMBOL_TRADE_MODE_FULL, "trade_exemode": C.SYMBOL_TRADE_EXECUTION_MARKET,
    "digits": 5, "ticks_bookdepth": 10, "filling_mode": 3, "order_mode": 127, "expiration_mode": 15,
    "swap_rollover3days": 3, "swap_mode": 1,
})
for _name in SYMBOL_INFO_FIELDS[31:83]:
    SYMBOL_INFO_DEFAULTS[_name] = 0.0
SYMBOL_INFO_DEFAULTS.update({"trade_contract_size": 100000.0, "volume_min": 0.01, "volume_max": 500.0,
                             "volume_step": 0.01})
for _name in SYMBOL_INFO_FIELDS[83:]:
    SYMBOL_INFO_DEFAULTS[_name] = ""


def _deep_merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_default_cache: dict | None = None


def default_config() -> dict:
    """The parsed default configuration (a fresh copy)."""
    global _default_cache
    if _default_cache is None:
        with open(DEFAULT_CONFIG_PATH, encoding="utf-8") as f:
            _default_cache = yaml.load(f, Loader=_Loader)  # a safe loader
    return copy.deepcopy(_default_cache)


def load_config(config: dict | str | None) -> dict:
    """The full configuration: defaults + the user's dict or YAML file."""
    base = default_config()
    if config is None:
        user: dict = {}
    elif isinstance(config, str | os.PathLike):
        with open(config, encoding="utf-8") as f:
            user = yaml.load(f, Loader=_Loader) or {}  # a safe loader
    else:
        user = copy.deepcopy(config)
    user_symbols = user.pop("symbols", None)
    replace = bool(user.pop("symbols_replace", False))
    merged = _deep_merge(base, user)
    terminal = merged.setdefault("terminal", {})
    if terminal.get("maxbars") in (None, 0, "0", "unlimited", "Unlimited"):
        terminal["maxbars"] = MAXBARS_UNLIMITED
    if user_symbols is not None:
        if replace:
            merged["symbols"] = list(user_symbols)
        else:
            by_name = {s["name"]: dict(s) for s in base["symbols"]}
            order = [s["name"] for s in base["symbols"]]
            for s in user_symbols:
                if s["name"] in by_name:
                    by_name[s["name"]].update(s)
                else:
                    by_name[s["name"]] = dict(s)
                    order.append(s["name"])
            merged["symbols"] = [by_name[n] for n in order]
    server = merged.get("server") or {}
    execution = server.get("execution") or "instant"
    if execution not in EXECUTION_PROFILES:
        raise ValueError(f"server.execution must be one of {EXECUTION_PROFILES}, not {execution!r}")
    for entry in merged["symbols"]:
        entry["broker_execution"] = execution
        entry["broker_commission"] = server.get("commission")
    return merged


def server_offset_seconds(cfg: dict) -> int:
    server = cfg.get("server", {})
    if server.get("offset_seconds") is not None:
        return int(server["offset_seconds"])
    return int(round(float(server.get("offset_hours", 0) or 0) * 3600))


def parse_date(value: Any) -> int:
    """A date/datetime/str/int config value as epoch seconds (broker clock)."""
    if isinstance(value, int | float):
        return int(value)
    if isinstance(value, _dt.datetime):
        return calendar.timegm(value.timetuple())
    if isinstance(value, _dt.date):
        return calendar.timegm(value.timetuple())
    return calendar.timegm(_dt.datetime.fromisoformat(str(value)).timetuple())


def parse_sessions(spec: Any) -> dict[int, list[tuple[int, int]]]:
    """Sessions as {weekday: [(start_min, end_min)]}; a preset name or {"mon": ["00:00-24:00"], ...}."""
    if isinstance(spec, str):
        if spec not in SESSION_PRESETS:
            raise ValueError(f"unknown sessions preset {spec!r}")
        return SESSION_PRESETS[spec]
    out: dict[int, list[tuple[int, int]]] = {}
    for day, ranges in (spec or {}).items():
        d = _DAY_NAMES[str(day).lower()[:3]] if not isinstance(day, int) else day
        if isinstance(ranges, str):
            ranges = [ranges]
        for r in ranges:
            a, b = r.split("-")
            out.setdefault(d, []).append((_minutes(a), _minutes(b)))
    return out


def _minutes(hhmm: str) -> int:
    h, m = hhmm.strip().split(":")
    return int(h) * 60 + int(m)


def build_symbol(entry: dict, templates: dict) -> dict:
    """A complete symbol spec: all 96 SymbolInfo properties plus the engine's own parameters."""
    spec: dict[str, Any] = dict(SYMBOL_INFO_DEFAULTS)
    spec.update(SYMBOL_EXTRA_DEFAULTS)
    template = entry.get("template")
    tpl = templates[template] if template else {}
    spec.update(tpl)
    spec.update(entry)
    name = spec["name"]
    _apply_execution_profile(spec, explicit_exemode="trade_exemode" in entry or "trade_exemode" in tpl)
    spec["commission"] = _commission_spec(spec.get("commission") or spec.get("broker_commission"), name)
    if not spec.get("currency_base"):
        spec["currency_base"] = name[:3]
    if not spec.get("currency_profit"):
        spec["currency_profit"] = name[3:6] if len(name) >= 6 else "USD"
    if not spec.get("currency_margin"):
        spec["currency_margin"] = spec["currency_base"]
    digits = int(spec["digits"])
    spec["digits"] = digits
    if not spec.get("point"):
        spec["point"] = round(10.0 ** -digits, digits)
    if not spec.get("trade_tick_size"):
        spec["trade_tick_size"] = spec["point"]
    if not spec.get("margin_hedged"):
        spec["margin_hedged"] = float(spec["trade_contract_size"])
    if not spec.get("path"):
        prefix = spec.get("path_prefix") or ""
        spec["path"] = f"{prefix}\\{name}" if prefix else name
    if not spec.get("description"):
        spec["description"] = name
    spec["visible"] = bool(spec.get("select", True))
    spec["select"] = spec["visible"]
    if not spec.get("ticks_bookdepth"):
        spec["ticks_bookdepth"] = 0
    if spec["trade_calc_mode"] in (C.SYMBOL_CALC_MODE_FUTURES, C.SYMBOL_CALC_MODE_EXCH_FUTURES,
                                   C.SYMBOL_CALC_MODE_EXCH_STOCKS) and "trade_ticks" not in entry:
        spec["trade_ticks"] = True
    if spec["trade_ticks"]:
        spec["chart_mode"] = 1 if "chart_mode" not in entry else spec["chart_mode"]
    for key in ("trade_contract_size", "volume_min", "volume_max", "volume_step", "volume_limit", "base_price",
                "margin_initial", "margin_maintenance", "margin_hedged", "swap_long", "swap_short", "point",
                "trade_tick_size", "margin_rate"):
        spec[key] = float(spec[key])
    spec["session_table"] = parse_sessions(spec["sessions"])
    return spec


def _apply_execution_profile(spec: dict, explicit_exemode: bool) -> None:
    """instant: instant execution unless the symbol sets trade_exemode, RETURN accepted for market orders;
    market (ECN): market execution unless set, FOK/IOC only for market orders (RETURN -> 10030)."""
    profile = spec.get("execution") or spec.get("broker_execution") or "instant"
    if profile not in EXECUTION_PROFILES:
        raise ValueError(f"{spec['name']}: execution must be one of {EXECUTION_PROFILES}, not {profile!r}")
    spec["execution"] = profile
    if not explicit_exemode:
        spec["trade_exemode"] = (C.SYMBOL_TRADE_EXECUTION_INSTANT if profile == "instant"
                                 else C.SYMBOL_TRADE_EXECUTION_MARKET)
    if spec.get("market_return") is None:
        spec["market_return"] = profile == "instant"
    spec["market_return"] = bool(spec["market_return"])
    spec["book_volume"] = float(spec.get("book_volume") or 0.0)


def _commission_spec(value: Any, name: str) -> dict:
    """{per_lot, per_deal, charge} with floats; money in the account currency, charged per deal."""
    value = dict(value or {})
    out = {"per_lot": float(value.get("per_lot") or 0.0), "per_deal": float(value.get("per_deal") or 0.0),
           "charge": str(value.get("charge") or "both")}
    if out["charge"] not in COMMISSION_CHARGES:
        raise ValueError(f"{name}: commission.charge must be one of {COMMISSION_CHARGES}")
    return out


def account_from_config(entry: dict, defaults: dict, server_name: str) -> dict:
    """An account record from an `accounts:` entry (or the demo defaults for an unknown login)."""
    a = dict(defaults)
    a.update(entry)
    mm = a.get("margin_mode", "hedging")
    if isinstance(mm, str):
        mm = {"netting": 0, "exchange": 1, "hedging": 2}[mm.lower()]
    tm = a.get("trade_mode", "demo")
    if isinstance(tm, str):
        tm = {"demo": 0, "contest": 1, "real": 2}[tm.lower()]
    so = a.get("margin_so_mode", "percent")
    if isinstance(so, str):
        so = {"percent": 0, "money": 1}[so.lower()]
    return {
        "login": int(a["login"]),
        "password": None if a.get("password") is None else str(a["password"]),
        "server": str(a.get("server") or server_name),
        "name": str(a.get("name", "Demo Account")),
        "company": str(a.get("company") or ""),
        "currency": str(a.get("currency", "USD")),
        "currency_digits": int(a.get("currency_digits", 2)),
        "balance": 0.0,
        "initial_balance": float(a.get("balance", 10000.0)),
        "credit": float(a.get("credit", 0.0)),
        "leverage": int(a.get("leverage", 100)),
        "margin_mode": int(mm),
        "trade_mode": int(tm),
        "margin_so_mode": int(so),
        "margin_so_call": float(a.get("margin_so_call", 50.0)),
        "margin_so_so": float(a.get("margin_so_so", 30.0)),
        "limit_orders": int(a.get("limit_orders", 200)),
        "trade_allowed": bool(a.get("trade_allowed", True)),
        "trade_expert": bool(a.get("trade_expert", True)),
        "fifo_close": bool(a.get("fifo_close", False)),
        "limit_positions": int(a.get("limit_positions", 0) or 0),
    }

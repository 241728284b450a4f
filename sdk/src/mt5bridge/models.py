"""Typed views of the bridge's answers.

Each model is a dataclass of the fields this package knows, built from the JSON the bridge sent; the
whole JSON stays in ``.raw``, and a field the model does not declare is still readable as an attribute
(``task.parentTaskId`` or ``position.reason``) or by key (``position["reason"]``). So a newer bridge that
adds fields never breaks this client, and nothing it sends is hidden.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, TypeVar

M = TypeVar("M", bound="Model")

FINAL_STATES = frozenset({"placed", "filled", "partial", "rejected", "cancelled", "failed"})
"""Task states after which a task does not change any more (``unknown`` is not final: reconciliation
settles it; ``placed`` is the success of a pending order's task)."""


def _snake_to_camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def _camel_to_snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def wire(name: str, default: Any = None) -> Any:
    """A dataclass field read from the JSON key ``name`` (when it differs from the attribute's name)."""
    return field(default=default, metadata={"wire": name})


@dataclass
class Model:
    """Base: ``raw`` holds the JSON as sent; unknown fields read through ``__getattr__``/``__getitem__``."""

    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    NESTED: ClassVar[dict[str, type[Model]]] = {}

    @classmethod
    def from_dict(cls: type[M], data: dict[str, Any] | None) -> M:
        data = dict(data or {})
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            if f.name == "raw" or not f.init:
                continue
            key = f.metadata.get("wire")
            if key is None:
                key = f.name if f.name in data else _snake_to_camel(f.name)
            if key in data:
                value = data[key]
                nested = cls.NESTED.get(f.name)
                if nested is not None and isinstance(value, list):
                    value = [nested.from_dict(v) if isinstance(v, dict) else v for v in value]
                elif nested is not None and isinstance(value, dict):
                    value = nested.from_dict(value)
                kwargs[f.name] = value
        return cls(raw=data, **kwargs)

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup failed: a field the model does not declare.
        raw = self.__dict__.get("raw")
        if raw is not None:
            if name in raw:
                return raw[name]
            camel = _snake_to_camel(name)
            if camel in raw:
                return raw[camel]
        raise AttributeError(f"{type(self).__name__} has no field {name!r}")

    def __getitem__(self, key: str) -> Any:
        return self.raw[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.raw.get(key, default)


@dataclass
class SessionInfo(Model):
    session_id: str = ""
    status: str = ""
    terminal: str | None = None
    account_id: str | None = None
    login: int | None = None
    server: str | None = None
    created_at: float | None = None
    last_heartbeat_at: float | None = None
    expires_at: float | None = None
    heartbeat_interval: float | None = None
    broker: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    paused: bool | None = None
    paused_at: float | None = None

    @property
    def active(self) -> bool:
        return self.status == "active"


@dataclass
class Task(Model):
    task_id: str = ""
    request_id: str = ""
    session_id: str | None = None
    kind: str = ""
    state: str = ""
    request: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    parent_task_id: str | None = None
    created_at: float | None = None
    updated_at: float | None = None
    finished_at: float | None = None
    attempts: int | None = None
    replayed: bool = field(default=False, init=False)
    """True when the bridge answered ``Idempotent-Replayed: true``: this write had been accepted before."""

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def retcode(self) -> int | None:
        return (self.result or {}).get("retcode")

    @property
    def order(self) -> int | None:
        """The broker's order ticket of the task's result (a market order's position ticket too)."""
        return (self.result or {}).get("order")

    @property
    def deal(self) -> int | None:
        return (self.result or {}).get("deal")


@dataclass
class TaskPage(Model):
    tasks: list[Task] = field(default_factory=list)
    next_cursor: str | None = None
    NESTED: ClassVar[dict[str, type[Model]]] = {"tasks": Task}


@dataclass
class Position(Model):
    ticket: int = 0
    symbol: str = ""
    type: int | None = None
    volume: float | None = None
    price_open: float | None = None
    price_current: float | None = None
    sl: float | None = None
    tp: float | None = None
    profit: float | None = None
    swap: float | None = None
    magic: int | None = None
    comment: str | None = None
    identifier: int | None = None
    time: int | None = None
    time_msc: int | None = None

    @property
    def is_buy(self) -> bool:
        return self.type == 0


@dataclass
class Order(Model):
    """A pending order (working, or from the history)."""

    ticket: int = 0
    symbol: str = ""
    type: int | None = None
    state: int | None = None
    volume_initial: float | None = None
    volume_current: float | None = None
    price_open: float | None = None
    price_stoplimit: float | None = None
    price_current: float | None = None
    sl: float | None = None
    tp: float | None = None
    magic: int | None = None
    comment: str | None = None
    position_id: int | None = None
    time_setup: int | None = None
    time_done: int | None = None
    time_expiration: int | None = None
    type_time: int | None = None
    type_filling: int | None = None


@dataclass
class Deal(Model):
    ticket: int = 0
    order: int | None = None
    position_id: int | None = None
    symbol: str = ""
    type: int | None = None
    entry: int | None = None
    volume: float | None = None
    price: float | None = None
    commission: float | None = None
    swap: float | None = None
    profit: float | None = None
    fee: float | None = None
    magic: int | None = None
    comment: str | None = None
    reason: int | None = None
    time: int | None = None
    time_msc: int | None = None


@dataclass
class Positions(Model):
    """``GET /positions``: open positions and pending orders, with the snapshot's age."""

    positions: list[Position] = field(default_factory=list)
    orders: list[Order] = field(default_factory=list)
    as_of: float | None = None
    source: str | None = None
    NESTED: ClassVar[dict[str, type[Model]]] = {"positions": Position, "orders": Order}


@dataclass
class Account(Model):
    login: int | None = None
    balance: float | None = None
    equity: float | None = None
    margin: float | None = None
    margin_free: float | None = None
    margin_level: float | None = None
    profit: float | None = None
    credit: float | None = None
    currency: str | None = None
    leverage: int | None = None
    server: str | None = None
    company: str | None = None
    as_of: float | None = None
    source: str | None = None


@dataclass
class Symbol(Model):
    name: str = ""
    digits: int | None = None
    point: float | None = None
    volume_min: float | None = None
    volume_max: float | None = None
    volume_step: float | None = None
    trade_mode: int | None = None
    trade_tick_size: float | None = None
    currency_base: str | None = None
    currency_profit: float | str | None = None
    description: str | None = None


@dataclass
class Quote(Model):
    """A tick: ``GET /quotes/{symbol}``, an item of ``GET /ticks/{symbol}``, a ``quote:X`` event's data."""

    symbol: str | None = None
    time: int | None = None
    time_msc: int | None = None
    bid: float | None = None
    ask: float | None = None
    last: float | None = None
    volume: float | None = None
    flags: int | None = None
    as_of: float | None = None


@dataclass
class Bar(Model):
    time: int = 0
    open: float | None = None
    high: float | None = None
    low: float | None = None
    close: float | None = None
    tick_volume: int | None = None
    spread: int | None = None
    real_volume: int | None = None


@dataclass
class Bars(Model):
    symbol: str = ""
    timeframe: str = ""
    bars: list[Bar] = field(default_factory=list)
    count: int | None = None
    next: Any = None
    NESTED: ClassVar[dict[str, type[Model]]] = {"bars": Bar}


@dataclass
class Ticks(Model):
    symbol: str = ""
    flags: str | None = None
    ticks: list[Quote] = field(default_factory=list)
    count: int | None = None
    next: Any = None
    NESTED: ClassVar[dict[str, type[Model]]] = {"ticks": Quote}


@dataclass
class BookEntry(Model):
    type: int | None = None
    side: str | None = None
    price: float | None = None
    volume: float | None = None
    volume_dbl: float | None = None


@dataclass
class Depth(Model):
    symbol: str = ""
    book: list[BookEntry] = field(default_factory=list)
    as_of: float | None = None
    NESTED: ClassVar[dict[str, type[Model]]] = {"book": BookEntry}


@dataclass
class Stats(Model):
    """``GET /stats``: trading statistics of the session's account over a period."""

    trades: int | None = None
    wins: int | None = None
    losses: int | None = None
    win_rate: float | None = None
    profit_factor: float | None = None
    expectancy: float | None = None
    average_win: float | None = None
    average_loss: float | None = None
    largest_win: float | None = None
    largest_loss: float | None = None
    max_drawdown: float | None = None
    net_profit: float | None = None
    gross_profit: float | None = None
    gross_loss: float | None = None
    commission: float | None = None
    swap: float | None = None


@dataclass
class Event(Model):
    """A message of ``/events``: an event of a channel (``type`` is the channel: ``order``,
    ``quote:EURUSD``, ...), or ``resync_required`` (reload state over REST: events were lost)."""

    type: str = ""
    seq: int | None = None
    epoch: int | None = None
    session_id: str | None = None
    time_msc: int | None = None
    data: dict[str, Any] = field(default_factory=dict)
    state: State | None = field(default=None, init=False, compare=False, repr=False)
    """on ``resync_required``: the session's state reloaded over REST right after the notice (streams
    made with ``reload_on_resync=True``, the default)"""

    @property
    def channel(self) -> str:
        return self.type

    @property
    def resync_required(self) -> bool:
        return self.type == "resync_required"


@dataclass
class State:
    """The session's state read over REST at one moment: what a client reloads after ``resync_required``."""

    account: Account
    positions: list[Position]
    orders: list[Order]
    pending_tasks: list[Task]
    """the session's tasks not final (queued, dispatched, unknown)"""


def as_snake(data: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``data`` with camelCase keys in snake_case (for callers that prefer it)."""
    return {_camel_to_snake(k): v for k, v in data.items()}

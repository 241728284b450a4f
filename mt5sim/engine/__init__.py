"""mt5sim's trade server and terminal state (see mt5sim/INTERNALS.md, "Engine API")."""

from .engine import Engine, Session
from .feed import RATES_DTYPE, TICKS_DTYPE

__all__ = ["Engine", "Session", "RATES_DTYPE", "TICKS_DTYPE"]

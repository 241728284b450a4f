"""The bridge's own MT5 constants (terminals/constants.py) are the real ones: checked against mt5sim's
copy, which mt5sim's tests check against the official MetaTrader5 wheel."""

import re
from pathlib import Path

import mt5sim.constants as reference
from terminals import constants

ROOT = Path(__file__).resolve().parents[2]


def test_every_mt5_constant_of_the_bridge_has_the_real_value():
    names = [n for n in dir(constants) if re.fullmatch(r"(DEAL|ORDER|POSITION|SYMBOL_TRADE|TRADE_ACTION|TIMEFRAME|"
                                                        r"COPY_TICKS)_[A-Z0-9_]+", n) and isinstance(getattr(constants, n), int)]
    assert len(names) > 40
    for name in names:
        assert getattr(constants, name) == getattr(reference, name), name


def test_production_code_does_not_import_the_emulator():
    offenders = []
    for package in ("bridge_project", "terminals", "sessions", "trading", "streams", "ops"):
        for path in (ROOT / package).rglob("*.py"):
            if re.search(r"^\s*(from|import) mt5sim\b", path.read_text(), flags=re.M):
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []

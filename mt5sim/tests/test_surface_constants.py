"""The module surface against the official MetaTrader5 5.0.6231 package.

Constants are compared with the official wheel's ``MetaTrader5/__init__.py`` when the wheel can be
downloaded (pip, a few seconds), else with ``reference_constants.json`` (generated from that wheel).
Result types are compared with the field lists of the package's PyStructSequence descriptors.
No terminal is needed here.
"""

from __future__ import annotations

import ast
import copy
import json
import pickle
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest

import mt5sim
from mt5sim import structs

REFERENCE = json.loads((Path(__file__).parent / "reference_constants.json").read_text())
FUNCTIONS = {
    "initialize", "login", "shutdown", "version", "last_error", "account_info", "terminal_info",
    "symbols_total", "symbols_get", "symbol_info", "symbol_info_tick", "symbol_select",
    "market_book_add", "market_book_get", "market_book_release",
    "copy_rates_from", "copy_rates_from_pos", "copy_rates_range", "copy_ticks_from", "copy_ticks_range",
    "orders_total", "orders_get", "order_calc_margin", "order_calc_profit", "order_check", "order_send",
    "positions_total", "positions_get",
    "history_orders_total", "history_orders_get", "history_deals_total", "history_deals_get",
}


def _constants_from_init(source: str) -> dict[str, int]:
    """NAME = <int expression> assignments of the package's __init__.py, evaluated."""
    found: dict[str, int] = {}
    for node in ast.parse(source).body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and not node.targets[0].id.startswith("__")):
            found[node.targets[0].id] = eval(compile(ast.Expression(node.value), "<const>", "eval"))
    return found


@pytest.fixture(scope="module")
def official_constants(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, int]]:
    """(source, constants): from the downloaded official wheel, or from the kept reference list."""
    target = tmp_path_factory.mktemp("wheel")
    try:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--platform", "win_amd64",
             "--python-version", "3.11", "MetaTrader5==5.0.6231", "-d", str(target), "-q"],
            check=True, capture_output=True, timeout=60)
        wheel = next(target.glob("*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            source = archive.read("MetaTrader5/__init__.py").decode("utf-8")
        return "wheel", _constants_from_init(source)
    except (subprocess.SubprocessError, OSError, StopIteration, KeyError):
        return "reference", dict(REFERENCE["constants"])


def test_every_constant_has_the_official_value(official_constants):
    source, expected = official_constants
    assert len(expected) > 200, source
    ours = {name: getattr(mt5sim, name, "<missing>") for name in expected}
    assert ours == expected, f"compared with the {source}"
    for name in expected:
        assert type(getattr(mt5sim, name)) is int


def test_reference_file_matches_the_official_wheel(official_constants):
    source, expected = official_constants
    if source != "wheel":
        pytest.skip("official wheel not downloadable here; compared with the reference file only")
    assert REFERENCE["constants"] == expected


def test_public_names_are_exactly_those_of_metatrader5():
    expected = set(REFERENCE["constants"]) | FUNCTIONS | set(REFERENCE["structs"]) | {"Buy", "Sell", "Close"}
    public = {name for name, value in vars(mt5sim).items()
              if not name.startswith("_") and not isinstance(value, types.ModuleType)}
    assert public == expected
    assert not hasattr(mt5sim, "SYMBOL_FILLING_FOK")
    assert not hasattr(mt5sim, "TRADE_RETCODE_HEDGE_PROHIBITED")
    assert mt5sim.__version__ == "5.0.6231"
    assert mt5sim.__author__ == "MetaQuotes Ltd."
    assert callable(mt5sim._RawOrder)


def test_functions_are_callables_of_the_module():
    for name in FUNCTIONS:
        assert callable(getattr(mt5sim, name)), name


@pytest.mark.parametrize("name", sorted(REFERENCE["structs"]))
def test_result_type_fields_and_doc(name):
    cls = getattr(mt5sim, name)
    fields = REFERENCE["structs"][name]["fields"]
    assert cls.__doc__ == REFERENCE["structs"][name]["doc"]
    assert cls.n_fields == len(fields) == cls.n_sequence_fields
    assert cls.n_unnamed_fields == 0
    values = list(range(len(fields)))
    item = cls(values)
    assert isinstance(item, tuple) and len(item) == len(fields)
    assert list(item) == values
    for index, field in enumerate(fields):
        assert getattr(item, field) == index
    assert list(item._asdict()) == fields
    assert repr(item) == f"{name}(" + ", ".join(f"{f}={i}" for i, f in enumerate(fields)) + ")"


def test_result_types_behave_like_struct_sequences_not_namedtuples():
    tick = mt5sim.Tick((1585070338, 1.17264, 1.17279, 0.0, 0, 1585070338728, 2, 0.0))
    assert repr(tick) == ("Tick(time=1585070338, bid=1.17264, ask=1.17279, last=0.0, volume=0, "
                          "time_msc=1585070338728, flags=2, volume_real=0.0)")
    with pytest.raises(AttributeError):
        tick.bid = 2.0
    with pytest.raises(AttributeError):
        tick.other = 1
    for missing in ("_fields", "_replace", "_make"):
        assert not hasattr(tick, missing)
    time_, bid, *_ = tick
    assert (time_, bid) == (1585070338, 1.17264)
    assert tick == tuple(tick) and hash(tick) == hash(tuple(tick))
    assert pickle.loads(pickle.dumps(tick)) == tick
    assert type(pickle.loads(pickle.dumps(tick))) is mt5sim.Tick
    assert copy.deepcopy(tick) == tick
    with pytest.raises(TypeError):
        mt5sim.Tick((1, 2, 3))
    with pytest.raises(TypeError):
        mt5sim.Tick(5)


def test_asdict_is_not_recursive():
    request = mt5sim.TradeRequest(tuple(range(17)))
    result = mt5sim.OrderSendResult((10009, 1, 2, 0.1, 1.1, 1.1, 1.2, "Request executed", 3, 0, request))
    as_dict = result._asdict()
    assert type(as_dict) is dict
    assert isinstance(as_dict["request"], mt5sim.TradeRequest)
    assert as_dict["request"]._asdict()["position"] == 15


def test_numpy_dtypes_are_the_real_ones():
    assert structs.RATES_DTYPE == np.dtype([tuple(x) for x in REFERENCE["dtypes"]["rates"]])
    assert structs.TICKS_DTYPE == np.dtype([tuple(x) for x in REFERENCE["dtypes"]["ticks"]])
    assert structs.RATES_DTYPE.itemsize == 60
    assert structs.TICKS_DTYPE.itemsize == 60

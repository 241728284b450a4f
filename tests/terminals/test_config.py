"""The terminals file: ``sim_broker`` (one emulated trade server for the sim terminals) and the files without it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from django.core.exceptions import ImproperlyConfigured

from terminals.config import load_sim_broker, load_terminals, parse_sim_broker, parse_terminals

ROOT = Path(__file__).resolve().parents[2]

BROKER = {"address": "127.0.0.1:18800", "servers": {"MT5Sim-Demo": 7200, "MT5Sim-UTC": "+00:00"}}


def _doc(*terminals: dict, broker: dict | None = BROKER) -> dict:
    doc: dict = {"terminals": list(terminals)}
    if broker is not None:
        doc["sim_broker"] = broker
    return doc


def test_sim_terminals_default_to_the_first_server_and_take_its_clock() -> None:
    doc = _doc({"name": "sim-1", "address": "127.0.0.1:18801"},
               {"name": "sim-2", "address": "127.0.0.1:18802", "server": "MT5Sim-UTC", "utc_offset": 0},
               {"name": "sim-3", "address": "127.0.0.1:18803", "utc_offset": "+02:00"})
    terminals = parse_terminals(doc)
    assert [(t.name, t.server, t.utc_offset) for t in terminals] == [
        ("sim-1", "MT5Sim-Demo", 7200), ("sim-2", "MT5Sim-UTC", 0), ("sim-3", "MT5Sim-Demo", 7200)]
    broker = parse_sim_broker(doc)
    assert broker.address == "127.0.0.1:18800" and broker.default_server == "MT5Sim-Demo"
    assert broker.servers == (("MT5Sim-Demo", 7200), ("MT5Sim-UTC", 0))


def test_a_sim_terminal_whose_offset_is_not_its_servers_is_refused_with_both_values() -> None:
    doc = _doc({"name": "sim-1", "address": "127.0.0.1:18801", "utc_offset": 0})
    with pytest.raises(ImproperlyConfigured, match=r"terminal sim-1: utc_offset 0 differs from its server "
                                                   r"MT5Sim-Demo's offset 7200"):
        parse_terminals(doc)


@pytest.mark.parametrize(("doc", "message"), [
    (_doc({"name": "sim-1", "address": "a:1", "server": "Nope"}), r"server 'Nope' is not one of sim_broker's servers"),
    (_doc({"name": "sim-1", "address": "a:1", "server": "MT5Sim-Demo"}, broker=None), "only a sim terminal with a sim_broker"),
    (_doc({"name": "icm-1", "backend": "mt5", "path": "C:/t.exe", "server": "MT5Sim-Demo"}), "only a sim terminal"),
    (_doc({"name": "sim-1", "address": "a:1"}, broker={"address": "nowhere", "servers": {"X": 0}}), "HOST:PORT"),
    (_doc({"name": "sim-1", "address": "a:1"}, broker={"address": "h:1", "servers": {}}), "servers must map"),
    (_doc({"name": "sim-1", "address": "a:1"}, broker={"address": "h:1", "servers": {"A=B": 0}}), "server name 'A=B'"),
    (_doc({"name": "sim-1", "address": "a:1"}, broker={"address": "h:1", "servers": {"X": "2h"}}),
     "sim_broker server X: its offset must be seconds"),
    (_doc({"name": "sim-1", "address": "a:1"}, broker={"address": "h:1", "servers": {"X": 0}, "seed": 1}), "unknown key"),
    (_doc({"name": "sim-1", "address": "a:1"}, broker=["h:1"]), "sim_broker must be a mapping"),
    (_doc({"name": "broker", "address": "a:1"}), "the name is the sim_broker's"),
])
def test_bad_sim_broker_declarations_say_what_is_wrong(doc: dict, message: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=message):
        parse_terminals(doc)
        parse_sim_broker(doc)


def test_a_file_without_sim_broker_reads_as_before() -> None:
    doc = _doc({"name": "sim-1", "address": "127.0.0.1:18801", "utc_offset": 7200},
               {"name": "icm-1", "backend": "mt5", "path": r"C:\t\terminal64.exe", "utc_offset": "+03:00"}, broker=None)
    assert [(t.name, t.backend, t.utc_offset, t.server) for t in parse_terminals(doc)] == [
        ("sim-1", "sim", 7200, None), ("icm-1", "mt5", 10800, None)]
    assert parse_sim_broker(doc) is None
    # mt5 terminals next to a sim_broker keep their own offset
    mixed = _doc({"name": "icm-1", "backend": "mt5", "path": r"C:\t\terminal64.exe", "utc_offset": "+03:00"})
    assert parse_terminals(mixed)[0].utc_offset == 10800 and parse_terminals(mixed)[0].server is None


@pytest.mark.parametrize("path", ["terminals.yaml", "deploy/compose/terminals.yaml"])
def test_the_shipped_files_run_one_broker_mt5sim_demo_with_every_sim_terminal_on_it(path: str, tmp_path: Path) -> None:
    copy = tmp_path / "terminals.yaml"  # load_* re-read a file by mtime: a copy of its own
    copy.write_text((ROOT / path).read_text())
    terminals, broker = load_terminals(str(copy)), load_sim_broker(str(copy))
    assert broker is not None and [name for name, _ in broker.servers] == ["MT5Sim-Demo"]
    assert len(terminals) >= 2 and {t.server for t in terminals} == {"MT5Sim-Demo"}
    assert {t.utc_offset for t in terminals} == {broker.offset_of("MT5Sim-Demo")}


def test_the_windows_example_has_no_sim_broker() -> None:
    doc = yaml.safe_load((ROOT / "deploy/windows/config/terminals.example.yaml").read_text())
    assert parse_sim_broker(doc) is None and {t.backend for t in parse_terminals(doc)} == {"mt5"}

"""Terminal configuration: the file that declares which MT5 terminals the bridge drives.

The same file serves the Linux stack (backend ``sim``) and the Windows VM (backend ``mt5``)::

    terminals:
      - name: sim-1            # [a-z0-9-], unique; the queue is terminal.<name>
        backend: sim           # sim = mt5sim, mt5 = the MetaTrader5 package (Windows)
        address: 127.0.0.1:18801   # sim: the emulator's host:port; mt5: path to terminal64.exe
        utc_offset: 7200       # broker server time minus UTC, seconds (or "+03:00")
        server: MT5Sim-Demo    # sim with sim_broker only: the broker's server name (default: its first)

Optionally (the embedded stack and compose), one emulated trade server for every ``sim`` terminal::

    sim_broker:
      address: 127.0.0.1:18800   # python -m mt5sim broker listens here; sim terminals connect to it
      servers:                   # server name: its clock (seconds from UTC, or "+02:00"); first = default
        MT5Sim-Demo: 7200

With ``sim_broker`` every ``sim`` terminal is a ``python -m mt5sim serve --broker`` on one of its
server names (terminals on one name share accounts, positions and history, as at a real broker), and
its ``utc_offset`` is that server's (it may be left out; a different one is refused). Without it each
``sim`` terminal is its own single-process emulator. ``mt5`` terminals are unaffected.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
BACKENDS = ("sim", "mt5")
_OFFSET_RE = re.compile(r"^([+-])(\d{1,2}):(\d{2})$")
SERVER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_ADDRESS_RE = re.compile(r"^[^\s:]+:(\d{1,5})$")


@dataclass(frozen=True)
class TerminalConfig:
    name: str
    backend: str
    address: str
    utc_offset: int  # seconds: broker server time = UTC + utc_offset
    server: str | None = None  # sim terminal on the sim_broker: its server name there

    @property
    def queue(self) -> str:
        return f"terminal.{self.name}"


@dataclass(frozen=True)
class SimBrokerConfig:
    """The emulated trade server (``python -m mt5sim broker``) the ``sim`` terminals connect to."""

    address: str
    servers: tuple[tuple[str, int], ...]  # (server name, UTC offset in seconds); the first is the default

    @property
    def default_server(self) -> str:
        return self.servers[0][0]

    def offset_of(self, server: str) -> int:
        return dict(self.servers)[server]


def _parse_offset(value: object, name: str, what: str = "utc_offset") -> int:
    """``name`` says whose offset it is in the error (``terminal sim-1``, ``sim_broker server X``)."""
    if value is None:
        return 0
    if isinstance(value, bool):
        raise ImproperlyConfigured(f"{name}: {what} must be seconds or '+HH:MM'")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and (m := _OFFSET_RE.match(value.strip())):
        sign = -1 if m.group(1) == "-" else 1
        return sign * (int(m.group(2)) * 3600 + int(m.group(3)) * 60)
    raise ImproperlyConfigured(f"{name}: {what} must be seconds or '+HH:MM'")


def parse_sim_broker(data: object) -> SimBrokerConfig | None:
    """The document's ``sim_broker`` (None when it has none); raise ImproperlyConfigured with what is wrong."""
    if not isinstance(data, dict) or data.get("sim_broker") is None:
        return None
    broker = data["sim_broker"]
    if not isinstance(broker, dict):
        raise ImproperlyConfigured("sim_broker must be a mapping with address and servers")
    unknown = sorted(set(broker) - {"address", "servers"})
    if unknown:
        raise ImproperlyConfigured(f"sim_broker: unknown key(s) {unknown} (address, servers)")
    address = str(broker.get("address") or "")
    if not _ADDRESS_RE.match(address) or not 0 < int(address.rpartition(":")[2]) < 65536:
        raise ImproperlyConfigured(f"sim_broker: address must be HOST:PORT, not {address!r}")
    servers = broker.get("servers")
    if not isinstance(servers, dict) or not servers:
        raise ImproperlyConfigured("sim_broker: servers must map each server name to its UTC offset "
                                   "(e.g. {MT5Sim-Demo: 7200})")
    parsed = []
    for server, offset in servers.items():
        if not isinstance(server, str) or not SERVER_NAME_RE.match(server):
            raise ImproperlyConfigured(f"sim_broker: server name {server!r} must match {SERVER_NAME_RE.pattern}")
        parsed.append((server, _parse_offset(offset, f"sim_broker server {server}", "its offset")))
    return SimBrokerConfig(address, tuple(parsed))


def _sim_server(item: dict, name: str, backend: str, broker: SimBrokerConfig | None) -> str | None:
    """The server name of a sim terminal on the sim_broker; None for the others (refusing a stray ``server``)."""
    server = item.get("server")
    if backend != "sim" or broker is None:
        if server is not None:
            raise ImproperlyConfigured(f"terminal {name}: server names a server of sim_broker, and only a "
                                       "sim terminal with a sim_broker declared has one")
        return None
    if name == "broker":  # var/sim/broker is the broker's state, sim-broker its process
        raise ImproperlyConfigured("terminal broker: the name is the sim_broker's; name the terminal otherwise")
    server = broker.default_server if server is None else str(server)
    if server not in dict(broker.servers):
        raise ImproperlyConfigured(f"terminal {name}: server {server!r} is not one of sim_broker's servers "
                                   f"{[s for s, _ in broker.servers]}")
    return server


def parse_terminals(data: object) -> list[TerminalConfig]:
    """Validate the parsed YAML document; raise ImproperlyConfigured with what is wrong."""
    if not isinstance(data, dict) or not isinstance(data.get("terminals"), list):
        raise ImproperlyConfigured("terminals file must have a 'terminals' list")
    broker = parse_sim_broker(data)
    result: list[TerminalConfig] = []
    seen: set[str] = set()
    for i, item in enumerate(data["terminals"]):
        if not isinstance(item, dict):
            raise ImproperlyConfigured(f"terminals[{i}] must be a mapping")
        name = str(item.get("name", ""))
        if not NAME_RE.match(name):
            raise ImproperlyConfigured(f"terminals[{i}]: name must match {NAME_RE.pattern}")
        if name in seen:
            raise ImproperlyConfigured(f"terminal {name} is declared twice")
        seen.add(name)
        backend = item.get("backend", "sim")
        if backend not in BACKENDS:
            raise ImproperlyConfigured(f"terminal {name}: backend must be one of {BACKENDS}")
        address = str(item.get("address") or item.get("path") or "")
        if not address:
            raise ImproperlyConfigured(f"terminal {name}: address (sim) or path (mt5) is required")
        server = _sim_server(item, name, backend, broker)
        if server is None:
            offset = _parse_offset(item.get("utc_offset"), f"terminal {name}")
        else:  # the clock is the server name's: the declared offset must be it
            offset = broker.offset_of(server)
            if item.get("utc_offset") is not None and _parse_offset(item["utc_offset"], f"terminal {name}") != offset:
                raise ImproperlyConfigured(
                    f"terminal {name}: utc_offset {item['utc_offset']!r} differs from its server {server}'s offset "
                    f"{offset} in sim_broker (the server's clock is the terminal's: put the terminal on a server "
                    "name with that offset, or fix one of the two)")
        result.append(TerminalConfig(name, backend, address, offset, server))
    return result


_cache: dict[str, tuple[float, list[TerminalConfig], SimBrokerConfig | None]] = {}


def _load(path: str | None) -> tuple[list[TerminalConfig], SimBrokerConfig | None]:
    file = Path(path or settings.BRIDGE_TERMINALS_FILE)
    try:
        mtime = file.stat().st_mtime
    except FileNotFoundError as exc:
        raise ImproperlyConfigured(f"terminals file not found: {file}") from exc
    cached = _cache.get(str(file))
    if cached and cached[0] == mtime:
        return cached[1], cached[2]
    document = yaml.safe_load(file.read_text())
    terminals, broker = parse_terminals(document), parse_sim_broker(document)
    _cache[str(file)] = (mtime, terminals, broker)
    return terminals, broker


def load_terminals(path: str | None = None) -> list[TerminalConfig]:
    """The configured terminals, re-read when the file changes."""
    return _load(path)[0]


def load_sim_broker(path: str | None = None) -> SimBrokerConfig | None:
    """The file's ``sim_broker`` (None: each sim terminal is its own single-process emulator)."""
    return _load(path)[1]


def get_terminal(name: str) -> TerminalConfig:
    for terminal in load_terminals():
        if terminal.name == name:
            return terminal
    raise ImproperlyConfigured(f"terminal {name!r} is not in {settings.BRIDGE_TERMINALS_FILE}")

"""Terminal configuration: the file that declares which MT5 terminals the bridge drives.

The same file serves the Linux stack (backend ``sim``) and the Windows VM (backend ``mt5``)::

    terminals:
      - name: sim-1            # [a-z0-9-], unique; the queue is terminal.<name>
        backend: sim           # sim = mt5sim, mt5 = the MetaTrader5 package (Windows)
        address: 127.0.0.1:18801   # sim: the emulator's host:port; mt5: path to terminal64.exe
        utc_offset: 7200       # broker server time minus UTC, seconds (or "+03:00")
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


@dataclass(frozen=True)
class TerminalConfig:
    name: str
    backend: str
    address: str
    utc_offset: int  # seconds: broker server time = UTC + utc_offset

    @property
    def queue(self) -> str:
        return f"terminal.{self.name}"


def _parse_offset(value: object, name: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool):
        raise ImproperlyConfigured(f"terminal {name}: utc_offset must be seconds or '+HH:MM'")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and (m := _OFFSET_RE.match(value.strip())):
        sign = -1 if m.group(1) == "-" else 1
        return sign * (int(m.group(2)) * 3600 + int(m.group(3)) * 60)
    raise ImproperlyConfigured(f"terminal {name}: utc_offset must be seconds or '+HH:MM'")


def parse_terminals(data: object) -> list[TerminalConfig]:
    """Validate the parsed YAML document; raise ImproperlyConfigured with what is wrong."""
    if not isinstance(data, dict) or not isinstance(data.get("terminals"), list):
        raise ImproperlyConfigured("terminals file must have a 'terminals' list")
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
        result.append(TerminalConfig(name, backend, address, _parse_offset(item.get("utc_offset"), name)))
    return result


_cache: dict[str, tuple[float, list[TerminalConfig]]] = {}


def load_terminals(path: str | None = None) -> list[TerminalConfig]:
    """The configured terminals, re-read when the file changes."""
    file = Path(path or settings.BRIDGE_TERMINALS_FILE)
    try:
        mtime = file.stat().st_mtime
    except FileNotFoundError as exc:
        raise ImproperlyConfigured(f"terminals file not found: {file}") from exc
    cached = _cache.get(str(file))
    if cached and cached[0] == mtime:
        return cached[1]
    terminals = parse_terminals(yaml.safe_load(file.read_text()))
    _cache[str(file)] = (mtime, terminals)
    return terminals


def get_terminal(name: str) -> TerminalConfig:
    for terminal in load_terminals():
        if terminal.name == name:
            return terminal
    raise ImproperlyConfigured(f"terminal {name!r} is not in {settings.BRIDGE_TERMINALS_FILE}")

"""docker-compose.yml runs, per configured terminal, exactly the roles the embedded stack runs."""

from __future__ import annotations

from pathlib import Path

import yaml

from workers.config import parse_terminals
from workers.stack import terminal_process_argvs

ROOT = Path(__file__).resolve().parents[2]


def test_compose_has_every_role_of_every_terminal_with_the_same_command() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    env = services["web"]["environment"]
    terminals_file = env["BRIDGE_TERMINALS_FILE"].removeprefix("/app/")
    terminals = parse_terminals(yaml.safe_load((ROOT / terminals_file).read_text()))
    assert terminals
    for terminal in terminals:
        host, _, port = terminal.address.rpartition(":")
        sim = services[host]
        assert f"0.0.0.0:{port}" in sim["command"]  # the emulator listens where the file says
        sim_config = sim["command"][sim["command"].index("--config") + 1].removeprefix("/app/")
        # and its broker clock is the offset the terminals file declares
        assert yaml.safe_load((ROOT / sim_config).read_text())["server"]["offset_seconds"] == terminal.utc_offset
        for role, argv in terminal_process_argvs(terminal.name).items():
            service = services[f"{role}-{terminal.name}"]
            assert service["command"] == argv
            assert service["environment"]["BRIDGE_TERMINALS_FILE"] == env["BRIDGE_TERMINALS_FILE"]
    for name in ("redis", "postgres", "web", "beat", "maintenance", "migrate"):
        assert name in services

"""The Windows VM's process plan: which MT5 terminals this VM hosts and the command lines of their
processes, rendered from the same terminals file and the same ``workers.stack.terminal_process_argvs``
the Linux stack uses, so a worker runs with the same command line on both.

Run inside the VM by ``every-boot.ps1`` (no Django settings needed)::

    python -m deploy.windows.plan --terminals C:\\bridge\\config\\terminals.yaml ^
        --python C:\\bridge\\venv\\Scripts\\python.exe --root C:\\bridge --only icm-1,icm-2 ^
        --logs \\\\host.lan\\Data\\logs\\VM1 > plan.json

Only ``backend: mt5`` terminals are planned (``sim`` ones run on Linux). Each terminal's ``path`` is its
``terminal64.exe``; an optional ``installer`` names the broker installer (in the installers folder)
its portable copy is made from.
"""

from __future__ import annotations

import argparse
import json
import ntpath
import sys
from pathlib import Path
from typing import Any

import yaml

from terminals.config import parse_terminals
from workers.stack import terminal_process_argvs

# The order the roles start in: the terminal first (the others attach to it), then its processes (today one,
# ``worker``, which runs the reader and the poller as threads; a plan of separate ones would start in this order).
ROLE_ORDER = ("terminal", "worker", "reader", "poller")


def plan(
    document: dict[str, Any], *, python: str, root: str, only: list[str] | None = None, logs: str | None = None
) -> dict[str, Any]:
    """The plan for one VM: terminals (name, path, install dir, installer) and processes (argv, log)."""
    configs = {c.name: c for c in parse_terminals(document)}
    extras = {str(item.get("name")): item for item in document["terminals"]}
    wanted = [c for c in configs.values() if c.backend == "mt5" and (not only or c.name in only)]
    unknown = sorted(set(only or ()) - {c.name for c in configs.values() if c.backend == "mt5"})
    if unknown:
        raise ValueError(f"not mt5 terminals of the terminals file: {', '.join(unknown)}")
    logs = logs or ntpath.join(root, "logs")
    terminals, processes = [], []
    for config in wanted:
        exe = config.address
        if not exe.lower().endswith("terminal64.exe"):
            raise ValueError(f"terminal {config.name}: path must end with terminal64.exe, not {exe!r}")
        terminals.append({
            "name": config.name,
            "path": exe,
            "installDir": ntpath.dirname(exe),
            "installer": str(extras[config.name].get("installer") or ""),
            "utcOffset": config.utc_offset,
        })
        argvs = {"terminal": [exe, "/portable"], **terminal_process_argvs(config.name, python)}
        for role in sorted(argvs, key=lambda r: ROLE_ORDER.index(r) if r in ROLE_ORDER else len(ROLE_ORDER)):
            processes.append({
                "id": f"{config.name}.{role}",
                "terminal": config.name,
                "role": role,
                "argv": argvs[role],
                "cwd": ntpath.join(root, "app") if role != "terminal" else ntpath.dirname(exe),
                "log": ntpath.join(logs, f"{config.name}.{role}.log"),
            })
    return {"root": root, "python": python, "logs": logs, "terminals": terminals, "processes": processes}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--terminals", required=True, help="the terminals file (same as the Linux stack's)")
    parser.add_argument("--python", required=True, help="the VM's Python that runs the bridge processes")
    parser.add_argument("--root", default="C:\\bridge", help="the bridge folder in the VM")
    parser.add_argument("--logs", default="", help="the log folder (default: <root>\\logs); the host's share works")
    parser.add_argument("--only", default="", help="comma-separated terminal names this VM hosts (default: all mt5)")
    args = parser.parse_args(argv)
    document = yaml.safe_load(Path(args.terminals).read_text(encoding="utf-8"))
    only = [n.strip() for n in args.only.split(",") if n.strip()] or None
    json.dump(plan(document, python=args.python, root=args.root, only=only, logs=args.logs or None), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

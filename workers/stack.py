"""The processes that serve one terminal, as command lines.

One place renders them for every launcher: the embedded stack (``run_bridge``), docker-compose
and the Windows VM provisioning. Each entry is ``role -> argv`` (relative to the project root,
``python`` being the project's interpreter).
"""

from __future__ import annotations


def terminal_process_argvs(name: str, python: str = "python") -> dict[str, list[str]]:
    """Processes attached to terminal ``name``: its pinned order worker, and (when present) its
    read process and its poller. Only the ``worker`` role may call trading functions."""
    return {
        "worker": [python, "manage.py", "run_terminal_worker", name],
        "reader": [python, "manage.py", "run_terminal_reader", name],
        "poller": [python, "manage.py", "run_terminal_poller", name],
    }

"""The garbage collector of daphne and the pinned workers (``workers.gc_tuning``): what the process loaded
is frozen and the young generation is larger, unless ``BRIDGE_GC_THRESHOLDS=python``. Each case runs in a
fresh interpreter (a freeze cannot be undone): the probe loads the ASGI application, as
``workers.stack.run_daphne`` does, then tunes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROBE = (
    "import gc, importlib, json, sys\n"
    "from workers.gc_tuning import gc_thresholds, tune_gc\n"
    "from workers.stack import ASGI_APPLICATION\n"
    "importlib.import_module(ASGI_APPLICATION.split(':')[0])\n"
    "tune_gc(gc_thresholds())\n"
    "print(json.dumps({'threshold': gc.get_threshold(), 'frozen': gc.get_freeze_count(),\n"
    "                  'app_loaded': 'bridge_project.asgi' in sys.modules}))\n"
)


def _probe(value: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "BRIDGE_GC_THRESHOLDS"}
    if value is not None:
        env["BRIDGE_GC_THRESHOLDS"] = value
    return subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


def test_the_application_is_frozen_and_the_young_generation_larger_by_default() -> None:
    done = _probe(None)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.splitlines()[-1])
    assert seen["threshold"] == [10_000, 50, 100]
    assert seen["app_loaded"] is True
    assert seen["frozen"] > 10_000, seen  # Django, the project and daphne's stack: far more than that


def test_thresholds_from_the_environment_and_python_s_own() -> None:
    given = json.loads(_probe("5000,20,40").stdout.splitlines()[-1])
    assert given["threshold"] == [5000, 20, 40] and given["frozen"] > 10_000
    python = json.loads(_probe("python").stdout.splitlines()[-1])
    assert python["threshold"] == [700, 10, 10] and python["frozen"] == 0 and python["app_loaded"] is True


def test_a_bad_value_stops_the_process_with_a_clear_message() -> None:
    done = _probe("10000,fifty")
    assert done.returncode != 0
    assert "BRIDGE_GC_THRESHOLDS must be three positive integers" in done.stderr

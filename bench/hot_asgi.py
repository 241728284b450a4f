"""bridge_project.asgi's application with the hot write path in front (bench/writes.py --hot), for measuring
trading.hotwrites before bridge_project/asgi.py wraps its application in it."""
import os
import sys

from bridge_project.asgi import application as _application
from trading.hotwrites import HotWrites

if os.environ.get("BENCH_SWITCH_INTERVAL"):
    sys.setswitchinterval(float(os.environ["BENCH_SWITCH_INTERVAL"]))
application = HotWrites(_application)

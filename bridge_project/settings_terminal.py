"""Settings of a terminal's process (``run_terminal_worker``: pinned worker, reader and poller threads).

The bridge's settings, with the apps that only the web process uses left out: daphne (it imports Twisted at
app loading, ~26 MB), the admin (its autodiscovery imports every ``admin.py`` and with them DRF and the
rate limits), channels and drf-spectacular. A terminal's process never serves HTTP, a WebSocket or the
admin; what it imports it imports through its own code. Selected by ``--settings`` on the command line
(``workers.stack.terminal_process_argvs``); every value, and every environment variable, is the
bridge's (``bridge_project/settings.py``).
"""

from bridge_project.settings import *  # noqa: F403 (the bridge's settings, unchanged)
from bridge_project.settings import INSTALLED_APPS as _ALL_APPS

WEB_ONLY_APPS = frozenset({"daphne", "django.contrib.admin", "channels", "drf_spectacular", "drf_spectacular_sidecar"})
INSTALLED_APPS = [app for app in _ALL_APPS if app not in WEB_ONLY_APPS]

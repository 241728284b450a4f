"""Settings, all from the environment, with a safe embedded default.

The embedded default (no environment at all) is a development bridge on one machine: SQLite under
``var/``, Redis on 127.0.0.1:6379, two emulated terminals from ``terminals.yaml``. Production sets
``BRIDGE_ENV=production`` and must then provide ``SECRET_KEY``, ``BRIDGE_CREDENTIALS_KEY``, ``ALLOWED_HOSTS``
and a Redis password; it refuses development values and test switches (docs/operations.md, "Production
defaults").
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import sys
from pathlib import Path
from urllib.parse import urlparse

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(environ.Env().str("BRIDGE_VAR_DIR", default=str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)

env = environ.Env()

BRIDGE_ENV = env.str("BRIDGE_ENV", default="development")
if BRIDGE_ENV not in {"development", "production"}:
    raise ImproperlyConfigured("BRIDGE_ENV must be 'development' or 'production'")
PRODUCTION = BRIDGE_ENV == "production"

DEBUG = env.bool("DEBUG", default=False)
DEV_SECRET_KEY = "dev-insecure-secret-key-change-me"  # development only
SECRET_KEY = env.str("SECRET_KEY", default="")
if not SECRET_KEY:
    if PRODUCTION:
        raise ImproperlyConfigured("SECRET_KEY must be set when BRIDGE_ENV=production")
    SECRET_KEY = DEV_SECRET_KEY
# Production has no default: the host names the proxy forwards (checked in "Production defaults" below).
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=[] if PRODUCTION else ["*"])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI served from our static files, pinned (no CDN)
    "channels",
    "terminals.apps.TerminalsConfig",
    "sessions.apps.BridgeSessionsConfig",
    "trading.apps.TradingConfig",
    "streams.apps.StreamsConfig",
    "ops.apps.OpsConfig",
    "workers.apps.WorkersConfig",
]

MIDDLEWARE = [
    "ops.middleware.RequestMetricsMiddleware",  # client API latency histogram (/metrics)
    "bridge_project.middleware.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",  # /static/ from the web process (gunicorn and daphne)
    "django.middleware.gzip.GZipMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "bridge_project.urls"
WSGI_APPLICATION = "bridge_project.wsgi.application"
ASGI_APPLICATION = "bridge_project.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database ----------------------------------------------------------------------------------
DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'bridge.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Web, workers and beat all write the embedded SQLite at once: WAL lets readers run beside the
    # writer, IMMEDIATE takes the write lock at BEGIN (no upgrade deadlocks) and the busy timeout
    # makes writers queue instead of failing with "database is locked".
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    # A file (not :memory:) so worker processes started by tests share the test database.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test.sqlite3")}
else:
    # 0 by default: under ASGI each sync request may run on a different thread, and persistent
    # connections then pile up (Django's documented advice). Set DB_CONN_MAX_AGE for WSGI-only setups.
    DATABASES["default"]["CONN_MAX_AGE"] = env.int("DB_CONN_MAX_AGE", default=0)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis, cache, channels ----------------------------------------------------------------------
REDIS_URL = env.str("REDIS_URL", default="redis://127.0.0.1:6379/0")
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "bridge",
        # A Redis that hangs must not hold requests: fail fast (the throttle then fails open).
        "OPTIONS": {"socket_connect_timeout": 2, "socket_timeout": 2},
    }
}
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        # socket_timeout above channels-redis' 5 s BZPOPMIN: redis-py 8 defaults it to 5 s, and the two
        # racing kill idle WebSocket consumers with "Timeout reading from redis" (close 1011).
        "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": 15}], "prefix": "bridge:ch",
                   "capacity": 1000, "expiry": 30},
    }
}

# --- Celery ------------------------------------------------------------------------------------
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default=REDIS_URL)

# --- Bridge ------------------------------------------------------------------------------------
BRIDGE_TERMINALS_FILE = env.str("BRIDGE_TERMINALS_FILE", default=str(BASE_DIR / "terminals.yaml"))
# Authenticated encryption key for MT5 passwords (32 bytes, urlsafe base64). Development without one
# keeps a generated key in var/credentials.key; production refuses to start without it.
BRIDGE_CREDENTIALS_KEY = env.str("BRIDGE_CREDENTIALS_KEY", default="")
if PRODUCTION and not BRIDGE_CREDENTIALS_KEY:
    raise ImproperlyConfigured("BRIDGE_CREDENTIALS_KEY must be set when BRIDGE_ENV=production")
BRIDGE_CREDENTIALS_KEY_FILE = VAR_DIR / "credentials.key"
# Decrypt-only credentials keys (comma-separated, same format), kept while `manage.py
# rotate_credentials_key` moves stored secrets to BRIDGE_CREDENTIALS_KEY (docs/operations.md, Credentials).
BRIDGE_CREDENTIALS_OLD_KEYS = env.list("BRIDGE_CREDENTIALS_OLD_KEYS", default=[])
BRIDGE_SESSION_TTL = env.int("BRIDGE_SESSION_TTL", default=120)
BRIDGE_SESSION_EXPIRY_SWEEP = env.float("BRIDGE_SESSION_EXPIRY_SWEEP", default=10.0)
BRIDGE_SESSION_OPEN_MAX_WAIT = env.float("BRIDGE_SESSION_OPEN_MAX_WAIT", default=30.0)
BRIDGE_WORKER_HEARTBEAT_INTERVAL = env.float("BRIDGE_WORKER_HEARTBEAT_INTERVAL", default=5.0)
# The login outbox (sessions.services): a login not finished this long after its last publish is
# published again (to a live worker); a session still opening after the timeout ends login_failed.
BRIDGE_SESSION_LOGIN_REPUBLISH_AFTER = env.float("BRIDGE_SESSION_LOGIN_REPUBLISH_AFTER", default=15.0)
BRIDGE_SESSION_LOGIN_TIMEOUT = env.float("BRIDGE_SESSION_LOGIN_TIMEOUT", default=90.0)
# The terminal ownership lease (terminals/lease.py): renewed every heartbeat; a worker that has not
# renewed it for this long loses it to a waiting one.
BRIDGE_WORKER_LEASE_TTL = env.float("BRIDGE_WORKER_LEASE_TTL", default=3 * BRIDGE_WORKER_HEARTBEAT_INTERVAL)
BRIDGE_REQUIRE_REQUEST_ID = env.bool("BRIDGE_REQUIRE_REQUEST_ID", default=False)

# Rate limits (bridge_project/ratelimit.py; docs/operations.md, "Security" > "Rate limits"): each is
# <count>/<period> (60/min, 20/10min, 10/s, 100/h, 1000/day); empty, 0 or off: no limit.
_RATE_UNITS = {"s", "sec", "secs", "second", "seconds", "m", "min", "mins", "minute", "minutes",
               "h", "hour", "hours", "d", "day", "days"}


def _rate(name: str, default: str) -> str:
    value = env.str(name, default=default)
    text = value.strip().lower()
    count, _, period = text.partition("/")
    period = period.strip()
    digits = period[: len(period) - len(period.lstrip("0123456789"))]
    unit = period[len(digits):].strip()
    valid = count.strip().isdigit() and unit in _RATE_UNITS and (digits == "" or int(digits) > 0)
    if text not in {"", "0", "off", "none"} and not valid:
        raise ImproperlyConfigured(f"{name}={value!r}: expected <count>/<period>, e.g. 60/min, 20/10min, or off")
    return value


BRIDGE_THROTTLE_RATE = _rate("BRIDGE_THROTTLE_RATE", "6000/min")  # per workspace (valid API key)
BRIDGE_THROTTLE_KEY_RATE = _rate("BRIDGE_THROTTLE_KEY_RATE", BRIDGE_THROTTLE_RATE)  # per API key
BRIDGE_THROTTLE_IP_RATE = _rate("BRIDGE_THROTTLE_IP_RATE", "120/min")  # no/bad credentials, per client IP
BRIDGE_THROTTLE_OPS_RATE = _rate("BRIDGE_THROTTLE_OPS_RATE", "120/min")  # /ops/..., /metrics: per token or IP
BRIDGE_THROTTLE_ADMIN_IP_RATE = _rate("BRIDGE_THROTTLE_ADMIN_IP_RATE", "20/10min")  # admin login POSTs per IP
BRIDGE_THROTTLE_ADMIN_USER_RATE = _rate("BRIDGE_THROTTLE_ADMIN_USER_RATE", "10/10min")  # ... per username
BRIDGE_THROTTLE_REDIS_URL = env.str("BRIDGE_THROTTLE_REDIS_URL", default="")  # empty: REDIS_URL
# 0: the client IP is REMOTE_ADDR. N > 0: the web tier sits behind N trusted reverse proxies, each
# appending to X-Forwarded-For; the client IP is the N-th entry from the right.
BRIDGE_TRUSTED_PROXY_COUNT = env.int("BRIDGE_TRUSTED_PROXY_COUNT", default=0)
BRIDGE_OPS_TOKEN = env.str("BRIDGE_OPS_TOKEN", default="")
# The staff dashboard (/ops/): seconds between the beat's samples of queue depth and events, and between
# two polls of the page.
BRIDGE_OPS_SAMPLE_INTERVAL = env.float("BRIDGE_OPS_SAMPLE_INTERVAL", default=10.0)
BRIDGE_OPS_DASHBOARD_REFRESH = env.float("BRIDGE_OPS_DASHBOARD_REFRESH", default=5.0)
# The read process and the poller give up on a hung terminal after this long (ms) and reconnect;
# the order worker keeps MT5's default (a slow order must not be abandoned mid-call).
BRIDGE_READ_TERMINAL_TIMEOUT_MS = env.int("BRIDGE_READ_TERMINAL_TIMEOUT_MS", default=5000)
# The /events socket's security limits (docs/events.md, "Limits"): single-use ticket lifetime (s);
# connects per API key and failed connects per client IP (N/s|min|hour); client messages per socket;
# JSON depth and size of a client message; how often an open socket re-checks its key (s).
BRIDGE_EVENTS_TICKET_TTL = env.float("BRIDGE_EVENTS_TICKET_TTL", default=30.0)
BRIDGE_EVENTS_CONNECT_RATE = env.str("BRIDGE_EVENTS_CONNECT_RATE", default="30/min")
BRIDGE_EVENTS_CONNECT_FAIL_RATE_IP = env.str("BRIDGE_EVENTS_CONNECT_FAIL_RATE_IP", default="60/min")
BRIDGE_EVENTS_MESSAGE_RATE = env.str("BRIDGE_EVENTS_MESSAGE_RATE", default="20/s")
BRIDGE_EVENTS_MAX_DEPTH = env.int("BRIDGE_EVENTS_MAX_DEPTH", default=32)
BRIDGE_EVENTS_MAX_MESSAGE_BYTES = env.int("BRIDGE_EVENTS_MAX_MESSAGE_BYTES", default=64 * 1024)
BRIDGE_EVENTS_KEY_CHECK_INTERVAL = env.float("BRIDGE_EVENTS_KEY_CHECK_INTERVAL", default=30.0)

# --- REST --------------------------------------------------------------------------------------
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("BRIDGE_MAX_BODY_BYTES", default=64 * 1024)
# Bad input (docs/operations.md "Bad input and limits"): JSON nested deeper is 400 ValidationError
# (bridge_project/parsers.py); a header field (name + value) over this is 431 (middleware). The web
# servers let header fields up to BRIDGE_SERVER_MAX_HEADER_BYTES (64 KiB) through to the app.
BRIDGE_MAX_JSON_DEPTH = env.int("BRIDGE_MAX_JSON_DEPTH", default=32)
BRIDGE_MAX_HEADER_BYTES = env.int("BRIDGE_MAX_HEADER_BYTES", default=8 * 1024)
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["sessions.auth.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["sessions.auth.IsWorkspace"],
    "DEFAULT_THROTTLE_CLASSES": ["sessions.throttling.WorkspaceRateThrottle"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["bridge_project.parsers.BoundedJSONParser"],
    "EXCEPTION_HANDLER": "bridge_project.errors.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "mt5-bridge API",
    "DESCRIPTION": (
        "Task-queue trading bridge for MetaTrader 5. Every write is a task keyed by the client's "
        "x-request-id; errors share one body shape: {\"error\": {\"code\", \"message\", \"details\"}}."
    ),
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # /api/docs/ loads Swagger UI from drf-spectacular-sidecar's static files (version pinned in
    # requirements.txt), never from a CDN: it works offline and runs no third-party script.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

# --- Static files (admin, the docs page's Swagger UI) ----------------------------------------------
# WhiteNoise serves /static/ from the web process itself, under gunicorn and daphne alike (Django serves
# static files only with DEBUG). Without collectstatic (make run, tests) it serves the installed apps'
# own static directories (finders); the Docker image collects and compresses them into
# BRIDGE_STATIC_ROOT at build time and turns the finders off.
STATIC_URL = "static/"
STATIC_ROOT = Path(env.str("BRIDGE_STATIC_ROOT", default=str(VAR_DIR / "static")))
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
WHITENOISE_USE_FINDERS = env.bool("BRIDGE_STATIC_USE_FINDERS", default=True)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

# --- Admin -------------------------------------------------------------------------------------
# Where Django admin is mounted (a less guessable path keeps scanners off the login form).
BRIDGE_ADMIN_PATH = env.str("BRIDGE_ADMIN_PATH", default="admin/").strip("/") + "/"
if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._~-]*(/[A-Za-z0-9._~-]+)*/", BRIDGE_ADMIN_PATH) or \
        BRIDGE_ADMIN_PATH.split("/")[0] in {"mt5", "api", "static", "health", "metrics", "events", "ops"}:
    raise ImproperlyConfigured(f"BRIDGE_ADMIN_PATH {BRIDGE_ADMIN_PATH!r}: letters, digits, '.', '_', '~', '-' "
                               "and '/' only, and not a path of the API, docs, static files or probes")

# --- Security headers and cookies (docs/operations.md "Security") ---------------------------------
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SESSION_COOKIE_HTTPONLY = True
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

# Test-only hooks (trading.execution.crash_point, BRIDGE_CRASH_AT) act only in test mode: on under pytest
# and in the processes the tests start (they inherit the variable), off everywhere else.
BRIDGE_TEST_MODE = env.bool("BRIDGE_TEST_MODE", default="pytest" in sys.modules and not PRODUCTION)
if BRIDGE_TEST_MODE and not PRODUCTION:
    os.environ.setdefault("BRIDGE_TEST_MODE", "1")

# --- Production defaults (docs/operations.md "Production defaults") -------------------------------

def _url_has_password(url: str) -> bool:
    return url.startswith("unix://") or bool(urlparse(url).password)


def production_refusals() -> list[str]:
    """What keeps this environment from running as production (empty: it may)."""
    refusals = []
    if DEBUG:
        refusals.append("DEBUG must be off")
    if SECRET_KEY == DEV_SECRET_KEY or SECRET_KEY.startswith("django-insecure") or len(SECRET_KEY) < 32 \
            or len(set(SECRET_KEY)) < 8:
        refusals.append("SECRET_KEY is the development key or too weak (32+ random characters: "
                        "scripts/gen_env.py makes one)")
    if not ALLOWED_HOSTS or any(host.strip() in {"*", ""} for host in ALLOWED_HOSTS):
        refusals.append("ALLOWED_HOSTS must list the host names the bridge is served under ('*' is refused)")
    try:
        key = base64.urlsafe_b64decode(BRIDGE_CREDENTIALS_KEY.strip().encode())
    except (ValueError, binascii.Error):
        key = b""
    dev_key = BRIDGE_CREDENTIALS_KEY_FILE.read_text().strip() if BRIDGE_CREDENTIALS_KEY_FILE.is_file() else None
    if len(key) != 32 or len(set(key)) < 8 or BRIDGE_CREDENTIALS_KEY.strip() == dev_key:
        refusals.append("BRIDGE_CREDENTIALS_KEY must be a random 32-byte urlsafe-base64 key, not the development "
                        "key of var/credentials.key")
    for name, url in (("REDIS_URL", REDIS_URL), ("CELERY_BROKER_URL", CELERY_BROKER_URL)):
        if not _url_has_password(url):
            refusals.append(f"{name} must carry the Redis password (redis://:PASSWORD@host:6379/0)")
    for name in ("BRIDGE_CRASH_AT", "BRIDGE_TEST_MODE"):
        if env.str(name, default=""):
            refusals.append(f"{name} is a test-only switch")
    return refusals


if PRODUCTION:
    _refusals = production_refusals()
    if _refusals:
        raise ImproperlyConfigured("BRIDGE_ENV=production refuses to start: " + "; ".join(_refusals))
    # Behind the TLS proxy: it says the request came over HTTPS in this header (set it, strip the
    # client's). Empty BRIDGE_PROXY_SSL_HEADER: no proxy header is trusted.
    _proxy_header = env.str("BRIDGE_PROXY_SSL_HEADER", default="X-Forwarded-Proto")
    if _proxy_header:
        SECURE_PROXY_SSL_HEADER = ("HTTP_" + _proxy_header.upper().replace("-", "_"), "https")
    SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
    # Probes and the Prometheus scrape come over the internal network, without TLS.
    SECURE_REDIRECT_EXEMPT = env.list("SECURE_REDIRECT_EXEMPT", default=[r"^health$", r"^metrics$"])
    SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31_536_000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=False)
    SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True

LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

# --- Beat schedule (periodic maintenance; other apps add their entries here) ----------------------
CELERY_BEAT_SCHEDULE = {
    "sessions.expire": {"task": "sessions.expire_sessions", "schedule": BRIDGE_SESSION_EXPIRY_SWEEP},
    "sessions.redrive_logins": {"task": "sessions.redrive_logins", "schedule": BRIDGE_SESSION_EXPIRY_SWEEP},
    # trading (docs/orders.md): outbox re-publish, reconciliation fan-out, request-id retention.
    "trading.sweep_outbox": {"task": "trading.sweep_outbox",
                             "schedule": env.float("BRIDGE_OUTBOX_SWEEP_INTERVAL", default=5.0)},
    "trading.reconcile_all": {"task": "trading.reconcile_all",
                              "schedule": env.float("BRIDGE_RECONCILE_INTERVAL", default=30.0)},
    "trading.purge_requests": {"task": "trading.purge_requests", "schedule": 3600.0},
    # ops (docs/operations.md "Dashboard"): queue depths and the events counter for the dashboard's charts.
    "ops.sample_dashboard": {"task": "ops.sample_dashboard", "schedule": BRIDGE_OPS_SAMPLE_INTERVAL},
}

# Terminal reads (terminals/reads.py; docs/reads.md): the largest number of ticks in one response
# (count, or one page of a from/to range), and the longest broker suffix accepted when resolving
# EURUSD -> EURUSDm / EURUSD.pro (0 disables).
BRIDGE_READ_MAX_TICKS = env.int("BRIDGE_READ_MAX_TICKS", default=100_000)
BRIDGE_SYMBOL_SUFFIX_MAX = env.int("BRIDGE_SYMBOL_SUFFIX_MAX", default=6)


# --- the order path (trading; docs/orders.md) -----------------------------------------------------
# Magic number stamped on every bridge order when the client gives none.
BRIDGE_MAGIC = env.int("BRIDGE_MAGIC", default=770_001)
# Default max deviation (points) for market orders and closes when the client gives none.
BRIDGE_DEFAULT_DEVIATION = env.int("BRIDGE_DEFAULT_DEVIATION", default=20)
# How many times a requote / price changed / price off is retried with a fresh price.
BRIDGE_ORDER_RETRIES = env.int("BRIDGE_ORDER_RETRIES", default=3)
# Longest time an order_send can still act at the terminal after it was sent (IPC timeout of
# the MetaTrader5 module is 60 s): a sent task not found at the terminal before this is
# ``unknown``, after it ``failed`` (it never executed).
BRIDGE_INFLIGHT_BOUND = env.float("BRIDGE_INFLIGHT_BOUND", default=90.0)
# The outbox sweeper re-publishes a task still ``queued`` this long after its last publish.
BRIDGE_OUTBOX_REPUBLISH_AFTER = env.float("BRIDGE_OUTBOX_REPUBLISH_AFTER", default=15.0)
# A task still queued behind a delivery (kombu "unacked") older than this was received by a worker
# that died before its claim (a live one claims within milliseconds): the sweeper re-publishes it.
BRIDGE_OUTBOX_DELIVERY_GRACE = env.float("BRIDGE_OUTBOX_DELIVERY_GRACE", default=15.0)
# Beat period of the outbox sweep and of the reconciliation fan-out.
BRIDGE_OUTBOX_SWEEP_INTERVAL = env.float("BRIDGE_OUTBOX_SWEEP_INTERVAL", default=5.0)
BRIDGE_RECONCILE_INTERVAL = env.float("BRIDGE_RECONCILE_INTERVAL", default=30.0)
# Periodic reconciliation only looks at dispatched/unknown tasks older than this.
BRIDGE_RECONCILE_AFTER = env.float("BRIDGE_RECONCILE_AFTER", default=30.0)
# Days of terminal history scanned for bridge-tagged orders no task owns.
BRIDGE_UNOWNED_SCAN_DAYS = env.float("BRIDGE_UNOWNED_SCAN_DAYS", default=2.0)
# Request ids (and their tasks) are kept this many days; then purged (docs/orders.md).
BRIDGE_REQUEST_ID_RETENTION_DAYS = env.int("BRIDGE_REQUEST_ID_RETENTION_DAYS", default=30)
# How long POST /orders waits for the terminal's symbol specs when none are cached.
BRIDGE_SYMBOL_SPEC_WAIT = env.float("BRIDGE_SYMBOL_SPEC_WAIT", default=5.0)
# A task whose execution raises an error of the bridge itself (not the terminal's, not the gateway's)
# before it reached the terminal is tried again by reconciliation at most this many times in all;
# then it ends ``failed`` with ``BridgeError`` (trading.task_errors).
BRIDGE_TASK_MAX_ERRORS = env.int("BRIDGE_TASK_MAX_ERRORS", default=3)
# Test-only: make the pinned worker SIGKILL itself at a point of the execution path
# (after_claim, after_send). Acts only in test mode (BRIDGE_TEST_MODE, set by the test run);
# production refuses to start with either set (bridge_project/settings.py).
BRIDGE_CRASH_AT = env.str("BRIDGE_CRASH_AT", default="")

# --- the read path (trading/reads; docs/reads.md) -------------------------------------------------
# Web tier: how long a request/reply read may take before 502 BridgeUnavailable.
BRIDGE_READ_TIMEOUT = env.float("BRIDGE_READ_TIMEOUT", default=2.0)
# ... plus this much per 10,000 bars/ticks asked for (large copies take longer to serialize).
BRIDGE_READ_TIMEOUT_PER_10K = env.float("BRIDGE_READ_TIMEOUT_PER_10K", default=0.5)
# A reader heartbeat older than this means the read process is gone (web answers 502 at once).
BRIDGE_READER_HEARTBEAT_TTL = env.float("BRIDGE_READER_HEARTBEAT_TTL", default=2.0)
# Poller: seconds between two snapshots of account, positions, orders, ticks and books.
BRIDGE_POLL_INTERVAL = env.float("BRIDGE_POLL_INTERVAL", default=0.25)
# ... and while the terminal is idle (no client watches or asked a quote, nothing but prices changed for
# a while, no change by the bridge since the last snapshot): at most half of BRIDGE_SNAPSHOT_MAX_AGE.
BRIDGE_POLL_IDLE_INTERVAL = env.float("BRIDGE_POLL_IDLE_INTERVAL", default=1.0)
# A snapshot older than this is not served (the poller is stuck or gone): the read falls back to
# the read queue, and answers 502 when that fails too.
BRIDGE_SNAPSHOT_MAX_AGE = env.float("BRIDGE_SNAPSHOT_MAX_AGE", default=2.0)
# Read-your-writes: a snapshot older than the last change the bridge made at the terminal is not
# served; the read waits this long for the poller's next cycle, then asks the terminal itself.
BRIDGE_SNAPSHOT_CATCHUP_WAIT = env.float("BRIDGE_SNAPSHOT_CATCHUP_WAIT", default=0.6)
# The hot read path (trading/reads/hotpath.py): GET /account, /positions and /orders answered from the
# snapshot inside the ASGI server, without Django's request cycle, whenever it can vouch for the answer
# (else the request goes the full way). Off: every request takes the full path.
BRIDGE_HOT_READS = env.bool("BRIDGE_HOT_READS", default=True)
# The hot write path (trading/hotwrites.py): POST /orders answered in front of Django, the orders waiting at
# once in one ledger transaction. Off: every order takes the full path.
BRIDGE_HOT_WRITES = env.bool("BRIDGE_HOT_WRITES", default=True)
# Cached API keys and sessions of the hot path are reloaded from the database after this many seconds
# even when no change was announced (a revocation or session change takes effect at once otherwise).
BRIDGE_ACCESS_CACHE_TTL = env.float("BRIDGE_ACCESS_CACHE_TTL", default=1.0)
# Symbols asked for on /quotes/{symbol} stay watched by the poller this long (seconds).
BRIDGE_QUOTE_INTEREST_TTL = env.float("BRIDGE_QUOTE_INTEREST_TTL", default=300.0)
# BRIDGE_READ_MAX_TICKS and BRIDGE_SYMBOL_SUFFIX_MAX: with the terminal reads above.

# --- events (streams; docs/events.md) ---------------------------------------------------------------
# At most this many replayable events are kept per session (exact MAXLEN).
BRIDGE_EVENTS_MAXLEN = env.int("BRIDGE_EVENTS_MAXLEN", default=10_000)
# Replayable events older than this many seconds are trimmed (checked on every publish).
BRIDGE_EVENTS_MAX_AGE = env.float("BRIDGE_EVENTS_MAX_AGE", default=24 * 3600)
# Length of the fan-out stream that relays read (a buffer, not a history).
BRIDGE_EVENTS_FANOUT_MAXLEN = env.int("BRIDGE_EVENTS_FANOUT_MAXLEN", default=20_000)
# Minimum seconds between two ``profit`` events of one terminal (throttle).
BRIDGE_EVENTS_PROFIT_INTERVAL = env.float("BRIDGE_EVENTS_PROFIT_INTERVAL", default=0.5)
# Minimum seconds between two ``account`` events caused by equity/margin-level drift alone. Balance, margin and free-margin changes caused by trades are published at once.
BRIDGE_EVENTS_ACCOUNT_INTERVAL = env.float("BRIDGE_EVENTS_ACCOUNT_INTERVAL", default=1.0)
# Replayable events a socket may have waiting to be written before it is closed with 4429.
BRIDGE_EVENTS_CLIENT_MAX_PENDING = env.int("BRIDGE_EVENTS_CLIENT_MAX_PENDING", default=2_000)
# Bytes buffered by the server for a socket above which the bridge stops writing to it.
BRIDGE_EVENTS_CLIENT_HIGH_WATER = env.int("BRIDGE_EVENTS_CLIENT_HIGH_WATER", default=1 << 20)
# Seconds a socket may stay above the high-water mark before it is closed with 4429.
BRIDGE_EVENTS_CLIENT_STALL_TIMEOUT = env.float("BRIDGE_EVENTS_CLIENT_STALL_TIMEOUT", default=15.0)
# Seconds between a socket's database checks that its session is still live (the fallback: a session that ends closes its sockets at once through its final ``session`` event).
BRIDGE_EVENTS_SESSION_CHECK_INTERVAL = env.float("BRIDGE_EVENTS_SESSION_CHECK_INTERVAL", default=30.0)

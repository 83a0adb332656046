"""Settings for the test project. The database comes from ``DATABASE_URL`` (django-environ).

DATABASE_URL=postgres://postgres@127.0.0.1:5432/eventsource pytest
DATABASE_URL=sqlite:////tmp/eventsource.sqlite3 pytest     (the default is a file here)
"""

from __future__ import annotations

from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent
env = environ.Env()

SECRET_KEY = "django-eventsource-tests"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
ALLOWED_HOSTS = ["*"]

DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'eventsource.sqlite3'}")
}
_default = DATABASES["default"]
if _default["ENGINE"].endswith("sqlite3"):
    # Real multi-process tests need a file, not Django's in-memory test database; derive it
    # from NAME so parallel tox envs never share one. Writers wait for the lock instead of
    # failing at once, and take it at BEGIN (no deadlock when a reader upgrades to a writer).
    _default["TEST"] = {"NAME": f"{_default['NAME']}.test"}
    if not env.bool("EVENTSOURCE_TEST_SQLITE_DEFAULTS", default=False):
        _default.setdefault("OPTIONS", {}).update({"timeout": 30, "transaction_mode": "IMMEDIATE"})
    if _timeout := env.str("EVENTSOURCE_TEST_SQLITE_TIMEOUT", default=""):
        # A busy timeout this short (seconds): another process's write lock outlasts it.
        _default.setdefault("OPTIONS", {})["timeout"] = float(_timeout)
    # else: Django's own defaults (deferred BEGIN, the 5 s timeout of Python's sqlite3), as
    # a project that sets no OPTIONS has them (tests/concurrency/test_sqlite_defaults.py).
else:
    _pg_options = []
    if _sleep := env.str("EVENTSOURCE_TEST_HORIZON_SLEEP", default=""):
        # Fault injection: every session's horizon function sleeps this long (seconds)
        # between the reading statement's snapshot and its pg_locks read; the suite must
        # still pass.
        _pg_options.append(f"-c django_eventsource.horizon_test_sleep={float(_sleep)}")
    if _lock_timeout := env.str("EVENTSOURCE_TEST_PG_LOCK_TIMEOUT", default=""):
        # A lock_timeout this short (seconds): another session's lock outlasts it.
        _pg_options.append(f"-c lock_timeout={float(_lock_timeout) * 1000:g}")
    if _pg_options:
        _default.setdefault("OPTIONS", {})["options"] = " ".join(_pg_options)

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# The admin tests log users in by the hundred: a fast hasher (never for production).
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_eventsource",
    "tests.testapp",
]

MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

ROOT_URLCONF = "tests.urls"
STATIC_URL = "/static/"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

EVENTSOURCE = {
    "POLL_INTERVAL": env.float("EVENTSOURCE_POLL_INTERVAL", default=0.05),
    "HEARTBEAT_INTERVAL": env.float("EVENTSOURCE_HEARTBEAT_INTERVAL", default=5.0),
    "RETRY_BACKOFF": env.float("EVENTSOURCE_RETRY_BACKOFF", default=0.01),
    "ERROR_POLICY": env.str("EVENTSOURCE_ERROR_POLICY", default="pause"),
    "MAX_RETRIES": env.int("EVENTSOURCE_MAX_RETRIES", default=3),
    "MAX_HELD_SECONDS": env.float("EVENTSOURCE_MAX_HELD_SECONDS", default=60.0),
    # The counters' tenant labels are per process: the suite's many tenants must not push
    # the ones a metrics test checks into "(other)" (a test of the limit sets its own).
    "METRICS_MAX_TENANTS": 10_000,
}

if _log_file := env.str("EVENTSOURCE_TEST_LOG_FILE", default=""):
    # A worker under test writes the library's log records as JSON lines, with the formatter
    # configuration docs/howto/monitoring.md shows.
    LOGGING = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "json": {
                "()": "pythonjsonlogger.json.JsonFormatter",
                "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s",
            },
        },
        "handlers": {
            "json": {"class": "logging.FileHandler", "filename": _log_file, "formatter": "json"},
        },
        "loggers": {
            "django_eventsource": {
                "handlers": ["json"],
                "level": env.str("EVENTSOURCE_TEST_LOG_LEVEL", default="DEBUG"),
                "propagate": False,
            },
        },
    }

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
    _default.setdefault("OPTIONS", {}).update({"timeout": 30, "transaction_mode": "IMMEDIATE"})

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

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
    "RETRY_BACKOFF": 0.01,
}

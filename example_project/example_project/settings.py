"""Settings of the example project, read from the environment with django-environ.

DATABASE_URL defaults to a SQLite file next to manage.py; point it at PostgreSQL with e.g.
DATABASE_URL=postgres://postgres@127.0.0.1:5432/eventsource_example (needs psycopg).
"""

from __future__ import annotations

from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
env = environ.Env()

# A demo: DEBUG and a constant key by default. Anything else must bring its own key.
DEMO_SECRET_KEY = "django-eventsource-example-not-secret"
SECRET_KEY = env("DJANGO_SECRET_KEY", default=DEMO_SECRET_KEY)
DEBUG = env.bool("DJANGO_DEBUG", default=True)
if not DEBUG and SECRET_KEY == DEMO_SECRET_KEY:
    raise ImproperlyConfigured(
        "DJANGO_DEBUG is off but DJANGO_SECRET_KEY is not set: the example's constant key is "
        "public. Set DJANGO_SECRET_KEY to a secret value (e.g. python -c 'import secrets; "
        "print(secrets.token_urlsafe(50))')."
    )
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["127.0.0.1", "localhost"])

USE_TZ = True
TIME_ZONE = "UTC"
LANGUAGE_CODE = "en-us"

DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'example.sqlite3'}")
}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # The database holds the admin's password hash: readable by this user only. SQLite
    # creates its journal files with the database file's permissions.
    _sqlite = Path(DATABASES["default"]["NAME"])
    if DATABASES["default"]["NAME"] not in ("", ":memory:") and _sqlite.parent.is_dir():
        if not _sqlite.exists():
            _sqlite.touch(mode=0o600)
        elif _sqlite.stat().st_mode & 0o077:
            _sqlite.chmod(0o600)
    # Writers (the web process, simulate_tasks, replay_projections) wait for SQLite's lock
    # instead of failing at once, and take it at BEGIN, so a reader never deadlocks upgrading.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"timeout": 30, "transaction_mode": "IMMEDIATE"}
    )

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_eventsource",
    "tasks",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "example_project.urls"
WSGI_APPLICATION = "example_project.wsgi.application"
STATIC_URL = "static/"

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
            ]
        },
    }
]

# django-eventsource: every key is optional; see docs/reference/settings.md.
EVENTSOURCE = {
    "BATCH_SIZE": env.int("EVENTSOURCE_BATCH_SIZE", default=500),
    "POLL_INTERVAL": env.float("EVENTSOURCE_POLL_INTERVAL", default=1.0),
    "ERROR_POLICY": env.str("EVENTSOURCE_ERROR_POLICY", default="pause"),
}

# Logging: django-eventsource logs through the standard logging module, one logger per module
# under "django_eventsource" (docs: Monitoring). EVENTSOURCE_LOG_LEVEL=INFO shows worker
# starts and stops, locks, standbys and takeovers; DEBUG adds every batch and append.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "django_eventsource": {
            "handlers": ["console"],
            "level": env.str("EVENTSOURCE_LOG_LEVEL", default="WARNING"),
            "propagate": False,
        },
    },
}

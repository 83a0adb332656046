"""Settings of the example project, read from the environment with django-environ.

DATABASE_URL defaults to a SQLite file next to manage.py; point it at PostgreSQL with e.g.
DATABASE_URL=postgres://postgres@127.0.0.1:5432/eventsource_example (needs psycopg).
"""

from __future__ import annotations

from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent
env = environ.Env()

SECRET_KEY = env("DJANGO_SECRET_KEY", default="django-eventsource-example-not-secret")
DEBUG = env.bool("DJANGO_DEBUG", default=True)
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["127.0.0.1", "localhost"])

USE_TZ = True
TIME_ZONE = "UTC"
LANGUAGE_CODE = "en-us"

DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'example.sqlite3'}")
}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
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

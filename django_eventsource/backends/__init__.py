"""Vendor-specific code for the event store, chosen by ``connection.vendor``.

`backend_for` returns the [`Backend`][django_eventsource.backends.base.Backend] of a
connection: the append statement and its stamp, the read horizon, value adapters, the
projection lock and the follower's wake-ups. PostgreSQL's ordering machinery lives in
``backends/postgresql/``; SQLite's in ``backends/sqlite.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from django_eventsource.backends.base import Backend
from django_eventsource.backends.postgresql import PostgreSQLBackend
from django_eventsource.backends.sqlite import SQLiteBackend
from django_eventsource.exceptions import NotSupportedOnBackend

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

__all__ = ["SUPPORTED_VENDORS", "Backend", "backend_for"]

SUPPORTED_VENDORS = ("postgresql", "sqlite")

#: One (stateless) backend per database vendor.
_backends: dict[str, Backend] = {}


def backend_for(connection: BaseDatabaseWrapper) -> Backend:
    """The backend for a Django connection (`NotSupportedOnBackend` for other vendors)."""
    vendor = connection.vendor
    backend = _backends.get(vendor)
    if backend is not None:
        return backend
    if vendor == "postgresql":
        backend = PostgreSQLBackend()
    elif vendor == "sqlite":
        backend = SQLiteBackend()
    else:
        raise NotSupportedOnBackend(
            "The event store", vendor, "Use PostgreSQL (production) or SQLite (development)."
        )
    _backends[vendor] = backend
    return backend

"""Vendor-specific SQL for the event store, chosen by ``connection.vendor``.

The store's SQL is the same on every backend except for three fragments, which each backend
supplies: how a new event's ordering ``stamp`` is computed, which rows a reader may see, and
how values are adapted on the way in and out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from django_eventsource.exceptions import NotSupportedOnBackend

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

    from django_eventsource.backends.base import Backend

__all__ = ["SUPPORTED_VENDORS", "backend_for"]

SUPPORTED_VENDORS = ("postgresql", "sqlite")


def backend_for(connection: BaseDatabaseWrapper) -> Backend:
    """The :class:`~django_eventsource.backends.base.Backend` for a Django connection."""
    vendor = connection.vendor
    if vendor == "postgresql":
        from django_eventsource.backends.postgresql import PostgreSQLBackend

        return PostgreSQLBackend()
    if vendor == "sqlite":
        from django_eventsource.backends.sqlite import SQLiteBackend

        return SQLiteBackend()
    raise NotSupportedOnBackend(
        "The event store", vendor, "Use PostgreSQL (production) or SQLite (development)."
    )

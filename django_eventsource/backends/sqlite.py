"""SQLite: writers are serialized by the database lock, so positions are commit-ordered.

A write transaction holds SQLite's lock from its first write until it commits, so an
``AUTOINCREMENT`` position allocated by one writer is committed before the next writer can
allocate one. Reading ``position > last`` is therefore gap-safe, and the stamp is a constant 0.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from django.utils.dateparse import parse_datetime

from django_eventsource.backends.base import Backend


class SQLiteBackend(Backend):
    vendor = "sqlite"
    supports_notify = False
    stamped = False

    def stamp_sql(self, table: str) -> str:
        return "0"

    def horizon_sql(self) -> None:
        return None

    def adapt_uuid(self, value: UUID | None) -> Any:
        return None if value is None else value.hex

    def adapt_datetime(self, value: datetime) -> Any:
        # Django stores naive UTC text on SQLite (with USE_TZ); never rely on sqlite3 adapters.
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value.isoformat(sep=" ")

    def to_datetime(self, value: Any) -> datetime:
        if isinstance(value, datetime):
            parsed = value
        else:
            result = parse_datetime(value)
            if result is None:
                raise ValueError(f"Unparseable datetime {value!r}")
            parsed = result
        return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)

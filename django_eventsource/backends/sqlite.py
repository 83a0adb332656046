"""SQLite: writers are serialized by the database lock, so positions are commit-ordered.

A write transaction holds SQLite's lock from its first write until it commits, so an
``AUTOINCREMENT`` position allocated by one writer is committed before the next writer can
allocate one. Reading ``position > last`` is therefore gap-safe, and the stamp is a constant 0.
Followers poll (there is no NOTIFY), and one runner per projection is a lease on its state row.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

from django.utils.dateparse import parse_datetime

from django_eventsource.backends.base import AppendRow, Backend, ProjectionLock
from django_eventsource.backends.lease import LeaseLock
from django_eventsource.constants import ExpectedVersion

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

__all__ = ["SQLiteBackend"]

INSERT_COLUMNS = (
    "event_id, event_type, schema_version, tenant_id, aggregate_id, aggregate_type, "
    "aggregate_version, payload, metadata, correlation_id, causation_id, occurred_at, "
    "recorded_at, stamp"
)


class SQLiteBackend(Backend):
    vendor = "sqlite"
    stamped = False

    def horizon_sql(self) -> None:
        return None

    def lock_new_rows(self, connection: BaseDatabaseWrapper, keys: Sequence[int]) -> None:
        """Nothing to do: SQLite serializes writers, so a second append waits for the first
        to commit before it looks for the row."""

    def lock_out_appends(
        self, connection: BaseDatabaseWrapper, *, exclusive: bool = False
    ) -> None:
        """Nothing to do: SQLite serializes writers, so the caller's first write takes the
        database's write lock, which waits for the open appending transaction and makes
        the next ones wait."""

    def projection_lock(
        self, name: str, tenant_id: str | None, using: str, *, ttl: float
    ) -> ProjectionLock:
        return LeaseLock(name, tenant_id, using, ttl=ttl)

    def append_statement(
        self,
        table: str,
        *,
        tenant_id: str,
        aggregate_id: UUID,
        recorded_at: datetime,
        rows: Sequence[AppendRow],
        expected_version: int,
        guard: bool = False,
    ) -> tuple[str, list[Any]]:
        """One ``INSERT … SELECT`` that checks the stream's version (``expected_version``),
        assigns versions and returns (position, version) per event.

        ``guard`` needs nothing here: a statement that fails in SQLite is rolled back alone,
        and the transaction around it goes on."""
        cte = (
            "WITH cur AS (SELECT COALESCE(MAX(aggregate_version), 0) AS v "
            f"FROM {table} WHERE tenant_id = %s AND aggregate_id = %s) "
        )
        condition_params: list[Any] = []
        if expected_version >= 0:
            condition, condition_params = "cur.v = %s", [expected_version]
        elif expected_version == ExpectedVersion.STREAM_EXISTS:
            condition = "cur.v > 0"
        else:
            condition = "1 = 1"
        row_sql = "(" + ", ".join(["%s"] * 10) + ")"
        values: list[Any] = []
        for row in rows:
            values += [
                row[0],
                self.adapt_uuid(row[1]),
                row[2],
                row[3],
                row[4],
                row[5],
                row[6],
                self.adapt_uuid(row[7]),
                self.adapt_uuid(row[8]),
                self.adapt_datetime(row[9]),
            ]
        sql = (
            f"{cte}INSERT INTO {table} ({INSERT_COLUMNS}) "
            "SELECT v.column2, v.column3, v.column4, %s, %s, v.column5, cur.v + v.column1, "
            "v.column6, v.column7, v.column8, v.column9, v.column10, %s, 0 "
            f"FROM cur, (VALUES {', '.join([row_sql] * len(rows))}) AS v "
            f"WHERE {condition} ORDER BY v.column1 "
            "RETURNING position, aggregate_version"
        )
        aggregate = self.adapt_uuid(aggregate_id)
        params = [tenant_id, aggregate, tenant_id, aggregate, self.adapt_datetime(recorded_at)]
        return sql, params + values + condition_params

    def is_version_conflict(self, exc: Exception) -> bool:
        # SQLite names the columns, not the constraint: "UNIQUE constraint failed:
        # django_eventsource_event.tenant_id, ....aggregate_id, ....aggregate_version".
        return "django_eventsource_event.aggregate_version" in str(exc)

    def time_bucket_sql(self, column: str) -> str:
        # Django stores UTC text; julianday() reads it. CAST truncates: a floor for x >= 0.
        return f"CAST(((julianday({column}) - 2440587.5) * 86400.0 - %s) * %s AS INTEGER)"

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

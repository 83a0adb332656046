"""The interface every event-store backend implements."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

#: One event to append: (ordinal, event_id, event_type, schema_version, aggregate_type,
#: payload JSON, metadata JSON, correlation_id, causation_id, occurred_at).
AppendRow = tuple[int, UUID, str, int, str, str, str, UUID | None, UUID | None, datetime]

INSERT_COLUMNS = (
    "event_id, event_type, schema_version, tenant_id, aggregate_id, aggregate_type, "
    "aggregate_version, payload, metadata, correlation_id, causation_id, occurred_at, "
    "recorded_at, stamp"
)


class Backend:
    """SQL fragments and value adapters for one database vendor."""

    vendor: str = ""
    #: Whether follow mode can wake on LISTEN/NOTIFY (otherwise it polls).
    supports_notify: bool = False
    #: Whether the driver returns UUID and aware datetime columns as such (no conversion).
    native_types: bool = False
    #: Whether rows carry a causal stamp that orders them (PostgreSQL). Without one, the
    #: position is commit order, and readers order and resume by it alone (index-backed).
    stamped: bool = True

    def stamp_sql(self, table: str) -> str:
        """SQL computing the ordering stamp of rows inserted by the current statement."""
        raise NotImplementedError

    def horizon_sql(self) -> str | None:
        """SQL for the exclusive upper bound on visible stamps, or None when all are visible."""
        raise NotImplementedError

    def notify_sql(self) -> str:
        """Extra RETURNING expression that wakes followers (``""`` where unsupported)."""
        return ""

    def notify_params(self) -> list[Any]:
        return []

    def version_check(self, table: str, expected_version: int) -> tuple[str, str, list[Any]]:
        """How an append checks the stream's version: ``(cte, condition, params)``.

        ``cte`` defines ``cur.v``, the stream's current version, and ``condition`` filters the
        inserted rows on it (no row is inserted when it is false).
        """
        cte = (
            "WITH cur AS (SELECT COALESCE(MAX(aggregate_version), 0) AS v "
            f"FROM {table} WHERE tenant_id = %s AND aggregate_id = %s) "
        )
        if expected_version >= 0:
            return cte, "cur.v = %s", [expected_version]
        if expected_version == -2:  # ExpectedVersion.STREAM_EXISTS
            return cte, "cur.v > 0", []
        return cte, "1 = 1", []

    def append_statement(
        self,
        table: str,
        *,
        tenant_id: str,
        aggregate_id: UUID,
        recorded_at: datetime,
        rows: Sequence[AppendRow],
        expected_version: int,
    ) -> tuple[str, list[Any]]:
        """One INSERT … SELECT that checks the stream's version (``expected_version``),
        assigns versions, computes the stamp and returns (position, version) per event."""
        cte, condition, condition_params = self.version_check(table, expected_version)
        row_sql = self.values_row_sql()
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
            "v.column6, v.column7, v.column8, v.column9, v.column10, %s, "
            f"{self.stamp_sql(table)} "
            f"FROM cur, (VALUES {', '.join([row_sql] * len(rows))}) AS v "
            f"WHERE {condition} ORDER BY v.column1 "
            f"RETURNING position, aggregate_version{self.notify_sql()}"
        )
        aggregate = self.adapt_uuid(aggregate_id)
        params = [tenant_id, aggregate, tenant_id, aggregate, self.adapt_datetime(recorded_at)]
        return sql, params + values + condition_params + self.notify_params()

    def cast(self, sql: str, type_name: str) -> str:
        """``sql`` cast to the PostgreSQL type ``type_name`` where the backend needs it."""
        return sql

    def values_row_sql(self) -> str:
        """One row of the append's VALUES list (ordinal, event_id, type, schema version,
        aggregate type, payload, metadata, correlation id, causation id, occurred_at)."""
        types = ("int", "uuid", "text", "int", "text", "jsonb", "jsonb", "uuid", "uuid")
        return "(" + ", ".join(self.cast("%s", t) for t in (*types, "timestamptz")) + ")"

    def adapt_uuid(self, value: UUID | None) -> Any:
        return value

    def adapt_datetime(self, value: datetime) -> Any:
        return value

    def to_uuid(self, value: Any) -> UUID | None:
        if value is None or isinstance(value, UUID):
            return value
        return UUID(value)

    def to_datetime(self, value: Any) -> datetime:
        return value  # type: ignore[no-any-return]

    def read_cursor(self, connection: Any) -> Any:
        """A cursor for reading events (Django's, wrapped for logging and error mapping)."""
        return connection.cursor()

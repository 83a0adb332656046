"""PostgreSQL: a gap-safe global order without serializing writers.

A ``bigserial`` position is allocated at insert time but becomes visible at commit time, so
commits land out of position order: a reader that resumes from "position > last seen" skips
an event whose transaction committed late. We order by a *causal transaction-id stamp*
instead:

``stamp = GREATEST(current transaction id, max(stamp) of the committed events)``

computed inside the append's INSERT. Readers only see rows whose stamp is below the oldest
transaction id still running (``pg_snapshot_xmin(pg_current_snapshot())``) and order by
``(stamp, position)``.

* No skips: a running writer's stamp is at least its own transaction id, which is at least
  the horizon, so its rows stay invisible until it ends; once a reader has passed a row with
  stamp ``s``, the horizon was above ``s``, so every transaction that could still commit has
  an id, hence a stamp, above ``s``.
* Per-stream (and causal) order: an append that saw another's committed event takes a stamp at
  least as large and a larger position, so it sorts after it.
* Writers are never serialized: the ``max(stamp)`` is one backward probe of the
  ``(stamp, position)`` index under the statement's snapshot; no lock is taken.

The cost is that a long-running *writing* transaction anywhere in the cluster holds the
horizon (and thus readers) back until it ends; ``projection_status`` reports the holder.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

from django_eventsource.backends.base import INSERT_COLUMNS, AppendRow, Backend

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper


class PostgreSQLBackend(Backend):
    vendor = "postgresql"
    supports_notify = True

    def stamp_sql(self, table: str) -> str:
        return (
            "GREATEST(pg_current_xact_id()::text::bigint, "
            f"COALESCE((SELECT MAX(stamp) FROM {table}), 0))"
        )

    def horizon_sql(self) -> str:
        return "(SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint)"

    def notify_sql(self) -> str:
        # A hint for followers, sent at commit (PostgreSQL folds duplicates into one).
        return ", pg_notify(%s, '')"

    def notify_params(self) -> list[Any]:
        from django_eventsource.conf import get_settings

        return [get_settings().notify_channel]

    def cast(self, sql: str, type_name: str) -> str:
        return f"{sql}::{type_name}"

    def append_statement(
        self,
        table: str,
        *,
        tenant_id: str,
        aggregate_id: UUID,
        recorded_at: datetime,
        rows: Sequence[AppendRow],
        condition: str,
        condition_params: list[Any],
    ) -> tuple[str, list[Any]]:
        # One statement text whatever the number of events (arrays through unnest), so the
        # server prepares it once per connection and plans it from then on for free.
        columns = list(zip(*rows, strict=True))
        sql = (
            "WITH cur AS (SELECT COALESCE(MAX(aggregate_version), 0) AS v "
            f"FROM {table} WHERE tenant_id = %s AND aggregate_id = %s) "
            f"INSERT INTO {table} ({INSERT_COLUMNS}) "
            "SELECT e.event_id, e.event_type, e.schema_version, %s, %s, e.aggregate_type, "
            "cur.v + e.ordinal::int, e.payload, e.metadata, e.correlation_id, e.causation_id, "
            f"e.occurred_at, %s, {self.stamp_sql(table)} "
            "FROM cur, unnest(%s::int[], %s::uuid[], %s::text[], %s::int[], %s::text[], "
            "%s::text[]::jsonb[], %s::text[]::jsonb[], %s::uuid[], %s::uuid[], "
            "%s::timestamptz[]) AS e(ordinal, event_id, event_type, schema_version, "
            "aggregate_type, payload, metadata, correlation_id, causation_id, occurred_at) "
            f"WHERE {condition} ORDER BY e.ordinal "
            f"RETURNING position, aggregate_version{self.notify_sql()}"
        )
        params = [tenant_id, aggregate_id, tenant_id, aggregate_id, recorded_at]
        params += [list(column) for column in columns]
        return sql, params + condition_params + self.notify_params()

    def fast_cursor(self, connection: BaseDatabaseWrapper) -> AbstractContextManager[Any]:
        """A server-side-binding cursor: the append's statement is prepared and reused.

        Django's default psycopg cursor binds on the client, re-parsing and re-sending the
        whole statement on every append. The cursor is still wrapped by Django, so query
        logging, execute wrappers and error translation work as usual.
        """
        from django.db.backends.postgresql.base import ServerBindingCursor

        connection.close_if_health_check_failed()
        connection.ensure_connection()
        with connection.wrap_database_errors:
            cursor = ServerBindingCursor(connection.connection)  # type: ignore[call-arg]
            return connection._prepare_cursor(cursor)  # type: ignore[attr-defined,no-any-return]

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

import json
from collections.abc import Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any
from uuid import UUID

from django_eventsource.backends.base import INSERT_COLUMNS, AppendRow, Backend


class PostgreSQLBackend(Backend):
    vendor = "postgresql"
    supports_notify = True
    native_types = True

    def stamp_sql(self, table: str) -> str:
        # ORDER BY … LIMIT 1 rather than MAX(): the same backward probe of the (stamp,
        # position) index, but the planner reaches it without the min/max-aggregate rewrite,
        # which is a good part of planning an append (Django prepares no statement by default).
        return (
            "GREATEST(pg_current_xact_id()::text::bigint, "
            f"COALESCE((SELECT stamp FROM {table} ORDER BY stamp DESC LIMIT 1), 0))"
        )

    def horizon_sql(self) -> str:
        return "(SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint)"

    def notify_sql(self) -> str:
        # A hint for followers, sent at commit. An uncorrelated sub-select runs once per
        # statement (an InitPlan), and only when a row is returned, rather than once per row.
        return ", (SELECT pg_notify(%s, ''))"

    def notify_params(self) -> list[Any]:
        from django_eventsource.conf import get_settings

        return [get_settings().notify_channel]

    def read_cursor(self, connection: Any) -> Any:
        """Django's cursor, with psycopg's C loader for ``timestamptz`` where it is exact.

        Django registers a Python loader that parses each timestamp and then replaces its
        tzinfo with the connection's time zone; on a read of thousands of events that is
        most of the client's work. psycopg's own loader returns the very same values when
        the session's time zone is the one Django wants (UTC by default), so use it then.
        """
        from django.db.backends.postgresql.psycopg_any import is_psycopg3

        cursor = connection.cursor()
        wanted = connection.timezone
        if is_psycopg3 and wanted is not None:
            driver = cursor.cursor
            if driver.connection.info.timezone == wanted:
                from psycopg.types.datetime import TimestamptzLoader

                driver.adapters.register_loader("timestamptz", TimestamptzLoader)
        return cursor

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
        expected_version: int,
    ) -> tuple[str, list[Any]]:
        # The events travel as ONE jsonb parameter (an array of small objects, decoded by
        # jsonb_to_recordset): formatting that text costs the client a few string operations
        # per event, where array parameters go through psycopg's per-element Python dumpers.
        # The payload and metadata are JSON already and are embedded as they are.
        #
        # With an expected version >= 0 the versions are known up front: a stream that is
        # already past ``expected_version`` fails on the unique (tenant, aggregate, version)
        # constraint, and one that is short of it fails the EXISTS probe (no row inserted).
        # Both become a ConcurrencyError in the store. No MAX(aggregate_version) CTE is
        # needed, which keeps the statement cheap to plan. ANY and STREAM_EXISTS need the
        # stream's current version and keep the CTE.
        known = expected_version >= 0
        first = expected_version if known else 0
        dumps = _json_str
        events = ",".join(
            f'{{"n":{first + row[0]},"i":"{row[1]}","t":{dumps(row[2])},"s":{row[3]},'
            f'"a":{dumps(row[4])},"p":{row[5]},"m":{row[6]},'
            f'"c":{_json_uuid(row[7])},"k":{_json_uuid(row[8])},'
            f'"o":"{row[9].isoformat()}"}}'
            for row in rows
        )
        source = (
            "jsonb_to_recordset(%s::jsonb) AS e(n int, i uuid, t text, s int, a text, "
            "p jsonb, m jsonb, c uuid, k uuid, o timestamptz)"
        )
        select = (
            f"INSERT INTO {table} ({INSERT_COLUMNS}) "
            "SELECT e.i, e.t, e.s, %s, %s, e.a, {version}, e.p, e.m, e.c, e.k, e.o, %s, "
            f"{self.stamp_sql(table)} FROM {{source}} {{where}}ORDER BY e.n "
            f"RETURNING position, aggregate_version{self.notify_sql()}"
        )
        params: list[Any]
        if known:
            where, where_params = "", []
            if expected_version > 0:
                where = (
                    f"WHERE EXISTS (SELECT FROM {table} WHERE tenant_id = %s "
                    "AND aggregate_id = %s AND aggregate_version = %s) "
                )
                where_params = [tenant_id, aggregate_id, expected_version]
            sql = select.format(version="e.n", source=source, where=where)
            params = [tenant_id, aggregate_id, recorded_at, f"[{events}]", *where_params]
        else:
            cte, condition, condition_params = self.version_check(table, expected_version)
            sql = cte + select.format(
                version="cur.v + e.n", source=f"cur, {source}", where=f"WHERE {condition} "
            )
            params = [tenant_id, aggregate_id, tenant_id, aggregate_id, recorded_at]
            params += [f"[{events}]", *condition_params]
        return sql, params + self.notify_params()


@lru_cache(maxsize=1024)
def _json_str(value: str) -> str:
    """``value`` as a JSON string literal (event and aggregate type names repeat: cached)."""
    return json.dumps(value)


def _json_uuid(value: UUID | None) -> str:
    return "null" if value is None else f'"{value}"'

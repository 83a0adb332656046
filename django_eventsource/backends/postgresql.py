"""PostgreSQL: a gap-safe global order without serializing writers.

A ``bigserial`` position is allocated at insert time but becomes visible at commit time, so
commits land out of position order: a reader that resumes from "position > last seen" skips
an event whose transaction committed late. We order by a *causal transaction-id stamp*
instead:

``stamp = GREATEST(current transaction id, max(stamp) of the committed events)``

computed inside the append's INSERT (in the PL/pgSQL function ``django_eventsource_append_v1``
of migration 0003, which also checks the stream's version). Readers only see rows whose stamp is below the oldest
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

from django_eventsource.backends.base import AppendRow, Backend

#: The event table, which the append function (migration 0003) writes.
TABLE = "django_eventsource_event"


class PostgreSQLBackend(Backend):
    vendor = "postgresql"
    supports_notify = True
    native_types = True

    def horizon_sql(self) -> str:
        return "(SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint)"

    def read_cursor(self, connection: Any) -> Any:
        """Django's cursor, with psycopg's C loader for ``timestamptz`` where it is exact.

        Django registers a Python loader that parses each timestamp and then replaces its
        tzinfo with the connection's time zone; on a read of thousands of events that is
        most of the client's work. psycopg's own loader returns the very same values when
        the session's time zone is the one Django wants (UTC by default), so use it then.
        """
        cursor = connection.cursor()
        wanted = connection.timezone  # None without USE_TZ: Django's loader then
        driver = getattr(cursor, "cursor", None)
        # psycopg 3 only (psycopg2 cursors have no adapters map); duck-typed rather than
        # through Django's internal driver flags, which differ between Django versions.
        adapters = getattr(driver, "adapters", None)
        info = getattr(getattr(driver, "connection", None), "info", None)
        if (
            wanted is not None
            and adapters is not None
            and getattr(info, "timezone", None) == wanted
        ):
            from psycopg.types.datetime import TimestamptzLoader

            adapters.register_loader("timestamptz", TimestamptzLoader)
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
        # The append is a PL/pgSQL function (migration 0003): its INSERT's plan is cached per
        # session, where a plain statement would be parsed and planned on every append. The
        # function checks the version, computes the stamp as described above, and wakes the
        # followers once.
        #
        # The events travel as ONE jsonb parameter (an array of small objects, decoded by
        # jsonb_to_recordset): formatting that text costs the client a few string operations
        # per event, where array parameters go through psycopg's per-element Python dumpers.
        # The payload and metadata are JSON already and are embedded as they are.
        if table != TABLE:  # pragma: no cover - the function is written for the model's table
            raise ValueError(f"The append function writes {TABLE}, not {table}.")
        dumps = _json_str
        events = ",".join(
            f'{{"n":{row[0]},"i":"{row[1]}","t":{dumps(row[2])},"s":{row[3]},'
            f'"a":{dumps(row[4])},"p":{row[5]},"m":{row[6]},'
            f'"c":{_json_uuid(row[7])},"k":{_json_uuid(row[8])},'
            f'"o":"{row[9].isoformat()}"}}'
            for row in rows
        )
        from django_eventsource.conf import get_settings

        sql = (
            "SELECT o_position, o_version FROM django_eventsource_append_v1("
            "%s, %s::uuid, %s::timestamptz, %s::jsonb, %s::integer, %s)"
        )
        params = [
            tenant_id,
            aggregate_id,
            recorded_at,
            f"[{events}]",
            expected_version,
            get_settings().notify_channel,
        ]
        return sql, params


@lru_cache(maxsize=1024)
def _json_str(value: str) -> str:
    """``value`` as a JSON string literal (event and aggregate type names repeat: cached)."""
    return json.dumps(value)


def _json_uuid(value: UUID | None) -> str:
    return "null" if value is None else f'"{value}"'


APPEND_FUNCTION = "django_eventsource_append_v1(text, uuid, timestamptz, jsonb, integer, text)"


def ensure_append_function(sender: Any, using: str = "default", **kwargs: Any) -> None:
    """``post_migrate``: create the append function where the event table exists without it.

    Tables made without running the migrations (``migrate --run-syncdb`` with migrations
    disabled, as pytest-django's ``--nomigrations`` does) lack migration 0003's function, and
    every append would fail. Nothing happens when it exists, off PostgreSQL, or while
    migration 0003 is being reversed.
    """
    from importlib import import_module

    from django.db import connections

    connection = connections[using]
    if connection.vendor != "postgresql":
        return
    for migration, backwards in kwargs.get("plan") or ():
        if backwards and migration.app_label == "django_eventsource":
            return
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT to_regclass(%s) IS NOT NULL, to_regprocedure(%s) IS NOT NULL",
            [TABLE, APPEND_FUNCTION],
        )
        row = cursor.fetchone()
        if row is not None and row[0] and not row[1]:
            cursor.execute(
                import_module("django_eventsource.migrations.0003_append_function").CREATE
            )

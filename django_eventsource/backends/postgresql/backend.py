"""PostgreSQL: a gap-safe global order without serializing writers.

A ``bigserial`` position is allocated at insert time but becomes visible at commit time, so
commits land out of position order: a reader that resumes from "position > last seen" skips
an event whose transaction committed late. We order by a *causal transaction-id stamp*
instead:

``stamp = GREATEST(current transaction id, max(stamp) of the committed events)``

computed inside the append's INSERT (in the PL/pgSQL function ``django_eventsource_append_v3``
of migration 0008, 0004's ``…_v2`` plus a guard, which also checks the stream's version and first takes ``ROW EXCLUSIVE``
on the event table). Readers only see rows whose stamp is below the *horizon* and order by
``(stamp, position)``; the horizon (``horizon.py``) is the oldest transaction that writes
the event table (or ended, committed, between the reader's snapshot and its look at the
writers), not the oldest in the cluster.

* No skips: a writer's rows stay above the horizon until it ends; a transaction that is not
  a writer when the reader looks inserts later, under a later snapshot that sees every row
  the reader passed, so its stamp sorts after them (the proof is in ``horizon.py``).
* Per-stream (and causal) order: an append that saw another's committed event takes a stamp at
  least as large and a larger position, so it sorts after it.
* Writers are never serialized: the ``max(stamp)`` is one backward probe of the
  ``(stamp, position)`` index under the statement's snapshot; no lock is taken.

What still holds readers back, by design: a transaction that appended events and has not
committed (its events are coming); ``projection_status`` names it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from functools import lru_cache
from importlib import import_module
from typing import TYPE_CHECKING, Any
from uuid import UUID

from django.db import connections

from django_eventsource.backends.base import (
    VERSION_CONSTRAINT,
    AppendRow,
    Backend,
    Listener,
    ProjectionLock,
)
from django_eventsource.backends.postgresql.horizon import HORIZON_SQL
from django_eventsource.backends.postgresql.listen import PostgresListener
from django_eventsource.backends.postgresql.locks import PostgresAdvisoryLock
from django_eventsource.conf import get_settings
from django_eventsource.constants import EVENT_TABLE as TABLE

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper
    from django.db.backends.utils import CursorWrapper

#: The first key of the transaction-scoped advisory locks that serialize the creation of one
#: read-model row by concurrent appends (inline projections): "ESRW".
ROW_LOCK_CLASS = 0x45535257

__all__ = [
    "APPEND_FUNCTION",
    "HORIZON_FUNCTION",
    "ROW_LOCK_CLASS",
    "PostgreSQLBackend",
    "ensure_append_function",
]


class PostgreSQLBackend(Backend):
    vendor = "postgresql"
    native_types = True

    def horizon_sql(self) -> str:
        return HORIZON_SQL

    def momentarily_held(
        self, cursor: CursorWrapper, where: Sequence[str], params: Sequence[Any]
    ) -> bool:
        """Committed events that match ``where`` while no transaction appends: a short read
        stopped at a momentary hold (a transaction of its snapshot ended just before the
        horizon function looked: the "ended since" term of ``horizon.py``; on a busy server
        often some short, unrelated one), or they committed since. A new read gets them.
        While a transaction appends (ours included) the hold may be real: no."""
        conditions = " AND ".join(where) or "TRUE"
        cursor.execute(
            f"SELECT EXISTS (SELECT FROM {TABLE} WHERE {conditions}) AND NOT EXISTS ("
            "SELECT FROM pg_locks WHERE locktype = 'relation' AND relation = %s::regclass "
            "AND mode = 'RowExclusiveLock' AND granted "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))",
            [*params, TABLE],
        )
        row = cursor.fetchone()
        return bool(row and row[0])

    def lock_new_rows(self, connection: BaseDatabaseWrapper, keys: Sequence[int]) -> None:
        # Transaction-scoped advisory locks in the two-key space (which never overlaps the
        # one-key space of projection locks), in key order: two appends creating the same
        # rows cannot deadlock on them.
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_advisory_xact_lock(%s, k) FROM unnest(%s::int4[]) AS k ORDER BY k",
                [ROW_LOCK_CLASS, sorted(set(keys))],
            )

    def lock_out_appends(
        self, connection: BaseDatabaseWrapper, *, exclusive: bool = False
    ) -> None:
        # Every append takes ROW EXCLUSIVE on the event table first; SHARE conflicts with it
        # (and with nothing readers take), until the caller's transaction ends.
        #
        # Then the fence (migration 0012): an append whose transaction reads under a snapshot
        # older than this lock-out's commit (REPEATABLE READ, SERIALIZABLE) runs into the
        # bumped row and raises StaleSnapshot (``projections.run_inline``). Lock-outs take
        # the fence's table lock before the bump, so they run one after the other; LOCK
        # TABLE takes no snapshot, so at REPEATABLE READ the bump's snapshot is taken after
        # the previous lock-out committed, and the bump cannot fail on it.
        mode = "EXCLUSIVE" if exclusive else "SHARE"
        with connection.cursor() as cursor:
            cursor.execute(f"LOCK TABLE {TABLE} IN {mode} MODE")
            cursor.execute(f"LOCK TABLE {LOCKOUT_TABLE} IN EXCLUSIVE MODE")
            cursor.execute(
                f"INSERT INTO {LOCKOUT_TABLE} AS f (id, generation) VALUES (1, 1) "
                "ON CONFLICT (id) DO UPDATE SET generation = f.generation + 1"
            )

    def inline_probe(
        self, names: Sequence[str], tenants: Sequence[str]
    ) -> tuple[str, list[Any], str]:
        from django_eventsource.models import ProjectionState, ProjectionStatus

        states = ProjectionState._meta.db_table
        read = (
            "SELECT current_setting('transaction_isolation'), "
            f"ARRAY(SELECT name FROM {states} WHERE (status = %s OR suspended_rebuild) "
            "AND name = ANY(%s) AND tenant_id = ANY(%s))"
        )
        # PostgreSQL answers an INSERT … ON CONFLICT whose conflicting row is invisible to
        # the transaction's snapshot (a lock-out bumped it, or created it, since) with a
        # serialization failure. The row is inserted only where it is missing.
        fence = f"INSERT INTO {LOCKOUT_TABLE} (id) VALUES (1) ON CONFLICT (id) DO NOTHING"
        return read, [str(ProjectionStatus.REBUILDING), list(names), list(tenants)], fence

    def time_bucket_sql(self, column: str) -> str:
        return f"floor((EXTRACT(EPOCH FROM {column}) - %s) * %s)::bigint"

    def projection_lock(
        self, name: str, tenant_id: str | None, using: str, *, ttl: float
    ) -> ProjectionLock:
        return PostgresAdvisoryLock(name, tenant_id, using, ttl=ttl)

    def listener(self, using: str) -> Listener | None:
        return PostgresListener.connect(using, get_settings().notify_channel)

    def read_cursor(self, connection: BaseDatabaseWrapper) -> CursorWrapper:
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
            # psycopg is optional (the ``postgres`` extra): imported only on PostgreSQL.
            from psycopg.types.datetime import TimestamptzLoader

            adapters.register_loader("timestamptz", TimestamptzLoader)
        return cursor

    def is_version_conflict(self, exc: Exception) -> bool:
        diag = getattr(exc.__cause__, "diag", None)
        return getattr(diag, "constraint_name", None) == VERSION_CONSTRAINT

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
        # The append is a PL/pgSQL function (migration 0008, 0004's plus the guard): its INSERT's plan is cached per
        # session, where a plain statement would be parsed and planned on every append. The
        # function checks the version, computes the stamp as described above, and wakes the
        # followers once. With ``guard`` it reports a unique violation as a row (a NULL
        # position and the constraint's name) instead of raising it, so that the caller's
        # transaction stays usable without a savepoint around the call.
        #
        # The events travel as ONE jsonb parameter (an array of small objects, decoded by
        # jsonb_to_recordset): formatting that text costs the client a few string operations
        # per event, where array parameters go through psycopg's per-element Python dumpers.
        # The payload and metadata are JSON already and are embedded as they are. Formatting
        # is safe because every value was checked by the append contract first
        # (django_eventsource.validation): ids are UUIDs, versions ints (not bools), names
        # str without NUL or lone surrogates (and dumped by json), occurred_at an aware
        # datetime, payload and metadata JSON text that jsonb accepts.
        if table != TABLE:  # pragma: no cover - the function is written for the model's table
            raise ValueError(f"The append function writes {TABLE}, not {table}.")
        # UUIDs are written as their 32 hex digits (uuid_in takes them without hyphens):
        # UUID.__str__ is Python code that formats the same int and slices it, five times
        # slower, and a UUID subclass cannot change what ``.int`` formats to.
        dumps = _json_str
        events = ",".join(
            f'{{"n":{row[0]},"i":"{row[1].int:032x}","t":{dumps(row[2])},"s":{row[3]},'
            f'"a":{dumps(row[4])},"p":{row[5]},"m":{row[6]},'
            f'"c":{_json_uuid(row[7])},"k":{_json_uuid(row[8])},'
            f'"o":"{row[9].isoformat()}"}}'
            for row in rows
        )
        sql = (
            "SELECT o_position, o_version, o_conflict FROM django_eventsource_append_v3("
            "%s, %s::uuid, %s::timestamptz, %s::jsonb, %s::integer, %s, %s)"
        )
        params = [
            tenant_id,
            aggregate_id,
            recorded_at,
            f"[{events}]",
            expected_version,
            get_settings().notify_channel,
            guard,
        ]
        return sql, params


@lru_cache(maxsize=1024)
def _json_str(value: str) -> str:
    """``value`` as a JSON string literal (event and aggregate type names repeat: cached)."""
    return json.dumps(value)


def _json_uuid(value: UUID | None) -> str:
    return "null" if value is None else f'"{value.int:032x}"'


#: The functions the store calls (migrations 0008 and 0009), as ``to_regprocedure`` takes them.
APPEND_FUNCTION = (
    "django_eventsource_append_v3(text, uuid, timestamptz, jsonb, integer, text, boolean)"
)
HORIZON_FUNCTION = "django_eventsource_horizon_v3(pg_snapshot)"
#: The table a non-READ COMMITTED append writes (and rolls back) to take a fresh id.
PROBE_TABLE = "django_eventsource_xid_probe"
#: The fence every lock-out bumps (migration 0012).
LOCKOUT_TABLE = "django_eventsource_lockout"


def ensure_append_function(sender: Any, using: str = "default", **kwargs: Any) -> None:
    """``post_migrate``: create the append and horizon functions where the event table exists
    without them.

    Tables made without running the migrations (``migrate --run-syncdb`` with migrations
    disabled, as pytest-django's ``--nomigrations`` does) lack the functions of migrations
    0004, 0008 and 0009, the probe table and the lock-out fence of 0012, and every append and
    read would fail. Nothing happens when they exist, off PostgreSQL, or while the app's
    migrations are being reversed.
    """
    connection = connections[using]
    if connection.vendor != "postgresql":
        return
    for migration, backwards in kwargs.get("plan") or ():
        if backwards and migration.app_label == "django_eventsource":
            return
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT to_regclass(%s) IS NOT NULL, to_regprocedure(%s) IS NOT NULL, "
            "to_regprocedure(%s) IS NOT NULL, to_regclass(%s) IS NOT NULL, "
            "to_regclass(%s) IS NOT NULL",
            [TABLE, APPEND_FUNCTION, HORIZON_FUNCTION, PROBE_TABLE, LOCKOUT_TABLE],
        )
        row = cursor.fetchone()
        if row is None or not row[0] or all(row[1:]):
            return
        frozen = import_module("django_eventsource.migrations.0004_writer_scoped_horizon")
        horizon = import_module("django_eventsource.migrations.0009_horizon_committing_writers")
        guarded = import_module("django_eventsource.migrations.0008_guarded_append")
        fence = import_module("django_eventsource.migrations.0012_append_lockout_fence")
        for sql in (frozen.PROBE, guarded.APPEND, horizon.HORIZON, fence.TABLE, fence.ROW):
            cursor.execute(sql)

"""Rebuild without downtime (PostgreSQL): build a projection's tables in a shadow schema while
the live ones keep serving, then swap them in one short transaction.

How (``rebuild(projection, shadow=True)``, ``rebuild_projections NAME --shadow``):

1. **Create** a private schema ``django_eventsource_shadow_<digest>`` holding, for every model
   in the projection's ``models``, a table of the *same name* made like the live one
   (``CREATE TABLE … (LIKE live INCLUDING ALL EXCLUDING INDEXES)``: columns, defaults,
   identity, check constraints, each in the same name), then every index and
   unique/primary/exclusion constraint of the live table under its live name (index names are
   per schema, so they do not clash). The schema also holds the build's own checkpoint table.
2. **Build**: the runner's one batch loop (`ProjectionRunner.run_projection`) replays every
   event with the projection's handlers, on a connection whose ``search_path`` starts with
   the shadow schema, so every unqualified table name the handlers, `RowSet` and the upserts
   use resolves to the shadow table, while the events, states and dead letters (not in the
   schema) resolve to the live ones. Each batch's transaction commits the rows and the
   shadow's checkpoint together, and the checkpoint's statement only resolves under the
   shadow's ``search_path``: a batch can never land in the live tables. Meanwhile the live
   projection keeps being applied by its runner (or by the appends, when it is inline),
   and each batch is its own short transaction (it appends nothing, so it holds no other
   projection back).
3. **Swap**, in one transaction with a ``lock_timeout``: an inline projection first takes
   ``LOCK TABLE <events> IN EXCLUSIVE MODE`` (appends wait until the commit, for
   milliseconds; readers do not); the projection's state row is locked (a live runner's
   batch in flight commits first, its next one is fenced); the loop catches the shadow up to
   the head; the live tables are locked, dropped, and the shadow tables moved in
   (``ALTER TABLE … SET SCHEMA``, which moves their indexes, constraints and identity
   sequences, all under the live names); the checkpoint becomes the shadow's, the runner's
   claim ends (a live runner's next batch is fenced and it resumes from the new
   checkpoint); the schema is dropped. Readers see the old rows until the commit and the new
   ones after, never a mix or an empty table. A reader that waited on the swap's lock reads
   the new table.

A crash (kill -9) during the build leaves the live projection untouched; the next shadow
rebuild **resumes** the shadow from its checkpoint (``restart=True`` discards it and starts
over). A handler that raises during the build (or the swap's catch-up) stops it with
`RebuildAborted`: nothing is swapped, the live tables keep serving, the shadow is kept and
its checkpoint row records the failing event and error (``projection_status`` and the admin
show it, `ShadowBuild.failed_position`) until the next shadow rebuild resumes it. A crash
during the swap rolls the swap back: the old tables stay, whole, and the next run swaps
again.

Refused up front (`RebuildRefused`, nothing created): one tenant (``--tenant``: a shadow
replaces whole tables), a projection that overrides ``_truncate_read_models`` (it keeps state
outside ``models``), foreign keys into or out of its tables, serial (non-identity) columns,
unresolved dead letters, a projection run per tenant (state rows of tenants: each has its own
checkpoint, the swap sets one). SQLite: `NotSupportedOnBackend` (use ``--atomic``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from django.db import DatabaseError, OperationalError, connections
from django.db.backends.signals import connection_created

from django_eventsource.backends import backend_for
from django_eventsource.checkpoints import _AsyncTwins
from django_eventsource.constants import NO_TENANT
from django_eventsource.exceptions import (
    NotSupportedOnBackend,
    ProjectionError,
    ProjectionLocked,
    RebuildAborted,
    RebuildRefused,
)
from django_eventsource.text import plural, printable
from django_eventsource.transactions import write_transaction

if TYPE_CHECKING:
    from django_eventsource.projections import Projection


class _Runner(Protocol):
    """What the shadow build needs of its `ProjectionRunner` (typed here: importing the
    runner would close an import cycle through the status)."""

    @property
    def stopping(self) -> bool: ...
    def run_projection(
        self, projection: Projection, result: Any, *, until_caught_up: bool = True
    ) -> bool: ...
    def report(self, kind: str, **data: Any) -> None: ...


__all__ = [
    "SCHEMA_PREFIX",
    "ShadowBuild",
    "ShadowCheckpointStore",
    "check_shadow_rebuild",
    "discard_shadow",
    "find_shadow_build",
    "shadow_builds",
    "shadow_schema",
]

logger = logging.getLogger(__name__)

#: Every shadow schema's name starts with this.
SCHEMA_PREFIX = "django_eventsource_shadow_"
#: The shadow build's own checkpoint table, inside its schema.
CHECKPOINT_TABLE = "django_eventsource_shadow_checkpoint"
#: How long the swap waits for a lock (readers, a live batch, appends) before it gives up,
#: rolls back and tries again after another catch-up.
SWAP_LOCK_TIMEOUT = 5.0
#: Swap attempts before the rebuild gives up (`RebuildAborted`; the shadow is kept).
SWAP_ATTEMPTS = 5


def shadow_schema(label: str) -> str:
    """The name of the shadow schema of projection ``label``."""
    digest = hashlib.blake2b(f"django_eventsource:{label}".encode(), digest_size=8).hexdigest()
    return SCHEMA_PREFIX + digest


@dataclass(frozen=True)
class ShadowBuild:
    """A shadow build in progress (or interrupted), as ``projection_status`` shows it."""

    projection: str
    schema: str
    #: The position the shadow tables have been built up to.
    position: int
    started_at: datetime
    updated_at: datetime
    tables: tuple[str, ...]
    #: The event the build failed on, when a handler raised (None: it did not fail). The
    #: next shadow rebuild clears it as it resumes.
    failed_position: int | None = None
    #: That failure: the exception's type and message ("" when it did not fail).
    error: str = ""


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _require_postgresql(using: str) -> None:
    vendor = connections[using].vendor
    if vendor != "postgresql":
        raise NotSupportedOnBackend(
            "A shadow rebuild (--shadow)",
            vendor,
            "Use --atomic: readers keep seeing the old rows until the new ones commit at once.",
        )


def find_shadow_build(label: str, using: str) -> ShadowBuild | None:
    """The shadow build of projection ``label`` (None if there is none, or not PostgreSQL)."""
    if connections[using].vendor != "postgresql":
        return None
    return next((b for b in shadow_builds(using) if b.projection == label), None)


def shadow_builds(using: str) -> list[ShadowBuild]:
    """Every shadow build in database ``using`` (none on SQLite)."""
    if connections[using].vendor != "postgresql":
        return []
    builds = []
    with connections[using].cursor() as cursor:
        cursor.execute(
            "SELECT n.nspname FROM pg_namespace n JOIN pg_class c ON c.relnamespace = n.oid "
            "WHERE n.nspname LIKE %s AND c.relname = %s ORDER BY n.nspname",
            [SCHEMA_PREFIX + "%", CHECKPOINT_TABLE],
        )
        schemas = [row[0] for row in cursor.fetchall()]
        for schema in schemas:
            # A shadow created before the failure columns existed has none: read them
            # through to_jsonb, which gives NULL for a missing key.
            cursor.execute(
                "SELECT projection, position, started_at, updated_at, tables, "
                "(to_jsonb(c) ->> 'failed_position')::bigint, "
                "coalesce(to_jsonb(c) ->> 'error', '') "
                f"FROM {_quote(schema)}.{CHECKPOINT_TABLE} c"
            )
            for projection, position, started, updated, tables, failed, error in cursor:
                builds.append(
                    ShadowBuild(
                        projection,
                        schema,
                        position,
                        started,
                        updated,
                        tuple(tables.split(",")),
                        failed,
                        error,
                    )
                )
    return builds


class ShadowCheckpointStore(_AsyncTwins):
    """The checkpoint of a shadow build, in its schema's own table, written in each batch's
    transaction like any checkpoint.

    ``save`` names the table unqualified and checks ``current_schema()``: it only succeeds
    on a connection routed to the shadow schema, so a batch that would write to the live
    tables fails and rolls back instead.
    """

    def __init__(self, using: str, schema: str) -> None:
        self.using = using
        self.schema = schema

    def save(self, projection_id: str, position: int, *, tenant_id: str | None = None) -> None:
        with connections[self.using].cursor() as cursor:
            cursor.execute(
                f"UPDATE {CHECKPOINT_TABLE} SET position = %s, updated_at = now() "
                "WHERE projection = %s AND current_schema() = %s",
                [position, projection_id, self.schema],
            )
            if cursor.rowcount != 1:
                raise RebuildAborted(
                    projection_id,
                    "the shadow build's connection is not routed to its schema any more (its "
                    "batch was rolled back); run the shadow rebuild again to resume it",
                    shadow=True,
                )

    def load(self, projection_id: str, *, tenant_id: str | None = None) -> int | None:
        with connections[self.using].cursor() as cursor:
            cursor.execute(
                f"SELECT position FROM {_quote(self.schema)}.{CHECKPOINT_TABLE} "
                "WHERE projection = %s",
                [projection_id],
            )
            row = cursor.fetchone()
        return None if row is None else int(row[0])


# Routing the build's connection -------------------------------------------------------------


@contextlib.contextmanager
def routed_to(schema: str, using: str) -> Iterator[None]:
    """Route this thread's connection to ``using`` to ``schema`` first (``search_path``), and
    any connection it reopens meanwhile (the runner recycles connections between batches);
    restore the session's own ``search_path`` on the way out."""
    connection = connections[using]
    thread = threading.get_ident()

    def route(sender: Any, connection: Any, **kwargs: Any) -> None:
        if connection.alias == using and threading.get_ident() == thread:
            _set_path(connection, schema)

    connection_created.connect(route, weak=False)
    try:
        connection.ensure_connection()
        _set_path(connection, schema)
        yield
    finally:
        connection_created.disconnect(route)
        if connection.connection is not None:
            if connection.in_atomic_block and connection.needs_rollback:
                pass  # the rollback restores it (SET is transactional)
            else:
                try:
                    with connection.cursor() as cursor:
                        cursor.execute("RESET search_path")
                except DatabaseError:  # a broken connection: never reuse it routed
                    connection.close()


def _set_path(connection: Any, schema: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute("RESET search_path")
        cursor.execute("SHOW search_path")
        path = cursor.fetchone()[0]
        cursor.execute(
            "SELECT set_config('search_path', %s, false)", [f"{_quote(schema)}, {path}"]
        )


# Checks -------------------------------------------------------------------------------------


def _live_tables(projection: Projection) -> list[str]:
    return [model._meta.db_table for model in projection.models]


def check_shadow_rebuild(projection: Projection, tenant_id: str | None) -> None:
    """Refuse what a shadow rebuild cannot do, before anything is created:
    [`NotSupportedOnBackend`][django_eventsource.NotSupportedOnBackend] on SQLite,
    [`RebuildRefused`][django_eventsource.RebuildRefused] otherwise (see the module)."""
    from django_eventsource.projections import Projection as Base

    using = projection.database
    _require_postgresql(using)
    label = projection.label
    if tenant_id is not None:
        raise RebuildRefused(
            label,
            "a shadow rebuild replaces whole tables, so it cannot rebuild one tenant "
            f"({tenant_id!r}); rebuild every tenant with --shadow, or this one with --atomic",
        )
    if type(projection)._truncate_read_models is not Base._truncate_read_models:
        raise RebuildRefused(
            label,
            "it overrides _truncate_read_models(), so it may keep state outside its models, "
            "which a shadow rebuild would not rebuild; use --atomic",
        )
    if not projection.models:
        raise RebuildRefused(label, "it has no models to build in a shadow schema")
    tables = _live_tables(projection)
    with connections[using].cursor() as cursor:
        for table in tables:
            cursor.execute("SELECT to_regclass(%s)", [_quote(table)])
            if cursor.fetchone()[0] is None:
                raise RebuildRefused(label, f"its table {table} does not exist (migrate first)")
        cursor.execute(
            "SELECT conname, conrelid::regclass::text, confrelid::regclass::text "
            "FROM pg_constraint WHERE contype = 'f' AND (conrelid = ANY(%s::regclass[]) "
            "OR confrelid = ANY(%s::regclass[]))",
            [[_quote(t) for t in tables]] * 2,
        )
        keys = cursor.fetchall()
        if keys:
            described = ", ".join(f"{name} ({src} -> {dst})" for name, src, dst in keys)
            raise RebuildRefused(
                label,
                f"foreign keys reference its tables or leave them ({described}); the swap "
                "would break them. Use --atomic",
            )
        cursor.execute(
            "SELECT a.attrelid::regclass::text, a.attname FROM pg_attrdef d "
            "JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum "
            "WHERE d.adrelid = ANY(%s::regclass[]) "
            "AND pg_get_expr(d.adbin, d.adrelid) LIKE 'nextval(%%'",
            [[_quote(t) for t in tables]],
        )
        serials = cursor.fetchall()
        if serials:
            described = ", ".join(f"{t}.{c}" for t, c in serials)
            raise RebuildRefused(
                label,
                f"serial columns ({described}) share their sequence with the live table; "
                "migrate them to identity columns, or use --atomic",
            )
    _check_dead_letters(projection)
    _check_no_tenant_runners(projection)


def _check_no_tenant_runners(projection: Projection) -> None:
    from django_eventsource.models import ProjectionState

    tenants = sorted(
        ProjectionState.objects.using(projection.database)
        .filter(name=projection.label)
        .exclude(tenant_id=NO_TENANT)
        .values_list("tenant_id", flat=True)
    )
    if tenants:
        raise RebuildRefused(
            projection.label,
            f"it is run per tenant ({', '.join(map(repr, tenants[:5]))}"
            f"{', …' if len(tenants) > 5 else ''}), each with its own checkpoint, and the "
            "swap sets one; use --atomic per tenant",
        )


def _check_dead_letters(projection: Projection) -> None:
    from django_eventsource.models import DeadLetter

    unresolved = (
        DeadLetter.objects.using(projection.database)
        .filter(projection=projection.label, resolved_at__isnull=True)
        .count()
    )
    if unresolved:
        raise RebuildRefused(
            projection.label,
            f"it has {unresolved} unresolved dead letters, which would hold the shadow's "
            "streams back; retry or resolve them first, or use a default rebuild",
        )


# Creating and discarding --------------------------------------------------------------------


def _schema_exists(cursor: Any, schema: str) -> bool:
    cursor.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", [schema])
    return cursor.fetchone() is not None


def discard_shadow(label: str, using: str) -> bool:
    """Drop the shadow schema of projection ``label`` (an interrupted build); returns
    whether there was one. The live tables are not touched."""
    _require_postgresql(using)
    schema = shadow_schema(label)
    with write_transaction(using), connections[using].cursor() as cursor:
        if not _schema_exists(cursor, schema):
            return False
        cursor.execute(f"DROP SCHEMA {_quote(schema)} CASCADE")
    logger.info(
        "Discarded the shadow build of %s",
        printable(label),
        extra={"projection": label, "schema": schema},
    )
    return True


def _create_shadow(projection: Projection, schema: str) -> None:
    """The schema, its checkpoint row at 0, and a table like each live one, under the live
    names (tables, indexes, constraints), in one transaction."""
    using = projection.database
    tables = _live_tables(projection)
    with write_transaction(using), connections[using].cursor() as cursor:
        cursor.execute(f"CREATE SCHEMA {_quote(schema)}")
        cursor.execute(
            f"CREATE TABLE {_quote(schema)}.{CHECKPOINT_TABLE} ("
            "projection text PRIMARY KEY, position bigint NOT NULL DEFAULT 0, "
            "tables text NOT NULL, started_at timestamptz NOT NULL DEFAULT now(), "
            "updated_at timestamptz NOT NULL DEFAULT now())"
        )
        _add_failure_columns(cursor, schema)
        cursor.execute(
            f"INSERT INTO {_quote(schema)}.{CHECKPOINT_TABLE} (projection, tables) "
            "VALUES (%s, %s)",
            [projection.label, ",".join(tables)],
        )
        for table in tables:
            _copy_table(cursor, table, schema)


def _add_failure_columns(cursor: Any, schema: str) -> None:
    """The checkpoint row's record of a failed build (a shadow created before they existed
    gets them when it is resumed or fails)."""
    cursor.execute(
        f"ALTER TABLE {_quote(schema)}.{CHECKPOINT_TABLE} "
        "ADD COLUMN IF NOT EXISTS failed_position bigint, "
        "ADD COLUMN IF NOT EXISTS error text NOT NULL DEFAULT ''"
    )


def _copy_table(cursor: Any, table: str, schema: str) -> None:
    cursor.execute(
        "SELECT c.oid, quote_ident(n.nspname), quote_ident(c.relname) FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass(%s)",
        [_quote(table)],
    )
    oid, live_schema, name = cursor.fetchone()
    live = f"{live_schema}.{name}"
    target = f"{_quote(schema)}.{name}"
    cursor.execute(
        f"CREATE TABLE {target} (LIKE {live} INCLUDING ALL EXCLUDING INDEXES EXCLUDING STATISTICS)"
    )
    # Index-backed constraints (primary key, unique, exclusion), under their live names.
    cursor.execute(
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE conrelid = %s AND contype IN ('p', 'u', 'x') ORDER BY oid",
        [oid],
    )
    for conname, definition in cursor.fetchall():
        cursor.execute(f"ALTER TABLE {target} ADD CONSTRAINT {_quote(conname)} {definition}")
    # The other indexes, under their live names.
    cursor.execute(
        "SELECT quote_ident(ic.relname), pg_get_indexdef(i.indexrelid), i.indisunique "
        "FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid WHERE i.indrelid = %s "
        "AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid "
        "AND k.conrelid = i.indrelid) ORDER BY i.indexrelid",
        [oid],
    )
    for index, definition, unique in cursor.fetchall():
        head = f"CREATE {'UNIQUE ' if unique else ''}INDEX {index} ON "
        for only in ("ONLY ", ""):
            if definition.startswith(head + only + live + " "):
                rest = definition[len(head + only + live) :]
                cursor.execute(f"{head}{only}{target}{rest}")
                break
        else:
            raise RebuildRefused(table, f"cannot copy its index {index}: {definition}")


def _columns(cursor: Any, schema: str | None, table: str) -> list[tuple[Any, ...]]:
    relation = f"{_quote(schema)}.{_quote(table)}" if schema else _quote(table)
    cursor.execute(
        "SELECT attname, format_type(atttypid, atttypmod), attnotnull FROM pg_attribute "
        "WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped ORDER BY attname",
        [relation],
    )
    return list(cursor.fetchall())


def _check_same_columns(projection: Projection, schema: str) -> None:
    """A shadow built before a migration changed the live tables must not replace them."""
    with connections[projection.database].cursor() as cursor:
        for table in _live_tables(projection):
            if _columns(cursor, schema, table) != _columns(cursor, None, table):
                raise RebuildAborted(
                    projection.label,
                    f"the live table {table} has changed since its shadow was created (a "
                    "migration?), so the shadow cannot replace it; start over with "
                    "restart=True (--restart), which discards the shadow",
                    shadow=True,
                )


# The rebuild -------------------------------------------------------------------------------


class _Stopped(Exception):
    """The runner was asked to stop during the swap's catch-up: the swap rolls back."""


def rebuild_in_shadow(
    projection: Projection, runner: _Runner, *, restart: bool, result: Any
) -> bool:
    """Build (or resume) the shadow with ``runner`` (its checkpoint store is the shadow's)
    and swap it in; returns whether it swapped (False: the runner was stopped, the shadow
    is kept to resume)."""
    from django_eventsource.backends.postgresql.locks import PostgresAdvisoryLock

    using, label = projection.database, projection.label
    schema = shadow_schema(label)
    fields = {"projection": label, "schema": schema}
    lock = PostgresAdvisoryLock(f"{label}#shadow", None, using)
    if not lock.acquire():
        lock.release()  # closes the session it opened to try (it leaked until collected)
        raise ProjectionLocked(label, "another shadow rebuild")
    try:
        if restart:
            discard_shadow(label, using)
        with connections[using].cursor() as cursor:
            resuming = _schema_exists(cursor, schema)
        if resuming:
            _check_same_columns(projection, schema)
            _clear_failure(using, schema)
            logger.info(
                "Resuming the shadow build of %s in schema %s",
                printable(label),
                schema,
                extra=fields,
            )
        else:
            _create_shadow(projection, schema)
            logger.info("Building %s in shadow schema %s", printable(label), schema, extra=fields)
        _build(projection, runner, schema, result)
        if runner.stopping:
            logger.info(
                "Stopped the shadow build of %s; the next shadow rebuild resumes it",
                printable(label),
                extra=fields,
            )
            return False
        for attempt in range(1, SWAP_ATTEMPTS + 1):
            try:
                _swap(projection, runner, schema, result)
                return True
            except _Stopped:
                logger.info(
                    "Stopped the shadow build of %s during its swap (rolled back); the next "
                    "shadow rebuild resumes it",
                    printable(label),
                    extra=fields,
                )
                return False
            except OperationalError as exc:
                if getattr(getattr(exc, "__cause__", None), "sqlstate", None) != "55P03":
                    raise
                logger.warning(
                    "The swap of %s waited too long for a lock (attempt %d of %d); catching "
                    "up and trying again",
                    printable(label),
                    attempt,
                    SWAP_ATTEMPTS,
                    extra={**fields, "attempt": attempt},
                )
                _build(projection, runner, schema, result)
        raise RebuildAborted(
            label,
            f"the swap could not take its locks in {plural(SWAP_ATTEMPTS, 'attempt')} (long "
            "transactions on its tables?); the shadow is kept: run the shadow rebuild again "
            "to resume it",
            shadow=True,
        )
    except _BuildFailed as failed:
        raise _build_failed(projection, schema, failed.error) from failed.error
    finally:
        lock.release()


class _BuildFailed(Exception):
    """A handler raised during the build (or the swap's catch-up): recorded once the
    transaction it happened in has rolled back."""

    def __init__(self, error: ProjectionError) -> None:
        super().__init__(str(error))
        self.error = error


def _build(projection: Projection, runner: _Runner, schema: str, result: Any) -> None:
    try:
        with routed_to(schema, projection.database):
            runner.run_projection(projection, result)
    except ProjectionError as exc:
        raise _BuildFailed(exc) from exc


def _build_failed(projection: Projection, schema: str, error: ProjectionError) -> RebuildAborted:
    """Record a failed build in the shadow's checkpoint row (``projection_status`` and the
    admin show it), and say what happened and what to do next."""
    using, label = projection.database, projection.label
    cause = error.cause
    text = f"{type(cause).__name__}: {cause}"
    built: int | None = None
    try:
        with write_transaction(using), connections[using].cursor() as cursor:
            _add_failure_columns(cursor, schema)
            cursor.execute(
                f"UPDATE {_quote(schema)}.{CHECKPOINT_TABLE} SET failed_position = %s, "
                "error = %s, updated_at = now() WHERE projection = %s",
                [error.position, text, label],
            )
        built = ShadowCheckpointStore(using, schema).load(label)
    except DatabaseError:  # the database went away too: say what is known
        logger.warning("Could not record the failed shadow build of %s", printable(label))
    kept = "The shadow is kept" + (f", built up to event #{built}" if built is not None else "")
    return RebuildAborted(
        label,
        f"its build failed on event #{error.position} ({error.event_type} {error.event_id}): "
        f"{text}. {kept}: fix the handler, then run the shadow rebuild again "
        f"(rebuild_projections {label} --shadow) to resume it from there, or with "
        "restart=True (--restart) to start over",
        shadow=True,
    )


def _clear_failure(using: str, schema: str) -> None:
    """A resumed build runs again: it has not failed (yet)."""
    with write_transaction(using), connections[using].cursor() as cursor:
        _add_failure_columns(cursor, schema)
        cursor.execute(
            f"UPDATE {_quote(schema)}.{CHECKPOINT_TABLE} SET failed_position = NULL, "
            "error = '' WHERE failed_position IS NOT NULL"
        )


def _swap(projection: Projection, runner: _Runner, schema: str, result: Any) -> None:
    from django_eventsource import state
    from django_eventsource.built import mark_built
    from django_eventsource.models import ProjectionState

    using, label = projection.database, projection.label
    connection = connections[using]
    started = time.monotonic()
    with write_transaction(using):
        with connection.cursor() as cursor:
            cursor.execute(f"SET LOCAL lock_timeout = '{int(SWAP_LOCK_TIMEOUT * 1000)}ms'")
        if projection.inline:
            # Appends write an inline projection's live rows in their own transaction:
            # wait for those in flight, and make new ones wait until we commit (and those
            # whose snapshot is older than the commit run into the fence: StaleSnapshot).
            backend_for(connection).lock_out_appends(connection, exclusive=True)
        states = ProjectionState.objects.using(using)
        states.get_or_create(name=label, tenant_id=NO_TENANT)
        # A live runner's batch in flight commits first; its next one waits, then is fenced.
        row = states.select_for_update().get(name=label, tenant_id=NO_TENANT)
        _build(projection, runner, schema, result)  # the events appended since: savepoints
        if runner.stopping:  # it may not have caught up: an inline projection would lose rows
            raise _Stopped
        _check_dead_letters_at_swap(projection)
        _check_same_columns(projection, schema)
        position = ShadowCheckpointStore(using, schema).load(label) or 0
        with connection.cursor() as cursor:
            tables = {}  # table: the schema the live one is in
            for table in _live_tables(projection):
                cursor.execute(
                    "SELECT n.nspname FROM pg_class c JOIN pg_namespace n "
                    "ON n.oid = c.relnamespace WHERE c.oid = to_regclass(%s)",
                    [_quote(table)],
                )
                tables[table] = cursor.fetchone()[0]
            live = ", ".join(f"{_quote(tables[t])}.{_quote(t)}" for t in tables)
            cursor.execute(f"LOCK TABLE {live} IN ACCESS EXCLUSIVE MODE")
            for table, live_schema in tables.items():
                cursor.execute(f"DROP TABLE {_quote(live_schema)}.{_quote(table)}")
            for table, live_schema in tables.items():
                cursor.execute(
                    f"ALTER TABLE {_quote(schema)}.{_quote(table)} SET SCHEMA {_quote(live_schema)}"
                )
        keep_inline = projection.inline and row.position is None
        state.swap_shadow(label, None, using, position=None if keep_inline else position)
        if projection.inline:  # its tables now hold every event: no longer `unbuilt`
            mark_built(label, using, reason="shadow swap", position=position)
        with connection.cursor() as cursor:
            cursor.execute(f"DROP SCHEMA {_quote(schema)} CASCADE")
    duration = time.monotonic() - started
    result.swap_seconds = duration
    runner.report("swapped", projection=label, position=position, duration=duration)
    logger.info(
        "Swapped the shadow tables of %s in (position %d) in %.3fs",
        printable(label),
        position,
        duration,
        extra={"projection": label, "position": position, "duration": duration},
    )


def _check_dead_letters_at_swap(projection: Projection) -> None:
    try:
        _check_dead_letters(projection)
    except RebuildRefused as exc:
        raise RebuildAborted(
            projection.label,
            f"the live projection dead-lettered events during the build ({exc.reason}); "
            "the shadow is kept: retry or resolve them, then run the shadow rebuild again "
            "to resume it",
            shadow=True,
        ) from exc

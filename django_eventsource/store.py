"""Event stores: [`EventStore`][django_eventsource.EventStore] on the Django ORM and
[`InMemoryEventStore`][django_eventsource.InMemoryEventStore] for tests.

Both honour the same contract (and pass the same contract test suite):

* ``append(aggregate_id, events, expected_version=...)`` writes all events of one stream
  atomically, or none of them, and raises
  [`ConcurrencyError`][django_eventsource.ConcurrencyError] when
  the stream is not at the expected version.
* ``read_stream(aggregate_id)`` returns a stream's events in version order.
* ``read_all(from_position=...)`` returns events *strictly after* ``from_position`` in the
  global order. Resuming from the last position a reader saw never skips an event, whatever
  the interleaving of concurrent writers (see `django_eventsource.backends.postgresql`).

Every method has an ``a``-prefixed async twin, as Django's ORM does.

The store knows nothing of projections: inline projections reach each append through the
hook that ``AppConfig.ready()`` installs with
[`set_inline_projections`][django_eventsource.store.set_inline_projections].
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final
from uuid import UUID

from django.db import IntegrityError, connections, transaction
from django.utils import timezone

from django_eventsource import metrics
from django_eventsource.backends import Backend, backend_for
from django_eventsource.backends.base import VERSION_CONSTRAINT
from django_eventsource.basestore import (
    PENDING_COUNT_LIMIT,
    BaseEventStore,
    InlineHook,
    Pending,
    _check_expected_version,
    _check_limit,
    _check_version,
    _repeat_of,
    _stamped,
    _type_names,
    set_inline_projections,
)
from django_eventsource.conf import database_alias
from django_eventsource.constants import EVENT_TABLE as TABLE
from django_eventsource.constants import HELD_REREADS, NO_TENANT, ExpectedVersion
from django_eventsource.events import DomainEvent, EventRegistry
from django_eventsource.exceptions import (
    AppendTimeout,
    ConcurrencyError,
    DatabaseBusy,
    PositionNotFound,
    StaleSnapshot,
)
from django_eventsource.logs import tenant_text
from django_eventsource.memorystore import InMemoryEventStore
from django_eventsource.pending import count_pending, count_pending_many
from django_eventsource.stored import ReadResult, StoredEvent, _Stamps, _wrap_appended
from django_eventsource.text import plural
from django_eventsource.transactions import busy_error, write_transaction
from django_eventsource.validation import (
    Prepared,
    check_position,
    check_read_aggregate,
    check_read_tenant,
    prepare_append,
)

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

__all__ = [
    "PENDING_COUNT_LIMIT",
    "BaseEventStore",
    "EventStore",
    "ExpectedVersion",
    "InMemoryEventStore",
    "InlineHook",
    "Pending",
    "ReadResult",
    "StoredEvent",
    "set_inline_projections",
]

logger = logging.getLogger(__name__)

#: How long an ``ExpectedVersion.ANY`` append keeps retrying after losing the race for the
#: stream's next version, in seconds, before it raises ``AppendTimeout``.
ANY_TIMEOUT: Final = 30.0

#: Events after the pair ``(stamp, position)`` of the event at a position (PostgreSQL).
_AFTER_PAIR: Final = f"(stamp, position) > ((SELECT stamp FROM {TABLE} WHERE position = %s), %s)"

_COLUMNS: Final = (
    "position, event_id, event_type, schema_version, NULLIF(tenant_id, ''), aggregate_id, "
    "aggregate_type, aggregate_version, payload, metadata, correlation_id, causation_id, "
    "occurred_at, recorded_at"
)


def _from_rows(rows: Iterable[Sequence[Any]], registry: EventRegistry) -> list[StoredEvent]:
    """StoredEvents from rows of ``_COLUMNS`` whose values need no conversion.

    A read builds thousands of these: the slots are filled directly rather than through
    the keyword constructor (about three times faster), and nothing is decoded yet.
    """
    new = StoredEvent.__new__
    events: list[StoredEvent] = []
    append = events.append
    for row in rows:
        event = new(StoredEvent)
        (
            event.position,
            event.event_id,
            event.event_type,
            event.schema_version,
            event.tenant_id,
            event.aggregate_id,
            event.aggregate_type,
            event.aggregate_version,
            event._payload,
            event._metadata,
            event.correlation_id,
            event.causation_id,
            event.occurred_at,
            event.recorded_at,
        ) = row
        event._event = None
        event._registry = registry
        append(event)
    return events


class EventStore(BaseEventStore):
    """The event store in the Django database ``using`` (default: ``EVENTSOURCE``'s alias).

    An append is one statement that checks the expected version, assigns the stream versions
    and computes the ordering stamp (on PostgreSQL a call of the PL/pgSQL function of
    migration 0004, on SQLite one ``INSERT … SELECT``). It runs in a transaction together with
    any inline projections and ``after_append`` hooks (a savepoint when called inside
    ``transaction.atomic``); when there are none and no transaction is open, the statement is
    its own transaction.
    """

    def __init__(
        self,
        using: str | None = None,
        *,
        registry: EventRegistry | None = None,
        inline_projections: bool = True,
    ) -> None:
        self._using = using
        super().__init__(registry=registry, inline_projections=inline_projections)

    @property
    def using(self) -> str:
        """The database alias this store reads and writes."""
        return database_alias(self._using)

    @property
    def backend(self) -> Backend:
        """The vendor-specific SQL and adapters of
        [`using`][django_eventsource.store.EventStore.using]'s database."""
        return backend_for(connections[self.using])

    # Writing ------------------------------------------------------------------------------

    def append(
        self,
        aggregate_id: UUID,
        events: Sequence[DomainEvent],
        *,
        expected_version: int = ExpectedVersion.ANY,
    ) -> list[StoredEvent]:
        batch = prepare_append(aggregate_id, events, expected_version, self.registry)
        if not batch.events:
            _check_expected_version(
                batch, self.stream_version(aggregate_id, tenant_id=batch.tenant_id)
            )
            return []
        stamps = _Stamps(batch.events)
        try:
            return self._append_batch(batch)
        except BaseException as exc:
            stamps.restore()
            busy = busy_error(exc, self.using, f"the append to stream {batch.aggregate_id}")
            if busy is None:
                raise
            connection = connections[self.using]
            if (
                connection.vendor != "sqlite"
                and connection.in_atomic_block
                and self._guard(connection)
            ):
                # The statement ran in the caller's transaction without a savepoint, and
                # PostgreSQL aborted that transaction: it can only roll back.
                transaction.set_rollback(True, using=self.using)
            raise busy from (exc.__cause__ if isinstance(exc, DatabaseBusy) else exc)

    def _append_batch(self, batch: Prepared) -> list[StoredEvent]:
        deadline = None
        attempt = 0
        # Looked up once: each lookup goes through asgiref's Local (a few us per append).
        connection = connections[self.using]
        while True:
            attempt += 1
            guard = self._guard(connection)
            try:
                if guard is not None:
                    # The append is one statement. Outside a transaction it is a transaction
                    # of its own (no BEGIN and COMMIT round trips); inside the caller's, the
                    # guard keeps a unique violation from breaking that transaction, so it
                    # needs no savepoint (two more round trips) either.
                    outcome = self._insert(batch, connection, guard=guard)
                else:
                    with write_transaction(self.using):
                        outcome = self._insert(batch, connection)
                        if isinstance(outcome, list) and outcome:
                            self._run_after_append(outcome)
            except StaleSnapshot:
                # The snapshot of the caller's transaction is too old for its inline
                # projections: nothing else it does can be trusted to commit. Its atomic
                # block rolls back (Django refuses further queries in it), to be retried.
                if connection.in_atomic_block:
                    transaction.set_rollback(True, using=self.using)
                raise
            except IntegrityError as exc:
                error: IntegrityError = exc
                version_conflict = self.backend.is_version_conflict(exc)
            else:
                if isinstance(outcome, list):
                    return self._appended(batch, outcome)
                # The guard caught a unique violation: the same cases as the IntegrityError.
                error = IntegrityError(
                    f"duplicate key value violates unique constraint {outcome!r}"
                )
                version_conflict = outcome == VERSION_CONSTRAINT
            repeat = self._repeat(batch)
            if repeat is not None:
                return _stamped(batch, repeat)
            if not version_conflict:
                raise error  # not a race for a version: never reported as one
            if batch.expected_version != ExpectedVersion.ANY:
                raise self._conflict(batch) from error
            # ANY: another writer took the version this append was about to use. Retry
            # (it reads the stream's version anew) until it wins or time runs out.
            now = time.monotonic()
            if deadline is None:
                deadline = now + ANY_TIMEOUT
            elif now >= deadline:
                timeout = AppendTimeout(
                    batch.aggregate_id,
                    self.stream_version(batch.aggregate_id, tenant_id=batch.tenant_id),
                    batch.tenant_id,
                    attempts=attempt,
                    timeout=ANY_TIMEOUT,
                )
                logger.warning(
                    "Append to stream %s%s gave up after %s in %.0fs: other "
                    "writers kept taking its next version",
                    batch.aggregate_id,
                    tenant_text(batch.tenant_id),
                    plural(attempt, "attempt"),
                    ANY_TIMEOUT,
                    extra={
                        "stream": str(batch.aggregate_id),
                        "tenant": batch.tenant_id,
                        "attempts": attempt,
                        "count": len(batch.events),
                    },
                )
                raise timeout from error
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug(
                    "Append to stream %s%s lost the race for its next version; retrying "
                    "(attempt %d)",
                    batch.aggregate_id,
                    tenant_text(batch.tenant_id),
                    attempt,
                    extra={
                        "stream": str(batch.aggregate_id),
                        "tenant": batch.tenant_id,
                        "attempts": attempt,
                    },
                )
            time.sleep(random.uniform(0, min(0.05, 0.0005 * 2 ** min(attempt, 10))))

    def _appended(self, batch: Prepared, stored: list[StoredEvent]) -> list[StoredEvent]:
        """What a successful statement leads to: the stored events, or (no row: the version
        check failed) an exact repeat's events or a ConcurrencyError."""
        if not stored:
            repeat = self._repeat(batch)
            if repeat is not None:
                return _stamped(batch, repeat)
            raise self._conflict(batch)
        metrics.record_appended(self.using, batch.tenant_id, len(stored))
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "Appended %d events to stream %s%s at positions %d-%d",
                len(stored),
                batch.aggregate_id,
                tenant_text(batch.tenant_id),
                stored[0].position,
                stored[-1].position,
                extra={
                    "stream": str(batch.aggregate_id),
                    "tenant": batch.tenant_id,
                    "count": len(stored),
                    "first_position": stored[0].position,
                    "last_position": stored[-1].position,
                },
            )
        return stored

    def _repeat(self, batch: Prepared) -> list[StoredEvent] | None:
        """After a failed insert: the stored events if the append repeats one exactly, None
        if none of its ids is stored; DuplicateEventId if some are, but not as a repeat."""
        backend = self.backend
        ids = [backend.adapt_uuid(e.event_id) for e in batch.events]
        with backend.read_cursor(connections[self.using]) as cursor:
            cursor.execute(
                f"SELECT {_COLUMNS} FROM {TABLE} WHERE event_id IN "
                f"({', '.join(['%s'] * len(ids))})",
                ids,
            )
            rows = cursor.fetchall()
        if not rows:
            return None
        return _repeat_of(batch, self._events(backend, rows))

    def _guard(self, connection: BaseDatabaseWrapper) -> bool | None:
        """How the append's statement runs: None when it needs a transaction of its own
        (``transaction.atomic``, a savepoint inside the caller's), else whether it must be
        guarded.

        The statement runs bare when no ``after_append`` hook and no inline projection must
        share its transaction: unguarded in autocommit mode (it is a transaction by itself),
        guarded inside the caller's transaction (a conflict is reported without breaking it;
        see ``Backend.append_statement``).
        """
        if getattr(self, "after_append", None) or self._inline_active():
            return None
        return connection.in_atomic_block or not connection.get_autocommit()

    def _conflict(self, batch: Prepared) -> ConcurrencyError:
        actual = self.stream_version(batch.aggregate_id, tenant_id=batch.tenant_id)
        return ConcurrencyError(
            batch.aggregate_id, batch.expected_version, actual, batch.tenant_id
        )

    def _insert(
        self, batch: Prepared, connection: BaseDatabaseWrapper, *, guard: bool = False
    ) -> list[StoredEvent] | str:
        """Run the append's statement: the stored events (none when the version check
        failed), or the name of the unique constraint that a guarded statement hit."""
        backend = backend_for(connection)
        recorded_at = timezone.now()
        payloads = batch.payloads
        rows = [
            (
                ordinal,
                event.event_id,
                event.event_type,
                event.schema_version,
                event.aggregate_type,
                payload,
                metadata,
                event.correlation_id,
                event.causation_id,
                event.occurred_at,
            )
            for ordinal, (event, payload, metadata) in enumerate(
                zip(batch.events, payloads, batch.metadata, strict=True), start=1
            )
        ]
        sql, params = backend.append_statement(
            TABLE,
            tenant_id=batch.tenant_id or NO_TENANT,
            aggregate_id=batch.aggregate_id,
            recorded_at=recorded_at,
            rows=rows,
            expected_version=batch.expected_version,
            guard=guard,
        )
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            result = cursor.fetchall()
        if not result:
            return []
        if result[0][0] is None:
            return str(result[0][2])
        # In position order (positions are unique: the rest of a row is never compared).
        result.sort()
        return _wrap_appended(
            batch.events,
            payloads,
            result,
            tenant_id=batch.tenant_id or None,
            recorded_at=recorded_at,
            registry=self.registry,
        )

    # Reading ------------------------------------------------------------------------------

    def _events(self, backend: Backend, rows: list[Any]) -> list[StoredEvent]:
        if backend.native_types:
            return _from_rows(rows, self.registry)
        return [self._stored(backend, row) for row in rows]

    def _stored(self, backend: Backend, row: Sequence[Any]) -> StoredEvent:
        return StoredEvent(
            position=row[0],
            event_id=backend.to_uuid(row[1]),
            event_type=row[2],
            schema_version=row[3],
            tenant_id=row[4] or None,
            aggregate_id=backend.to_uuid(row[5]),
            aggregate_type=row[6],
            aggregate_version=row[7],
            payload=row[8],
            metadata=row[9],
            correlation_id=None if row[10] is None else backend.to_uuid(row[10]),
            causation_id=None if row[11] is None else backend.to_uuid(row[11]),
            occurred_at=backend.to_datetime(row[12]),
            recorded_at=backend.to_datetime(row[13]),
            registry=self.registry,
        )

    def read_stream(
        self,
        aggregate_id: UUID,
        *,
        from_version: int = 0,
        tenant_id: str | None = None,
        limit: int | None = None,
    ) -> ReadResult:
        _check_limit(limit)
        _check_version(from_version)
        check_read_aggregate(aggregate_id)
        check_read_tenant(tenant_id)
        backend = self.backend
        sql = (
            f"SELECT {_COLUMNS} FROM {TABLE} WHERE tenant_id = %s AND aggregate_id = %s "
            "AND aggregate_version > %s ORDER BY aggregate_version"
        )
        params: list[Any] = [
            tenant_id or NO_TENANT,
            backend.adapt_uuid(aggregate_id),
            from_version,
        ]
        if limit:
            sql += " LIMIT %s"
            params.append(limit)
        with backend.read_cursor(connections[self.using]) as cursor:
            cursor.execute(sql, params)
            rows = cursor.fetchall()
        return ReadResult(self._events(backend, rows))

    def read_all(
        self,
        from_position: int | None = None,
        *,
        limit: int | None = None,
        event_types: Iterable[str | type[DomainEvent]] | None = None,
        tenant_id: str | None = None,
    ) -> ReadResult:
        _check_limit(limit)
        start = 0 if from_position is None else check_position(from_position)
        check_read_tenant(tenant_id)
        backend = self.backend
        where: list[str] = []
        params: list[Any] = []
        if start and backend.stamped:
            # Resume after the *pair* (stamp, position) of the last event seen.
            where.append(_AFTER_PAIR)
            params += [start, start]
        elif start:
            # A row comparison on a constant stamp would scan from the start on every page.
            # The EXISTS keeps the contract: a position the store never returned is an error.
            where.append(f"position > %s AND EXISTS (SELECT 1 FROM {TABLE} WHERE position = %s)")
            params += [start, start]
        types = _type_names(event_types)
        if types is not None:
            if not types:
                return ReadResult([], start)
            where.append(f"event_type IN ({', '.join(['%s'] * len(types))})")
            params += types
        if tenant_id is not None:
            where.append("tenant_id = %s")
            params.append(tenant_id)
        horizon = backend.horizon_sql()
        read_where = [*where, f"stamp < {horizon}"] if horizon else where
        sql = f"SELECT {_COLUMNS} FROM {TABLE}"
        if read_where:
            sql += " WHERE " + " AND ".join(read_where)
        sql += " ORDER BY stamp, position" if backend.stamped else " ORDER BY position"
        read_params = params
        if limit:
            sql += " LIMIT %s"
            read_params = [*params, limit + 1]
        with backend.read_cursor(connections[self.using]) as cursor:
            for attempt in range(HELD_REREADS + 1):
                cursor.execute(sql, read_params)
                rows = cursor.fetchall()
                # A short page may stop at a hold that is only momentary (see
                # Backend.momentarily_held): read again, a few times at most.
                if not horizon or (limit and len(rows) > limit) or attempt == HELD_REREADS:
                    break
                beyond, beyond_params = where, params
                if rows:
                    beyond = [*where, _AFTER_PAIR]
                    beyond_params = [*params, rows[-1][0], rows[-1][0]]
                if not backend.momentarily_held(cursor, beyond, beyond_params):
                    break
            if not rows and start:
                cursor.execute(f"SELECT 1 FROM {TABLE} WHERE position = %s", [start])
                if cursor.fetchone() is None:
                    raise PositionNotFound(start)
        limited = limit is not None and len(rows) > limit
        if limited:
            rows = rows[:limit]
        return ReadResult(self._events(backend, rows), start, limited)

    def event_at(self, position: int) -> StoredEvent | None:
        check_position(position, "position")
        backend = self.backend
        with backend.read_cursor(connections[self.using]) as cursor:
            cursor.execute(f"SELECT {_COLUMNS} FROM {TABLE} WHERE position = %s", [position])
            row = cursor.fetchone()
        return None if row is None else self._events(backend, [row])[0]

    def feed_keys(self, positions: Iterable[int]) -> dict[int, tuple[int, int]]:
        wanted = sorted({check_position(position, "position") for position in positions})
        if not wanted or not self.backend.stamped:
            return {position: (0, position) for position in wanted}
        keys: dict[int, tuple[int, int]] = {}
        with connections[self.using].cursor() as cursor:
            cursor.execute(
                f"SELECT position, stamp FROM {TABLE} "
                f"WHERE position IN ({', '.join(['%s'] * len(wanted))})",
                wanted,
            )
            for position, stamp in cursor.fetchall():
                keys[position] = (stamp, position)
        for position in wanted:
            if position not in keys:
                raise PositionNotFound(position)
        return keys

    def head_position(self) -> int:
        with connections[self.using].cursor() as cursor:
            cursor.execute(f"SELECT MAX(position) FROM {TABLE}")
            row = cursor.fetchone()
        return int(row[0] or 0) if row else 0

    def event_tenants(self) -> list[str]:
        # A skip scan of the per-tenant index: one probe per tenant, not a read of every
        # event (the casts keep PostgreSQL's recursive query of one type).
        sql = (
            f"WITH RECURSIVE t(tenant) AS (SELECT CAST(MIN(tenant_id) AS TEXT) FROM {TABLE} "
            f"UNION ALL SELECT CAST((SELECT e.tenant_id FROM {TABLE} e WHERE e.tenant_id > "
            "t.tenant ORDER BY e.tenant_id LIMIT 1) AS TEXT) FROM t WHERE t.tenant IS NOT NULL) "
            "SELECT tenant FROM t WHERE tenant IS NOT NULL"
        )
        with connections[self.using].cursor() as cursor:
            cursor.execute(sql)
            return sorted(row[0] for row in cursor.fetchall())

    def has_events_between(
        self,
        aggregate_id: UUID,
        after_version: int,
        before_version: int,
        *,
        event_types: Iterable[str],
        tenant_id: str | None = None,
    ) -> bool:
        types = sorted(event_types)
        if not types:
            return False
        with connections[self.using].cursor() as cursor:
            cursor.execute(
                f"SELECT 1 FROM {TABLE} WHERE tenant_id = %s AND aggregate_id = %s "
                "AND aggregate_version > %s AND aggregate_version < %s "
                f"AND event_type IN ({', '.join(['%s'] * len(types))}) LIMIT 1",
                [
                    tenant_id or NO_TENANT,
                    self.backend.adapt_uuid(aggregate_id),
                    after_version,
                    before_version,
                    *types,
                ],
            )
            return cursor.fetchone() is not None

    def pending_events(self, from_position: int = 0, *, tenant_id: str | None = None) -> Pending:
        return count_pending(self.using, self.backend, from_position, tenant_id)

    def pending_events_many(self, checkpoints: Sequence[tuple[int, str | None]]) -> list[Pending]:
        return count_pending_many(self.using, self.backend, checkpoints)

    def stream_version(self, aggregate_id: UUID, *, tenant_id: str | None = None) -> int:
        check_read_aggregate(aggregate_id)
        check_read_tenant(tenant_id)
        backend = self.backend
        with connections[self.using].cursor() as cursor:
            cursor.execute(
                f"SELECT MAX(aggregate_version) FROM {TABLE} "
                "WHERE tenant_id = %s AND aggregate_id = %s",
                [tenant_id or NO_TENANT, backend.adapt_uuid(aggregate_id)],
            )
            row = cursor.fetchone()
        return int(row[0] or 0) if row else 0

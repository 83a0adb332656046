"""Event stores: :class:`EventStore` on the Django ORM and :class:`InMemoryEventStore` for tests.

Both honour the same contract (and pass the same contract test suite):

* ``append(aggregate_id, events, expected_version=...)`` writes all events of one stream
  atomically, or none of them, and raises :class:`~django_eventsource.ConcurrencyError` when
  the stream is not at the expected version.
* ``read_stream(aggregate_id)`` returns a stream's events in version order.
* ``read_all(from_position=...)`` returns events *strictly after* ``from_position`` in the
  global order. Resuming from the last position a reader saw never skips an event, whatever
  the interleaving of concurrent writers (see :mod:`django_eventsource.backends.postgresql`).

Every method has an ``a``-prefixed async twin, as Django's ORM does.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final
from uuid import UUID

from asgiref.sync import sync_to_async
from django.db import IntegrityError, connections, transaction
from django.utils import timezone

from django_eventsource.events import ENVELOPE_FIELDS, DomainEvent, EventRegistry, event_registry
from django_eventsource.exceptions import ConcurrencyError, PositionNotFound

__all__ = [
    "BaseEventStore",
    "EventStore",
    "ExpectedVersion",
    "InMemoryEventStore",
    "ReadResult",
    "StoredEvent",
]

TABLE: Final = "django_eventsource_event"
NO_TENANT: Final = ""
#: How often an ``ExpectedVersion.ANY`` append retries after losing a version race.
ANY_RETRIES: Final = 10


class ExpectedVersion:
    """Special values for ``append(..., expected_version=...)``.

    A non-negative int means "the stream is exactly at this version" (0: it does not exist yet).
    """

    #: Append whatever the stream's version (still atomic, still gap-free per stream).
    ANY: Final = -1
    #: The stream must not exist yet (the same as ``0``).
    NO_STREAM: Final = 0
    #: The stream must already exist (at any version).
    STREAM_EXISTS: Final = -2


class StoredEvent:
    """An event as stored: its global ``position`` plus the typed ``event``.

    The typed event is decoded lazily (on first access of ``.event``), so that readers that
    only route by ``event_type`` or copy rows pay no validation cost.
    """

    __slots__ = (
        "_event",
        "_metadata",
        "_payload",
        "_registry",
        "_unversioned",
        "aggregate_id",
        "aggregate_type",
        "aggregate_version",
        "causation_id",
        "correlation_id",
        "event_id",
        "event_type",
        "occurred_at",
        "position",
        "recorded_at",
        "schema_version",
        "tenant_id",
    )

    position: int
    event_id: UUID
    event_type: str
    schema_version: int
    tenant_id: str | None
    aggregate_id: UUID
    aggregate_type: str
    aggregate_version: int
    correlation_id: UUID | None
    causation_id: UUID | None
    occurred_at: datetime
    recorded_at: datetime

    def __init__(
        self,
        *,
        position: int,
        event_id: UUID,
        event_type: str,
        schema_version: int,
        tenant_id: str | None,
        aggregate_id: UUID,
        aggregate_type: str,
        aggregate_version: int,
        payload: dict[str, Any] | str,
        metadata: dict[str, Any] | str,
        correlation_id: UUID | None,
        causation_id: UUID | None,
        occurred_at: datetime,
        recorded_at: datetime,
        event: DomainEvent | None = None,
        registry: EventRegistry | None = None,
    ) -> None:
        self.position = position
        self.event_id = event_id
        self.event_type = event_type
        self.schema_version = schema_version
        self.tenant_id = tenant_id or None
        self.aggregate_id = aggregate_id
        self.aggregate_type = aggregate_type
        self.aggregate_version = aggregate_version
        self._payload = payload
        self._metadata = metadata
        self.correlation_id = correlation_id
        self.causation_id = causation_id
        self.occurred_at = occurred_at
        self.recorded_at = recorded_at
        self._event = event
        self._unversioned: DomainEvent | None = None
        self._registry = registry or event_registry

    @classmethod
    def _appended(
        cls,
        event: DomainEvent,
        *,
        position: int,
        version: int,
        tenant_id: str | None,
        payload: str,
        recorded_at: datetime,
        registry: EventRegistry,
    ) -> StoredEvent:
        """Wrap an event that was just appended, without copying it.

        The caller's event may still carry version 0 (the store assigned ``version``): the
        typed event with the version filled in is copied on first access of ``.event``,
        so appends that nobody reads back (most of them) never pay for the copy.
        """
        self = cls.__new__(cls)
        self.position = position
        self.event_id = event.event_id
        self.event_type = event.event_type
        self.schema_version = event.schema_version
        self.tenant_id = tenant_id
        self.aggregate_id = event.aggregate_id
        self.aggregate_type = event.aggregate_type
        self.aggregate_version = version
        self._payload = payload
        self._metadata = event.metadata
        self.correlation_id = event.correlation_id
        self.causation_id = event.causation_id
        self.occurred_at = event.occurred_at
        self.recorded_at = recorded_at
        self._registry = registry
        if event.aggregate_version == version:
            event._position = position
            self._event = event
            self._unversioned = None
        else:
            self._event = None
            self._unversioned = event
        return self

    @classmethod
    def from_event(
        cls, event: DomainEvent, *, position: int, recorded_at: datetime
    ) -> StoredEvent:
        """Wrap an event that was just appended (its version already assigned)."""
        event._position = position
        return cls(
            position=position,
            event_id=event.event_id,
            event_type=event.event_type,
            schema_version=event.schema_version,
            tenant_id=event.tenant_id,
            aggregate_id=event.aggregate_id,
            aggregate_type=event.aggregate_type,
            aggregate_version=event.aggregate_version,
            payload=event.payload(),
            metadata=event.metadata,
            correlation_id=event.correlation_id,
            causation_id=event.causation_id,
            occurred_at=event.occurred_at,
            recorded_at=recorded_at,
            event=event,
        )

    @property
    def payload(self) -> dict[str, Any]:
        """The payload as stored (before upcasting)."""
        if isinstance(self._payload, str):
            self._payload = json.loads(self._payload)
        return self._payload  # type: ignore[return-value]

    @property
    def metadata(self) -> dict[str, Any]:
        """The event's metadata (user, request id, ...)."""
        if isinstance(self._metadata, str):
            self._metadata = {} if self._metadata == "{}" else json.loads(self._metadata)
        return self._metadata

    @property
    def event(self) -> DomainEvent:
        """The typed event (upcast to its class's current schema version).

        Raises :class:`~django_eventsource.UnknownEventType` or
        :class:`~django_eventsource.InvalidEventPayload` when it cannot be decoded.
        """
        if self._event is None and self._unversioned is not None:
            event = self._unversioned.model_copy(
                update={"aggregate_version": self.aggregate_version}
            )
            event._position = self.position
            self._event, self._unversioned = event, None
        if self._event is None:
            raw = self._payload
            # A fresh dict for the event (the cached ``payload`` stays as stored).
            data = json.loads(raw) if isinstance(raw, str) else dict(raw)
            self._event = self._registry._decode(
                self.event_type,
                self.schema_version,
                data,
                {
                    "event_id": self.event_id,
                    "aggregate_id": self.aggregate_id,
                    "aggregate_type": self.aggregate_type,
                    "aggregate_version": self.aggregate_version,
                    "tenant_id": self.tenant_id,
                    "occurred_at": self.occurred_at,
                    "correlation_id": self.correlation_id,
                    "causation_id": self.causation_id,
                    "metadata": self.metadata,
                },
                self.position,
            )
        return self._event

    def __repr__(self) -> str:
        return (
            f"<StoredEvent #{self.position} {self.event_type} "
            f"{self.aggregate_id} v{self.aggregate_version}>"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StoredEvent):
            return NotImplemented
        return (self.position, self.event_id) == (other.position, other.event_id)

    def __hash__(self) -> int:
        return hash((self.position, self.event_id))


@dataclass(frozen=True)
class ReadResult:
    """A page of stored events, in order. Iterable; ``len()`` is the number of events."""

    events: list[StoredEvent]
    #: The position the read started after (0 for the start of the store).
    from_position: int = 0
    #: For ``read_all``: whether the page was cut by ``limit`` (more may follow at once).
    limited: bool = False
    _extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def last_position(self) -> int:
        """Where to resume: the last event's position, or ``from_position`` if empty."""
        return self.events[-1].position if self.events else self.from_position

    def __iter__(self) -> Iterator[StoredEvent]:
        return iter(self.events)

    def __len__(self) -> int:
        return len(self.events)


@dataclass(frozen=True)
class _Batch:
    """An append, validated: the events with their versions resolved where known."""

    aggregate_id: UUID
    tenant_id: str | None
    expected_version: int
    events: list[DomainEvent]


def _validate_append(
    aggregate_id: UUID,
    events: Sequence[DomainEvent],
    expected_version: int,
    registry: EventRegistry,
) -> _Batch:
    if isinstance(events, DomainEvent):  # type: ignore[unreachable]
        raise TypeError("append() takes a list of events; wrap the single event in [ ].")
    events = list(events)
    if not isinstance(expected_version, int) or isinstance(expected_version, bool):
        raise TypeError(f"expected_version must be an int, not {type(expected_version).__name__}")
    if expected_version < ExpectedVersion.STREAM_EXISTS:
        raise ValueError(
            f"expected_version={expected_version} is invalid: use a version >= 0, "
            "ExpectedVersion.ANY or ExpectedVersion.STREAM_EXISTS."
        )
    if not isinstance(aggregate_id, UUID):
        raise TypeError(f"aggregate_id must be a UUID, not {type(aggregate_id).__name__}")
    tenants = set()
    for index, event in enumerate(events):
        if not isinstance(event, DomainEvent):
            raise TypeError(f"events[{index}] is a {type(event).__name__}, not a DomainEvent")
        if event.aggregate_id != aggregate_id:
            raise ValueError(
                f"events[{index}] ({event.event_type}) belongs to aggregate "
                f"{event.aggregate_id}, not {aggregate_id}: one append writes one stream."
            )
        registry.get(event.event_type)  # UnknownEventType: never store what cannot be read
        tenants.add(event.tenant_id or None)
    if len(tenants) > 1:
        raise ValueError(f"All events of one append must share one tenant_id, got {tenants}.")
    explicit = [e.aggregate_version for e in events if e.aggregate_version]
    if explicit:
        if len(explicit) != len(events) or explicit != list(
            range(explicit[0], explicit[0] + len(events))
        ):
            raise ValueError(
                "Events that carry aggregate_version must all carry it, consecutively "
                f"(got {[e.aggregate_version for e in events]}); or leave it 0 to let the "
                "store assign versions."
            )
        implied = explicit[0] - 1
        if expected_version == ExpectedVersion.ANY:
            expected_version = implied
        elif expected_version != implied and expected_version >= 0:
            raise ValueError(
                f"expected_version={expected_version} but the first event carries "
                f"aggregate_version={explicit[0]} (which implies {implied})."
            )
    return _Batch(aggregate_id, tenants.pop() if tenants else None, expected_version, events)


def _with_versions(batch: _Batch, first_version: int) -> list[DomainEvent]:
    return [
        e if e.aggregate_version else e.model_copy(update={"aggregate_version": first_version + i})
        for i, e in enumerate(batch.events)
    ]


class BaseEventStore:
    """The contract shared by every store, with the async twins of each method."""

    registry: EventRegistry = event_registry

    def append(
        self,
        aggregate_id: UUID,
        events: Sequence[DomainEvent],
        *,
        expected_version: int = ExpectedVersion.ANY,
    ) -> list[StoredEvent]:
        """Append events to one stream atomically; returns them as stored (with positions)."""
        raise NotImplementedError

    def read_stream(
        self,
        aggregate_id: UUID,
        *,
        from_version: int = 0,
        tenant_id: str | None = None,
        limit: int | None = None,
    ) -> ReadResult:
        """The stream's events with a version above ``from_version``, in version order."""
        raise NotImplementedError

    def read_all(
        self,
        from_position: int | None = None,
        *,
        limit: int | None = None,
        event_types: Iterable[str | type[DomainEvent]] | None = None,
        tenant_id: str | None = None,
    ) -> ReadResult:
        """Events strictly after ``from_position`` (None or 0: from the start), in global order.

        ``event_types`` keeps only those types (names or classes); ``tenant_id`` one tenant's.
        """
        raise NotImplementedError

    def head_position(self) -> int:
        """The highest stored position (0 when the store is empty)."""
        raise NotImplementedError

    def stream_version(self, aggregate_id: UUID, *, tenant_id: str | None = None) -> int:
        """The stream's current version (0 when it does not exist)."""
        raise NotImplementedError

    def event_at(self, position: int) -> StoredEvent | None:
        """The event stored at ``position`` (None if there is none)."""
        raise NotImplementedError

    async def aappend(
        self,
        aggregate_id: UUID,
        events: Sequence[DomainEvent],
        *,
        expected_version: int = ExpectedVersion.ANY,
    ) -> list[StoredEvent]:
        """Async twin of :meth:`append`."""
        return await sync_to_async(self.append)(
            aggregate_id, events, expected_version=expected_version
        )

    async def aread_stream(
        self,
        aggregate_id: UUID,
        *,
        from_version: int = 0,
        tenant_id: str | None = None,
        limit: int | None = None,
    ) -> ReadResult:
        """Async twin of :meth:`read_stream`."""
        return await sync_to_async(self.read_stream)(
            aggregate_id, from_version=from_version, tenant_id=tenant_id, limit=limit
        )

    async def aread_all(
        self,
        from_position: int | None = None,
        *,
        limit: int | None = None,
        event_types: Iterable[str | type[DomainEvent]] | None = None,
        tenant_id: str | None = None,
    ) -> ReadResult:
        """Async twin of :meth:`read_all`."""
        return await sync_to_async(self.read_all)(
            from_position, limit=limit, event_types=event_types, tenant_id=tenant_id
        )

    async def ahead_position(self) -> int:
        """Async twin of :meth:`head_position`."""
        return await sync_to_async(self.head_position)()

    async def astream_version(self, aggregate_id: UUID, *, tenant_id: str | None = None) -> int:
        """Async twin of :meth:`stream_version`."""
        return await sync_to_async(self.stream_version)(aggregate_id, tenant_id=tenant_id)

    # Hooks -------------------------------------------------------------------------------

    #: Called with the stored events inside the append's transaction.
    after_append: list[Callable[[BaseEventStore, list[StoredEvent]], None]]
    #: Whether appends apply the registered inline projections in their own transaction.
    inline_projections: bool = True

    def _run_after_append(self, stored: list[StoredEvent]) -> None:
        for hook in getattr(self, "after_append", ()):
            hook(self, stored)
        if self.inline_projections:
            from django_eventsource.projections import run_inline

            run_inline(self, stored)


def _type_names(event_types: Iterable[str | type[DomainEvent]] | None) -> list[str] | None:
    if event_types is None:
        return None
    return [t if isinstance(t, str) else t.default_event_type() for t in event_types]


def _check_limit(limit: int | None) -> None:
    if limit is not None and (not isinstance(limit, int) or limit <= 0):
        raise ValueError(f"limit must be a positive int or None, not {limit!r}")


class InMemoryEventStore(BaseEventStore):
    """A store in process memory with the same contract as :class:`EventStore`; for tests."""

    def __init__(
        self, *, registry: EventRegistry | None = None, inline_projections: bool = True
    ) -> None:
        self.registry = registry or event_registry
        self.inline_projections = inline_projections
        self._events: list[StoredEvent] = []
        self._streams: dict[tuple[str, UUID], list[StoredEvent]] = {}
        self._lock = threading.RLock()
        self.after_append = []

    def append(
        self,
        aggregate_id: UUID,
        events: Sequence[DomainEvent],
        *,
        expected_version: int = ExpectedVersion.ANY,
    ) -> list[StoredEvent]:
        batch = _validate_append(aggregate_id, events, expected_version, self.registry)
        if not batch.events:
            return []
        key = (batch.tenant_id or NO_TENANT, aggregate_id)
        with self._lock:
            stream = self._streams.get(key, [])
            actual = len(stream)
            expected = batch.expected_version
            if (expected >= 0 and expected != actual) or (
                expected == ExpectedVersion.STREAM_EXISTS and actual == 0
            ):
                raise ConcurrencyError(aggregate_id, expected, actual, batch.tenant_id)
            now = timezone.now()
            stored = [
                StoredEvent.from_event(event, position=len(self._events) + i + 1, recorded_at=now)
                for i, event in enumerate(_with_versions(batch, actual + 1))
            ]
            self._run_after_append(stored)
            self._events.extend(stored)
            self._streams.setdefault(key, []).extend(stored)
        return stored

    def read_stream(
        self,
        aggregate_id: UUID,
        *,
        from_version: int = 0,
        tenant_id: str | None = None,
        limit: int | None = None,
    ) -> ReadResult:
        _check_limit(limit)
        with self._lock:
            stream = self._streams.get((tenant_id or NO_TENANT, aggregate_id), [])
            events = [e for e in stream if e.aggregate_version > from_version]
        return ReadResult(events[:limit] if limit else events)

    def read_all(
        self,
        from_position: int | None = None,
        *,
        limit: int | None = None,
        event_types: Iterable[str | type[DomainEvent]] | None = None,
        tenant_id: str | None = None,
    ) -> ReadResult:
        _check_limit(limit)
        start = from_position or 0
        types = _type_names(event_types)
        with self._lock:
            if start and not 0 < start <= len(self._events):
                raise PositionNotFound(start)
            selected = [
                e
                for e in self._events[start:]
                if (types is None or e.event_type in types)
                and (tenant_id is None or e.tenant_id == tenant_id)
            ]
        limited = limit is not None and len(selected) > limit
        return ReadResult(selected[:limit] if limit else selected, start, limited)

    def head_position(self) -> int:
        with self._lock:
            return len(self._events)

    def stream_version(self, aggregate_id: UUID, *, tenant_id: str | None = None) -> int:
        with self._lock:
            return len(self._streams.get((tenant_id or NO_TENANT, aggregate_id), []))

    def event_at(self, position: int) -> StoredEvent | None:
        with self._lock:
            return self._events[position - 1] if 0 < position <= len(self._events) else None


#: ``exclude`` for serializing a payload (a plain set: pydantic-core handles it fastest).
_ENVELOPE: Final = set(ENVELOPE_FIELDS)


def _payload_json(event: DomainEvent) -> str:
    """The event's payload as compact JSON text, serialized by pydantic-core in one call.

    What ``model_dump_json(exclude=...)`` does, without its per-call Python wrapper (which
    cost twice the serialization itself).
    """
    cls = type(event)
    if cls.payload is DomainEvent.payload:
        return cls.__pydantic_serializer__.to_json(event, exclude=_ENVELOPE).decode()
    return json.dumps(event.payload(), separators=(",", ":"))  # an overridden payload()


def _metadata_json(metadata: dict[str, Any]) -> str:
    return json.dumps(metadata, separators=(",", ":"), default=str) if metadata else "{}"


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
        event._event = event._unversioned = None
        event._registry = registry
        append(event)
    return events


#: One (stateless) backend per database vendor.
_backends: dict[str, Any] = {}


class EventStore(BaseEventStore):
    """The event store in the Django database ``using`` (default: ``EVENTSOURCE``'s alias).

    An append is one statement that checks the expected version, assigns the stream versions
    and computes the ordering stamp (on PostgreSQL a call of the PL/pgSQL function of
    migration 0003, on SQLite one ``INSERT … SELECT``). It runs in a transaction together with
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
        self.inline_projections = inline_projections
        self.registry = registry or event_registry
        self.after_append = []

    @property
    def using(self) -> str:
        """The database alias this store reads and writes."""
        if self._using is None:
            from django_eventsource.conf import get_settings

            return get_settings().database_alias
        return self._using

    def _backend(self) -> Any:
        connection = connections[self.using]
        backend = _backends.get(connection.vendor)
        if backend is None:
            from django_eventsource.backends import backend_for

            backend = _backends[connection.vendor] = backend_for(connection)
        return backend

    # Writing ------------------------------------------------------------------------------

    def append(
        self,
        aggregate_id: UUID,
        events: Sequence[DomainEvent],
        *,
        expected_version: int = ExpectedVersion.ANY,
    ) -> list[StoredEvent]:
        batch = _validate_append(aggregate_id, events, expected_version, self.registry)
        if not batch.events:
            return []
        attempts = ANY_RETRIES if batch.expected_version == ExpectedVersion.ANY else 1
        for attempt in range(attempts):
            try:
                if self._alone():
                    # The append is one statement, and a statement outside a transaction is
                    # a transaction of its own: no BEGIN and COMMIT round trips needed.
                    stored = self._insert(batch)
                else:
                    with transaction.atomic(using=self.using):
                        stored = self._insert(batch)
                        if stored:
                            self._run_after_append(stored)
            except IntegrityError as exc:
                # Another writer took one of these versions between our check and our insert.
                if attempt + 1 < attempts:
                    continue
                raise self._conflict(batch) from exc
            if not stored:
                raise self._conflict(batch)
            return stored
        raise AssertionError("unreachable")  # pragma: no cover

    def _alone(self) -> bool:
        """Whether nothing else must share the append's transaction.

        True outside any ``transaction.atomic`` block (in autocommit mode) when no
        ``after_append`` hook and no inline projection is registered: then the append's single
        statement is atomic by itself.
        """
        connection = connections[self.using]
        hooks = getattr(self, "after_append", None)
        if connection.in_atomic_block or not connection.get_autocommit() or hooks:
            return False
        if self.inline_projections:
            from django_eventsource.projections import projection_registry

            return not projection_registry.inline()
        return True

    def _conflict(self, batch: _Batch) -> ConcurrencyError:
        actual = self.stream_version(batch.aggregate_id, tenant_id=batch.tenant_id)
        return ConcurrencyError(
            batch.aggregate_id, batch.expected_version, actual, batch.tenant_id
        )

    def _insert(self, batch: _Batch) -> list[StoredEvent]:
        backend = self._backend()
        recorded_at = timezone.now()
        payloads = [_payload_json(event) for event in batch.events]
        rows = [
            (
                ordinal,
                event.event_id,
                event.event_type,
                event.schema_version,
                event.aggregate_type,
                payload,
                _metadata_json(event.metadata),
                event.correlation_id,
                event.causation_id,
                event.occurred_at,
            )
            for ordinal, (event, payload) in enumerate(
                zip(batch.events, payloads, strict=True), start=1
            )
        ]
        sql, params = backend.append_statement(
            TABLE,
            tenant_id=batch.tenant_id or NO_TENANT,
            aggregate_id=batch.aggregate_id,
            recorded_at=recorded_at,
            rows=rows,
            expected_version=batch.expected_version,
        )
        with connections[self.using].cursor() as cursor:
            cursor.execute(sql, params)
            returned = sorted((r[0], r[1]) for r in cursor.fetchall())
        if not returned:
            return []
        first = returned[0][1]
        if [r[1] for r in returned] != list(range(first, first + len(batch.events))) or any(
            e.aggregate_version and e.aggregate_version != first + i
            for i, e in enumerate(batch.events)
        ):
            raise AssertionError("stored versions do not match the batch")  # pragma: no cover
        registry, tenant_id = self.registry, batch.tenant_id or None
        return [
            StoredEvent._appended(
                event,
                position=position,
                version=version,
                tenant_id=tenant_id,
                payload=payload,
                recorded_at=recorded_at,
                registry=registry,
            )
            for event, payload, (position, version) in zip(
                batch.events, payloads, returned, strict=True
            )
        ]

    # Reading ------------------------------------------------------------------------------

    def _events(self, backend: Any, rows: list[Any]) -> list[StoredEvent]:
        if backend.native_types:
            return _from_rows(rows, self.registry)
        return [self._stored(backend, row) for row in rows]

    def _stored(self, backend: Any, row: Sequence[Any]) -> StoredEvent:
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
            correlation_id=backend.to_uuid(row[10]),
            causation_id=backend.to_uuid(row[11]),
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
        backend = self._backend()
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
        backend = self._backend()
        start = from_position or 0
        where: list[str] = []
        params: list[Any] = []
        if start and backend.stamped:
            # Resume after the *pair* (stamp, position) of the last event seen.
            where.append(
                f"(stamp, position) > ((SELECT stamp FROM {TABLE} WHERE position = %s), %s)"
            )
            params += [start, start]
        elif start:
            # A row comparison on a constant stamp would scan from the start on every page.
            # The EXISTS keeps the contract: a position the store never returned is an error.
            where.append(f"position > %s AND EXISTS (SELECT 1 FROM {TABLE} WHERE position = %s)")
            params += [start, start]
        horizon = backend.horizon_sql()
        if horizon:
            where.append(f"stamp < {horizon}")
        types = _type_names(event_types)
        if types is not None:
            if not types:
                return ReadResult([], start)
            where.append(f"event_type IN ({', '.join(['%s'] * len(types))})")
            params += types
        if tenant_id is not None:
            where.append("tenant_id = %s")
            params.append(tenant_id)
        sql = f"SELECT {_COLUMNS} FROM {TABLE}"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY stamp, position" if backend.stamped else " ORDER BY position"
        if limit:
            sql += " LIMIT %s"
            params.append(limit + 1)
        with backend.read_cursor(connections[self.using]) as cursor:
            cursor.execute(sql, params)
            rows = cursor.fetchall()
            if not rows and start:
                cursor.execute(f"SELECT 1 FROM {TABLE} WHERE position = %s", [start])
                if cursor.fetchone() is None:
                    raise PositionNotFound(start)
        limited = limit is not None and len(rows) > limit
        if limited:
            rows = rows[:limit]
        return ReadResult(self._events(backend, rows), start, limited)

    def event_at(self, position: int) -> StoredEvent | None:
        backend = self._backend()
        with backend.read_cursor(connections[self.using]) as cursor:
            cursor.execute(f"SELECT {_COLUMNS} FROM {TABLE} WHERE position = %s", [position])
            row = cursor.fetchone()
        return None if row is None else self._events(backend, [row])[0]

    def head_position(self) -> int:
        with connections[self.using].cursor() as cursor:
            cursor.execute(f"SELECT MAX(position) FROM {TABLE}")
            row = cursor.fetchone()
        return int(row[0] or 0) if row else 0

    def stream_version(self, aggregate_id: UUID, *, tenant_id: str | None = None) -> int:
        backend = self._backend()
        with connections[self.using].cursor() as cursor:
            cursor.execute(
                f"SELECT MAX(aggregate_version) FROM {TABLE} "
                "WHERE tenant_id = %s AND aggregate_id = %s",
                [tenant_id or NO_TENANT, backend.adapt_uuid(aggregate_id)],
            )
            row = cursor.fetchone()
        return int(row[0] or 0) if row else 0

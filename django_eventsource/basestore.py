"""The store contract: [`BaseEventStore`][django_eventsource.BaseEventStore], which every
event store subclasses, with the async twins of its methods, and what the stores share:
[`Pending`][django_eventsource.store.Pending], the rule for an exact repeat of an append, the
checks of read arguments, and the hook through which inline projections reach each append.

`django_eventsource.store` re-exports the public names; the stores themselves live in
`store.py` (the ORM store) and `memorystore.py` (in process memory, for tests).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Protocol
from uuid import UUID

from asgiref.sync import sync_to_async

from django_eventsource.constants import NO_TENANT, ExpectedVersion
from django_eventsource.events import DomainEvent, EventRegistry, event_registry
from django_eventsource.exceptions import ConcurrencyError, DuplicateEventId
from django_eventsource.stored import ReadResult, StoredEvent, _stamp
from django_eventsource.validation import (
    MAX_POSITION,
    MAX_VERSION,
    Prepared,
    check_position,
    check_read_event_types,
    jsonb_loads,
)

__all__ = ["BaseEventStore", "InlineHook", "Pending", "set_inline_projections"]


class InlineHook(Protocol):
    """What applies the inline projections to each append, inside its transaction."""

    def active(self) -> bool:
        """Whether there is anything to apply (else an append may run as one statement)."""

    def __call__(self, store: BaseEventStore, events: list[StoredEvent]) -> None: ...


_inline_hook: InlineHook | None = None


def set_inline_projections(hook: InlineHook | None) -> None:
    """Install the hook every store with ``inline_projections=True`` runs after each append.

    ``AppConfig.ready()`` installs the projections' (so that this module never imports them).
    """
    global _inline_hook
    _inline_hook = hook


def _stamped(batch: Prepared, stored: list[StoredEvent]) -> list[StoredEvent]:
    """``stored`` (an exact repeat's events, in the batch's order), after giving the caller's
    events their positions and versions: a repeat is stored as surely as a first append."""
    for event, record in zip(batch.events, stored, strict=True):
        _stamp(event, position=record.position, version=record.aggregate_version)
    return stored


def _version_matches(expected: int, actual: int) -> bool:
    if expected == ExpectedVersion.ANY:
        return True
    if expected == ExpectedVersion.STREAM_EXISTS:
        return actual > 0
    return expected == actual


def _check_expected_version(batch: Prepared, actual: int) -> None:
    """ConcurrencyError unless the stream, at version ``actual``, is where ``batch`` expects
    it."""
    if not _version_matches(batch.expected_version, actual):
        raise ConcurrencyError(batch.aggregate_id, batch.expected_version, actual, batch.tenant_id)


def _repeat_of(batch: Prepared, stored: Sequence[StoredEvent]) -> list[StoredEvent]:
    """The stored events when ``batch`` repeats an append exactly; else DuplicateEventId.

    ``stored`` are the stored events that carry one of the batch's ids. A repeat has every id
    stored, in the batch's stream, at consecutive versions in the batch's order, at the
    versions the batch asks for (its ``expected_version`` or explicit versions), with the same
    content. Anything else that reuses an id is refused: the caller gave a new event an old id.
    """
    by_id = {event.event_id: event for event in stored}
    first = by_id.get(batch.events[0].event_id)
    reason = ""
    if len(by_id) < len(batch.events):
        reason = "The other events of this append are not stored with it."
    elif first is None or any(
        e.tenant_id != batch.tenant_id or e.aggregate_id != batch.aggregate_id
        for e in by_id.values()
    ):
        reason = "It belongs to another stream."
    elif [by_id[e.event_id].aggregate_version for e in batch.events] != list(
        range(first.aggregate_version, first.aggregate_version + len(batch.events))
    ):
        reason = "The events of this append are stored at other versions."
    elif batch.expected_version >= 0 and first.aggregate_version != batch.expected_version + 1:
        reason = (
            f"This append expects version {batch.expected_version}, but they were stored "
            f"after version {first.aggregate_version - 1}."
        )
    else:
        for event, payload, metadata in zip(
            batch.events, batch.payloads, batch.metadata, strict=True
        ):
            if not _same_content(by_id[event.event_id], event, payload, metadata):
                reason = "The stored event has other content."
                break
    if not reason:
        return [by_id[e.event_id] for e in batch.events]
    clash = next(by_id[e.event_id] for e in batch.events if e.event_id in by_id)
    raise _duplicate(clash, reason)


def _duplicate(stored: StoredEvent, reason: str) -> DuplicateEventId:
    return DuplicateEventId(
        stored.event_id,
        position=stored.position,
        aggregate_id=stored.aggregate_id,
        aggregate_version=stored.aggregate_version,
        tenant_id=stored.tenant_id,
        reason=reason,
    )


def _same_content(stored: StoredEvent, event: DomainEvent, payload: str, metadata: str) -> bool:
    return (
        stored.event_type == event.event_type
        and stored.schema_version == event.schema_version
        and stored.aggregate_type == event.aggregate_type
        and stored.correlation_id == event.correlation_id
        and stored.causation_id == event.causation_id
        and stored.occurred_at == event.occurred_at
        and (event.aggregate_version in (0, stored.aggregate_version))
        and stored.payload == jsonb_loads(payload)
        and stored.metadata == jsonb_loads(metadata)
    )


#: ``pending_events`` counts exactly up to this many events of each kind (then stops).
PENDING_COUNT_LIMIT: Final = 100_000


@dataclass(frozen=True)
class Pending:
    """What a reader that resumes after a position has left, measured at one instant.

    On PostgreSQL, committed events can be *held back* by the read horizon: an appending
    transaction that has not committed yet holds back every event committed after it took
    its id (they come once it ends). Elsewhere ``held`` is always 0.
    """

    #: Committed events the reader can read now (counted up to ``PENDING_COUNT_LIMIT``).
    readable: int
    #: Committed events the horizon holds back (counted up to ``PENDING_COUNT_LIMIT``).
    held: int
    #: When the next readable event was recorded (None: none).
    next_readable_at: datetime | None = None
    #: When the oldest held-back event was recorded (None: none).
    oldest_held_at: datetime | None = None

    @property
    def counted_all(self) -> bool:
        """False when a count stopped at the limit (the true number is larger)."""
        return max(self.readable, self.held) < PENDING_COUNT_LIMIT


class BaseEventStore:
    """The contract shared by every store, with the async twins of each method."""

    registry: EventRegistry = event_registry

    def __init__(
        self, *, registry: EventRegistry | None = None, inline_projections: bool = True
    ) -> None:
        self.registry = registry or event_registry
        self.inline_projections = inline_projections
        self.after_append = []

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

    def pending_events(self, from_position: int = 0, *, tenant_id: str | None = None) -> Pending:
        """The committed events after ``from_position`` (in feed order): how many a reader
        can read now and how many the ordering horizon still holds back (PostgreSQL)."""
        events = self.read_all(from_position, tenant_id=tenant_id).events
        return Pending(len(events), 0, events[0].recorded_at if events else None)

    def pending_events_many(self, checkpoints: Sequence[tuple[int, str | None]]) -> list[Pending]:
        """`pending_events` for many ``(from_position, tenant_id)`` pairs at once, in order.

        The status pages measure every projection and tenant with it: the database store
        answers in at most two statements, whatever the number of pairs.
        """
        return [self.pending_events(p, tenant_id=t) for p, t in checkpoints]

    def event_tenants(self) -> list[str]:
        """Every tenant an event carries, sorted, ``""`` for events without a tenant: the
        status pages show the tenants that no runner's state row covers."""
        return sorted({e.tenant_id or NO_TENANT for e in self.read_all().events})

    def stream_version(self, aggregate_id: UUID, *, tenant_id: str | None = None) -> int:
        """The stream's current version (0 when it does not exist)."""
        raise NotImplementedError

    def event_at(self, position: int) -> StoredEvent | None:
        """The event stored at ``position`` (None if there is none)."""
        raise NotImplementedError

    def has_events_between(
        self,
        aggregate_id: UUID,
        after_version: int,
        before_version: int,
        *,
        event_types: Iterable[str],
        tenant_id: str | None = None,
    ) -> bool:
        """Whether the stream holds an event of ``event_types`` with a version strictly
        between the two: a row's embedded checkpoint uses it to detect a gap."""
        types = set(event_types)
        return any(
            after_version < e.aggregate_version < before_version and e.event_type in types
            for e in self.read_stream(aggregate_id, tenant_id=tenant_id)
        )

    def feed_keys(self, positions: Iterable[int]) -> dict[int, tuple[int, int]]:
        """Each position's key in the global order: ``(stamp, position)``.

        ``read_all`` delivers events in ascending key order, and on PostgreSQL that is not
        position order (see the ordering page of the docs): compare keys, never bare
        positions, to tell which of two events comes first. The stamp is read now, so keys
        stay right after `rebase_event_stamps`; on PostgreSQL a position the store does not
        hold raises [`PositionNotFound`][django_eventsource.PositionNotFound]. Stores
        that order by position alone (SQLite, in memory) answer with stamp 0, without a
        query.
        """
        return {check_position(position, "position"): (0, position) for position in positions}

    async def aappend(
        self,
        aggregate_id: UUID,
        events: Sequence[DomainEvent],
        *,
        expected_version: int = ExpectedVersion.ANY,
    ) -> list[StoredEvent]:
        """Async twin of [`append`][django_eventsource.store.BaseEventStore.append]."""
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
        """Async twin of [`read_stream`][django_eventsource.store.BaseEventStore.read_stream]."""
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
        """Async twin of [`read_all`][django_eventsource.store.BaseEventStore.read_all]."""
        return await sync_to_async(self.read_all)(
            from_position, limit=limit, event_types=event_types, tenant_id=tenant_id
        )

    async def ahead_position(self) -> int:
        """Async twin of
        [`head_position`][django_eventsource.store.BaseEventStore.head_position]."""
        return await sync_to_async(self.head_position)()

    async def astream_version(self, aggregate_id: UUID, *, tenant_id: str | None = None) -> int:
        """Async twin of
        [`stream_version`][django_eventsource.store.BaseEventStore.stream_version]."""
        return await sync_to_async(self.stream_version)(aggregate_id, tenant_id=tenant_id)

    # Hooks -------------------------------------------------------------------------------

    #: Called with the stored events inside the append's transaction.
    after_append: list[Callable[[BaseEventStore, list[StoredEvent]], None]]
    #: Whether appends apply the registered inline projections in their own transaction.
    inline_projections: bool = True

    def _run_after_append(self, stored: list[StoredEvent]) -> None:
        for hook in getattr(self, "after_append", ()):
            hook(self, stored)
        if self.inline_projections and _inline_hook is not None:
            _inline_hook(self, stored)

    def _inline_active(self) -> bool:
        """Whether appends to this store have inline projections to apply."""
        return self.inline_projections and _inline_hook is not None and _inline_hook.active()


def _type_names(event_types: Iterable[str | type[DomainEvent]] | None) -> list[str] | None:
    if event_types is None:
        return None
    if isinstance(event_types, str):
        raise TypeError(
            f"event_types must be a list of event type names or classes, not the str "
            f"{event_types!r} (wrap it in [ ])"
        )
    names = []
    for event_type in event_types:
        if isinstance(event_type, str):
            names.append(event_type)
        elif isinstance(event_type, type) and hasattr(event_type, "default_event_type"):
            names.append(event_type.default_event_type())
        else:
            raise TypeError(
                "event_types must hold event type names or DomainEvent classes, not "
                f"{type(event_type).__name__} {event_type!r}"
            )
    check_read_event_types(names)
    return names


def _check_version(version: int) -> None:
    if not isinstance(version, int) or isinstance(version, bool):
        raise TypeError(f"from_version must be an int, not {type(version).__name__} {version!r}")
    if not 0 <= version <= MAX_VERSION:
        raise ValueError(f"from_version must be between 0 and {MAX_VERSION}, not {version}")


def _check_limit(limit: int | None) -> None:
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool)):
        raise TypeError(f"limit must be an int or None, not {type(limit).__name__} {limit!r}")
    if limit is not None and (
        not isinstance(limit, int) or isinstance(limit, bool) or not 0 < limit < MAX_POSITION
    ):
        raise ValueError(f"limit must be a positive int or None, not {limit!r}")

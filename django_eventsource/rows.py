"""The unit of work behind ``Projection.row()``: read-model rows with embedded checkpoints.

A [`RowSet`][django_eventsource.rows.RowSet] lives for one transaction (one event, or one batch of
the runner). It
loads each row at most once (a batch prefetches rows keyed by stream with one query),
decides per row whether an event was already applied, stamps the row's checkpoint, and
writes every changed row back with one bulk upsert per model when flushed
(``django_eventsource.upsert``).

The rule (ADR-016): each row embeds the last event applied to it (``last_event_id``,
``last_event_version``, ``last_event_position``), written in the same transaction as the
row. An event the row already holds is never applied to it again: for rows keyed by one
stream, an event whose stream version is at or below the row's; for rows checkpointed by
position, an event at or before the row's position in the feed. A stream version that jumps
past events the projection handles is a gap, reported (``EventGapError``), never papered over.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast
from uuid import UUID

from django.db import connections, models

from django_eventsource.backends import backend_for
from django_eventsource.events import DomainEvent
from django_eventsource.exceptions import (
    EventAlreadyPassed,
    EventGapError,
    EventSourceError,
    IsolationNotSupported,
    PositionNotFound,
    ValueTooLong,
)
from django_eventsource.store import BaseEventStore, EventStore
from django_eventsource.upsert import column_name, upsert_rows

if TYPE_CHECKING:
    from django_eventsource.stored import StoredEvent

__all__ = ["RowOwner", "RowSet"]

M = TypeVar("M", bound=models.Model)
_MISSING = object()


def _key(model: type[models.Model], lookup: dict[str, Any]) -> tuple[Any, ...]:
    if len(lookup) == 1:
        return (model, *lookup.items())
    return (model, *sorted(lookup.items()))


class RowOwner(Protocol):
    """What a [`RowSet`][django_eventsource.rows.RowSet] needs of the projection it works for."""

    @property
    def database(self) -> str:
        """The alias the projection's rows live in."""
        ...

    @property
    def row_keys(self) -> Mapping[type[models.Model], str]:
        """The models whose rows are one stream's, each with its stream-id field."""
        ...

    @property
    def event_store(self) -> BaseEventStore | None:
        """The store the events come from (None: the default ``EventStore``)."""
        ...

    def handled_types(self) -> frozenset[str]:
        """The event type names the projection handles."""
        ...


class RowSet:
    """Rows touched by the events of one transaction, keyed by model and lookup.

    ``fresh``: the events were appended in this very transaction (inline projections), so
    no row can hold them yet. ``strict``: a row that already holds the event, or has passed
    it, is an error ([`EventAlreadyPassed`][django_eventsource.EventAlreadyPassed]) instead
    of a skip (dead-letter retries: the event must really be applied).
    """

    def __init__(
        self,
        projection: RowOwner,
        *,
        tenant_id: str | None = None,
        fresh: bool = False,
        strict: bool = False,
        isolation: str | None = None,
    ) -> None:
        self.projection = projection
        self.using = projection.database
        self.tenant_id = tenant_id
        self.fresh = fresh
        self.strict = strict
        self._rows: dict[tuple[Any, ...], Any] = {}
        self._dirty: dict[int, models.Model] = {}
        self._deleted: dict[int, models.Model] = {}
        self._lock = connections[self.using].vendor == "postgresql"
        #: Inline projections on PostgreSQL: concurrent appends may both find a row missing
        #: and both insert it (a unique violation, or two rows). The creation of a missing
        #: row is serialized by a transaction-scoped advisory lock on its table and lookup,
        #: and the row is looked up again once the lock is held (a READ COMMITTED statement
        #: then sees the row another append committed meanwhile). SQLite serializes writers.
        self._guard_new = self._lock and fresh
        #: ``isolation``: the transaction reads under one snapshot (``repeatable read``,
        #: ``serializable``). The second look cannot see a row that another append created
        #: after that snapshot: only a unique constraint on the lookup's fields stops a
        #: second row (the insert fails, and the append raises StaleSnapshot). A new row
        #: whose lookup no unique constraint covers is refused (IsolationNotSupported).
        self._snapshot_isolation = isolation if self._guard_new else None
        #: The event being handled and its position (see `handling`), so that
        #: ``get`` need not read the position back from the pydantic event (a slow lookup).
        self._event: DomainEvent | None = None
        self._event_position: int | None = None
        #: Feed keys ``(stamp, position)`` looked up so far, and positions whose keys to
        #: fetch with the next lookup (the batch's own events).
        self._keys: dict[int, tuple[int, int]] = {}
        self._pending: set[int] = set()
        #: ``strict``: the rows that already held the event (described), not written.
        self.already_held: list[str] = []
        #: The event (and its position) that last changed each dirty row, by ``id(row)``.
        self._changed_by: dict[int, tuple[DomainEvent, int | None]] = {}
        #: After a failed `flush`: the events whose rows the refused write held, in order
        #: (empty when it cannot tell), so that the error can name the event at fault.
        self.refused: list[tuple[DomainEvent, int | None]] = []

    def handling(self, event: DomainEvent, position: int | None) -> None:
        """Note the event a handler is about to apply and its position in the store."""
        self._event, self._event_position = event, position

    # Loading ------------------------------------------------------------------------------

    def _queryset(self, model: type[M]) -> models.QuerySet[M]:
        queryset = model._default_manager.using(self.using).all()
        if self._lock:
            # Inline projections may update one row from concurrent appends: serialize them.
            queryset = queryset.select_for_update()
        return queryset

    def prefetch(self, events: Iterable[StoredEvent]) -> None:
        """Load the rows of every ``row_keys`` model for these events' streams, one query each.

        The events' positions are remembered too: the first row checkpointed by position
        that needs a feed-order comparison fetches all their keys with one query.
        """
        self._pending.update(event.position for event in events)
        keys = self.projection.row_keys
        if not keys:
            return
        handled = self.projection.handled_types()
        wanted: dict[str | None, set[UUID]] = {}
        for event in events:
            if event.event_type in handled:
                wanted.setdefault(event.tenant_id, set()).add(event.aggregate_id)
        for model, field in keys.items():
            tenant_field = _has_tenant(model)
            for tenant, ids in wanted.items():
                lookup: dict[str, Any] = {}
                if tenant_field:
                    lookup["tenant_id"] = tenant or ""
                queryset = self._queryset(model).filter(**lookup)
                if self._lock:  # PostgreSQL: one array parameter, not one per stream
                    column, array_type = _any_column(model, field, self.using)
                    queryset = queryset.extra(
                        where=[f"{column} = ANY(%s::{array_type}[])"], params=[list(ids)]
                    )
                else:
                    queryset = queryset.filter(**{f"{field}__in": ids})
                found = {getattr(row, field): row for row in queryset}
                missing = [i for i in ids if i not in found]
                if missing and self._snapshot_isolation:
                    self._check_creatable(model, {field: missing[0], **lookup})
                if missing and self._guard_new:
                    lookups = [{field: i, **lookup} for i in missing]
                    _lock_new_rows(self.using, model, lookups)
                    again = self._queryset(model).filter(**lookup)
                    again = again.extra(
                        where=[f"{column} = ANY(%s::{array_type}[])"], params=[missing]
                    )
                    found.update((getattr(row, field), row) for row in again)
                for aggregate_id in ids:
                    row_lookup: dict[str, Any] = {field: aggregate_id}
                    if tenant_field:
                        row_lookup["tenant_id"] = tenant or ""
                    self._rows.setdefault(_key(model, row_lookup), found.get(aggregate_id))

    # The checkpoint decision --------------------------------------------------------------

    def get(self, model: type[M], event: DomainEvent, **lookup: Any) -> M | None:
        """The row to apply ``event`` to (new or loaded), or None if it already holds it."""
        if "tenant_id" not in lookup and _has_tenant(model):
            lookup["tenant_id"] = event.tenant_id or ""
        key = _key(model, lookup)
        row: Any = self._rows.get(key, _MISSING)
        if row is _MISSING:
            row = self._queryset(model).filter(**lookup).first()
            if row is None and self._guard_new:
                # Another append may be creating this very row: wait for it, then look again.
                _lock_new_rows(self.using, model, [lookup])
                row = self._queryset(model).filter(**lookup).first()
            self._rows[key] = row
        if row is None:
            if self._snapshot_isolation:
                self._check_creatable(model, lookup)
            row = self._rows[key] = model(**lookup)
        elif self._deleted and id(row) in self._deleted:
            return None
        position = self._event_position if event is self._event else event._position
        by = getattr(model, "checkpoint_by", "version")
        advance = True
        if by == "position":
            if position is None:
                raise ValueError(
                    f"{model.__name__} checkpoints by position, but event {event.event_id} "
                    "has not been stored (it has no position)."
                )
            held = row.last_event_position
            if held == position:
                return None  # the row holds this very event
            if held is not None:
                # Feed order, not position order: on PostgreSQL a lower position can be
                # delivered after a higher one (its transaction took its id later).
                advance = self._key(position, model, lookup) > self._key(held, model, lookup)
                if not advance and not self.fresh:
                    if self.strict:
                        raise EventAlreadyPassed(model, lookup, position, held)
                    return None
                # A fresh event (inline) is new to the row whatever its place in the feed:
                # concurrent appends reach a row in the order their transactions lock it.
                # It is applied; the checkpoint keeps naming the row's latest event in feed
                # order, so that a replay of the feed skips both.
        else:
            held = row.last_event_version
            if held is not None and event.aggregate_version <= held:
                # A row keyed by one stream holds every version up to ``held`` (it cannot
                # pass one: the gap check stops it), so this event is in it already.
                if self.strict:
                    self.already_held.append(f"{model.__name__} ({_describe(lookup)})")
                return None
            if event.aggregate_version > (held or 0) + 1:
                self._check_gap(model, event, held)
        if advance:
            row.last_event_id = event.event_id
            row.last_event_version = event.aggregate_version
            row.last_event_position = position
        self._dirty[id(row)] = row
        self._changed_by[id(row)] = (event, position)
        return cast("M", row)

    def _check_creatable(self, model: type[models.Model], lookup: dict[str, Any]) -> None:
        """Under one snapshot, a new row needs a unique constraint among its lookup's fields
        (see ``_snapshot_isolation``); IsolationNotSupported if none has one."""
        if not _unique_among(model, frozenset(lookup)):
            raise IsolationNotSupported(model, lookup, self._snapshot_isolation or "")

    def _key(
        self, position: int, model: type[models.Model], lookup: dict[str, Any]
    ) -> tuple[int, int]:
        """``position``'s key in the feed, ``(stamp, position)`` (fetched with the batch's)."""
        key = self._keys.get(position)
        if key is not None:
            return key
        store = self.projection.event_store or EventStore()
        wanted = {position, *self._pending}
        self._pending.clear()
        try:
            self._keys.update(store.feed_keys(wanted))
        except PositionNotFound as exc:
            raise EventSourceError(
                f"A {model.__name__} row ({_describe(lookup)}) names event #{exc.position} as "
                "its checkpoint, but the event store has no event at that position, so the "
                "row cannot be ordered against the feed. Was it written from another store? "
                "Rebuild the projection."
            ) from exc
        return self._keys[position]

    def _check_gap(self, model: type[models.Model], event: DomainEvent, held: int | None) -> None:
        """Fail if the stream has events this projection handles between held and incoming."""
        store = self.projection.event_store
        if store is None:
            store = EventStore(self.using)
        if store.has_events_between(
            event.aggregate_id,
            held or 0,
            event.aggregate_version,
            event_types=self.projection.handled_types(),
            tenant_id=event.tenant_id,
        ):
            raise EventGapError(model.__name__, event.aggregate_id, held, event.aggregate_version)

    def delete(self, row: models.Model) -> None:
        """Delete ``row`` at the flush, in the batch's transaction (a change to it made
        earlier in the batch is dropped)."""
        self._dirty.pop(id(row), None)
        self._changed_by.pop(id(row), None)
        if row.pk is not None:
            self._deleted[id(row)] = row

    # Writing ------------------------------------------------------------------------------

    def flush(self) -> int:
        """Write every changed row (one bulk upsert per model) and delete the deleted ones."""
        by_model: dict[type[models.Model], list[models.Model]] = {}
        for row in self._dirty.values():
            by_model.setdefault(type(row), []).append(row)
        for model, rows in by_model.items():
            self._check_lengths(model, rows)
            existing = [r for r in rows if r.pk is not None]
            new = [r for r in rows if r.pk is None]
            try:
                if existing:
                    upsert_rows(model, existing, self.using, update=True)
                if new:
                    upsert_rows(model, new, self.using, update=False)
            except Exception:
                self._refuse(rows)
                raise
        for model_rows in _group(self._deleted.values()).items():
            model, rows = model_rows
            model._default_manager.using(self.using).filter(pk__in=[r.pk for r in rows]).delete()
        written = len(self._dirty) + len(self._deleted)
        self._dirty.clear()
        self._deleted.clear()
        self._changed_by.clear()
        return written

    def _check_lengths(self, model: type[models.Model], rows: list[models.Model]) -> None:
        """Refuse a string longer than its field's ``max_length`` before writing
        ([`ValueTooLong`][django_eventsource.ValueTooLong]): PostgreSQL would refuse it
        with a ``DataError``, SQLite would store it; both refuse it this way."""
        for attname, max_length in _max_lengths(model):
            for row in rows:
                value = getattr(row, attname)
                if isinstance(value, str) and len(value) > max_length:
                    self._refuse([row])
                    raise ValueTooLong(model.__name__, attname, max_length, len(value))

    def _refuse(self, rows: list[models.Model]) -> None:
        """Note the events that changed ``rows``, whose write is refused."""
        events: dict[int, tuple[DomainEvent, int | None]] = {}
        for row in rows:
            changed = self._changed_by.get(id(row))
            if changed is not None:
                events.setdefault(id(changed[0]), changed)
        self.refused = list(events.values())


@functools.cache
def _any_column(model: type[models.Model], name: str, alias: str) -> tuple[str, str]:
    """The qualified, quoted column of field ``name`` and its type, for ``= ANY(array)``."""
    connection = connections[alias]
    field = model._meta.get_field(name)
    quote = connection.ops.quote_name
    column = f"{quote(model._meta.db_table)}.{quote(column_name(field))}"  # type: ignore[arg-type]
    return column, str(field.db_type(connection)).split("(")[0]


def _row_lock_key(model: type[models.Model], lookup: dict[str, Any]) -> int:
    """A stable signed 32-bit key for the row of ``model`` that ``lookup`` names."""
    text = model._meta.db_table + "".join(
        f"\x00{name}={value}" for name, value in sorted(lookup.items())
    )
    digest = hashlib.blake2b(text.encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big", signed=True)


def _lock_new_rows(using: str, model: type[models.Model], lookups: list[dict[str, Any]]) -> None:
    """Take the creation locks of these rows until the transaction ends (PostgreSQL:
    ``Backend.lock_new_rows``)."""
    connection = connections[using]
    keys = [_row_lock_key(model, lookup) for lookup in lookups]
    backend_for(connection).lock_new_rows(connection, keys)


def _group(rows: Iterable[models.Model]) -> dict[type[models.Model], list[models.Model]]:
    grouped: dict[type[models.Model], list[models.Model]] = {}
    for row in rows:
        grouped.setdefault(type(row), []).append(row)
    return grouped


def _describe(lookup: dict[str, Any]) -> str:
    return ", ".join(f"{name}={value!r}" for name, value in sorted(lookup.items()))


@functools.cache
def _unique_among(model: type[models.Model], names: frozenset[str]) -> bool:
    """Whether a unique field, ``unique_together`` or unconditional ``UniqueConstraint`` of
    ``model`` lies among the lookup's ``names`` (field names or columns' attnames), so that
    the database refuses a second row with the same lookup."""
    meta = model._meta
    by_attname = {f.attname: f.name for f in meta.concrete_fields}
    given = {by_attname.get(name, name) for name in names}
    if "pk" in given and meta.pk is not None:
        given.add(meta.pk.name)
    unique = [{f.name} for f in meta.concrete_fields if f.unique]
    unique += [set(fields) for fields in meta.unique_together]
    unique += [set(c.fields) for c in meta.total_unique_constraints]
    return any(fields and fields <= given for fields in unique)


@functools.cache
def _max_lengths(model: type[models.Model]) -> list[tuple[str, int]]:
    """``(attname, max_length)`` of every concrete ``CharField`` (and subclass) of
    ``model`` with a ``max_length``."""
    return [
        (field.attname, field.max_length)
        for field in model._meta.concrete_fields
        if isinstance(field, models.CharField) and field.max_length
    ]


@functools.cache
def _has_tenant(model: type[models.Model]) -> bool:
    return any(f.name == "tenant_id" for f in model._meta.concrete_fields)

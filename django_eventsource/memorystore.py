"""[`InMemoryEventStore`][django_eventsource.InMemoryEventStore]: the store contract in
process memory, for tests (re-exported by `django_eventsource.store`)."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from uuid import UUID

from django.utils import timezone

from django_eventsource.basestore import (
    BaseEventStore,
    _check_expected_version,
    _check_limit,
    _check_version,
    _repeat_of,
    _stamped,
    _type_names,
)
from django_eventsource.constants import NO_TENANT, ExpectedVersion
from django_eventsource.events import DomainEvent, EventRegistry
from django_eventsource.exceptions import PositionNotFound
from django_eventsource.stored import ReadResult, StoredEvent, _stamp, _Stamps
from django_eventsource.validation import (
    check_position,
    check_read_aggregate,
    check_read_tenant,
    prepare_append,
)

__all__ = ["InMemoryEventStore"]


class InMemoryEventStore(BaseEventStore):
    """A store in process memory with the same contract as
    [`EventStore`][django_eventsource.EventStore]; for tests."""

    def __init__(
        self, *, registry: EventRegistry | None = None, inline_projections: bool = True
    ) -> None:
        super().__init__(registry=registry, inline_projections=inline_projections)
        self._events: list[StoredEvent] = []
        self._streams: dict[tuple[str, UUID], list[StoredEvent]] = {}
        self._by_id: dict[UUID, StoredEvent] = {}
        self._lock = threading.RLock()

    def append(
        self,
        aggregate_id: UUID,
        events: Sequence[DomainEvent],
        *,
        expected_version: int = ExpectedVersion.ANY,
    ) -> list[StoredEvent]:
        batch = prepare_append(aggregate_id, events, expected_version, self.registry)
        key = (batch.tenant_id or NO_TENANT, aggregate_id)
        with self._lock:
            stream = self._streams.get(key, [])
            actual = len(stream)
            known = [self._by_id[e.event_id] for e in batch.events if e.event_id in self._by_id]
            if known:
                return _stamped(batch, _repeat_of(batch, known))
            _check_expected_version(batch, actual)
            if not batch.events:
                return []
            now = timezone.now()
            stamps = _Stamps(batch.events)
            stored = []
            for i, event in enumerate(batch.events):
                position = len(self._events) + i + 1
                version = event.aggregate_version or actual + i + 1
                _stamp(event, position=position, version=version)
                stored.append(StoredEvent.from_event(event, position=position, recorded_at=now))
            try:
                self._run_after_append(stored)
            except BaseException:
                stamps.restore()
                raise
            self._events.extend(stored)
            self._streams.setdefault(key, []).extend(stored)
            self._by_id.update((e.event_id, e) for e in stored)
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
        _check_version(from_version)
        check_read_aggregate(aggregate_id)
        check_read_tenant(tenant_id)
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
        start = 0 if from_position is None else check_position(from_position)
        check_read_tenant(tenant_id)
        types = _type_names(event_types)
        with self._lock:
            if start and not 0 < start <= len(self._events):
                raise PositionNotFound(start)
            selected = [
                e
                for e in self._events[start:]
                if (types is None or e.event_type in types)
                and (tenant_id is None or (e.tenant_id or NO_TENANT) == tenant_id)
            ]
        limited = limit is not None and len(selected) > limit
        return ReadResult(selected[:limit] if limit else selected, start, limited)

    def head_position(self) -> int:
        with self._lock:
            return len(self._events)

    def stream_version(self, aggregate_id: UUID, *, tenant_id: str | None = None) -> int:
        check_read_aggregate(aggregate_id)
        check_read_tenant(tenant_id)
        with self._lock:
            return len(self._streams.get((tenant_id or NO_TENANT, aggregate_id), []))

    def event_at(self, position: int) -> StoredEvent | None:
        check_position(position, "position")
        with self._lock:
            return self._events[position - 1] if 0 < position <= len(self._events) else None

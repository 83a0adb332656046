"""The asyncio face: the tutorial's names, with the tutorial's awaitable methods.

The tutorial's code runs as written with one import line changed:

```python
from django_eventsource.aio import (
    InMemoryEventStore,
    InMemoryCheckpointStore,
    DeclarativeProjection,
    DomainEvent,
    register_event,
    handles,
)

await store.append(event.aggregate_id, [event], expected_version=0)
await checkpoint_store.save("main", event.position)
await projection.handle(event)
```

`EventStore` and `DatabaseCheckpointStore` are the database-backed siblings. Nothing here
has logic of its own: a store's methods await the `a`-prefixed twins of the Django-style
store it wraps, and `handle` runs the sync `handle` as `ahandle` does. Both go through
Django's thread-sensitive executor (`sync_to_async`), so one connection, and one
transaction, serve a whole `await projection.handle(event)`, including an
`await checkpoint_store.save(...)` awaited in its handler.

Mixing the two faces:

* `DomainEvent`, `register_event` and `handles` *are* the package's objects (one event
  registry).
* `DeclarativeProjection` subclasses `django_eventsource.DeclarativeProjection`: a projection
  with a `name` joins the same projection registry, and `replay_projections` and
  `rebuild_projections` run it (they await an `async def _truncate_read_models`). Only
  `handle`, `ahandle` and `_truncate_read_models` are coroutines here.
* The stores wrap a Django-style store, kept in `.sync`; pass that to the sync API
  (`catch_up`, `ProjectionRunner`, `Repository`, `measure_lag`). They are deliberately *not*
  instances of `BaseEventStore` or `CheckpointStore`: the sync API would get a coroutine
  where it expects a result.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Generic, TypeVar
from uuid import UUID

from asgiref.sync import sync_to_async

import django_eventsource as _sync
from django_eventsource import (
    BaseEventStore,
    DomainEvent,
    ExpectedVersion,
    ReadResult,
    StoredEvent,
    handles,
    register_event,
)
from django_eventsource.checkpoints import CheckpointStore

__all__ = [
    "DatabaseCheckpointStore",
    "DeclarativeProjection",
    "DomainEvent",
    "EventStore",
    "ExpectedVersion",
    "InMemoryCheckpointStore",
    "InMemoryEventStore",
    "handles",
    "register_event",
]

S = TypeVar("S", bound=BaseEventStore)
C = TypeVar("C", bound=CheckpointStore)


class _AsyncEventStore(Generic[S]):
    """The awaitable methods of an event store; `sync` is the store they delegate to."""

    sync: S
    """The Django-style store doing the work: pass it to the sync API."""

    async def append(
        self,
        aggregate_id: UUID,
        events: Sequence[DomainEvent],
        *,
        expected_version: int = ExpectedVersion.ANY,
    ) -> list[StoredEvent]:
        """Append events to one stream atomically; returns them as stored.

        The events passed in get their `position` and `aggregate_version` too.
        """
        return await self.sync.aappend(aggregate_id, events, expected_version=expected_version)

    async def read_all(
        self,
        from_position: int | None = None,
        *,
        limit: int | None = None,
        event_types: Iterable[str | type[DomainEvent]] | None = None,
        tenant_id: str | None = None,
    ) -> ReadResult:
        """Events strictly after `from_position` (None or 0: from the start), in global order."""
        return await self.sync.aread_all(
            from_position, limit=limit, event_types=event_types, tenant_id=tenant_id
        )

    async def read_stream(
        self,
        aggregate_id: UUID,
        *,
        from_version: int = 0,
        tenant_id: str | None = None,
        limit: int | None = None,
    ) -> ReadResult:
        """The stream's events with a version above `from_version`, in version order."""
        return await self.sync.aread_stream(
            aggregate_id, from_version=from_version, tenant_id=tenant_id, limit=limit
        )

    async def head_position(self) -> int:
        """The highest stored position (0 when the store is empty)."""
        return await self.sync.ahead_position()

    async def stream_version(self, aggregate_id: UUID, *, tenant_id: str | None = None) -> int:
        """The stream's current version (0 when it does not exist)."""
        return await self.sync.astream_version(aggregate_id, tenant_id=tenant_id)

    def __repr__(self) -> str:
        return f"<aio.{type(self).__name__} wrapping {self.sync!r}>"


class InMemoryEventStore(_AsyncEventStore[_sync.InMemoryEventStore]):
    """The tutorial's in-memory store, awaitable; for tests."""

    def __init__(self, *, registry: _sync.EventRegistry | None = None) -> None:
        self.sync = _sync.InMemoryEventStore(registry=registry)


class EventStore(_AsyncEventStore[_sync.EventStore]):
    """The event store in the Django database `using`, awaitable."""

    def __init__(
        self, using: str | None = None, *, registry: _sync.EventRegistry | None = None
    ) -> None:
        self.sync = _sync.EventStore(using, registry=registry)

    @property
    def using(self) -> str:
        """The database alias this store reads and writes."""
        return self.sync.using


class _AsyncCheckpointStore(Generic[C]):
    """The awaitable methods of a checkpoint store; `sync` is the store they delegate to."""

    sync: C
    """The Django-style checkpoint store doing the work: pass it to the sync API."""

    async def save(
        self, projection_id: str, position: int, *, tenant_id: str | None = None
    ) -> None:
        """Record that `projection_id` has applied every event up to `position`."""
        await self.sync.asave(projection_id, position, tenant_id=tenant_id)

    async def load(self, projection_id: str, *, tenant_id: str | None = None) -> int | None:
        """The saved position, or None when nothing was ever saved."""
        return await self.sync.aload(projection_id, tenant_id=tenant_id)

    def __repr__(self) -> str:
        return f"<aio.{type(self).__name__} wrapping {self.sync!r}>"


class InMemoryCheckpointStore(_AsyncCheckpointStore[_sync.InMemoryCheckpointStore]):
    """The tutorial's in-memory checkpoint store, awaitable; for tests."""

    def __init__(self) -> None:
        self.sync = _sync.InMemoryCheckpointStore()


class DatabaseCheckpointStore(_AsyncCheckpointStore[_sync.DatabaseCheckpointStore]):
    """Checkpoints in the `ProjectionState` table of database `using`, awaitable.

    Awaited inside `await projection.handle(event)` (in a handler), `save()` runs on the
    projection's connection and joins its transaction: the checkpoint commits with the
    handler's work or not at all.
    """

    def __init__(self, using: str | None = None) -> None:
        self.sync = _sync.DatabaseCheckpointStore(using)

    @property
    def using(self) -> str:
        """The database alias of the checkpoints."""
        return self.sync.using


class DeclarativeProjection(_sync.DeclarativeProjection):
    """The tutorial's projection base: `await projection.handle(event)`.

    A `django_eventsource.DeclarativeProjection` in every other respect (handlers, rows,
    `name`, `inline`, the runner); handlers may be `def` or `async def`.
    `_truncate_read_models` is a coroutine too, which rebuilds await.
    """

    async def handle(self, event: DomainEvent | StoredEvent) -> bool:  # type: ignore[override]
        """Apply one event in its own transaction; returns whether a handler took it.

        Runs the sync face's `handle` in Django's sync thread, as its `ahandle` does: the
        transaction, and every database call a handler awaits, use one connection.
        """
        # Not super().ahandle(): it calls self.handle, which is this coroutine.
        return await sync_to_async(super().handle)(event)

    async def ahandle(self, event: DomainEvent | StoredEvent) -> bool:
        """The same as `handle` (for code written against the sync face)."""
        return await self.handle(event)

    async def _truncate_read_models(  # type: ignore[override]
        self, tenant_id: str | None = None
    ) -> None:
        """Delete the read models' rows (one tenant's, if given). Called by rebuilds.

        Override it (`async def _truncate_read_models(self)`) when the projection keeps state
        elsewhere; `rebuild_projections` awaits it.
        """
        await sync_to_async(super()._truncate_read_models)(tenant_id)

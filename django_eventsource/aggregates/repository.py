"""The repository: loads aggregates by replaying (from a snapshot), saves them with
optimistic concurrency, and retries commands on a conflict."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Final, Generic, TypeVar
from uuid import UUID

from asgiref.sync import sync_to_async
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction

from django_eventsource.aggregates.root import AggregateRoot
from django_eventsource.aggregates.snapshots import (
    DatabaseSnapshotStore,
    InMemorySnapshotStore,
    SnapshotRecord,
    SnapshotStore,
)
from django_eventsource.exceptions import AggregateNotFound, ConcurrencyError
from django_eventsource.store import BaseEventStore, EventStore, StoredEvent
from django_eventsource.transactions import write_transaction

__all__ = ["Repository"]

logger = logging.getLogger(__name__)

A = TypeVar("A", bound=AggregateRoot)
#: Events read per query while replaying a stream.
REPLAY_PAGE: Final = 1000


class Repository(Generic[A]):
    """Loads and saves aggregates of one class through an event store.

    ``Repository(Task)`` uses an [`EventStore`][django_eventsource.EventStore] on the default
    alias and snapshots in the database; with an
    [`InMemoryEventStore`][django_eventsource.InMemoryEventStore] snapshots stay in memory. Pass
    ``snapshot_store`` to choose another.
    """

    def __init__(
        self,
        aggregate_class: type[A],
        store: BaseEventStore | None = None,
        *,
        snapshot_store: SnapshotStore | None = None,
    ) -> None:
        if not (isinstance(aggregate_class, type) and issubclass(aggregate_class, AggregateRoot)):
            raise TypeError(
                f"Repository() takes an AggregateRoot subclass, not {aggregate_class!r}"
            )
        self.aggregate_class = aggregate_class
        self.store: BaseEventStore = store if store is not None else EventStore()
        self._snapshot_store = snapshot_store
        if snapshot_store is None and not isinstance(self.store, EventStore):
            self._snapshot_store = InMemorySnapshotStore()

    def __repr__(self) -> str:
        return f"<Repository of {self.aggregate_class.__qualname__} on {self.store!r}>"

    @property
    def snapshot_store(self) -> SnapshotStore:
        """Where this repository keeps snapshots."""
        if self._snapshot_store is not None:
            return self._snapshot_store
        assert isinstance(self.store, EventStore)
        return DatabaseSnapshotStore(self.store.using)

    # Loading --------------------------------------------------------------------------------

    def load(self, aggregate_id: UUID, *, tenant_id: str | None = None) -> A:
        """The aggregate, rebuilt from its latest usable snapshot and the events after it.

        Raises [`AggregateNotFound`][django_eventsource.AggregateNotFound] when the stream does not exist
        (in this tenant).
        """
        cls = self.aggregate_class
        tenant_id = tenant_id or None
        aggregate: A | None = None
        if cls.snapshot_every:
            aggregate = self._from_snapshot(aggregate_id, tenant_id)
        if aggregate is None:
            aggregate = cls(aggregate_id, tenant_id=tenant_id)
            self._replay(aggregate, self._read(aggregate_id, 0, tenant_id))
        if aggregate.version == 0:
            raise AggregateNotFound(cls.aggregate_type, aggregate_id, tenant_id)
        aggregate._mark_committed()
        return aggregate

    def _read(
        self, aggregate_id: UUID, from_version: int, tenant_id: str | None
    ) -> Iterator[StoredEvent]:
        """The stream after ``from_version``, read in pages."""
        while True:
            page = self.store.read_stream(
                aggregate_id, from_version=from_version, tenant_id=tenant_id, limit=REPLAY_PAGE
            )
            yield from page
            if len(page) < REPLAY_PAGE:
                return
            from_version = page.events[-1].aggregate_version

    def _replay(self, aggregate: A, events: Iterable[StoredEvent]) -> None:
        for stored in events:
            if stored.aggregate_version == 1 and stored.aggregate_type not in (
                "",
                aggregate.aggregate_type,
            ):
                raise AggregateNotFound(
                    aggregate.aggregate_type,
                    aggregate.id,
                    aggregate.tenant_id,
                    hint=f"the stream holds {stored.aggregate_type!r} events, not "
                    f"{aggregate.aggregate_type!r} ones.",
                )
            aggregate._apply(stored.event)

    def _from_snapshot(self, aggregate_id: UUID, tenant_id: str | None) -> A | None:
        """The aggregate from its snapshot plus later events; None if no snapshot is usable."""
        cls = self.aggregate_class
        record = self.snapshot_store.load(cls.aggregate_type, aggregate_id, tenant_id=tenant_id)
        if record is None or record.version < 1:
            return None
        if record.schema_version != cls.snapshot_version:
            logger.info(
                "Ignoring the snapshot of %s %s: schema version %s, the class is at %s.",
                cls.aggregate_type,
                aggregate_id,
                record.schema_version,
                cls.snapshot_version,
                extra={
                    "aggregate_type": cls.aggregate_type,
                    "stream": str(aggregate_id),
                    "tenant": tenant_id,
                    "snapshot_version": record.version,
                },
            )
            return None
        try:
            aggregate = cls.from_snapshot(aggregate_id, record.state, tenant_id=tenant_id)
        except Exception:
            logger.warning(
                "Ignoring the snapshot of %s %s at version %s: it does not load.",
                cls.aggregate_type,
                aggregate_id,
                record.version,
                exc_info=True,
                extra={
                    "aggregate_type": cls.aggregate_type,
                    "stream": str(aggregate_id),
                    "tenant": tenant_id,
                    "snapshot_version": record.version,
                },
            )
            return None
        if not isinstance(aggregate, cls) or aggregate.id != aggregate_id:
            raise TypeError(
                f"{cls.__qualname__}.from_snapshot() returned {aggregate!r}; it must return "
                f"a {cls.__qualname__} with id {aggregate_id}."
            )
        # Read from the snapshot's own event: proof that the stream really holds its version.
        events = self._read(aggregate_id, record.version - 1, tenant_id)
        first = next(events, None)
        if first is None or first.aggregate_version != record.version:
            logger.warning(
                "Ignoring the snapshot of %s %s: version %s is not in the stream.",
                cls.aggregate_type,
                aggregate_id,
                record.version,
            )
            return None
        aggregate._version = record.version
        aggregate._snapshot_at = record.version
        self._replay(aggregate, events)
        return aggregate

    # Saving ---------------------------------------------------------------------------------

    def save(self, aggregate: A) -> list[StoredEvent]:
        """Append the aggregate's recorded events; returns them as stored.

        The append expects the stream at ``aggregate.committed_version``: if anyone else
        saved the aggregate since it was loaded, [`ConcurrencyError`][django_eventsource.ConcurrencyError]
        is raised, nothing is written, and the aggregate keeps its recorded events (reload it
        and re-run the command, or use [`update`][django_eventsource.aggregates.Repository.update]). Inline projections and the snapshot
        (when one is due) are written in the same transaction as the events.
        """
        if not isinstance(aggregate, self.aggregate_class):
            raise TypeError(
                f"{self!r} saves {self.aggregate_class.__qualname__} aggregates, "
                f"not {type(aggregate).__qualname__}."
            )
        events = list(aggregate._uncommitted)
        if not events:
            return []
        # Built before anything is written: a failing to_snapshot() writes nothing.
        snapshot = self._due_snapshot(aggregate)
        store = self.store
        if isinstance(store, EventStore):
            snapshots = self.snapshot_store
            if isinstance(snapshots, DatabaseSnapshotStore) and snapshots.using != store.using:
                raise ImproperlyConfigured(
                    f"Snapshots go to database {snapshots.using!r} but events to "
                    f"{store.using!r}; they must share the append's transaction."
                )
            with write_transaction(store.using):
                stored = store.append(
                    aggregate.id, events, expected_version=aggregate.committed_version
                )
                if snapshot is not None:
                    if snapshots.transactional:
                        snapshots.save(snapshot)
                    else:  # never keep a snapshot of events that were rolled back
                        transaction.on_commit(
                            lambda: snapshots.save(snapshot), using=store.using, robust=True
                        )
        else:
            stored = store.append(
                aggregate.id, events, expected_version=aggregate.committed_version
            )
            if snapshot is not None:
                self.snapshot_store.save(snapshot)
        aggregate._mark_committed(snapshot_at=snapshot.version if snapshot else None)
        return stored

    def _due_snapshot(self, aggregate: A) -> SnapshotRecord | None:
        cls = type(aggregate)
        every = cls.snapshot_every
        if not every or aggregate.version - aggregate._snapshot_at < every:
            return None
        return SnapshotRecord(
            aggregate_type=cls.aggregate_type,
            aggregate_id=aggregate.id,
            tenant_id=aggregate.tenant_id,
            version=aggregate.version,
            schema_version=cls.snapshot_version,
            state=aggregate.to_snapshot(),
        )

    def update(
        self,
        aggregate_id: UUID,
        command: Callable[[A], object],
        *,
        tenant_id: str | None = None,
        retries: int = 3,
    ) -> A:
        """Load, run ``command(aggregate)``, save; on a conflict reload and run it again.

        ``command`` is called once per attempt on a freshly loaded aggregate, so it must act
        only on the aggregate (no e-mails, no other writes). Its exceptions propagate at
        once; only [`ConcurrencyError`][django_eventsource.ConcurrencyError] is retried, at most
        ``retries`` times, after which it is raised. Returns the saved aggregate.
        """
        _check_retries(retries)
        attempt = 0
        while True:
            aggregate = self.load(aggregate_id, tenant_id=tenant_id)
            command(aggregate)
            try:
                self.save(aggregate)
            except ConcurrencyError as exc:
                if attempt >= retries:
                    raise
                attempt += 1
                logger.debug("Retrying %s after a conflict: %s", command, exc)
                continue
            return aggregate

    # Async twins ----------------------------------------------------------------------------

    async def aload(self, aggregate_id: UUID, *, tenant_id: str | None = None) -> A:
        """Async twin of [`load`][django_eventsource.aggregates.Repository.load]."""
        return await sync_to_async(self.load)(aggregate_id, tenant_id=tenant_id)

    async def asave(self, aggregate: A) -> list[StoredEvent]:
        """Async twin of [`save`][django_eventsource.aggregates.Repository.save]."""
        return await sync_to_async(self.save)(aggregate)

    async def aupdate(
        self,
        aggregate_id: UUID,
        command: Callable[[A], object | Awaitable[object]],
        *,
        tenant_id: str | None = None,
        retries: int = 3,
    ) -> A:
        """Async twin of [`update`][django_eventsource.aggregates.Repository.update]; ``command`` may be a plain or an ``async`` function."""
        _check_retries(retries)
        attempt = 0
        while True:
            aggregate = await self.aload(aggregate_id, tenant_id=tenant_id)
            result = command(aggregate)
            if inspect.isawaitable(result):
                await result
            try:
                await self.asave(aggregate)
            except ConcurrencyError as exc:
                if attempt >= retries:
                    raise
                attempt += 1
                logger.debug("Retrying %s after a conflict: %s", command, exc)
                continue
            return aggregate


def _check_retries(retries: int) -> None:
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        raise ValueError(f"retries must be an int >= 0, not {retries!r}")

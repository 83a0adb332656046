"""Snapshot stores: an optional shortcut past a long stream, never a source of truth."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any, ClassVar
from uuid import UUID

from asgiref.sync import sync_to_async

from django_eventsource.conf import database_alias
from django_eventsource.constants import NO_TENANT
from django_eventsource.transactions import write_transaction

# Models are imported inside the methods that use them: the package root imports this module,
# and importing models needs the app registry (``AppRegistryNotReady``).
__all__ = ["DatabaseSnapshotStore", "InMemorySnapshotStore", "SnapshotRecord", "SnapshotStore"]


@dataclass(frozen=True)
class SnapshotRecord:
    """One stored snapshot: the state of an aggregate at ``version``."""

    aggregate_type: str
    aggregate_id: UUID
    tenant_id: str | None
    version: int
    schema_version: int
    state: dict[str, Any]


class SnapshotStore:
    """Where a repository keeps snapshots: the latest one per stream."""

    #: Whether writes join the database transaction of the append (and roll back with it).
    transactional: ClassVar[bool] = False

    def load(
        self, aggregate_type: str, aggregate_id: UUID, *, tenant_id: str | None = None
    ) -> SnapshotRecord | None:
        """The latest snapshot of the stream, or None."""
        raise NotImplementedError

    def save(self, record: SnapshotRecord) -> None:
        """Store ``record``, replacing the stream's previous snapshot."""
        raise NotImplementedError

    async def aload(
        self, aggregate_type: str, aggregate_id: UUID, *, tenant_id: str | None = None
    ) -> SnapshotRecord | None:
        """Async twin of [`load`][django_eventsource.aggregates.SnapshotStore.load]."""
        return await sync_to_async(self.load)(aggregate_type, aggregate_id, tenant_id=tenant_id)

    async def asave(self, record: SnapshotRecord) -> None:
        """Async twin of [`save`][django_eventsource.aggregates.SnapshotStore.save]."""
        await sync_to_async(self.save)(record)


class InMemorySnapshotStore(SnapshotStore):
    """Snapshots in process memory, for [`InMemoryEventStore`][django_eventsource.InMemoryEventStore].

    States are copied through JSON on the way in and out, as the database would, so a
    snapshot that is not JSON-ready fails here too, and nobody shares a mutable state.
    """

    def __init__(self) -> None:
        self._records: dict[tuple[str, str, UUID], tuple[SnapshotRecord, str]] = {}
        self._lock = threading.Lock()

    def load(
        self, aggregate_type: str, aggregate_id: UUID, *, tenant_id: str | None = None
    ) -> SnapshotRecord | None:
        with self._lock:
            found = self._records.get((tenant_id or NO_TENANT, aggregate_type, aggregate_id))
        if found is None:
            return None
        record, state = found
        return SnapshotRecord(
            record.aggregate_type,
            record.aggregate_id,
            record.tenant_id,
            record.version,
            record.schema_version,
            json.loads(state),
        )

    def save(self, record: SnapshotRecord) -> None:
        state = json.dumps(record.state, separators=(",", ":"))
        key = (record.tenant_id or NO_TENANT, record.aggregate_type, record.aggregate_id)
        with self._lock:
            self._records[key] = (record, state)


class DatabaseSnapshotStore(SnapshotStore):
    """Snapshots in the ``Snapshot`` model, in the database ``using`` (default: the store's).

    A repository over an [`EventStore`][django_eventsource.EventStore] writes the snapshot in the
    same transaction as the append, so a snapshot never describes events that were rolled
    back.
    """

    transactional = True

    def __init__(self, using: str | None = None) -> None:
        self._using = using

    @property
    def using(self) -> str:
        """The database alias of the snapshots."""
        return database_alias(self._using)

    def load(
        self, aggregate_type: str, aggregate_id: UUID, *, tenant_id: str | None = None
    ) -> SnapshotRecord | None:
        from django_eventsource.models import Snapshot

        row = (
            Snapshot.objects.using(self.using)
            .filter(
                tenant_id=tenant_id or NO_TENANT,
                aggregate_type=aggregate_type,
                aggregate_id=aggregate_id,
            )
            .values_list("version", "schema_version", "state")
            .first()
        )
        if row is None:
            return None
        version, schema_version, state = row
        return SnapshotRecord(
            aggregate_type, aggregate_id, tenant_id or None, version, schema_version, state
        )

    def save(self, record: SnapshotRecord) -> None:
        from django_eventsource.models import Snapshot

        using = self.using
        # update_or_create reads, then writes: in a transaction that takes SQLite's write
        # lock first (inside the append's transaction, a savepoint of it).
        with write_transaction(using):
            Snapshot.objects.using(using).update_or_create(
                tenant_id=record.tenant_id or NO_TENANT,
                aggregate_type=record.aggregate_type,
                aggregate_id=record.aggregate_id,
                defaults={
                    "version": record.version,
                    "schema_version": record.schema_version,
                    "state": record.state,
                },
            )

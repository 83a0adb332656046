"""Checkpoint stores (tutorial 10): where each projection resumes, and how far behind it is.

A checkpoint is the global position of the last event a projection has fully applied, one
per projection and tenant. [`DatabaseCheckpointStore`][django_eventsource.DatabaseCheckpointStore]
keeps it in
[`ProjectionState`][django_eventsource.ProjectionState], so that the runner writes it in the
same transaction as the read-model rows of the batch it covers. The rows' own embedded
checkpoints (ADR-016) make replaying from an older checkpoint safe.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from asgiref.sync import sync_to_async
from django.db import connections, models
from django.utils import timezone

from django_eventsource.conf import database_alias
from django_eventsource.constants import NO_TENANT
from django_eventsource.exceptions import ProjectionLocked
from django_eventsource.validation import (
    check_position,
    check_projection_name,
    check_read_tenant,
)

if TYPE_CHECKING:
    from django_eventsource.store import BaseEventStore, Pending

# Models are imported inside the methods that use them: the package root imports this module,
# and importing models needs the app registry (``AppRegistryNotReady``).
__all__ = [
    "CheckpointStore",
    "DatabaseCheckpointStore",
    "InMemoryCheckpointStore",
    "Lag",
    "lag_from_pending",
    "measure_lag",
]


@runtime_checkable
class CheckpointStore(Protocol):
    """What the runner needs from a checkpoint store."""

    def save(self, projection_id: str, position: int, *, tenant_id: str | None = None) -> None:
        """Record that ``projection_id`` has applied every event up to ``position``."""

    def load(self, projection_id: str, *, tenant_id: str | None = None) -> int | None:
        """The saved position, or None when nothing was ever saved."""

    async def asave(
        self, projection_id: str, position: int, *, tenant_id: str | None = None
    ) -> None:
        """Async twin of [`save`][django_eventsource.checkpoints.CheckpointStore.save]."""

    async def aload(self, projection_id: str, *, tenant_id: str | None = None) -> int | None:
        """Async twin of [`load`][django_eventsource.checkpoints.CheckpointStore.load]."""


class _AsyncTwins:
    def save(self, projection_id: str, position: int, *, tenant_id: str | None = None) -> None:
        """Record that ``projection_id`` (of ``tenant_id``) has applied every event up to
        ``position``; a bad name, tenant or position raises before anything is stored."""
        raise NotImplementedError

    def load(self, projection_id: str, *, tenant_id: str | None = None) -> int | None:
        """The position saved for ``projection_id`` (of ``tenant_id``), or None when
        nothing was ever saved."""
        raise NotImplementedError

    async def asave(
        self, projection_id: str, position: int, *, tenant_id: str | None = None
    ) -> None:
        """Async twin of [`save`][django_eventsource.checkpoints._AsyncTwins.save]."""
        await sync_to_async(self.save)(projection_id, position, tenant_id=tenant_id)

    async def aload(self, projection_id: str, *, tenant_id: str | None = None) -> int | None:
        """Async twin of [`load`][django_eventsource.checkpoints._AsyncTwins.load]."""
        return await sync_to_async(self.load)(projection_id, tenant_id=tenant_id)


def _check_position(position: int) -> None:
    check_position(position, "A checkpoint position")


#: (projection_id, tenant_id) pairs already checked by _check_key (a checkpoint is saved
#: once per batch: the check runs once per key and process).
_good_keys: set[tuple[str, str | None]] = set()


def _check_key(projection_id: str, tenant_id: str | None) -> None:
    """The same refusal on every database and in memory for a name or tenant no state row
    can hold (PostgreSQL raised a raw ``DataError`` for a NUL character)."""
    if (
        type(projection_id) is str
        and (tenant_id is None or type(tenant_id) is str)
        and (projection_id, tenant_id) in _good_keys
    ):
        return
    check_projection_name(projection_id, "projection_id")
    check_read_tenant(tenant_id)
    if len(_good_keys) < 10_000:
        _good_keys.add((projection_id, tenant_id))


class InMemoryCheckpointStore(_AsyncTwins):
    """Checkpoints in process memory; for tests and the tutorial."""

    def __init__(self) -> None:
        self._positions: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def save(self, projection_id: str, position: int, *, tenant_id: str | None = None) -> None:
        """Record that ``projection_id`` (of ``tenant_id``) has applied every event up to
        ``position``; a bad name, tenant or position raises before anything is stored."""
        _check_position(position)
        _check_key(projection_id, tenant_id)
        with self._lock:
            self._positions[(projection_id, tenant_id or NO_TENANT)] = position

    def load(self, projection_id: str, *, tenant_id: str | None = None) -> int | None:
        """The position saved for ``projection_id`` (of ``tenant_id``), or None when
        nothing was ever saved."""
        _check_key(projection_id, tenant_id)
        with self._lock:
            return self._positions.get((projection_id, tenant_id or NO_TENANT))

    def delete(self, projection_id: str, *, tenant_id: str | None = None) -> None:
        """Forget a checkpoint (the next run starts from the beginning)."""
        with self._lock:
            self._positions.pop((projection_id, tenant_id or NO_TENANT), None)


class DatabaseCheckpointStore(_AsyncTwins):
    """Checkpoints in the ``ProjectionState`` table of database ``using``.

    ``save()`` joins the caller's transaction: call it inside the ``transaction.atomic``
    block that writes the rows it covers, and both commit or neither does.

    ``owner`` fences the runner that holds the projection's lock: ``save()`` then only
    succeeds while the state row still names that owner, and raises
    [`ProjectionLocked`][django_eventsource.ProjectionLocked] (rolling the batch back) once another
    runner has taken over. A lock held on another connection can be lost between two
    checks; this makes a runner that lost it unable to commit a single batch.
    """

    def __init__(self, using: str | None = None, *, owner: str | None = None) -> None:
        self._using = using
        self._owner = owner

    @property
    def using(self) -> str:
        """The database alias the checkpoints live in (``EVENTSOURCE["DATABASE"]`` unless
        given)."""
        return database_alias(self._using)

    def save(self, projection_id: str, position: int, *, tenant_id: str | None = None) -> None:
        """Record that ``projection_id`` (of ``tenant_id``) has applied every event up to
        ``position``; a bad name, tenant or position raises before anything is stored."""
        _check_position(position)
        _check_key(projection_id, tenant_id)
        from django_eventsource.models import ProjectionState

        now = timezone.now()
        using = self.using
        connection = connections[using]
        meta = ProjectionState._meta

        def column(name: str) -> str:
            field = meta.get_field(name)
            assert isinstance(field, models.Field)  # a concrete column of ProjectionState
            return connection.ops.quote_name(str(field.column))

        stamp = connection.ops.adapt_datetimefield_value(now)
        # The runner saves once per batch: one plain UPDATE, without the ORM's query
        # building (which cost as much as the statement itself).
        sql = (
            f"UPDATE {connection.ops.quote_name(meta.db_table)} SET {column('position')} = "
            f"%s, {column('last_progress_at')} = %s, {column('updated_at')} = %s "
            f"WHERE {column('name')} = %s AND {column('tenant_id')} = %s"
        )
        params = [position, stamp, stamp, projection_id, tenant_id or NO_TENANT]
        if self._owner is not None:
            sql += f" AND {column('owner')} = %s"
            params.append(self._owner)
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            updated = cursor.rowcount
        if not updated and self._owner is not None:
            raise ProjectionLocked(projection_id, "another runner that took it over")
        if not updated:
            states = ProjectionState.objects.using(using)
            states.create(
                name=projection_id,
                tenant_id=tenant_id or NO_TENANT,
                position=position,
                last_progress_at=now,
            )

    def load(self, projection_id: str, *, tenant_id: str | None = None) -> int | None:
        """The position saved for ``projection_id`` (of ``tenant_id``), or None when
        nothing was ever saved."""
        _check_key(projection_id, tenant_id)
        from django_eventsource.models import ProjectionState

        return (
            ProjectionState.objects.using(self.using)
            .filter(name=projection_id, tenant_id=tenant_id or NO_TENANT)
            .values_list("position", flat=True)
            .first()
        )

    def delete(self, projection_id: str, *, tenant_id: str | None = None) -> None:
        """Reset a checkpoint to "never saved" (keeps the status row)."""
        from django_eventsource.models import ProjectionState

        ProjectionState.objects.using(self.using).filter(
            name=projection_id, tenant_id=tenant_id or NO_TENANT
        ).update(position=None)


@dataclass(frozen=True)
class Lag:
    """How far a projection is behind the store: measured against the real head, so it is
    0 only when nothing waits, readable or held back by PostgreSQL's horizon."""

    projection: str
    tenant_id: str | None
    #: The projection's checkpoint (0 when never saved).
    position: int
    #: The store's highest committed position (readable yet or not).
    head: int
    #: Committed events after the checkpoint, readable now or held back (exact up to
    #: ``PENDING_COUNT_LIMIT`` of each kind; beyond it, the larger of that and
    #: ``head - position``).
    events: int
    #: Age of the oldest event not yet applied, held back ones included (0.0 when caught up).
    seconds: float
    #: Of ``events``, those the ordering horizon holds back (PostgreSQL: an appending
    #: transaction has not committed yet; they come when it ends). Always 0 on SQLite.
    held_events: int = 0
    #: How long the oldest held-back event has waited since it was recorded.
    held_seconds: float = 0.0

    @property
    def caught_up(self) -> bool:
        """Whether no event waits for the projection (held-back events count as waiting)."""
        return self.events == 0

    @property
    def behind_events(self) -> int:
        """Of ``events``, those readable now (applied behind the visible head)."""
        return self.events - self.held_events


def measure_lag(
    projection_id: str,
    checkpoint_store: CheckpointStore,
    event_store: BaseEventStore,
    *,
    tenant_id: str | None = None,
    now: datetime | None = None,
) -> Lag:
    """The lag of one projection (and tenant): in events, and in seconds of event age."""
    position = checkpoint_store.load(projection_id, tenant_id=tenant_id) or 0
    head = event_store.head_position()
    pending = event_store.pending_events(position, tenant_id=tenant_id) if head else None
    return lag_from_pending(projection_id, tenant_id, position, head, pending, now=now)


def lag_from_pending(
    projection_id: str,
    tenant_id: str | None,
    position: int,
    head: int,
    pending: Pending | None,
    *,
    now: datetime | None = None,
) -> Lag:
    """The `Lag` that ``pending`` (what the store has after ``position``) amounts to: what
    `measure_lag` returns, for callers that measured many projections at once."""
    if pending is None or not (pending.readable or pending.held):
        return Lag(projection_id, tenant_id, position, head, 0, 0.0)
    now = now or timezone.now()
    events = pending.readable + pending.held
    if not pending.counted_all:
        events = max(events, head - position)
    ages = [
        max((now - moment).total_seconds(), 0.0)
        for moment in (pending.next_readable_at, pending.oldest_held_at)
        if moment is not None
    ]
    held_seconds = (
        max((now - pending.oldest_held_at).total_seconds(), 0.0)
        if pending.oldest_held_at is not None
        else 0.0
    )
    return Lag(
        projection_id,
        tenant_id,
        position,
        head,
        events,
        max(ages, default=0.0),
        held_events=pending.held,
        held_seconds=held_seconds,
    )

"""Checkpoint stores (tutorial 10): where each projection resumes, and how far behind it is.

A checkpoint is the global position of the last event a projection has fully applied, one
per projection and tenant. :class:`DatabaseCheckpointStore` keeps it in
:class:`~django_eventsource.models.ProjectionState`, so that the runner writes it in the
same transaction as the read-model rows of the batch it covers. The rows' own embedded
checkpoints (ADR-016) make replaying from an older checkpoint safe.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from asgiref.sync import sync_to_async
from django.db import connections, models
from django.utils import timezone

if TYPE_CHECKING:
    from django_eventsource.store import BaseEventStore

__all__ = [
    "CheckpointStore",
    "DatabaseCheckpointStore",
    "InMemoryCheckpointStore",
    "Lag",
    "measure_lag",
]

NO_TENANT = ""


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
        """Async twin of :meth:`save`."""

    async def aload(self, projection_id: str, *, tenant_id: str | None = None) -> int | None:
        """Async twin of :meth:`load`."""


class _AsyncTwins:
    def save(self, projection_id: str, position: int, *, tenant_id: str | None = None) -> None:
        raise NotImplementedError

    def load(self, projection_id: str, *, tenant_id: str | None = None) -> int | None:
        raise NotImplementedError

    async def asave(
        self, projection_id: str, position: int, *, tenant_id: str | None = None
    ) -> None:
        """Async twin of :meth:`save`."""
        await sync_to_async(self.save)(projection_id, position, tenant_id=tenant_id)

    async def aload(self, projection_id: str, *, tenant_id: str | None = None) -> int | None:
        """Async twin of :meth:`load`."""
        return await sync_to_async(self.load)(projection_id, tenant_id=tenant_id)


def _check_position(position: int) -> None:
    if not isinstance(position, int) or isinstance(position, bool) or position < 0:
        raise ValueError(f"A checkpoint position must be a non-negative int, not {position!r}")


class InMemoryCheckpointStore(_AsyncTwins):
    """Checkpoints in process memory; for tests and the tutorial."""

    def __init__(self) -> None:
        self._positions: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def save(self, projection_id: str, position: int, *, tenant_id: str | None = None) -> None:
        _check_position(position)
        with self._lock:
            self._positions[(projection_id, tenant_id or NO_TENANT)] = position

    def load(self, projection_id: str, *, tenant_id: str | None = None) -> int | None:
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
    :class:`~django_eventsource.ProjectionLocked` (rolling the batch back) once another
    runner has taken over. A lock held on another connection can be lost between two
    checks; this makes a runner that lost it unable to commit a single batch.
    """

    def __init__(self, using: str | None = None, *, owner: str | None = None) -> None:
        self._using = using
        self._owner = owner

    @property
    def using(self) -> str:
        if self._using is None:
            from django_eventsource.conf import get_settings

            return get_settings().database_alias
        return self._using

    def save(self, projection_id: str, position: int, *, tenant_id: str | None = None) -> None:
        _check_position(position)
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
            from django_eventsource.exceptions import ProjectionLocked

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
    """How far a projection is behind the store."""

    projection: str
    tenant_id: str | None
    #: The projection's checkpoint (0 when never saved).
    position: int
    #: The store's highest position.
    head: int
    #: Events stored after the checkpoint (an upper bound on the work left).
    events: int
    #: Age of the oldest event not yet applied (0.0 when caught up).
    seconds: float

    @property
    def caught_up(self) -> bool:
        return self.events == 0


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
    seconds = 0.0
    events = max(head - position, 0)
    if events:
        page = event_store.read_all(position, limit=1, tenant_id=tenant_id)
        if page.events:
            age: timedelta = (now or timezone.now()) - page.events[0].recorded_at
            seconds = max(age.total_seconds(), 0.0)
        else:
            # Nothing readable is left: the rest is another tenant's, or (PostgreSQL) the
            # highest position was already read earlier in (stamp, position) order.
            events = 0
    return Lag(projection_id, tenant_id, position, head, events, seconds)

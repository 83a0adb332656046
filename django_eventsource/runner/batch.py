"""One batch: the unit of crash safety; what runs do between batches, and what they report.

[`apply_batch`][django_eventsource.apply_batch] applies a page of events to a projection
through one [`RowSet`][django_eventsource.rows.RowSet] and saves the projection's checkpoint,
all inside one ``transaction.atomic`` on the projection's database. A crash at any point
leaves either the whole batch committed (rows, row checkpoints, projection checkpoint) or
none of it, and the next run resumes from the checkpoint.

Models are imported inside functions: the package's ``__init__`` imports this module before
the app registry is ready.
"""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import (
    InterfaceError,
    OperationalError,
    close_old_connections,
    connections,
    reset_queries,
)

from django_eventsource.checkpoints import CheckpointStore
from django_eventsource.exceptions import ProjectionError
from django_eventsource.rows import RowSet
from django_eventsource.transactions import write_transaction

if TYPE_CHECKING:
    from django_eventsource.projections import Projection
    from django_eventsource.stored import StoredEvent

__all__ = [
    "RECYCLE_INTERVAL",
    "CatchUpResult",
    "RunResult",
    "apply_batch",
    "between_batches",
    "require_sync",
]


@dataclass
class CatchUpResult:
    """What one catch-up run did."""

    projection: str
    tenant_id: str | None
    start_position: int
    position: int
    events_read: int = 0
    events_applied: int = 0
    batches: int = 0
    stopped: bool = False
    #: Events after ``position`` that PostgreSQL's ordering horizon still held back when
    #: the run returned: a transaction that appended events had not committed yet. They
    #: are applied by the next run once it commits (0 on SQLite and the in-memory store).
    held: int = 0


@dataclass
class RunResult:
    """What a [`ProjectionRunner`][django_eventsource.runner.ProjectionRunner] run did, per
    projection."""

    results: list[CatchUpResult] = field(default_factory=list)
    #: Projections (labels) that failed and were paused; see ``projection_status``.
    failed: list[str] = field(default_factory=list)
    #: Projections skipped because they are paused or failed (``skipped_statuses`` says
    #: which).
    skipped: list[str] = field(default_factory=list)
    skipped_statuses: dict[str, str] = field(default_factory=dict)
    #: Projections another runner holds (they were not run).
    locked: list[str] = field(default_factory=list)
    #: Projections whose lock was lost while running (another runner took over; the batch
    #: in hand was rolled back). A follower lists those it lost mid-batch and had not taken
    #: back when it stopped.
    lost: list[str] = field(default_factory=list)
    stopped: bool = False
    #: A shadow rebuild's swap: how long its transaction took (None: no swap).
    swap_seconds: float | None = None

    @property
    def events_applied(self) -> int:
        """Events handled, over every projection of the run."""
        return sum(r.events_applied for r in self.results)

    def result_for(self, label: str) -> CatchUpResult | None:
        """The catch-up result of one projection (None if it never started)."""
        return next((r for r in self.results if r.projection == label), None)


def apply_batch(
    projection: Projection,
    events: Sequence[StoredEvent],
    checkpoint_store: CheckpointStore,
    *,
    tenant_id: str | None = None,
    position: int | None = None,
) -> int:
    """Apply ``events`` and save the checkpoint in one transaction; returns events applied.

    ``position`` is the checkpoint to save (default: the last event's position).
    """
    require_sync(checkpoint_store, "checkpoint_store", "save")
    if not events and position is None:
        return 0
    from django_eventsource import deadletters  # it imports models

    applied = 0
    with write_transaction(projection.database):
        # The checkpoint first: it locks the projection's state row (and fails at once if
        # another runner has taken the projection over), so a dead-letter retry cannot
        # unpark a stream between the next read and the commit.
        checkpoint_store.save(
            projection.label,
            position if position is not None else events[-1].position,
            tenant_id=tenant_id,
        )
        todo = deadletters.park(projection, events, tenant_id)
        rows = RowSet(projection, tenant_id=tenant_id)
        rows.prefetch(todo)
        applied = projection.apply_all(todo, rows)
        try:
            rows.flush()
        except (OperationalError, InterfaceError):
            raise  # the connection, not an event: the caller reconnects or stops
        except Exception as exc:
            # Writing the rows is part of applying the events; which one is at fault is
            # known only when the batch holds one (the runner then retries one by one).
            one = todo[0] if len(todo) == 1 else None
            raise ProjectionError(
                projection.label,
                event_id=one.event_id if one else None,
                event_type=one.event_type if one else f"(one of {len(todo)} events)",
                position=one.position if one else None,
                tenant_id=one.tenant_id if one else tenant_id,
                cause=exc,
            ) from exc
    return applied


def require_sync(store: object, argument: str, method: str) -> None:
    """Refuse a ``django_eventsource.aio`` store: its methods return coroutines, which the sync
    API would never await (a checkpoint that is never saved)."""
    if inspect.iscoroutinefunction(getattr(store, method, None)):
        raise TypeError(
            f"{argument} is an asyncio store ({type(store).__qualname__}.{method} is async); "
            "pass its .sync store to the sync API."
        )


#: Seconds between two ``close_old_connections()`` calls while batches keep coming. With
#: Django's default ``CONN_MAX_AGE = 0`` every call closes the connection, and reconnecting
#: after each batch cost about a fifth of the time of a 500-event batch.
RECYCLE_INTERVAL = 5.0
_recycled = threading.local()


def between_batches(using: str, *, done: bool = False) -> None:
    """Long runs: drop a broken connection after any batch, let Django close expired ones
    every ``RECYCLE_INTERVAL`` seconds and when the run is ``done``, and never grow the
    DEBUG query log."""
    connection = connections[using]
    if not connection.in_atomic_block:
        now = time.monotonic()
        last = getattr(_recycled, "at", None)
        if done or last is None or now - last >= RECYCLE_INTERVAL:
            _recycled.at = now
            close_old_connections()
        elif connection.errors_occurred:
            connection.close_if_unusable_or_obsolete()
    if settings.DEBUG:
        reset_queries()

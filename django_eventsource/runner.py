"""Running projections over the store: batches, checkpoints, resumption.

:func:`apply_batch` is the unit of crash safety: it applies a page of events to a projection
through one :class:`~django_eventsource.rows.RowSet` and saves the projection's checkpoint,
all inside one ``transaction.atomic`` on the projection's database. A crash at any point
leaves either the whole batch committed (rows, row checkpoints, projection checkpoint) or
none of it, and the next run resumes from the checkpoint.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import (
    DatabaseError,
    InterfaceError,
    OperationalError,
    close_old_connections,
    connections,
    reset_queries,
    transaction,
)
from django.utils import timezone

from django_eventsource.checkpoints import CheckpointStore, DatabaseCheckpointStore
from django_eventsource.exceptions import ProjectionError, ProjectionLocked
from django_eventsource.locks import ProjectionLock, lock_for
from django_eventsource.rows import RowSet
from django_eventsource.store import BaseEventStore, EventStore, StoredEvent

if TYPE_CHECKING:
    from django_eventsource.projections import Projection

__all__ = ["CatchUpResult", "ProjectionRunner", "RunResult", "apply_batch", "catch_up"]

ProgressCallback = Callable[..., None]


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
    if not events and position is None:
        return 0
    applied = 0
    with transaction.atomic(using=projection.database):
        rows = RowSet(projection, tenant_id=tenant_id)
        rows.prefetch(events)
        applied = projection.apply_all(events, rows)
        rows.flush()
        checkpoint_store.save(
            projection.label,
            position if position is not None else events[-1].position,
            tenant_id=tenant_id,
        )
    return applied


def catch_up(
    projection: Projection,
    *,
    event_store: BaseEventStore | None = None,
    checkpoint_store: CheckpointStore | None = None,
    tenant_id: str | None = None,
    batch_size: int | None = None,
    max_events: int | None = None,
    progress_callback: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> CatchUpResult:
    """Apply every event after the projection's checkpoint, one batch per transaction.

    Each page is read *before* its transaction writes anything (on PostgreSQL a writing
    transaction would hold the ordering horizon back). Progress is reported through
    ``progress_callback(kind, **data)``; nothing is printed.
    """
    from django_eventsource.conf import get_settings

    event_store = event_store or EventStore()
    checkpoint_store = checkpoint_store or DatabaseCheckpointStore(projection.database)
    batch_size = batch_size or get_settings().batch_size
    projection.event_store = event_store
    start = checkpoint_store.load(projection.label, tenant_id=tenant_id) or 0
    result = CatchUpResult(projection.label, tenant_id, start, start)
    report = progress_callback or _ignore
    report("start", projection=projection.label, tenant_id=tenant_id, position=start)
    while True:
        if should_stop is not None and should_stop():
            result.stopped = True
            break
        limit = batch_size
        if max_events is not None:
            limit = min(limit, max_events - result.events_read)
            if limit <= 0:
                break
        page = event_store.read_all(result.position, limit=limit, tenant_id=tenant_id)
        if not page.events:
            break
        applied = apply_batch(projection, page.events, checkpoint_store, tenant_id=tenant_id)
        result.position = page.last_position
        result.events_read += len(page.events)
        result.events_applied += applied
        result.batches += 1
        report(
            "batch",
            projection=projection.label,
            tenant_id=tenant_id,
            position=result.position,
            events=len(page.events),
            applied=applied,
            total=result.events_read,
        )
        _between_batches(projection.database)
        if not page.limited and max_events is None:
            break
    _between_batches(projection.database, done=True)
    report("done", projection=projection.label, tenant_id=tenant_id, result=result)
    return result


def _ignore(kind: str, **data: Any) -> None:
    return None


#: Seconds between two ``close_old_connections()`` calls while batches keep coming. With
#: Django's default ``CONN_MAX_AGE = 0`` every call closes the connection, and reconnecting
#: after each batch cost about a fifth of the time of a 500-event batch.
RECYCLE_INTERVAL = 5.0
_recycled = threading.local()


def _between_batches(using: str, *, done: bool = False) -> None:
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


# The runner ---------------------------------------------------------------------------------


class _LockLost(Exception):
    """Follow mode: the projection's lock is gone and another runner holds it now."""

    def __init__(self, label: str) -> None:
        super().__init__(label)
        self.label = label


@dataclass
class RunResult:
    """What a :class:`ProjectionRunner` run did, per projection."""

    results: list[CatchUpResult] = field(default_factory=list)
    #: Projections (labels) that failed and were paused; see ``projection_status``.
    failed: list[str] = field(default_factory=list)
    #: Projections skipped because they are paused or failed.
    skipped: list[str] = field(default_factory=list)
    #: Projections another runner holds.
    locked: list[str] = field(default_factory=list)
    stopped: bool = False

    @property
    def events_applied(self) -> int:
        return sum(r.events_applied for r in self.results)


class ProjectionRunner:
    """Applies events to projections: catch-up in batches, or follow the store live.

    * one active runner per projection and tenant (an advisory lock on PostgreSQL, a lease on
      SQLite); others wait as hot standbys in :meth:`follow`;
    * a failing event is retried alone with backoff, then the projection's error policy
      applies: ``pause`` (status failed, checkpoint stays before the event) or
      ``dead_letter`` (the event is set aside and the runner moves on);
    * progress is reported through ``progress_callback(kind, **data)``; nothing is printed.
    """

    def __init__(
        self,
        projections: Sequence[Projection],
        *,
        tenant_id: str | None = None,
        event_store: BaseEventStore | None = None,
        batch_size: int | None = None,
        poll_interval: float | None = None,
        progress_callback: ProgressCallback | None = None,
        install_signal_handlers: bool = False,
        max_events: int | None = None,
    ) -> None:
        from django_eventsource.conf import get_settings

        options = get_settings()
        self.projections = list(projections)
        self.tenant_id = tenant_id
        self.event_store = event_store or EventStore()
        self.batch_size = batch_size or options.batch_size
        if self.batch_size <= 0:
            raise ValueError(f"batch_size must be positive, not {self.batch_size}")
        self.poll_interval = poll_interval if poll_interval is not None else options.poll_interval
        self.heartbeat_interval = options.heartbeat_interval
        self.max_retries = options.max_retries
        self.retry_backoff = options.retry_backoff
        self.default_policy = options.error_policy
        self.lag_sample_interval = options.lag_sample_interval
        self.lag_history_days = options.lag_history_days
        self._last_sample: dict[str, float] = {}
        self.max_events = max_events
        self.report = progress_callback or _ignore
        self._stop = threading.Event()
        self._following = False
        self._locks: dict[str, ProjectionLock] = {}
        self._last_heartbeat: dict[str, float] = {}
        if install_signal_handlers:
            self._install_signal_handlers()

    # Control --------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the runner to stop after the batch in hand."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _install_signal_handlers(self) -> None:
        def handler(signum: int, frame: Any) -> None:
            self.report("signal", signal=signal.Signals(signum).name)
            self.stop()

        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, handler)

    # Entry points ---------------------------------------------------------------------------

    def run_until_caught_up(self, *, wait_for_lock: bool = False) -> RunResult:
        """Catch every projection up to the head as it is now, then return."""
        result = RunResult()
        try:
            for projection in self.projections:
                if self._stop.is_set():
                    result.stopped = True
                    break
                lock = self._lock(projection)
                while not lock.acquire():
                    if not wait_for_lock or self._stop.is_set():
                        break
                    self._stop.wait(self.poll_interval)
                if not lock.held:
                    result.locked.append(projection.label)
                    self.report("locked", projection=projection.label, holder=lock.holder())
                    continue
                try:
                    self._run_projection(projection, result, until_caught_up=True)
                except ProjectionLocked:  # taken over mid-run; its last batch rolled back
                    result.locked.append(projection.label)
                    self.report("locked", projection=projection.label, holder=lock.holder())
        finally:
            self._release_all()
        result.stopped = result.stopped or self._stop.is_set()
        return result

    def follow(self) -> RunResult:
        """Keep every projection caught up until :meth:`stop` (or a signal).

        Wakes on PostgreSQL NOTIFY as a hint, polls every ``poll_interval`` otherwise, waits
        as a hot standby for projections another runner holds, and survives a database
        restart (it reconnects and carries on from the checkpoints).
        """
        from django_eventsource.notify import Waker

        result = RunResult()
        waker = Waker(self.event_store, self.poll_interval)
        self._following = True
        try:
            while not self._stop.is_set():
                try:
                    progressed = False
                    for projection in self.projections:
                        if self._stop.is_set():
                            break
                        lock = self._lock(projection)
                        if not lock.acquire():
                            self._note_standby(projection, lock, result)
                            continue
                        self._heartbeat(projection)  # also while idle: shows the runner lives
                        progressed |= self._run_projection(
                            projection, result, until_caught_up=False
                        )
                    if not progressed and not self._stop.is_set():
                        waker.wait(self._stop)
                except (_LockLost, ProjectionLocked) as lost:
                    # Another runner holds it now (our session died, it took over): stop
                    # working on it (an uncommitted batch was rolled back by the fence) and
                    # wait as its standby.
                    label = lost.label if isinstance(lost, _LockLost) else lost.projection
                    self.report("lock_lost", projection=label)
                    if label in self._locks:
                        with contextlib.suppress(DatabaseError):
                            self._locks.pop(label).release()
                except (OperationalError, InterfaceError) as exc:
                    self.report("disconnected", error=str(exc))
                    self._release_all()
                    waker.close()
                    for connection in connections.all():
                        connection.close()
                    self._stop.wait(max(self.poll_interval, 0.5))
        finally:
            self._following = False
            waker.close()
            self._release_all()
        result.stopped = True
        return result

    # One projection ------------------------------------------------------------------------

    def _lock(self, projection: Projection) -> ProjectionLock:
        lock = self._locks.get(projection.label)
        if lock is None:
            ttl = max(self.heartbeat_interval * 3, 1.0)
            lock = lock_for(projection.label, self.tenant_id, projection.database, ttl=ttl)
            self._locks[projection.label] = lock
        return lock

    def _release_all(self) -> None:
        for lock in self._locks.values():
            with contextlib.suppress(DatabaseError):
                lock.release()
        self._locks.clear()

    def _note_standby(
        self, projection: Projection, lock: ProjectionLock, result: RunResult
    ) -> None:
        if projection.label not in result.locked:
            result.locked.append(projection.label)
            self.report("standby", projection=projection.label, holder=lock.holder())

    def _run_projection(
        self, projection: Projection, result: RunResult, *, until_caught_up: bool
    ) -> bool:
        """Apply pending events; returns whether anything was read."""
        from django_eventsource import control

        projection.event_store = self.event_store
        label, tenant = projection.label, self.tenant_id
        state = control.get_state(label, tenant)
        if state.status in (state.Status.PAUSED, state.Status.FAILED):
            if label not in result.skipped:
                result.skipped.append(label)
                self.report("skipped", projection=label, tenant_id=tenant, status=state.status)
            return False
        if label in result.locked:
            result.locked.remove(label)
            self.report("took_over", projection=label, tenant_id=tenant)
        checkpoints = self._fenced_checkpoints(projection)
        start = state.position or 0
        run = next((r for r in result.results if r.projection == label), None)
        if run is None:
            run = CatchUpResult(label, tenant, start, start)
            result.results.append(run)
            head = self.event_store.head_position()
            self.report("start", projection=label, tenant_id=tenant, position=start, head=head)
        if state.status != state.Status.REBUILDING:
            self._set_status(projection, state.Status.RUNNING)
        progressed = False
        position = start
        while not self._stop.is_set():
            limit = self.batch_size
            if self.max_events is not None:
                limit = min(limit, self.max_events - run.events_read)
                if limit <= 0:
                    break
            page = self.event_store.read_all(position, limit=limit, tenant_id=tenant)
            if not page.events:
                break
            progressed = True
            applied, position, failed = self._apply_with_policy(
                projection, page.events, checkpoints, position
            )
            run.events_read += sum(1 for e in page.events if e.position <= position)
            run.events_applied += applied
            run.position = position
            run.batches += 1
            self.report(
                "batch",
                projection=label,
                tenant_id=tenant,
                position=position,
                events=len(page.events),
                applied=applied,
                total=run.events_read,
            )
            self._heartbeat(projection)
            _between_batches(projection.database, done=failed)
            if failed:
                result.failed.append(label)
                return progressed
            if not page.limited and position == page.last_position:
                break
        if progressed:
            _between_batches(projection.database, done=True)
        if not self._stop.is_set() and until_caught_up:
            self._set_status(projection, "idle")
            self.report("done", projection=label, tenant_id=tenant, result=run)
        return progressed

    def _apply_with_policy(
        self,
        projection: Projection,
        events: Sequence[StoredEvent],
        checkpoints: CheckpointStore,
        start: int,
    ) -> tuple[int, int, bool]:
        """Apply a batch. On a failure, commit the events before the failing one, retry it
        alone with backoff, then pause or dead-letter it.

        Returns (events applied, the checkpoint now committed, whether the projection failed).
        """
        from django_eventsource import control

        tenant = self.tenant_id
        try:
            return (
                apply_batch(projection, events, checkpoints, tenant_id=tenant),
                events[-1].position,
                False,
            )
        except ProjectionError as first_error:
            error = first_error
        index = next((i for i, e in enumerate(events) if e.position == error.position), None)
        if index is None:  # not an event of this batch: nothing sensible to retry
            raise error
        applied = (
            apply_batch(projection, events[:index], checkpoints, tenant_id=tenant) if index else 0
        )
        committed = events[index - 1].position if index else start
        failing = events[index]
        attempts = 1
        for attempt in range(self.max_retries):
            delay = self.retry_backoff * (2**attempt)
            self.report(
                "retry",
                projection=projection.label,
                position=failing.position,
                attempt=attempts,
                delay=delay,
                error=str(error),
            )
            if self._stop.wait(delay):
                return applied, committed, False
            connection = connections[projection.database]
            if not connection.in_atomic_block:  # an atomic rebuild's transaction must live
                connection.close_if_unusable_or_obsolete()
            attempts += 1
            try:
                applied += apply_batch(projection, [failing], checkpoints, tenant_id=tenant)
            except ProjectionError as again:
                error = again
            else:
                return applied, failing.position, False
        if (projection.error_policy or self.default_policy) == "dead_letter":
            self._dead_letter(projection, failing, error, attempts, checkpoints)
            self.report(
                "dead_lettered",
                projection=projection.label,
                position=failing.position,
                error=str(error),
            )
            return applied, failing.position, False
        control.record_failure(projection.label, tenant, error, attempts=attempts)
        self.report(
            "failed", projection=projection.label, position=failing.position, error=str(error)
        )
        return applied, committed, True

    def _dead_letter(
        self,
        projection: Projection,
        event: StoredEvent,
        error: ProjectionError,
        attempts: int,
        checkpoints: CheckpointStore,
    ) -> None:
        import traceback as tb

        from django_eventsource.models import DeadLetter

        cause = error.cause
        with transaction.atomic(using=projection.database):
            DeadLetter.objects.using(projection.database).update_or_create(
                projection=projection.label,
                tenant_id=self.tenant_id or "",
                event_position=event.position,
                defaults={
                    "event_id": event.event_id,
                    "event_type": event.event_type,
                    "error": str(error),
                    "traceback": "".join(
                        tb.format_exception(type(cause), cause, cause.__traceback__)
                    ),
                    "attempts": attempts,
                },
            )
            checkpoints.save(projection.label, event.position, tenant_id=self.tenant_id)

    def _fenced_checkpoints(self, projection: Projection) -> DatabaseCheckpointStore:
        """Claim the state row for the lock's owner; every batch's checkpoint then checks it.

        The lock lives on another connection (or is a lease that can expire), so it can be
        lost while a batch runs; the claim makes a runner that lost it fail to commit
        (:class:`~django_eventsource.ProjectionLocked`) instead of racing its successor.
        """
        from django_eventsource.models import ProjectionState

        lock = self._locks.get(projection.label)
        if lock is None:
            return DatabaseCheckpointStore(projection.database)
        if not lock.owns_state_row:
            ProjectionState.objects.using(projection.database).filter(
                name=projection.label, tenant_id=self.tenant_id or ""
            ).update(owner=lock.owner)
        return DatabaseCheckpointStore(projection.database, owner=lock.owner)

    def _set_status(self, projection: Projection, status: str) -> None:
        from django_eventsource.models import ProjectionState

        ProjectionState.objects.using(projection.database).filter(
            name=projection.label, tenant_id=self.tenant_id or ""
        ).exclude(status__in=("paused", "failed")).update(
            status=status, heartbeat_at=timezone.now()
        )

    def _heartbeat(self, projection: Projection, *, force: bool = False) -> None:
        now = time.monotonic()
        if (
            not force
            and now - self._last_heartbeat.get(projection.label, 0) < self.heartbeat_interval
        ):
            return
        self._last_heartbeat[projection.label] = now
        from django_eventsource.models import ProjectionState

        ProjectionState.objects.using(projection.database).filter(
            name=projection.label, tenant_id=self.tenant_id or ""
        ).update(heartbeat_at=timezone.now())
        lock = self._locks.get(projection.label)
        if lock is not None and not lock.renew():
            self.report("lock_lost", projection=projection.label)
            if self._following:
                raise _LockLost(projection.label)  # follow() turns it into a standby
            self.stop()
        self._sample_lag(projection)

    def _sample_lag(self, projection: Projection) -> None:
        """Record the lag for the admin's chart, at most every ``LAG_SAMPLE_INTERVAL`` s."""
        if not self.lag_sample_interval:
            return
        now = time.monotonic()
        if now - self._last_sample.get(projection.label, -1e9) < self.lag_sample_interval:
            return
        self._last_sample[projection.label] = now
        from django_eventsource.status import record_lag_sample

        position = DatabaseCheckpointStore(projection.database).load(
            projection.label, tenant_id=self.tenant_id
        )
        record_lag_sample(
            projection.label,
            self.tenant_id,
            position or 0,
            using=projection.database,
            event_store=self.event_store,
            history_days=self.lag_history_days,
        )

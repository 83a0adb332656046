"""Rebuilding a projection: reset its rows and checkpoint, then replay from the start.

The reset (``_truncate_read_models`` plus checkpoint 0 and status ``rebuilding``) commits in
one transaction; the replay then runs in batches like any catch-up. A rebuild that crashes
leaves status ``rebuilding`` with a checkpoint, and the next rebuild (or runner) resumes from
there instead of starting over. The projection's lock is held throughout, so a rebuild never
fights a live runner.

``atomic=True`` trades that for readers who never see a half-built projection: the reset and
the whole replay run in *one* transaction, so readers keep seeing the old rows (the reset
deletes rows, it never truncates, so readers are not blocked) until the new ones commit at
once. Its costs: the transaction is as long as the rebuild, so on PostgreSQL it holds the
ordering horizon back for every reader in the cluster (other projections lag, never lose
events) and keeps the old row versions until it ends; on SQLite it holds the write lock, so
appends wait (up to the database ``timeout``). It is not resumable: a crash, a stop or a
failing event rolls everything back (:class:`~django_eventsource.RebuildAborted`) and the old
rows stay as they were. Events appended while it runs are applied afterwards by the runner.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from django.db import transaction

from django_eventsource.exceptions import ProjectionLocked, RebuildAborted
from django_eventsource.locks import lock_for
from django_eventsource.runner import ProgressCallback, ProjectionRunner, RunResult
from django_eventsource.store import BaseEventStore, EventStore

if TYPE_CHECKING:
    from django_eventsource.projections import Projection

__all__ = ["RebuildPlan", "plan_rebuild", "rebuild"]


@dataclass(frozen=True)
class RebuildPlan:
    """What a rebuild would do (``--dry-run``)."""

    projection: str
    tenant_id: str | None
    tables: list[str]
    rows: int
    events: int
    resuming: bool


def plan_rebuild(
    projection: Projection,
    *,
    tenant_id: str | None = None,
    event_store: BaseEventStore | None = None,
) -> RebuildPlan:
    from django_eventsource import control

    store = event_store or EventStore()
    state = control.get_state(projection.label, tenant_id)
    rows = sum(m._default_manager.using(projection.database).count() for m in projection.models)
    return RebuildPlan(
        projection=projection.label,
        tenant_id=tenant_id,
        tables=[m._meta.db_table for m in projection.models],
        rows=rows,
        events=store.head_position(),
        resuming=state.status == state.Status.REBUILDING,
    )


def rebuild(
    projection: Projection,
    *,
    tenant_id: str | None = None,
    event_store: BaseEventStore | None = None,
    batch_size: int | None = None,
    progress_callback: ProgressCallback | None = None,
    wait: bool = False,
    restart: bool = False,
    atomic: bool = False,
    install_signal_handlers: bool = False,
) -> RunResult:
    """Reset and replay ``projection``; resumes an interrupted rebuild unless ``restart``.

    With ``atomic``, reset and replay commit together, so readers never see a half-built
    projection (see the module's docstring for the costs); it raises
    :class:`~django_eventsource.RebuildAborted` and changes nothing if it cannot finish.
    Raises :class:`~django_eventsource.ProjectionLocked` when another process holds the
    projection (unless ``wait``).
    """
    from django_eventsource import control

    runner = ProjectionRunner(
        [projection],
        tenant_id=tenant_id,
        event_store=event_store,
        batch_size=batch_size,
        progress_callback=progress_callback,
        install_signal_handlers=install_signal_handlers,
    )
    lock = lock_for(projection.label, tenant_id, projection.database)
    while not lock.acquire():
        if not wait:
            holder = lock.holder()
            lock.release()  # closes its connection
            raise ProjectionLocked(projection.label, holder)
        runner._stop.wait(runner.poll_interval)
    runner._locks[projection.label] = lock
    try:
        if atomic:
            return _rebuild_atomically(projection, tenant_id, runner)
        state = control.get_state(projection.label, tenant_id)
        if restart or state.status != state.Status.REBUILDING:
            with transaction.atomic(using=projection.database):
                _reset(projection, tenant_id, runner)
        result = RunResult()
        runner._run_projection(projection, result, until_caught_up=True)
    finally:
        lock.release()
        runner._locks.clear()
    return result


def _reset(projection: Projection, tenant_id: str | None, runner: ProjectionRunner) -> None:
    """Delete the rows, checkpoint 0, status ``rebuilding`` (inside the caller's transaction)."""
    from django_eventsource import control
    from django_eventsource.checkpoints import DatabaseCheckpointStore

    projection._truncate_read_models(tenant_id)
    DatabaseCheckpointStore(projection.database).save(projection.label, 0, tenant_id=tenant_id)
    state = control.get_state(projection.label, tenant_id, lock=True)
    state.status = state.Status.REBUILDING
    state.last_error = ""
    state.failed_event_position = None
    state.failed_event_id = None
    state.failed_event_type = ""
    state.attempts = 0
    state.save()
    runner.report("reset", projection=projection.label, tenant_id=tenant_id)


def _rebuild_atomically(
    projection: Projection, tenant_id: str | None, runner: ProjectionRunner
) -> RunResult:
    from django_eventsource import control

    result = RunResult()
    with transaction.atomic(using=projection.database):
        _reset(projection, tenant_id, runner)
        runner._run_projection(projection, result, until_caught_up=True)
        if result.failed:
            reason = control.get_state(projection.label, tenant_id).last_error.splitlines()
            raise RebuildAborted(projection.label, reason[0] if reason else "an event failed")
        if runner._stop.is_set():
            raise RebuildAborted(projection.label, "it was stopped before it caught up")
    return result

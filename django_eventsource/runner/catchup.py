"""[`catch_up`][django_eventsource.catch_up]: the runner's loop for one projection, for code
that wants an exception rather than a paused projection (tests, scripts, the benchmarks).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from django_eventsource.checkpoints import CheckpointStore
from django_eventsource.exceptions import ProjectionLocked, ProjectionSkipped
from django_eventsource.runner.batch import CatchUpResult, require_sync
from django_eventsource.runner.loop import ProjectionRunner
from django_eventsource.runner.progress import ProgressCallback
from django_eventsource.store import BaseEventStore

if TYPE_CHECKING:
    from django_eventsource.projections import Projection

__all__ = ["catch_up"]


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
    wait_for_lock: bool = False,
) -> CatchUpResult:
    """Apply every event after the projection's checkpoint, one batch per transaction.

    This is [`ProjectionRunner`][django_eventsource.runner.ProjectionRunner]'s own loop (what
    workers, rebuilds and the admin run) for one projection, configured for code that wants
    an exception rather than a paused projection: no retries, and a failing event raises
    [`ProjectionError`][django_eventsource.ProjectionError] once the events before it are
    applied (the projection is marked failed, as a worker would). With the default
    checkpoint store (the projection's database) it takes the projection's lock, keeps its
    status and fences every batch like a worker, and raises
    [`ProjectionLocked`][django_eventsource.ProjectionLocked] if another runner holds it (or
    took it over meanwhile; ``wait_for_lock`` waits instead) and
    [`ProjectionSkipped`][django_eventsource.ProjectionSkipped] if it is paused or failed.
    With another checkpoint store (such as
    [`InMemoryCheckpointStore`][django_eventsource.InMemoryCheckpointStore]) it runs the same
    loop without locks or status.
    """
    require_sync(event_store, "event_store", "read_all")
    require_sync(checkpoint_store, "checkpoint_store", "load")
    runner = ProjectionRunner(
        [projection],
        tenant_id=tenant_id,
        event_store=event_store,
        checkpoint_store=checkpoint_store,
        batch_size=batch_size,
        progress_callback=progress_callback,
        max_events=max_events,
        max_retries=0,
        error_policy="raise",
        should_stop=should_stop,
    )
    result = runner.run_until_caught_up(wait_for_lock=wait_for_lock)
    label = projection.label
    if label in result.locked or label in result.lost:
        raise ProjectionLocked(label, runner.holder(projection))
    if label in result.skipped:
        row = runner.state_of(projection)
        raise ProjectionSkipped(label, tenant_id, row.status, row.last_error)
    run = result.result_for(label)
    if run is None:  # stopped before it started
        return CatchUpResult(label, tenant_id, 0, 0, stopped=True)
    run.stopped = result.stopped
    return run

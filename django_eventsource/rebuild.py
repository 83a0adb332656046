"""Rebuilding a projection: reset its rows and checkpoint, then replay from the start.

The reset (``_truncate_read_models`` plus checkpoint 0 and status ``rebuilding``) commits in
one transaction; the replay then runs in batches like any catch-up. A rebuild that crashes
leaves status ``rebuilding`` with a checkpoint, and the next rebuild (or runner) resumes from
there instead of starting over. The projection's lock is held throughout (taken by the
runner, with the same lease rule as any runner on SQLite), so a rebuild never fights a live
runner. It runs the runner's one batch loop, through its public methods.

An operator's pause survives a rebuild of every kind. A `paused` projection stays `paused`
(``state.begin_paused_rebuild``): its rows are reset and replayed all the same, with its
rebuild suspended by the pause until the replay ends, and it ends `paused`, its checkpoint
where the replay ended. Stopped before that, it stays `paused` in the middle of its rebuild,
which the next rebuild resumes (workers skip it until it is resumed). An atomic rebuild
that rolls back leaves it as it was; a shadow rebuild's swap keeps it paused.

``atomic=True`` trades that for readers who never see a half-built projection: the reset and
the whole replay run in *one* transaction, so readers keep seeing the old rows (the reset
deletes rows, it never truncates, so readers are not blocked) until the new ones commit at
once. Its costs: the transaction is as long as the rebuild, so on PostgreSQL it keeps the
old row versions until it ends (it holds other readers back only if its handlers append
events: only appending transactions hold the ordering horizon); on SQLite it holds the write lock, so
appends wait (up to the database ``timeout``). It is not resumable: a crash, a stop or a
failing event rolls everything back ([`RebuildAborted`][django_eventsource.RebuildAborted]) and
the old
rows stay as they were. Events appended while it runs are applied afterwards by the runner.

``shadow=True`` (PostgreSQL) builds the projection's tables in a shadow schema while the live
ones keep serving and being applied, then swaps them in one short transaction: see
`django_eventsource.shadow`.

Inline projections are written by the appends themselves. While one is ``rebuilding``,
appends leave it alone (``projections.run_inline``); the reset locks appends out while it
deletes the rows (``Backend.lock_out_appends``), and the runner's hand-over (its batch loop
run once more, with appends locked out) catches up and sets it ``idle`` in one
transaction. ``atomic=True`` locks appends out for the whole rebuild.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.db import connections
from django.db.models import Count, Max

from django_eventsource import control
from django_eventsource.checkpoints import DatabaseCheckpointStore
from django_eventsource.exceptions import ProjectionLocked, RebuildAborted
from django_eventsource.logs import tenant_text
from django_eventsource.projections import truncate_read_models
from django_eventsource.runner import (
    LockLost,
    ProgressCallback,
    ProjectionRunner,
    Reporter,
    RunResult,
)
from django_eventsource.store import BaseEventStore, EventStore
from django_eventsource.text import plural, printable
from django_eventsource.transactions import write_transaction
from django_eventsource.validation import check_run_tenant

if TYPE_CHECKING:
    from django_eventsource.models import ProjectionState
    from django_eventsource.projections import Projection

__all__ = ["RebuildPlan", "plan_rebuild", "rebuild"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RebuildPlan:
    """What a rebuild would do (``--dry-run``)."""

    projection: str
    tenant_id: str | None
    tables: list[str]
    rows: int
    #: The position the replay goes up to: the store's head, or, for one tenant, that
    #: tenant's last event (0: it has none).
    events: int
    resuming: bool
    #: The checkpoint an interrupted rebuild resumes from (0 when it starts over).
    position: int = 0
    #: For one tenant: how many events it has, the ones the replay applies (None for
    #: every tenant).
    tenant_events: int | None = None
    #: The projection is paused: it stays paused (the rebuild replays it all the same).
    paused: bool = False
    #: How many events the replay applies, as the store has them now: the committed events
    #: a reader can read (after ``position`` when it resumes; for one tenant, its own), the
    #: number the rebuild's summary counts. Not ``events``, a position: positions have gaps,
    #: and PostgreSQL's ordering horizon can hold committed events back (``held``).
    replayed: int = 0
    #: Committed events PostgreSQL's ordering horizon holds back now (an appending
    #: transaction is still open): the replay stops before them, unless they are released
    #: while it runs; the next catch-up applies them. 0 elsewhere.
    held: int = 0


def plan_rebuild(
    projection: Projection,
    *,
    tenant_id: str | None = None,
    event_store: BaseEventStore | None = None,
    restart: bool = False,
) -> RebuildPlan:
    """What [`rebuild`][django_eventsource.rebuild.rebuild] would delete and replay; reads
    only (``ValueError`` for the tenant ``""``, `RebuildRefused` as the rebuild would).
    ``restart``: the plan of a rebuild that starts over (``restart=True``, or ``atomic``),
    even if an interrupted one could be resumed."""
    check_run_tenant(tenant_id)
    projection.check_tenant_rebuild(tenant_id)
    store = event_store or EventStore()
    state = control.find_state(projection.label, tenant_id)  # a plan creates nothing
    # What the reset deletes: one tenant's rows for a tenant (check_tenant_rebuild made sure
    # the default reset can tell them apart), every row otherwise.
    rows = 0
    for model in projection.models:
        queryset = model._default_manager.using(projection.database).all()
        if tenant_id is not None and model not in projection.models_without_tenant():
            queryset = queryset.filter(tenant_id=tenant_id)
        rows += queryset.count()
    resuming = not restart and state is not None and _interrupted(state)
    position = (state.position or 0) if state is not None and resuming else 0
    if tenant_id is None:
        last, count = store.head_position(), None
    else:  # the tenant's events, not the store's head: other tenants' are not replayed
        last, count = _tenant_events(store, tenant_id)
    # What the replay reads, counted as it reads them (feed order, up to the horizon).
    pending = store.pending_events(position, tenant_id=tenant_id)
    return RebuildPlan(
        projection=projection.label,
        tenant_id=tenant_id,
        tables=[m._meta.db_table for m in projection.models],
        rows=rows,
        events=last,
        resuming=resuming,
        position=position,
        tenant_events=count,
        paused=state is not None and state.status == state.Status.PAUSED,
        replayed=pending.readable,
        held=pending.held,
    )


def _interrupted(state: ProjectionState) -> bool:
    """Whether the projection is in the middle of a rebuild that a rebuild resumes:
    `rebuilding` (interrupted, or its runner died), or `paused` in the middle of it (the
    rebuild carries on, leaving it paused)."""
    return state.status == state.Status.REBUILDING or (
        state.status == state.Status.PAUSED and state.suspended_rebuild
    )


def _tenant_events(store: BaseEventStore, tenant_id: str) -> tuple[int, int]:
    """The position of the tenant's last committed event (0: none) and how many it has
    (held back by PostgreSQL's horizon or not: the replay waits for those)."""
    if isinstance(store, EventStore):
        from django_eventsource.models import Event  # models are imported where used here

        found = (
            Event.objects.using(store.using)
            .filter(tenant_id=tenant_id)
            .aggregate(last=Max("position"), count=Count("position"))
        )
        return found["last"] or 0, found["count"]
    events = store.read_all(tenant_id=tenant_id).events
    return max((e.position for e in events), default=0), len(events)


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
    shadow: bool = False,
    install_signal_handlers: bool = False,
    should_stop: Callable[[], bool] | None = None,
) -> RunResult:
    """Reset and replay ``projection``; resumes an interrupted rebuild unless ``restart``.

    With ``atomic``, reset and replay commit together, so readers never see a half-built
    projection (see the module's docstring for the costs); it raises
    [`RebuildAborted`][django_eventsource.RebuildAborted] and changes nothing if it cannot finish.
    Raises [`ProjectionLocked`][django_eventsource.ProjectionLocked] when another process holds the
    projection (unless ``wait``), and [`RebuildRefused`][django_eventsource.RebuildRefused],
    having changed nothing, when a rebuild of one tenant would delete other tenants' rows.

    With ``shadow`` (PostgreSQL), the live tables keep serving (and being applied) while a
    shadow is built, then one short transaction swaps it in (``result.swap_seconds``); an
    interrupted shadow build is resumed, unless ``restart``. It does not take the
    projection's lock (its live runner keeps running). Raises
    [`NotSupportedOnBackend`][django_eventsource.NotSupportedOnBackend] on SQLite and
    [`RebuildRefused`][django_eventsource.RebuildRefused] for what it cannot do (see
    `django_eventsource.shadow`), before it creates anything.
    ``tenant_id=""`` is a ``ValueError`` (None is every tenant): see
    [`check_run_tenant`][django_eventsource.validation.check_run_tenant].

    ``install_signal_handlers``: SIGINT and SIGTERM stop it, for as long as it runs.
    ``should_stop``: asked between batches (and while it waits for the lock), it stops the
    rebuild when it returns True, as ``stop()`` does; a program that must stop cleanly
    wherever a signal lands installs one
    [`StopSignals`][django_eventsource.runner.signals.StopSignals] for its whole run and
    passes it here (``rebuild_projections`` does).

    The result says how it ended: ``failed`` (the projection is failed), ``stopped`` (a
    signal or ``stop()``: it stays ``rebuilding``, and the next rebuild or runner resumes
    it), ``lost`` (another runner took the projection over mid-run and continues it). A
    ``paused`` projection stays paused, in every kind of rebuild (see the module's
    docstring): rebuilt, or, stopped, in the middle of its rebuild, which the next rebuild
    resumes.
    """
    check_run_tenant(tenant_id)
    if shadow:
        if atomic:
            raise ValueError("A rebuild is either atomic or shadow, not both.")
        return _rebuild_in_shadow(
            projection,
            tenant_id=tenant_id,
            event_store=event_store,
            batch_size=batch_size,
            progress_callback=progress_callback,
            restart=restart,
            install_signal_handlers=install_signal_handlers,
            should_stop=should_stop,
        )
    projection.check_tenant_rebuild(tenant_id)  # before anything is locked or deleted
    runner = ProjectionRunner(
        [projection],
        tenant_id=tenant_id,
        event_store=event_store,
        batch_size=batch_size,
        progress_callback=progress_callback,
        install_signal_handlers=install_signal_handlers,
        should_stop=should_stop,
    )
    name = printable(projection.label) + tenant_text(tenant_id)
    fields = {"projection": projection.label, "tenant": tenant_id, "atomic": atomic}

    def replay() -> tuple[RunResult, str]:
        result = RunResult()
        try:
            if atomic:
                logger.info("Rebuilding %s in one transaction", name, extra=fields)
                result = _rebuild_atomically(projection, tenant_id, runner)
            else:
                state = runner.state_of(projection)
                resuming = not restart and _interrupted(state)
                logger.info(
                    "%s %s",
                    "Resuming the rebuild of" if resuming else "Rebuilding",
                    name,
                    extra={**fields, "resuming": resuming},
                )
                if not resuming:
                    with write_transaction(projection.database):
                        _reset(projection, tenant_id, runner)
                runner.run_projection(projection, result, rebuild=True)
        except (LockLost, ProjectionLocked) as exc:
            # Another runner took the projection over mid-run (the fence rolled the batch in
            # hand back): report it as a run does, never as the runner's private error.
            holder = runner.holder(projection) or "another runner"
            if atomic:  # the whole transaction rolled back with it
                raise RebuildAborted(projection.label, f"{holder} took its lock") from exc
            result.lost.append(projection.label)
            runner.report("lock_lost", projection=projection.label, holder=holder)
            return result, "lost its lock"
        # Stopped: in the middle of its rebuild. A stop that came after the replay caught
        # up (or after an atomic rebuild committed) stopped nothing: it is rebuilt.
        result.stopped = (
            runner.stopping
            and not result.failed
            and not atomic
            and _interrupted(runner.state_of(projection))
        )
        return result, "failed" if result.failed else "stopped" if result.stopped else "finished"

    # The signal handlers stop the wait for the lock too; they are restored afterwards.
    with runner.handling_signals(), runner.holding(projection, wait=wait):
        return _logged("Rebuild", name, fields, replay)


def _rebuild_in_shadow(
    projection: Projection,
    *,
    tenant_id: str | None,
    event_store: BaseEventStore | None,
    batch_size: int | None,
    progress_callback: ProgressCallback | None,
    restart: bool,
    install_signal_handlers: bool,
    should_stop: Callable[[], bool] | None,
) -> RunResult:
    from django_eventsource.shadow import (
        ShadowCheckpointStore,
        check_shadow_rebuild,
        rebuild_in_shadow,
        shadow_schema,
    )

    check_shadow_rebuild(projection, tenant_id)  # before anything is created
    runner = ProjectionRunner(
        [projection],
        event_store=event_store,
        checkpoint_store=ShadowCheckpointStore(
            projection.database, shadow_schema(projection.label)
        ),
        batch_size=batch_size,
        progress_callback=progress_callback,
        install_signal_handlers=install_signal_handlers,
        error_policy="raise",
        should_stop=should_stop,
    )
    # Its failures are the shadow's, not the live projection's (metrics and log records).
    runner.report = Reporter(progress_callback, None, shadow=True)
    name = printable(projection.label)
    fields = {"projection": projection.label, "tenant": None, "shadow": True}

    def build() -> tuple[RunResult, str]:
        result = RunResult()
        swapped = rebuild_in_shadow(projection, runner, restart=restart, result=result)
        result.stopped = not swapped
        return result, "swapped in" if swapped else "stopped"

    with runner.handling_signals():
        return _logged("Shadow rebuild", name, fields, build)


def _logged(
    what: str, name: str, fields: dict[str, Any], run: Callable[[], tuple[RunResult, str]]
) -> RunResult:
    """Run a rebuild (``what`` of ``name``) and log how it ended, in one place for every
    kind: aborted (WARNING, the `RebuildAborted` message, re-raised), failed or stopped
    (WARNING), finished or swapped in (INFO), with the events applied and the duration (and
    a swap's ``swap_seconds``)."""
    started = time.monotonic()
    try:
        result, ended = run()
    except RebuildAborted as exc:  # its message names the rebuild and what still holds
        logger.warning("%s", printable(exc), extra={**fields, "error": str(exc)})
        raise
    duration = time.monotonic() - started
    extra = {**fields, "count": result.events_applied, "duration": duration}
    if fields.get("shadow"):
        extra["swap_seconds"] = result.swap_seconds
    logger.log(
        logging.INFO if ended in ("finished", "swapped in") else logging.WARNING,
        "%s of %s %s after %s in %.1fs",
        what,
        name,
        ended,
        plural(result.events_applied, "event"),
        duration,
        extra=extra,
    )
    return result


def _reset(projection: Projection, tenant_id: str | None, runner: ProjectionRunner) -> None:
    """Delete the rows, checkpoint 0, status ``rebuilding`` (inside the caller's transaction)."""
    from django_eventsource import deadletters, state  # they import models

    if projection.inline:
        # Appends apply an inline projection themselves: wait for the open ones (their rows
        # are then deleted with the rest), and make new ones wait until the status says
        # `rebuilding`, after which they leave the projection to the replay.
        _lock_out_appends(runner)
    truncate_read_models(projection, tenant_id)
    DatabaseCheckpointStore(projection.database).save(projection.label, 0, tenant_id=tenant_id)
    # The replay applies every event in order: events that still fail are set aside again.
    deadletters.resolve_all(projection.label, tenant_id, projection.database)
    state.begin_rebuild(
        projection.label, tenant_id, projection.database, owner=runner.owner_of(projection)
    )
    runner.report("reset", projection=projection.label, tenant_id=tenant_id)


def _lock_out_appends(runner: ProjectionRunner) -> None:
    store = runner.event_store
    if isinstance(store, EventStore):
        store.backend.lock_out_appends(connections[store.using])


def _rebuild_atomically(
    projection: Projection, tenant_id: str | None, runner: ProjectionRunner
) -> RunResult:
    result = RunResult()
    with write_transaction(projection.database):
        _reset(projection, tenant_id, runner)
        runner.run_projection(projection, result, rebuild=True)
        if result.failed:
            reason = control.get_state(projection.label, tenant_id).last_error.splitlines()
            raise RebuildAborted(projection.label, reason[0] if reason else "an event failed")
        # A stop that came once the replay had caught up stops nothing: it commits.
        if runner.stopping and _interrupted(runner.state_of(projection)):
            raise RebuildAborted(projection.label, "it was stopped before it caught up")
    return result

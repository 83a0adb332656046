"""[`ProjectionRunner`][django_eventsource.runner.ProjectionRunner]: the one batch loop, and
what runs around it (locks, status, heartbeats, following the store, stopping cleanly).

Its parts live beside it: one batch in `django_eventsource.runner.batch`, the error policy in
`django_eventsource.runner.policy`, the ordering horizon's holds in
`django_eventsource.runner.held`, the progress reports and log records in
`django_eventsource.runner.progress`.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from django.db import DatabaseError, InterfaceError, OperationalError, connections

from django_eventsource.checkpoints import CheckpointStore, DatabaseCheckpointStore
from django_eventsource.conf import ERROR_POLICIES, check_batch_size, check_seconds
from django_eventsource.exceptions import DatabaseBusy, EventSourceError, ProjectionLocked
from django_eventsource.heartbeats import Heartbeat
from django_eventsource.locks import ProjectionLock, lock_for
from django_eventsource.runner.batch import CatchUpResult, RunResult, between_batches
from django_eventsource.runner.held import HeldWatch, settle
from django_eventsource.runner.policy import apply_with_policy
from django_eventsource.runner.progress import (
    ProgressCallback,
    Reporter,
    log_not_busy,
    log_reconnected,
    log_start,
    log_stop,
)
from django_eventsource.store import BaseEventStore, EventStore
from django_eventsource.transactions import busy_error, is_busy, write_transaction
from django_eventsource.validation import check_run_tenant

if TYPE_CHECKING:
    from django_eventsource.models import ProjectionState
    from django_eventsource.projections import Projection

__all__ = ["LockLost", "ProjectionRunner"]

#: How the batch loop ended: caught up, an event failed (the projection is failed), or the
#: runner was stopped (or reached ``max_events``) first.
CAUGHT_UP, FAILED, STOPPED = "caught_up", "failed", "stopped"


class LockLost(EventSourceError):
    """The projection's lock (or the runner's claim on its state row) is gone: another
    runner holds it now.

    Raised by [`run_projection`][django_eventsource.runner.loop.ProjectionRunner.run_projection]
    when a heartbeat finds it so; a batch committed after that is refused by the fence
    ([`ProjectionLocked`][django_eventsource.ProjectionLocked]). The runner's own entry points
    (`run_until_caught_up`, `follow`) and [`rebuild`][django_eventsource.rebuild.rebuild]
    report either in `RunResult.lost` instead of raising it; code that calls
    ``run_projection`` itself catches both. ``label`` names the projection.
    """

    def __init__(self, label: str) -> None:
        super().__init__(f"Lost the lock of projection {label!r}: another runner holds it now.")
        self.label = label


class ProjectionRunner:
    """Applies events to projections: catch-up in batches, or follow the store live. The one
    batch loop: workers, rebuilds, the admin, [`catch_up`][django_eventsource.catch_up],
    `testing.run_projections` and the benchmarks all run it.

    * one active runner per projection and tenant (an advisory lock on PostgreSQL, a lease on
      SQLite); others wait as hot standbys in
      [`follow`][django_eventsource.runner.loop.ProjectionRunner.follow]. The runner claims the
      state row for its lock, and every batch's checkpoint checks the claim (a runner that
      lost its lock cannot commit);
    * the status changes only through `django_eventsource.state`: `running` while it works,
      `idle` when it caught up or stops cleanly (SIGTERM), `failed` when an event keeps
      failing; a heartbeat every `HEARTBEAT_INTERVAL` between batches, and from a thread
      of its own while it holds projections, whatever the loop does (a long batch, a
      retry's backoff, a wait; see `django_eventsource.heartbeats`): a dead runner is
      reported `stale`, a busy one never;
    * a failing event is retried alone with backoff, then the projection's error policy
      applies: ``pause`` (status failed, checkpoint stays before the event) or
      ``dead_letter`` (the event is set aside and the runner moves on); ``error_policy=
      "raise"`` raises the `ProjectionError` instead (after recording the failure);
    * ``checkpoint_store``: None (the default) keeps checkpoints in each projection's
      database, with locks and status as above. Another store (an
      [`InMemoryCheckpointStore`][django_eventsource.InMemoryCheckpointStore]) runs the
      same loop without locks or status;
    * progress is reported through ``progress_callback(kind, **data)``; nothing is printed;
    * ``install_signal_handlers``: SIGINT and SIGTERM stop a run after the batch in hand.
      The handlers are installed when a run starts and the previous ones restored when it
      ends ([`handling_signals`][django_eventsource.runner.loop.ProjectionRunner.handling_signals]),
      not when the runner is made.
    """

    def __init__(
        self,
        projections: Sequence[Projection],
        *,
        tenant_id: str | None = None,
        event_store: BaseEventStore | None = None,
        checkpoint_store: CheckpointStore | None = None,
        batch_size: int | None = None,
        poll_interval: float | None = None,
        progress_callback: ProgressCallback | None = None,
        install_signal_handlers: bool = False,
        max_events: int | None = None,
        max_retries: int | None = None,
        error_policy: str | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        from django_eventsource.conf import get_settings

        options = get_settings()
        self.projections = list(projections)
        self.tenant_id = check_run_tenant(tenant_id)  # "" would skip other tenants' events
        self.event_store = event_store or EventStore()
        self.managed = checkpoint_store is None or isinstance(
            checkpoint_store, DatabaseCheckpointStore
        )
        self.checkpoint_store = checkpoint_store
        # Checked here, before a rebuild resets anything with this runner.
        self.batch_size = check_batch_size(
            batch_size if batch_size is not None else options.batch_size
        )
        self.poll_interval = check_seconds(
            poll_interval if poll_interval is not None else options.poll_interval,
            "poll_interval",
        )
        self.heartbeat_interval = options.heartbeat_interval
        self.max_retries = options.max_retries if max_retries is None else max_retries
        self.retry_backoff = options.retry_backoff
        if error_policy not in (None, "raise", *ERROR_POLICIES):
            raise ValueError(
                f"error_policy must be 'pause', 'dead_letter' or 'raise', not {error_policy!r}"
            )
        self.error_policy = error_policy
        self.default_policy = options.error_policy
        self.lag_sample_interval = options.lag_sample_interval
        self.lag_history_days = options.lag_history_days
        self._last_sample: dict[str, float] = {}
        self.max_events = max_events
        self.report = Reporter(progress_callback, tenant_id)
        self.max_held_seconds = options.max_held_seconds
        self._held = HeldWatch(
            self.event_store,
            tenant_id,
            interval=self.heartbeat_interval,
            max_held_seconds=self.max_held_seconds,
        )
        self._should_stop = should_stop
        self._stop = threading.Event()
        self._locks: dict[str, ProjectionLock] = {}
        self._last_heartbeat: dict[str, float] = {}
        #: Beats for the projections it holds from a thread of its own, whatever the loop
        #: does (a long batch, a retry's backoff, a wait): a busy runner is never `stale`.
        self._beats = Heartbeat(self.heartbeat_interval)
        #: Whether a run installs SIGINT and SIGTERM handlers that stop it (see
        #: [`handling_signals`][django_eventsource.runner.loop.ProjectionRunner.handling_signals]).
        self.install_signal_handlers = install_signal_handlers
        self._previous_handlers: dict[signal.Signals, Any] = {}

    # Control --------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the runner to stop after the batch in hand."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        """Whether the runner was asked to stop."""
        return self._halted()

    def _halted(self) -> bool:
        # A method, not the property, inside loops: type checkers narrow a property.
        if not self._stop.is_set() and self._should_stop is not None and self._should_stop():
            self._stop.set()
        return self._stop.is_set()

    def wait(self, seconds: float) -> bool:
        """Sleep ``seconds`` unless asked to stop meanwhile; returns whether it was."""
        return self._stop.wait(seconds) or self._halted()

    @contextlib.contextmanager
    def handling_signals(self) -> Iterator[None]:
        """While the block runs, SIGINT and SIGTERM ask the runner to
        [`stop`][django_eventsource.runner.loop.ProjectionRunner.stop] after the batch in hand,
        if it was made with ``install_signal_handlers``; the handlers installed before are
        restored when the block ends, however it ends. Without ``install_signal_handlers``,
        and inside another such block, it does nothing.

        [`run_until_caught_up`][django_eventsource.runner.loop.ProjectionRunner.run_until_caught_up]
        and [`follow`][django_eventsource.runner.loop.ProjectionRunner.follow] run in one;
        code that drives
        [`run_projection`][django_eventsource.runner.loop.ProjectionRunner.run_projection]
        itself (a rebuild) opens its own. Signal handlers belong to the main thread: there,
        and only there, can it install them (``ValueError`` elsewhere).
        """
        if not self.install_signal_handlers or self._previous_handlers:
            yield
            return

        def handler(signum: int, frame: Any) -> None:
            if self._stop.is_set():
                return  # said once: a repeat would print while the first may still be
            self.report("signal", signal=signal.Signals(signum).name)
            self.stop()

        try:
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous_handlers[signum] = signal.signal(signum, handler)
            yield
        finally:
            previous, self._previous_handlers = self._previous_handlers, {}
            for signum, before in previous.items():
                # None: a handler not installed from Python; the default is the nearest.
                signal.signal(signum, signal.SIG_DFL if before is None else before)

    # Locks -----------------------------------------------------------------------------------

    def acquire(self, projection: Projection, *, wait: bool = False) -> bool:
        """Take the projection's lock; with ``wait``, wait for it as a standby until it is
        free or the runner is stopped. Returns whether it is held."""
        lock = self._lock(projection)
        while not lock.acquire():
            if not wait or self.wait(self.poll_interval):
                return False
        self._beats.add(lock.owner, projection.database)
        return True

    def release(self, projection: Projection) -> None:
        """Let go of the projection's lock (another runner may take it)."""
        lock = self._locks.pop(projection.label, None)
        if lock is not None:
            self._beats.discard(lock.owner)
            with contextlib.suppress(DatabaseError):
                lock.release()

    @contextlib.contextmanager
    def holding(self, projection: Projection, *, wait: bool = False) -> Iterator[None]:
        """Hold the projection's lock for the block; raises
        [`ProjectionLocked`][django_eventsource.ProjectionLocked] (naming the holder) if
        another runner holds it and not ``wait``."""
        if not self.acquire(projection, wait=wait):
            holder = self.holder(projection)
            self.release(projection)
            raise ProjectionLocked(projection.label, holder)
        try:
            yield
        finally:
            self.release(projection)

    def holder(self, projection: Projection) -> str:
        """Who holds the projection's lock ("" if nobody, or the lock is ours)."""
        return self._lock(projection).holder()

    def state_of(self, projection: Projection) -> ProjectionState:
        """The projection's state row as it is now."""
        from django_eventsource import control

        return control.get_state(projection.label, self.tenant_id)

    def _lock(self, projection: Projection) -> ProjectionLock:
        lock = self._locks.get(projection.label)
        if lock is None:
            lock = lock_for(projection.label, self.tenant_id, projection.database)
            self._locks[projection.label] = lock
        return lock

    def _release_all(self) -> None:
        self._beats.stop()
        for lock in self._locks.values():
            with contextlib.suppress(DatabaseError):
                lock.release()
        self._locks.clear()

    # Entry points ---------------------------------------------------------------------------

    def run_until_caught_up(self, *, wait_for_lock: bool = False) -> RunResult:
        """Catch every projection up to the head as it is now, then return."""
        with self.handling_signals():
            return self._run_until_caught_up(wait_for_lock)

    def _run_until_caught_up(self, wait_for_lock: bool) -> RunResult:
        result = RunResult()
        started = log_start(self._labels(), self.tenant_id, follow=False)
        for projection in self.projections:
            if self._halted():
                break
            if self.managed and not self.acquire(projection, wait=wait_for_lock):
                if not self._halted():
                    result.locked.append(projection.label)
                    self.report(
                        "locked", projection=projection.label, holder=self.holder(projection)
                    )
                self.release(projection)
                continue
            try:
                self.run_projection(projection, result)
            except OperationalError as exc:
                # A busy database fails a catch-up with a typed error (a follower retries).
                busy = busy_error(exc, projection.database, f"the run of {projection.label!r}")
                if busy is None or isinstance(exc, DatabaseBusy):
                    raise
                raise busy from exc
            except (LockLost, ProjectionLocked):
                # Taken over mid-run: the batch in hand was rolled back by the fence.
                result.lost.append(projection.label)
                self.report(
                    "lock_lost", projection=projection.label, holder=self.holder(projection)
                )
            finally:
                self.release(projection)
        self._log_stop(result, started)
        result.stopped = self._halted()
        return result

    def follow(self) -> RunResult:
        """Keep every projection caught up until
        [`stop`][django_eventsource.runner.loop.ProjectionRunner.stop] (or a signal).

        Wakes on PostgreSQL NOTIFY as a hint, polls every ``poll_interval`` otherwise, waits
        as a hot standby for projections another runner holds, and survives a database
        restart (it reconnects and carries on from the checkpoints). A clean stop leaves
        its projections `idle`. A busy database (another connection holds the write lock
        for longer than the timeout, ``DatabaseBusy``) is waited out with backoff, the
        projections kept.
        """
        with self.handling_signals():
            return self._follow()

    def _follow(self) -> RunResult:
        from django_eventsource.notify import Waker

        result = RunResult()
        waker = Waker(self.event_store, self.poll_interval)
        started = log_start(self._labels(), self.tenant_id, follow=True)
        down_since: float | None = None
        busy_since: float | None = None
        busy_attempts = 0
        try:
            while not self._halted():
                try:
                    progressed = False
                    for projection in self.projections:
                        if self._halted():
                            break
                        if self.managed and not self.acquire(projection):
                            self._note_standby(projection, result)
                            continue
                        progressed |= self.run_projection(
                            projection, result, until_caught_up=False
                        )
                    if down_since is not None:
                        log_reconnected(down_since)
                        down_since = None
                    if busy_since is not None:
                        log_not_busy(busy_since, busy_attempts)
                        busy_since, busy_attempts = None, 0
                    if not progressed and not self._halted():
                        self._held.check(p for p in self.projections if self.owner_of(p))
                        waker.wait(self._stop)
                except (LockLost, ProjectionLocked) as lost:
                    # Another runner holds it now (our session died, it took over): stop
                    # working on it and wait as its standby. A ProjectionLocked is the
                    # fence: a batch in hand was rolled back, which the result keeps until
                    # this runner takes the projection back (run_projection).
                    label = lost.label if isinstance(lost, LockLost) else lost.projection
                    if isinstance(lost, ProjectionLocked) and label not in result.lost:
                        result.lost.append(label)
                    self.report("lock_lost", projection=label)
                    for projection in self.projections:
                        if projection.label == label:
                            self.release(projection)
                except (OperationalError, InterfaceError) as exc:
                    if is_busy(exc):
                        # Nothing was written, and the connection is fine: wait, keeping
                        # the locks (letting go of a lease needs the write lock too).
                        if busy_since is None:
                            busy_since = time.monotonic()
                        busy_attempts += 1
                        self._back_off_busy(exc, busy_attempts)
                        continue
                    if down_since is None:
                        down_since = time.monotonic()
                    self.report("disconnected", error=str(exc), error_type=type(exc).__name__)
                    self._release_all()
                    waker.close()
                    for connection in connections.all():
                        connection.close()
                    self.wait(max(self.poll_interval, 0.5))
        finally:
            waker.close()
            self._finish_all()
            self._release_all()
            self._log_stop(result, started)
        result.stopped = True
        return result

    def _back_off_busy(self, exc: BaseException, attempt: int) -> None:
        """Wait after the ``attempt``-th busy error in a row: ``RETRY_BACKOFF`` doubling up
        to ``HEARTBEAT_INTERVAL``. It is reported (a warning) on attempts 1, 2, 4, 8...: a
        long busy spell is not a flood of warnings."""
        cap = max(self.heartbeat_interval, self.poll_interval)
        delay = min(self.retry_backoff * 2 ** min(attempt - 1, 30), cap)
        if attempt & (attempt - 1) == 0:
            cause = exc.__cause__ if isinstance(exc, DatabaseBusy) else exc
            self.report(
                "busy",
                error=str(cause or exc),
                error_type=type(exc).__name__,
                attempt=attempt,
                delay=delay,
                limit=(
                    f"{exc.setting} = {exc.timeout:g} s"
                    if isinstance(exc, DatabaseBusy) and exc.timeout is not None
                    else getattr(exc, "setting", None)
                ),
                using=getattr(exc, "using", None),
            )
        self.wait(delay)

    def _labels(self) -> list[str]:
        return [p.label for p in self.projections]

    def _log_stop(self, result: RunResult, started: float) -> None:
        log_stop(
            self._labels(),
            self.tenant_id,
            applied=result.events_applied,
            failed=result.failed,
            started=started,
        )

    def _finish_all(self) -> None:
        """A clean stop: every projection this runner holds goes `idle` (its checkpoint
        stays; the next runner resumes from it)."""
        for projection in self.projections:
            lock = self._locks.get(projection.label)
            if lock is None or not lock.held:
                continue
            with contextlib.suppress(DatabaseError):
                self._state().finish(
                    projection.label,
                    self.tenant_id,
                    projection.database,
                    owner=lock.owner,
                    caught_up=False,
                )

    # One projection ------------------------------------------------------------------------

    @staticmethod
    def _state() -> Any:
        # django_eventsource.state imports models; this module is imported by the package's
        # __init__, before the app registry is ready.
        from django_eventsource import state

        return state

    def _note_standby(self, projection: Projection, result: RunResult) -> None:
        if projection.label not in result.locked:
            result.locked.append(projection.label)
            self.report("standby", projection=projection.label, holder=self.holder(projection))

    def owner_of(self, projection: Projection) -> str | None:
        """The owner id this runner claims the projection's state row with (its lock's),
        while it holds the lock; None otherwise."""
        lock = self._locks.get(projection.label)
        return lock.owner if lock is not None and lock.held else None

    def run_projection(
        self,
        projection: Projection,
        result: RunResult,
        *,
        until_caught_up: bool = True,
        rebuild: bool = False,
    ) -> bool:
        """Apply the projection's pending events in batches, the one loop; returns whether
        anything was read. Managed runners must hold the projection's lock
        ([`acquire`][django_eventsource.runner.loop.ProjectionRunner.acquire] or
        [`holding`][django_eventsource.runner.loop.ProjectionRunner.holding]).

        ``until_caught_up``: a catch-up, which lets go of the projection (`idle`) when it
        is done; otherwise one pass of a follower, which keeps it `running`.

        ``rebuild``: the replay of a rebuild ([`rebuild`][django_eventsource.rebuild.rebuild]),
        which also runs a projection that is `paused` in the middle of its rebuild: an
        operator's pause survives the rebuild, which claims the row
        ([`claim_paused_rebuild`][django_eventsource.state.claim_paused_rebuild]) and leaves
        it `paused`, at the checkpoint where it ended. Other runs skip a paused projection.
        """
        projection.event_store = self.event_store
        label, tenant = projection.label, self.tenant_id
        state = self._state()
        owner = self.owner_of(projection)
        if self.managed:
            if owner is None:
                raise ProjectionLocked(label, self.holder(projection))
            row = self.state_of(projection)
            # A rebuild of a paused projection replays it all the same (it stays paused).
            paused_rebuild = (
                rebuild
                and row.status == row.Status.PAUSED
                and row.suspended_rebuild
                and state.claim_paused_rebuild(label, tenant, projection.database, owner=owner)
            )
            if not paused_rebuild and (
                row.status in (row.Status.PAUSED, row.Status.FAILED)
                or not state.start(label, tenant, projection.database, owner=owner)
            ):
                row = self.state_of(projection)
                if label not in result.skipped:
                    result.skipped.append(label)
                    result.skipped_statuses[label] = str(row.status)
                    self.report("skipped", projection=label, tenant_id=tenant, status=row.status)
                return False
            self._last_heartbeat[label] = time.monotonic()
            # A follower that skipped (or saw fail) a projection that was since resumed, or
            # lost its lock, runs it now: the run's result reports what holds at its end.
            if label in result.skipped:
                result.skipped.remove(label)
                result.skipped_statuses.pop(label, None)
            for kept in (result.failed, result.lost):
                if label in kept:
                    kept.remove(label)
            rebuilding = row.status == row.Status.REBUILDING or paused_rebuild
            start = row.position or 0
            checkpoints: CheckpointStore = DatabaseCheckpointStore(
                projection.database, owner=owner
            )
        else:
            rebuilding = False
            assert self.checkpoint_store is not None
            checkpoints = self.checkpoint_store
            start = checkpoints.load(label, tenant_id=tenant) or 0
        if label in result.locked:
            result.locked.remove(label)
            self.report("took_over", projection=label, tenant_id=tenant)
        run = result.result_for(label)
        if run is None:
            run = CatchUpResult(label, tenant, start, start)
            result.results.append(run)
            head = self.event_store.head_position()
            self.report("start", projection=label, tenant_id=tenant, position=start, head=head)
        run.position = start
        batches = run.batches
        outcome = self._batches(projection, run, checkpoints, owner)
        progressed = run.batches > batches
        if progressed:
            between_batches(projection.database, done=True)
        if (
            outcome == CAUGHT_UP
            and self.managed
            and owner is not None
            and rebuilding
            and projection.inline
        ):
            if self._halted():
                # Stopped before its hand-over: the rebuild is interrupted, not finished
                # (finishing it without the hand-over would make it idle while events
                # that appends left to it are still unapplied).
                outcome = STOPPED
            else:
                # Appends defer an inline projection while it rebuilds: catch up to the head
                # with appends locked out, and go back to inline in the same transaction.
                outcome = self._hand_over(projection, run, checkpoints, owner)
            if outcome == CAUGHT_UP:
                rebuilding = False
                if not until_caught_up:
                    state.start(label, tenant, projection.database, owner=owner)
        if outcome == FAILED:
            result.failed.append(label)
            return progressed
        caught_up = outcome == CAUGHT_UP
        if self.managed and owner is not None:
            if until_caught_up or self._halted():
                state.finish(label, tenant, projection.database, owner=owner, caught_up=caught_up)
            elif rebuilding and caught_up:
                # A follower finished an interrupted rebuild: it goes on running it.
                state.finish_rebuild(label, tenant, projection.database)
                state.start(label, tenant, projection.database, owner=owner)
            else:
                self._heartbeat(projection)  # also while idle: shows the runner lives
        if caught_up and until_caught_up:
            self.report("done", projection=label, tenant_id=tenant, result=run)
        return progressed

    def _batches(
        self,
        projection: Projection,
        run: CatchUpResult,
        checkpoints: CheckpointStore,
        owner: str | None,
        *,
        locked_out: bool = False,
    ) -> str:
        """The batch loop: read a page after ``run.position``, apply it (one transaction
        per batch, under the error policy), report it, beat; until caught up (`CAUGHT_UP`),
        an event failed (`FAILED`), or the runner stops or reached ``max_events``
        (`STOPPED`).

        ``locked_out``: inside the hand-over's transaction, with appends locked out, so no
        appending transaction can hold the ordering horizon: a hold that does not settle
        raises [`HorizonNotSettled`][django_eventsource.HorizonNotSettled].
        """
        label, tenant = projection.label, self.tenant_id
        position = run.position
        while not self._halted():
            limit = self.batch_size
            if self.max_events is not None:
                limit = min(limit, self.max_events - run.events_read)
                if limit <= 0:
                    break
            started, previous = time.monotonic(), position
            page = self.event_store.read_all(position, limit=limit, tenant_id=tenant)
            if page.events:
                applied, consumed, position, failed = apply_with_policy(
                    self, projection, page.events, checkpoints, position, owner
                )
                run.events_read += consumed
                run.events_applied += applied
                run.position = position
                run.batches += 1
                self.report(
                    "batch",
                    projection=label,
                    tenant_id=tenant,
                    position=position,
                    events=consumed,  # read and passed: applied, skipped or set aside
                    applied=applied,
                    total=run.events_read,
                    from_position=previous,
                    duration=time.monotonic() - started,
                )
                between_batches(projection.database, done=failed)
                if failed:
                    return FAILED
                self._heartbeat(projection)
                if page.limited or position != page.last_position:
                    continue  # more may be readable now: read on
            # Everything readable after the position is applied.
            run.held = self.settle(position, tenant, strict=locked_out)
            if run.held < 0:
                continue  # events became readable: read them
            return CAUGHT_UP
        return STOPPED

    def _hand_over(
        self,
        projection: Projection,
        run: CatchUpResult,
        checkpoints: CheckpointStore,
        owner: str,
    ) -> str:
        """Finish the rebuild of an inline projection that caught up; returns the batch
        loop's outcome. `FAILED`: the projection is `failed`, as in any batch (rebuild it
        again once the handler is fixed); `STOPPED`: what it applied commits and the
        projection stays `rebuilding` (an interrupted rebuild).

        While an inline projection is `rebuilding`, appends leave it alone (their events
        are in the feed the rebuild reads). Here, in one transaction: appends are locked
        out (PostgreSQL: ``SHARE`` on the event table, which waits for the appending
        transactions already open; SQLite: the write lock), the events appended since the
        last read are applied by the batch loop, with a strict re-read of the horizon (no
        appending transaction can hold it now), and the status goes `idle`. Appends that
        waited apply it inline again once this commits, so no event falls between the two.
        """
        label, tenant, using = projection.label, self.tenant_id, projection.database
        state = self._state()
        store = self.event_store
        with write_transaction(using):
            # PostgreSQL: the lock-out first. At REPEATABLE READ or SERIALIZABLE the
            # transaction's snapshot is taken by its first statement that reads: after the
            # appends it waited for committed, so the batch loop reads their events (with
            # the heartbeat first, it read under a snapshot from before them, and lost the
            # events they had left to the rebuild). SQLite: the transaction took the write
            # lock at BEGIN (no append is open after it).
            if isinstance(store, EventStore):
                store.backend.lock_out_appends(connections[store.using])
            state.heartbeat(label, tenant, using, owner=owner)
            outcome = self._batches(projection, run, checkpoints, owner, locked_out=True)
            if outcome == CAUGHT_UP:
                state.finish(label, tenant, using, owner=owner, caught_up=True)
        return outcome

    def settle(self, position: int, tenant_id: str | None, *, strict: bool = False) -> int:
        """After a read that returned everything readable after ``position``: -1 if more
        events are readable now (read again), else how many the ordering horizon holds back
        (see [`held.settle`][django_eventsource.runner.held.settle]; it stops re-reading
        when the runner is asked to stop)."""
        return settle(self.event_store, position, tenant_id, strict=strict, halted=self._halted)

    def _heartbeat(self, projection: Projection) -> None:
        """Every ``HEARTBEAT_INTERVAL``: show the runner lives, renew its lock (a lease),
        and check that it still owns the projection; raises `LockLost` if not."""
        if not self.managed:
            return
        now = time.monotonic()
        if now - self._last_heartbeat.get(projection.label, 0) < self.heartbeat_interval:
            return
        self._last_heartbeat[projection.label] = now
        lock = self._locks.get(projection.label)
        owner = lock.owner if lock is not None else None
        beat = self._state().heartbeat(
            projection.label, self.tenant_id, projection.database, owner=owner
        )
        if lock is None or not lock.renew() or not beat:
            raise LockLost(projection.label)
        self._sample_lag(projection)

    def _sample_lag(self, projection: Projection) -> None:
        """Record the lag for the admin's chart, at most every ``LAG_SAMPLE_INTERVAL`` s."""
        if not self.lag_sample_interval:
            return
        now = time.monotonic()
        if now - self._last_sample.get(projection.label, -1e9) < self.lag_sample_interval:
            return
        self._last_sample[projection.label] = now
        from django_eventsource.status import record_lag_sample  # status imports models

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

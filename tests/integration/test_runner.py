"""ProjectionRunner: catch-up, error policy (retry, pause, dead-letter), locks, follow."""

from __future__ import annotations

import signal
import threading
import time
from typing import Any
from uuid import uuid4

import pytest
from django.db import connections

from django_eventsource import DeadLetter, EventStore, ProjectionState, control, handles
from django_eventsource.locks import lock_for
from django_eventsource.runner import ProjectionRunner
from tests.factories import task_history
from tests.fold import fold_task_board, task_board_rows
from tests.testapp.events import TaskCreated, TaskRenamed
from tests.testapp.projections import TaskBoard

pytestmark = pytest.mark.django_db(transaction=True)


def poisoned_history(store: EventStore) -> tuple[int, int]:
    """Three tasks; the second one's rename to 'boom' makes TaskBoard fail."""
    task_history(store, tasks=3, renames=0, seed=1)
    bad = uuid4()
    store.append(bad, [TaskCreated(aggregate_id=bad, title="ok")])
    [poison] = store.append(bad, [TaskRenamed(aggregate_id=bad, title="boom")])
    task_history(store, tasks=3, renames=0, seed=2)
    return poison.position, store.head_position()


def test_catch_up_applies_everything_and_goes_idle() -> None:
    store = EventStore()
    task_history(store, tasks=20, renames=3, seed=3)
    events: list[str] = []
    runner = ProjectionRunner(
        [TaskBoard()], batch_size=7, progress_callback=lambda kind, **_: events.append(kind)
    )
    result = runner.run_until_caught_up()
    assert result.events_applied == len(store.read_all())
    assert not result.failed
    assert task_board_rows() == fold_task_board(store)
    state = ProjectionState.objects.get(name="task_board")
    assert state.status == "idle"
    assert state.position == store.head_position()
    assert state.heartbeat_at is not None
    assert events[0] == "start" and events[-1] == "done" and "batch" in events
    # Nothing new: a second run reads nothing.
    assert ProjectionRunner([TaskBoard()]).run_until_caught_up().events_applied == 0


def test_poison_event_is_retried_then_pauses_before_it() -> None:
    store = EventStore()
    poison, head = poisoned_history(store)
    retries: list[dict] = []
    runner = ProjectionRunner(
        [TaskBoard()],
        batch_size=100,
        progress_callback=lambda kind, **data: kind == "retry" and retries.append(data),
    )
    result = runner.run_until_caught_up()
    assert result.failed == ["task_board"]
    assert len(retries) == 3  # EVENTSOURCE MAX_RETRIES default
    state = ProjectionState.objects.get(name="task_board")
    assert state.status == "failed"
    assert state.failed_event_position == poison
    assert state.position == poison - 1  # everything before the poison event was committed
    assert "ValueError" in state.last_error and "boom" in state.last_error
    assert state.attempts == 4
    # A failed projection is skipped until resumed; resuming retries the same event.
    again = ProjectionRunner([TaskBoard()]).run_until_caught_up()
    assert again.skipped == ["task_board"]
    control.resume("task_board")
    assert ProjectionRunner([TaskBoard()]).run_until_caught_up().failed == ["task_board"]
    # Setting the event aside moves past it; the rest is applied.
    letter = control.dead_letter_failed("task_board")
    assert letter.event_position == poison
    final = ProjectionRunner([TaskBoard()]).run_until_caught_up()
    assert not final.failed
    state.refresh_from_db()
    assert (state.status, state.position, state.last_error) == ("idle", head, "")


def test_dead_letter_policy_sets_the_event_aside_and_moves_on(settings) -> None:
    settings.EVENTSOURCE = {
        **settings.EVENTSOURCE,
        "ERROR_POLICY": "dead_letter",
        "MAX_RETRIES": 1,
    }
    store = EventStore()
    poison, head = poisoned_history(store)
    result = ProjectionRunner([TaskBoard()], batch_size=4).run_until_caught_up()
    assert not result.failed
    [letter] = DeadLetter.objects.all()
    assert (letter.projection, letter.event_position, letter.event_type) == (
        "task_board",
        poison,
        "TaskRenamed",
    )
    assert "boom" in letter.error and "Traceback" in letter.traceback
    assert ProjectionState.objects.get(name="task_board").position == head
    expected = fold_task_board(store)
    rows = task_board_rows()
    assert len(rows) == len(expected) == 7
    assert sum(r["events_applied"] for r in rows.values()) == len(store.read_all()) - 1


def test_a_held_projection_is_skipped_or_waited_for() -> None:
    store = EventStore()
    task_history(store, tasks=3, seed=4)
    lock = lock_for("task_board", None, "default")
    assert lock.acquire()
    try:
        result = ProjectionRunner([TaskBoard()]).run_until_caught_up()
        assert result.locked == ["task_board"]
        assert result.events_applied == 0
        assert lock.holder()
    finally:
        lock.release()
    assert ProjectionRunner([TaskBoard()]).run_until_caught_up().events_applied > 0


def test_pause_stops_a_projection_until_resumed() -> None:
    store = EventStore()
    task_history(store, tasks=2, seed=5)
    control.pause("task_board")
    assert ProjectionRunner([TaskBoard()]).run_until_caught_up().skipped == ["task_board"]
    assert task_board_rows() == {}
    control.resume("task_board")
    ProjectionRunner([TaskBoard()]).run_until_caught_up()
    assert task_board_rows() == fold_task_board(store)


def test_follow_applies_new_events_until_stopped() -> None:
    store = EventStore()
    runner = ProjectionRunner([TaskBoard()], poll_interval=0.05)

    def follow() -> None:
        try:
            runner.follow()
        finally:
            connections.close_all()  # Django's connections are per thread

    thread = threading.Thread(target=follow)
    thread.start()
    try:
        task_history(store, tasks=5, seed=6)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            state = ProjectionState.objects.filter(name="task_board").first()
            if state and state.position == store.head_position():
                break
            time.sleep(0.05)
    finally:
        runner.stop()
        thread.join(timeout=30)
    assert not thread.is_alive()
    assert task_board_rows() == fold_task_board(store)


class TakenOver(TaskBoard):
    """While it applies a rename, another runner takes the projection over (it claims the
    state row from another connection), as happens when this runner's lock session dies
    mid-batch."""

    claim: threading.Thread | None = None

    @handles(TaskRenamed)
    def renamed(self, event: TaskRenamed) -> None:
        def claim() -> None:
            try:
                ProjectionState.objects.filter(name="task_board").update(owner="another runner")
            finally:
                connections.close_all()

        if TakenOver.claim is None:
            TakenOver.claim = threading.Thread(target=claim)
            TakenOver.claim.start()
            TakenOver.claim.join(0.5)
            # The batch's checkpoint already locked the state row: the claim waits for it.
            assert TakenOver.claim.is_alive()
        super().renamed(event)


def test_a_runner_that_lost_its_projection_cannot_commit_a_batch() -> None:
    store = EventStore()
    task_history(store, tasks=3, renames=1, seed=9)
    events = store.read_all().events
    rename = next(i for i, e in enumerate(events) if e.event_type == "TaskRenamed")

    def between_batches(kind: str, **data: object) -> None:
        if kind == "batch" and TakenOver.claim is not None:
            TakenOver.claim.join(30)  # the claim goes through as soon as the batch commits

    TakenOver.claim = None
    runner = ProjectionRunner([TakenOver()], batch_size=1, progress_callback=between_batches)
    result = runner.run_until_caught_up()
    assert TakenOver.claim is not None and not TakenOver.claim.is_alive()

    assert result.lost == ["task_board"] and result.locked == []
    state = ProjectionState.objects.get(name="task_board")
    # The batch in hand when the other runner claimed the projection committed first (the
    # claim waited for it); the next batch could not commit.
    assert state.owner == "another runner"
    assert state.position == events[rename].position
    assert sum(row["events_applied"] for row in task_board_rows().values()) == rename + 1
    # When the other runner lets go, a runner carries on from there.
    ProjectionState.objects.filter(name="task_board").update(owner="", lease_until=None)
    assert ProjectionRunner([TaskBoard()]).run_until_caught_up().locked == []
    assert task_board_rows() == fold_task_board(store)


def test_a_lock_in_another_database_is_neither_ours_nor_named(vendor: str) -> None:
    """Advisory locks belong to one database, but pg_locks lists every database's: a runner
    of the same projection in another database of the server (another project, another
    test run) neither holds ours nor is named as its holder."""
    if vendor != "postgresql":
        pytest.skip(
            "advisory locks are PostgreSQL's; test_a_lease_names_its_own_owner is the twin"
        )
    import psycopg

    from django_eventsource.backends.postgresql.locks import lock_key

    settings = connections["default"].settings_dict
    other = psycopg.connect(
        dbname="postgres",
        user=settings.get("USER") or "postgres",
        host=settings.get("HOST") or "127.0.0.1",
        port=settings.get("PORT") or 5432,
        autocommit=True,
    )
    try:
        other.execute("SELECT pg_advisory_lock(%s)", [lock_key("task_board", None)])
        lock = lock_for("task_board", None, "default")
        assert lock.holder() == ""
        assert lock.acquire()
        try:
            assert f"pid {other.info.backend_pid}" not in lock.holder()
        finally:
            lock.release()
    finally:
        other.close()


def test_a_lease_names_its_own_owner(vendor: str) -> None:
    """The SQLite twin: the lease is a row of this database, and holder() names it."""
    if vendor != "sqlite":
        pytest.skip("the PostgreSQL test is test_a_lock_in_another_database_is_neither_…")
    lock = lock_for("task_board", None, "default")
    assert lock.holder() == ""
    assert lock.acquire()
    try:
        assert lock.holder().startswith(lock.owner)
        assert not lock_for("task_board", None, "default").acquire()
    finally:
        lock.release()


# Signal handlers: installed for a run, the previous ones restored after it ---------------------

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def run_with_signal_handlers(run: str, vendor: str, progress: Any) -> None:
    """Run ``run`` with ``install_signal_handlers=True`` (a runner's catch-up or follow, or a
    default, atomic or shadow rebuild)."""
    from django_eventsource import NotSupportedOnBackend, RebuildAborted
    from django_eventsource.rebuild import rebuild
    from tests.helpers import drop_shadow_schemas

    options: dict[str, Any] = {
        "batch_size": 2,
        "progress_callback": progress,
        "install_signal_handlers": True,
    }
    if run in ("catch-up", "follow"):
        runner = ProjectionRunner([TaskBoard()], poll_interval=0.05, **options)
        result = runner.follow() if run == "follow" else runner.run_until_caught_up()
        assert result.stopped is (run == "follow")
    elif run == "aborted":  # it raises: the handlers are restored all the same
        with pytest.raises(RebuildAborted):
            rebuild(TaskBoard(), atomic=True, **options)
    elif run == "shadow" and vendor != "postgresql":
        with pytest.raises(NotSupportedOnBackend):  # refused before it makes a runner
            rebuild(TaskBoard(), shadow=True, **options)
    elif run == "shadow":
        drop_shadow_schemas()
        try:
            rebuild(TaskBoard(), shadow=True, **options)
        finally:
            drop_shadow_schemas()
    else:
        rebuild(TaskBoard(), atomic=run == "atomic", **options)


@pytest.mark.parametrize("run", ["catch-up", "follow", "rebuild", "atomic", "aborted", "shadow"])
def test_a_run_restores_the_signal_handlers_it_found(run: str, vendor: str) -> None:
    """The runner installed its SIGINT and SIGTERM handlers when it was made and never
    restored the ones it found: after a run (or a rebuild, which rebuild_projections runs
    once per projection) a signal went to a runner that was done, and the process's own
    handler never saw it."""
    store = EventStore()
    task_history(store, tasks=4, renames=2, seed=11)
    if run == "aborted":
        poisoned_history(store)
    received: list[int] = []

    def ours(signum: int, frame: object) -> None:
        received.append(signum)

    during: list[object] = []

    def progress(kind: str, **data: object) -> None:
        if kind == "batch" and not during:  # the first batch: the run's handler is in place
            during.append(signal.getsignal(signal.SIGTERM))
            if run == "follow":
                signal.raise_signal(signal.SIGTERM)  # stops the follower, not the process

    found = {signum: signal.signal(signum, ours) for signum in SIGNALS}
    try:
        run_with_signal_handlers(run, vendor, progress)
        if run == "shadow" and vendor != "postgresql":
            assert during == []  # refused before any batch
        else:
            assert during and during[0] is not ours  # the run's own handler, while it ran
        assert received == []  # none of the run's signals reached the process's handler
        for signum in SIGNALS:
            assert signal.getsignal(signum) is ours, signal.Signals(signum).name
            signal.raise_signal(signum)  # runs the handler before it returns
        assert received == list(SIGNALS)
    finally:
        for signum, handler in found.items():
            signal.signal(signum, handler)


def test_a_runner_without_install_signal_handlers_leaves_them_alone() -> None:
    store = EventStore()
    task_history(store, tasks=2, seed=12)
    before = [signal.getsignal(signum) for signum in SIGNALS]
    during: list[object] = []

    def progress(kind: str, **data: object) -> None:
        if kind == "batch":
            during.append(signal.getsignal(signal.SIGTERM))

    ProjectionRunner([TaskBoard()], progress_callback=progress).run_until_caught_up()
    assert during == [before[1]]
    assert [signal.getsignal(signum) for signum in SIGNALS] == before

"""django_eventsource.testing: the fixtures, factories and helpers we ship for users' suites.

The plugin is loaded by ``tests/conftest.py`` exactly as a user loads it
(``pytest_plugins = ["django_eventsource.testing"]``), so the fixtures used here are the
shipped ones.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from uuid import uuid4

import pytest
from django.db import connection, connections, transaction

from django_eventsource import (
    DatabaseCheckpointStore,
    EventStore,
    InMemoryCheckpointStore,
    InMemoryEventStore,
    ProjectionError,
    ProjectionLocked,
    ProjectionSkipped,
    handles,
)
from django_eventsource.models import Event, ProjectionState
from django_eventsource.testing import (
    DomainEventFactory,
    arun_projections,
    given_events,
    run_projections,
    stream,
)
from tests.factories import (
    TaskCompletedFactory,
    TaskCreatedFactory,
    TaskRenamedFactory,
    task_history,
)
from tests.helpers import ROOT, run_async
from tests.testapp.events import TaskCreated, TaskRenamed
from tests.testapp.models import TaskIndex, TaskSummary, TenantStats
from tests.testapp.projections import TaskBoard, TenantStatsProjection

# Factories -----------------------------------------------------------------------------------


def test_event_factory_fills_the_envelope_and_the_payload() -> None:
    first, second = TaskCreatedFactory.build(), TaskCreatedFactory.create()
    assert isinstance(first, TaskCreated) and isinstance(second, TaskCreated)
    assert first.aggregate_id != second.aggregate_id  # a new stream per event by default
    assert first.event_id != second.event_id
    assert first.tenant_id is None
    assert first.occurred_at.tzinfo is not None
    assert first.occurred_at <= second.occurred_at <= datetime.now(UTC)
    assert first.title != second.title  # factory.Sequence
    assert first.aggregate_version == 0  # left to the store
    assert TaskCreatedFactory.build(tenant_id="acme", title="x").model_dump(
        include={"tenant_id", "title"}
    ) == {"tenant_id": "acme", "title": "x"}


def test_event_factory_is_a_subclassable_base_without_a_model() -> None:
    class Bare(DomainEventFactory):
        pass

    with pytest.raises(Exception, match="model"):
        Bare.build()


def test_stream_shares_one_aggregate_and_tenant() -> None:
    task = uuid4()
    renamed = TaskRenamedFactory.build(title="v2")
    events = stream(
        TaskCreatedFactory, renamed, TaskCompletedFactory, aggregate_id=task, tenant_id="acme"
    )
    assert [e.event_type for e in events] == ["TaskCreated", "TaskRenamed", "TaskCompleted"]
    assert {(e.aggregate_id, e.tenant_id) for e in events} == {(task, "acme")}
    assert events[1].title == "v2" and events[1].event_id == renamed.event_id
    assert renamed.aggregate_id != task  # the original event is unchanged (copied)
    assert len({e.aggregate_id for e in stream(TaskCreatedFactory)} | {task}) == 2


def test_stream_refuses_what_is_not_an_event() -> None:
    with pytest.raises(TypeError, match="events or event factories"):
        stream(lambda **ids: "not an event")


# given_events ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["memory", "database"])
@pytest.mark.django_db
def test_given_events_appends_in_order_with_versions_per_stream(kind: str) -> None:
    store = InMemoryEventStore(inline_projections=False) if kind == "memory" else EventStore()
    a, b = stream(TaskCreatedFactory, TaskRenamedFactory), stream(TaskCreatedFactory)
    stored = given_events(store, a[0], a[1], b[0])
    assert [s.event_id for s in stored] == [a[0].event_id, a[1].event_id, b[0].event_id]
    assert [s.aggregate_version for s in stored] == [1, 2, 1]
    assert stored == sorted(stored, key=lambda s: s.position)
    # Interleaved, and continuing streams that already exist.
    more = given_events(
        store,
        *stream(TaskRenamedFactory, aggregate_id=b[0].aggregate_id),
        *stream(TaskCompletedFactory, aggregate_id=a[0].aggregate_id),
        *stream(TaskRenamedFactory, TaskCompletedFactory, aggregate_id=b[0].aggregate_id),
    )
    assert [(s.aggregate_id, s.aggregate_version) for s in more] == [
        (b[0].aggregate_id, 2),
        (a[0].aggregate_id, 3),
        (b[0].aggregate_id, 3),
        (b[0].aggregate_id, 4),
    ]
    assert [s.aggregate_version for s in store.read_stream(b[0].aggregate_id)] == [1, 2, 3, 4]


@pytest.mark.django_db
def test_given_events_keeps_tenants_apart_and_states_the_expected_version() -> None:
    store = EventStore()
    task = uuid4()
    stored = given_events(
        store,
        *stream(TaskCreatedFactory, aggregate_id=task, tenant_id="acme"),
        *stream(TaskCreatedFactory, TaskCompletedFactory, aggregate_id=task, tenant_id="globex"),
    )
    assert [(s.tenant_id, s.aggregate_version) for s in stored] == [
        ("acme", 1),
        ("globex", 1),
        ("globex", 2),
    ]
    # Each append states the exact version (1 here), so an event that claims another one
    # is refused rather than appended wherever the stream happens to be.
    with pytest.raises(ValueError, match="expected_version: 1, but"):
        given_events(
            store,
            TaskRenamedFactory.build(aggregate_id=task, tenant_id="acme", aggregate_version=5),
        )


def test_given_events_refuses_what_is_not_an_event() -> None:
    with pytest.raises(TypeError, match="DomainEvent instances"):
        given_events(InMemoryEventStore(), TaskCreatedFactory)  # type: ignore[arg-type]


def test_memory_event_store_needs_no_database(memory_event_store: InMemoryEventStore) -> None:
    # No django_db mark: any query would fail the test. Inline projections are off.
    stored = given_events(memory_event_store, *stream(TaskCreatedFactory, TaskCompletedFactory))
    assert memory_event_store.head_position() == stored[-1].position == 2
    assert not memory_event_store.inline_projections


# run_projections ------------------------------------------------------------------------------


def test_run_projections_catches_up_and_resumes(event_store: EventStore, run_projections) -> None:
    task_history(event_store, tasks=6, tenants=("acme", "globex"), seed=11)
    head, total = event_store.head_position(), Event.objects.count()
    results = run_projections("task_board", TenantStatsProjection, batch_size=4)
    assert set(results) == {"task_board", "tenant_stats"}
    for result in results.values():
        assert (result.position, result.events_read) == (head, total), result
    assert results["task_board"].batches == -(-total // 4)
    assert TaskSummary.objects.count() == 6
    assert sum(s.tasks for s in TenantStats.objects.all()) == 6
    # A second run resumes from the saved checkpoints: nothing left to apply.
    again = run_projections(TaskBoard())
    assert again["task_board"].events_read == 0
    assert ProjectionState.objects.get(name="task_board").position == head


def test_run_projections_without_names_skips_what_appends_keep_current(
    event_store: EventStore, run_projections
) -> None:
    given_events(event_store, *stream(TaskCreatedFactory, TaskRenamedFactory))
    assert TaskIndex.objects.count() == 1  # inline, applied by the append itself
    results = run_projections()
    assert set(results) == {"task_board", "tenant_stats"}
    assert TaskSummary.objects.get().renames == 1


def test_run_projections_on_a_memory_store_keeps_checkpoints_in_memory(
    memory_event_store: InMemoryEventStore, run_projections
) -> None:
    task_history(memory_event_store, tasks=4, seed=12)
    results = run_projections(event_store=memory_event_store)
    # The store applies no inline projection, so "all" includes task_index.
    assert set(results) == {"task_board", "task_index", "tenant_stats"}
    assert TaskIndex.objects.count() == TaskSummary.objects.count() == 4
    assert run_projections(event_store=memory_event_store)["task_board"].events_read == 0
    assert not ProjectionState.objects.exclude(position=None).exists()


def test_run_projections_raises_the_handlers_error(
    event_store: EventStore, run_projections
) -> None:
    task = uuid4()
    given_events(event_store, *stream(TaskCreatedFactory, aggregate_id=task))
    poison = given_events(event_store, TaskRenamedFactory.build(aggregate_id=task, title="boom"))
    with pytest.raises(ProjectionError) as caught:
        run_projections(TaskBoard)
    assert caught.value.position == poison[0].position
    assert isinstance(caught.value.__cause__, ValueError)
    # As a worker does: the events before it are applied, the checkpoint stays just before
    # it, and the projection is failed (a worker would skip it, and so does a second run).
    assert DatabaseCheckpointStore().load("task_board") == poison[0].position - 1
    assert TaskSummary.objects.get().events_applied == 1
    state = ProjectionState.objects.get(name="task_board")
    assert (state.status, state.failed_event_position) == ("failed", poison[0].position)
    with pytest.raises(ProjectionSkipped, match="is failed"):
        run_projections(TaskBoard)


# run_projections runs the worker's loop -----------------------------------------------------


def test_run_projections_keeps_status_like_a_worker(
    event_store: EventStore, run_projections
) -> None:
    given_events(event_store, *stream(TaskCreatedFactory, TaskCompletedFactory))
    run_projections(TaskBoard)
    state = ProjectionState.objects.get(name="task_board")
    # A worker's catch-up: running while it works, idle when it let go, with a heartbeat.
    assert (state.status, state.owner) == ("idle", "")
    assert state.heartbeat_at is not None and state.last_progress_at is not None


def test_run_projections_refuses_a_projection_another_runner_holds(
    event_store: EventStore, run_projections
) -> None:
    """The worker's lock: while another runner holds the projection, run_projections does
    not run it beside it."""
    from django_eventsource.locks import lock_for

    given_events(event_store, *stream(TaskCreatedFactory))
    lock = lock_for("task_board", None, "default")
    assert lock.acquire()
    try:
        with pytest.raises(ProjectionLocked) as info:
            run_projections(TaskBoard)
        assert info.value.projection == "task_board"
    finally:
        lock.release()
    assert not TaskSummary.objects.exists()
    run_projections(TaskBoard)
    assert TaskSummary.objects.count() == 1


class TakenOverInTests(TaskBoard):
    """While it applies a rename, another runner claims the projection (from another
    connection, as a successor does)."""

    claim: threading.Thread | None = None

    @handles(TaskRenamed)
    def renamed(self, event: TaskRenamed) -> None:
        def claim() -> None:
            try:
                ProjectionState.objects.filter(name="task_board").update(owner="a successor")
            finally:
                connections.close_all()

        if TakenOverInTests.claim is None:
            TakenOverInTests.claim = threading.Thread(target=claim)
            TakenOverInTests.claim.start()
            TakenOverInTests.claim.join(0.3)  # it waits for this batch's lock on the row
        super().renamed(event)


def test_run_projections_is_fenced_like_a_worker(event_store: EventStore, run_projections) -> None:
    """The worker's fence: once another runner has claimed the projection, the next batch
    cannot commit, and the test hears of it (ProjectionLocked)."""
    task = uuid4()
    given_events(
        event_store,
        *stream(TaskCreatedFactory, TaskRenamedFactory, aggregate_id=task),
        *stream(TaskCreatedFactory, TaskCompletedFactory),
    )
    TakenOverInTests.claim = None

    def between_batches(kind: str, **data: object) -> None:
        if kind == "batch" and TakenOverInTests.claim is not None:
            TakenOverInTests.claim.join(30)

    from django_eventsource import catch_up

    with pytest.raises(ProjectionLocked):
        catch_up(
            TakenOverInTests(),
            event_store=event_store,
            batch_size=1,
            progress_callback=between_batches,
        )
    state = ProjectionState.objects.get(name="task_board")
    assert state.owner == "a successor"
    # The batch with the rename committed before the claim; nothing after it did.
    assert TaskSummary.objects.get(task_id=task).renames == 1
    assert TaskSummary.objects.count() == 1


def test_run_projections_skips_a_paused_projection_like_a_worker(
    event_store: EventStore, run_projections
) -> None:
    from django_eventsource import control

    given_events(event_store, *stream(TaskCreatedFactory))
    control.pause("task_board")
    with pytest.raises(ProjectionSkipped, match="is paused"):
        run_projections(TaskBoard)
    assert not TaskSummary.objects.exists()
    control.resume("task_board")
    run_projections(TaskBoard)
    assert TaskSummary.objects.count() == 1


def test_run_projections_refuses_what_is_not_a_projection(run_projections) -> None:
    with pytest.raises(TypeError, match="registered names"):
        run_projections(42)
    with pytest.raises(KeyError, match="Known projections"):
        run_projections("task_bored")


@pytest.mark.django_db(transaction=True)
def test_arun_projections_is_the_async_twin(event_store: EventStore) -> None:
    given_events(event_store, *stream(TaskCreatedFactory))
    results = run_async(arun_projections(TaskBoard, checkpoint_store=InMemoryCheckpointStore()))
    assert results["task_board"].events_applied == 1
    assert TaskSummary.objects.count() == 1


@pytest.mark.django_db
def test_run_projections_inside_a_test_transaction(vendor: str) -> None:
    """The plain function under pytest-django's ``db`` (a transaction that never commits)."""
    store = EventStore()
    given_events(store, *stream(TaskCreatedFactory))
    assert connection.in_atomic_block
    if vendor == "postgresql":
        # Projections only see committed events there: a clear error, not a silent no-op.
        with pytest.raises(RuntimeError, match=r"1 event\(s\) are invisible"):
            run_projections(TaskBoard, event_store=store)
        assert not TaskSummary.objects.exists()
    else:
        assert run_projections(TaskBoard, event_store=store)["task_board"].events_applied == 1
        assert TaskSummary.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_run_projections_inside_atomic_sees_committed_events() -> None:
    store = EventStore()
    given_events(store, *stream(TaskCreatedFactory))  # committed
    with transaction.atomic():  # nothing appended in here: nothing hidden
        assert run_projections(TaskBoard, event_store=store)["task_board"].events_applied == 1


@contextmanager
def horizon_holder_session(*, appends: bool = True) -> Iterator[Callable[[], None]]:
    """Another PostgreSQL session with a transaction left open; yields its rollback.

    With ``appends`` it is an event writer (it holds ROW EXCLUSIVE on the event table, as an
    append does first): events committed after it took its id stay invisible to readers
    until it ends. Without, it only holds a transaction id, which holds nobody back.
    """
    import psycopg

    s = connection.settings_dict
    with psycopg.connect(
        dbname=s["NAME"],
        user=s.get("USER") or "postgres",
        password=s.get("PASSWORD") or "",
        host=s.get("HOST") or "127.0.0.1",
        port=int(s.get("PORT") or 5432),
    ) as other:
        if appends:
            other.execute("LOCK TABLE django_eventsource_event IN ROW EXCLUSIVE MODE")
        other.execute("SELECT pg_current_xact_id()")  # takes a transaction id
        yield other.rollback


@pytest.mark.django_db(transaction=True)
def test_run_projections_waits_for_what_an_open_transaction_holds_back(vendor: str) -> None:
    store = EventStore()
    if vendor != "postgresql":
        # SQLite has no horizon (writers are serialized): nothing to wait for, ever.
        given_events(store, *stream(TaskCreatedFactory), *stream(TaskCreatedFactory))
        results = run_projections(TaskBoard, event_store=store, timeout=0)
    else:
        with horizon_holder_session() as end:
            given_events(store, *stream(TaskCreatedFactory), *stream(TaskCreatedFactory))
            with pytest.raises(RuntimeError, match=r"2 committed event\(s\) are still invisible"):
                run_projections(TaskBoard, event_store=store, timeout=0.1)
            assert not TaskSummary.objects.exists()  # nothing applied, nothing skipped
            threading.Timer(0.2, end).start()  # the holder ends while run_projections waits
            results = run_projections(TaskBoard, event_store=store, timeout=60)
    assert results["task_board"].events_applied == 2
    assert TaskSummary.objects.count() == 2


@pytest.mark.django_db(transaction=True)
def test_an_open_transaction_that_appended_nothing_holds_nothing_back(vendor: str) -> None:
    """PostgreSQL's horizon is writer-scoped: a transaction with an id that never appended
    (a data migration on other tables, an idle session) does not make run_projections wait."""
    store = EventStore()
    if vendor != "postgresql":
        given_events(store, *stream(TaskCreatedFactory))
        results = run_projections(TaskBoard, event_store=store, timeout=0)
    else:
        with horizon_holder_session(appends=False) as end:
            given_events(store, *stream(TaskCreatedFactory))
            results = run_projections(TaskBoard, event_store=store, timeout=0)
            end()
    assert results["task_board"].events_applied == 1


# Optional dependencies ------------------------------------------------------------------------


def _python(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter where the named modules cannot be imported."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.slow
def test_without_factory_boy_the_factory_says_what_to_install(tmp_path: Path) -> None:
    done = _python(
        """
        import sys
        sys.modules["factory"] = None  # as if factory-boy were not installed
        from django_eventsource import testing
        assert callable(testing.given_events) and callable(testing.run_projections)
        try:
            from django_eventsource.testing import DomainEventFactory
        except ImportError as exc:
            print(exc)
        else:
            raise SystemExit("imported DomainEventFactory without factory-boy")
        """,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "needs factory-boy" in done.stdout
    assert 'pip install "django-eventsource[testing]"' in done.stdout


@pytest.mark.slow
def test_without_pytest_the_helpers_still_import(tmp_path: Path) -> None:
    done = _python(
        """
        import sys
        sys.modules["pytest"] = None  # as if pytest were not installed
        from django_eventsource import testing
        print(hasattr(testing, "event_store"), callable(testing.stream))
        """,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True"]


@pytest.mark.slow
def test_the_plugin_without_pytest_django_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["django_eventsource.testing"]\n')
    (tmp_path / "test_nothing.py").write_text("def test_nothing():\n    pass\n")
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:django", "-p", "no:cacheprovider", "-q"],
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == pytest.ExitCode.USAGE_ERROR, done.stdout + done.stderr
    assert "needs pytest-django" in done.stderr
    assert "django-eventsource[testing]" in done.stderr

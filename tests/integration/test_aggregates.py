"""Aggregates and repositories, on InMemoryEventStore and EventStore (SQLite and PostgreSQL).

Recording and applying, loading and not-found, optimistic concurrency and the retry helper,
snapshots (used, ignored when incompatible or broken, written with the append), inline
projections in the save's transaction, and the async twins.
"""

from __future__ import annotations

import logging
from contextlib import suppress
from datetime import datetime
from typing import Any
from uuid import UUID, uuid4

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction

from django_eventsource import (
    BaseEventStore,
    ConcurrencyError,
    EventSourceError,
    EventStore,
    InMemoryEventStore,
    ProjectionError,
)
from django_eventsource.aggregates import (
    AggregateRoot,
    DatabaseSnapshotStore,
    InMemorySnapshotStore,
    Repository,
    SnapshotRecord,
    applies,
)
from django_eventsource.aggregates import repository as repository_module
from django_eventsource.exceptions import AggregateNotFound
from django_eventsource.models import Event, Snapshot
from tests.helpers import run_async
from tests.testapp.aggregates import SnapshottedTask, SnapshottedTaskV2, Task, TaskAlreadyDone
from tests.testapp.events import Counted, TaskCreated, TaskRenamed
from tests.testapp.models import TaskIndex

pytestmark = pytest.mark.django_db


def stream_titles(store: BaseEventStore, task_id: UUID, tenant_id: str | None = None) -> list:
    return [
        (s.aggregate_version, s.event_type, getattr(s.event, "title", None))
        for s in store.read_stream(task_id, tenant_id=tenant_id)
    ]


# Recording and applying (no store) ----------------------------------------------------------


def test_record_fills_the_envelope_and_applies_at_once() -> None:
    task = Task.create("Write docs", tenant_id="acme")
    assert task.is_new
    assert (task.title, task.version, task.committed_version) == ("Write docs", 1, 0)
    task.rename("Write the docs")
    task.rename("Write the docs")  # no change, no event
    [created, renamed] = task.uncommitted_events
    assert isinstance(created, TaskCreated)
    assert isinstance(renamed, TaskRenamed)
    for version, event in enumerate(task.uncommitted_events, start=1):
        assert event.aggregate_id == task.id
        assert event.aggregate_type == "Task"
        assert event.tenant_id == "acme"
        assert event.aggregate_version == version
    assert (task.title, task.renames, task.version) == ("Write the docs", 1, 2)
    assert task.history == ["Write docs", "Write the docs"]
    assert "Task" in repr(task)
    assert "+2 unsaved" in repr(task)


def test_record_accepts_an_instance_and_refuses_foreign_ones() -> None:
    task = Task(uuid4())
    event = task.record(TaskCreated(aggregate_id=task.id, title="x"))
    assert event.aggregate_version == 1
    assert task.title == "x"
    with pytest.raises(ValueError, match="belongs to aggregate"):
        task.record(TaskRenamed(aggregate_id=uuid4(), title="y"))
    with pytest.raises(ValueError, match="aggregate type 'Counter'"):
        task.record(Counted(aggregate_id=task.id))
    with pytest.raises(ValueError, match="aggregate type 'Counter'"):
        task.record(Counted)
    with pytest.raises(ValueError, match="tenant"):
        task.record(TaskRenamed(aggregate_id=task.id, title="y", tenant_id="other"))
    with pytest.raises(ValueError, match="next version"):
        task.record(TaskRenamed(aggregate_id=task.id, title="y", aggregate_version=5))
    with pytest.raises(TypeError, match="fills aggregate_id"):
        task.record(TaskRenamed, title="y", aggregate_id=task.id)
    with pytest.raises(TypeError):
        task.record("TaskRenamed")  # type: ignore[call-overload]
    # Nothing refused was applied or queued.
    assert (task.version, task.title, len(task.uncommitted_events)) == (1, "x", 1)


def test_an_event_without_applier_is_refused() -> None:
    class Bare(AggregateRoot):
        aggregate_type = "Task"

        @applies(TaskCreated)
        def _created(self, event: TaskCreated) -> None:
            pass

    bare = Bare(uuid4())
    bare.record(TaskCreated, title="t")
    with pytest.raises(TypeError, match="no @applies method for 'TaskRenamed'"):
        bare.record(TaskRenamed, title="u")
    assert bare.version == 1
    assert Bare.handled_types() == {"TaskCreated"}
    assert Task.handled_types() == {"TaskCreated", "TaskRenamed", "TaskCompleted"}


def test_class_definitions_are_checked() -> None:
    with pytest.raises(ImproperlyConfigured, match="two appliers for 'TaskCreated'"):

        class Twice(AggregateRoot):
            @applies(TaskCreated)
            def a(self, event: TaskCreated) -> None: ...

            @applies(TaskCreated)
            def b(self, event: TaskCreated) -> None: ...

    with pytest.raises(ImproperlyConfigured, match="reserved"):

        class Reserved(AggregateRoot):
            version: int = 0

    with pytest.raises(ImproperlyConfigured, match="snapshot_every"):

        class BadEvery(Task):
            snapshot_every = 0

    with pytest.raises(ImproperlyConfigured, match="no state fields"):

        class Stateless(AggregateRoot):
            snapshot_every = 10

    with pytest.raises(TypeError):
        applies(int)  # type: ignore[arg-type]

    class Plain(AggregateRoot):
        pass

    class Annotated(AggregateRoot):
        aggregate_type: str = "Task"
        snapshot_every: int | None = 3
        title: str = ""

    assert Plain.aggregate_type == "Plain"
    assert Annotated._state_fields == ("title",)
    assert Task._state_fields == ("title", "done", "renames", "history")
    assert SnapshottedTaskV2._state_fields == Task._state_fields
    assert SnapshottedTask.aggregate_type == "Task"  # inherited, not the subclass's name


def test_state_defaults_are_copied_per_instance() -> None:
    class Bag(AggregateRoot):
        aggregate_type = "Task"
        items: list[str] = []  # noqa: RUF012  (copied per instance, on purpose)

        @applies(TaskCreated)
        def _created(self, event: TaskCreated) -> None:
            self.items.append(event.title)

    one, two = Bag(uuid4()), Bag(uuid4())
    one.record(TaskCreated, title="a")
    assert (one.items, two.items, Bag.items) == (["a"], [], [])


# Loading and saving, on both stores ---------------------------------------------------------


@pytest.fixture(params=["memory", "database"])
def repo(request: pytest.FixtureRequest) -> Repository[Task]:
    store = InMemoryEventStore() if request.param == "memory" else EventStore()
    return Repository(Task, store)


def test_save_then_load(repo: Repository[Task]) -> None:
    task = Task.create("a", tenant_id="acme")
    task.rename("b")
    stored = repo.save(task)
    assert [s.aggregate_version for s in stored] == [1, 2]
    assert (task.version, task.committed_version, task.uncommitted_events) == (2, 2, ())
    assert repo.save(task) == []  # nothing recorded: nothing written

    loaded = repo.load(task.id, tenant_id="acme")
    assert isinstance(loaded, Task)
    assert (loaded.title, loaded.renames, loaded.history) == ("b", 1, ["a", "b"])
    assert (loaded.version, loaded.committed_version, loaded.is_new) == (2, 2, False)
    assert loaded.tenant_id == "acme"
    loaded.complete()
    repo.save(loaded)
    assert stream_titles(repo.store, task.id, "acme") == [
        (1, "TaskCreated", "a"),
        (2, "TaskRenamed", "b"),
        (3, "TaskCompleted", None),
    ]
    with pytest.raises(TaskAlreadyDone):
        repo.load(task.id, tenant_id="acme").complete()


def test_loading_an_unknown_id_raises_not_found(repo: Repository[Task]) -> None:
    missing = uuid4()
    with pytest.raises(AggregateNotFound) as info:
        repo.load(missing)
    assert isinstance(info.value, EventSourceError)
    assert isinstance(info.value, LookupError)
    assert (info.value.aggregate_type, info.value.aggregate_id) == ("Task", missing)
    assert str(missing) in str(info.value)

    # The stream exists, but in another tenant.
    task = Task.create("t", tenant_id="acme")
    repo.save(task)
    with pytest.raises(AggregateNotFound, match="in tenant 'globex'"):
        repo.load(task.id, tenant_id="globex")
    with pytest.raises(AggregateNotFound):
        repo.load(task.id)

    # The stream exists, but holds another aggregate type.
    counter = uuid4()
    repo.store.append(counter, [Counted(aggregate_id=counter)])
    with pytest.raises(AggregateNotFound, match="holds 'Counter' events"):
        repo.load(counter)


def test_a_concurrent_save_raises_and_writes_nothing(repo: Repository[Task]) -> None:
    task = Task.create("start")
    repo.save(task)
    first, second = repo.load(task.id), repo.load(task.id)
    first.rename("first")
    second.rename("second")
    second.complete()
    repo.save(first)
    with pytest.raises(ConcurrencyError) as info:
        repo.save(second)
    assert (info.value.expected_version, info.value.actual_version) == (1, 2)
    # The loser keeps its recorded events; the stream holds the winner's only.
    assert len(second.uncommitted_events) == 2
    assert second.committed_version == 1
    assert stream_titles(repo.store, task.id) == [
        (1, "TaskCreated", "start"),
        (2, "TaskRenamed", "first"),
    ]


def test_creating_an_existing_id_conflicts(repo: Repository[Task]) -> None:
    task = Task.create("one")
    repo.save(task)
    with pytest.raises(ConcurrencyError):
        repo.save(Task.create("two", task_id=task.id))
    assert repo.load(task.id).title == "one"


def test_save_refuses_another_aggregate_class(repo: Repository[Task]) -> None:
    class Other(AggregateRoot):
        aggregate_type = "Task"

        @applies(TaskCreated)
        def _created(self, event: TaskCreated) -> None: ...

    other = Other(uuid4())
    other.record(TaskCreated, title="x")
    with pytest.raises(TypeError, match="saves Task aggregates"):
        repo.save(other)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Repository(object)  # type: ignore[type-var]


def test_replay_reads_long_streams_in_pages(
    repo: Repository[Task], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(repository_module, "REPLAY_PAGE", 3)
    task = Task.create("0")
    for n in range(1, 10):
        task.rename(str(n))
    repo.save(task)  # 10 events: pages of 3, 3, 3, 1
    loaded = repo.load(task.id)
    assert (loaded.version, loaded.title, loaded.history) == (10, "9", [str(n) for n in range(10)])


# The retry helper ---------------------------------------------------------------------------


def test_update_retries_after_a_real_conflict(repo: Repository[Task]) -> None:
    task = Task.create("start")
    repo.save(task)
    other = Repository(Task, repo.store, snapshot_store=repo._snapshot_store)
    calls: list[int] = []

    def rename(aggregate: Task) -> None:
        calls.append(aggregate.version)
        if len(calls) == 1:
            # Someone else saves between our load and our save: a genuine conflict.
            competitor = other.load(task.id)
            competitor.rename("competitor")
            other.save(competitor)
        aggregate.rename(f"{aggregate.title} + mine")

    saved = repo.update(task.id, rename)
    assert calls == [1, 2]  # the second attempt ran on a fresh load
    assert (saved.title, saved.version, saved.uncommitted_events) == (
        "competitor + mine",
        3,
        (),
    )
    assert stream_titles(repo.store, task.id)[1:] == [
        (2, "TaskRenamed", "competitor"),
        (3, "TaskRenamed", "competitor + mine"),
    ]


def test_update_gives_up_after_its_retries(repo: Repository[Task]) -> None:
    task = Task.create("start")
    repo.save(task)
    calls = 0

    def always_loses(aggregate: Task) -> None:
        nonlocal calls
        calls += 1
        competitor = repo.load(task.id)
        competitor.rename(f"competitor {calls}")
        repo.save(competitor)
        aggregate.rename("never saved")

    with pytest.raises(ConcurrencyError):
        repo.update(task.id, always_loses, retries=2)
    assert calls == 3
    assert [t for _, _, t in stream_titles(repo.store, task.id)] == [
        "start",
        "competitor 1",
        "competitor 2",
        "competitor 3",
    ]
    with pytest.raises(ValueError, match="retries"):
        repo.update(task.id, always_loses, retries=-1)


def test_update_does_not_retry_a_failing_command(repo: Repository[Task]) -> None:
    task = Task.create("start")
    task.complete()
    repo.save(task)
    calls = 0

    def rename(aggregate: Task) -> None:
        nonlocal calls
        calls += 1
        aggregate.rename("late")

    with pytest.raises(TaskAlreadyDone):
        repo.update(task.id, rename)
    assert calls == 1
    assert repo.store.stream_version(task.id) == 2
    with pytest.raises(AggregateNotFound):
        repo.update(uuid4(), rename)


# Snapshots ----------------------------------------------------------------------------------


@pytest.fixture(params=["memory", "database"])
def snap_repo(request: pytest.FixtureRequest) -> Repository[SnapshottedTask]:
    store = InMemoryEventStore() if request.param == "memory" else EventStore()
    return Repository(SnapshottedTask, store)


def saved_task(repo: Repository[Any], renames: int, tenant_id: str | None = None) -> Any:
    """A task saved one event at a time: created, then ``renames`` renames."""
    task = repo.aggregate_class.create("t0", tenant_id=tenant_id)
    repo.save(task)
    for n in range(1, renames + 1):
        task.rename(f"t{n}")
        repo.save(task)
    return task


def tamper(repo: Repository[Any], task_id: UUID, **changes: Any) -> SnapshotRecord:
    """Overwrite the stored snapshot: ``state`` keys are merged, other fields replaced."""
    record = repo.snapshot_store.load("Task", task_id)
    assert record is not None
    state = {**record.state, **changes.pop("state", {})}
    fields = {**record.__dict__, "state": state, **changes}
    repo.snapshot_store.save(SnapshotRecord(**fields))
    return record


def test_snapshots_are_taken_every_n_events(snap_repo: Repository[SnapshottedTask]) -> None:
    task = saved_task(snap_repo, 3)  # version 4: no snapshot yet
    assert snap_repo.snapshot_store.load("Task", task.id) is None
    task.rename("t4")
    snap_repo.save(task)  # version 5
    record = snap_repo.snapshot_store.load("Task", task.id)
    assert record is not None
    assert (record.version, record.schema_version, record.aggregate_type) == (5, 1, "Task")
    assert record.state == {
        "title": "t4",
        "done": False,
        "renames": 4,
        "history": ["t0", "t1", "t2", "t3", "t4"],
    }
    for n in range(5, 9):
        task.rename(f"t{n}")
        snap_repo.save(task)  # versions 6..9: not due yet
    assert snap_repo.snapshot_store.load("Task", task.id).version == 5  # type: ignore[union-attr]
    task.rename("t9")
    task.complete()
    snap_repo.save(task)  # versions 10-11 in one save
    record = snap_repo.snapshot_store.load("Task", task.id)
    assert record is not None
    assert (record.version, record.state["done"]) == (11, True)


def test_a_snapshot_is_used_for_loading(snap_repo: Repository[SnapshottedTask]) -> None:
    task = saved_task(snap_repo, 6)  # snapshot at 5, events 6 and 7 after it
    tamper(snap_repo, task.id, state={"renames": 100})
    loaded = snap_repo.load(task.id)
    # 100 from the snapshot, +2 from the two events replayed after it.
    assert (loaded.renames, loaded.title, loaded.version) == (102, "t6", 7)
    # A class without snapshots never reads them.
    assert Repository(Task, snap_repo.store).load(task.id).renames == 6


def test_snapshots_of_another_schema_version_are_ignored_and_replaced(
    snap_repo: Repository[SnapshottedTask],
) -> None:
    task = saved_task(snap_repo, 6)
    tamper(snap_repo, task.id, state={"renames": 100})
    v2 = Repository(SnapshottedTaskV2, snap_repo.store, snapshot_store=snap_repo._snapshot_store)
    loaded = v2.load(task.id)
    assert (loaded.renames, loaded.version) == (6, 7)  # rebuilt from the events
    loaded.complete()
    v2.save(loaded)  # 8 events since the last *usable* snapshot: a fresh one is due
    record = snap_repo.snapshot_store.load("Task", task.id)
    assert record is not None
    assert (record.version, record.schema_version, record.state["renames"]) == (8, 2, 6)
    # And now it is the version 1 class that ignores the version 2 snapshot.
    tamper(snap_repo, task.id, state={"renames": 100})
    assert snap_repo.load(task.id).renames == 6


@pytest.mark.parametrize(
    "changes",
    [
        {"state": {"renames": "many"}},  # wrong type
        {"state": {"colour": "red"}},  # a field the class does not have
        {"state": {"history": None}},  # invalid
        {"version": 99},  # a version the stream does not hold
    ],
    ids=["wrong-type", "unknown-field", "invalid", "version-not-in-stream"],
)
def test_snapshots_that_do_not_load_are_ignored(
    snap_repo: Repository[SnapshottedTask],
    changes: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    task = saved_task(snap_repo, 6)
    tamper(snap_repo, task.id, **changes)
    with caplog.at_level(logging.WARNING, logger="django_eventsource.aggregates"):
        loaded = snap_repo.load(task.id)
    assert (loaded.renames, loaded.title, loaded.version) == (6, "t6", 7)
    assert loaded.history == [f"t{n}" for n in range(7)]
    assert "Ignoring the snapshot" in caplog.text


def test_a_missing_snapshot_field_is_ignored(snap_repo: Repository[SnapshottedTask]) -> None:
    task = saved_task(snap_repo, 5)
    record = snap_repo.snapshot_store.load("Task", task.id)
    assert record is not None
    state = dict(record.state)
    del state["history"]
    snap_repo.snapshot_store.save(SnapshotRecord(**{**record.__dict__, "state": state}))
    assert snap_repo.load(task.id).history == [f"t{n}" for n in range(6)]


def test_snapshots_are_per_tenant(snap_repo: Repository[SnapshottedTask]) -> None:
    task = saved_task(snap_repo, 5, tenant_id="acme")
    assert snap_repo.snapshot_store.load("Task", task.id) is None
    record = snap_repo.snapshot_store.load("Task", task.id, tenant_id="acme")
    assert record is not None
    assert record.tenant_id == "acme"
    assert snap_repo.load(task.id, tenant_id="acme").title == "t5"


def test_uuid_and_datetime_state_round_trips_through_a_snapshot() -> None:
    class Stamped(AggregateRoot):
        aggregate_type = "Task"
        snapshot_every = 1

        owner: UUID | None = None
        created_at: datetime | None = None
        tags: set[str] = set()  # noqa: RUF012

        @applies(TaskCreated)
        def _created(self, event: TaskCreated) -> None:
            self.owner = event.event_id
            self.created_at = event.occurred_at
            self.tags = {event.title, "x"}

    repo = Repository(Stamped, InMemoryEventStore())
    item = Stamped(uuid4())
    event = item.record(TaskCreated, title="t")
    repo.save(item)
    assert repo.snapshot_store.load("Task", item.id).state["owner"] == str(event.event_id)  # type: ignore[union-attr]
    loaded = repo.load(item.id)
    assert (loaded.owner, loaded.created_at, loaded.tags) == (
        event.event_id,
        event.occurred_at,
        {"t", "x"},
    )


# Transactions and inline projections (EventStore) -------------------------------------------


def test_save_runs_inline_projections_in_its_transaction(store: EventStore) -> None:
    repo = Repository(Task, store)
    task = Task.create("indexed", tenant_id="acme")
    task.rename("renamed")
    [created, _] = repo.save(task)
    row = TaskIndex.objects.get(task_id=task.id)
    # The inline task_index projection handles TaskCreated only; it ran inside the save.
    assert (row.title, row.tenant_id, row.last_event_version, row.last_event_position) == (
        "indexed",
        "acme",
        1,
        created.position,
    )

    class Abort(Exception):
        pass

    other = SnapshottedTask.create("rolled back")
    for n in range(4):
        other.rename(f"r{n}")  # 5 events: a snapshot is due
    snap_repo = Repository(SnapshottedTask, store)
    with suppress(Abort), transaction.atomic():
        snap_repo.save(other)
        seen_inside = (
            TaskIndex.objects.filter(task_id=other.id).exists(),
            Snapshot.objects.filter(aggregate_id=other.id).exists(),
            Event.objects.filter(aggregate_id=other.id).count(),
        )
        raise Abort
    assert seen_inside == (True, True, 5)
    assert not TaskIndex.objects.filter(task_id=other.id).exists()
    assert not Snapshot.objects.filter(aggregate_id=other.id).exists()
    assert not Event.objects.filter(aggregate_id=other.id).exists()


def test_a_failing_inline_projection_fails_the_save(store: EventStore) -> None:
    repo = Repository(SnapshottedTask, store)
    task = SnapshottedTask.create("inline-boom")
    for n in range(5):
        task.rename(f"r{n}")  # a snapshot is due too
    with pytest.raises(ProjectionError, match="task_index"):
        repo.save(task)
    assert store.stream_version(task.id) == 0
    assert not Snapshot.objects.filter(aggregate_id=task.id).exists()
    assert not TaskIndex.objects.filter(task_id=task.id).exists()
    assert (len(task.uncommitted_events), task.committed_version) == (6, 0)


def test_the_snapshot_row_is_written_with_the_append(store: EventStore) -> None:
    repo = Repository(SnapshottedTask, store)
    task = saved_task(repo, 4)
    row = Snapshot.objects.get(aggregate_id=task.id)
    assert (row.aggregate_type, row.version, row.schema_version, row.tenant_id) == (
        "Task",
        5,
        1,
        "",
    )
    assert row.state["title"] == "t4"
    assert isinstance(repo.snapshot_store, DatabaseSnapshotStore)
    assert repo.snapshot_store.using == store.using


def test_in_memory_snapshots_over_the_database_wait_for_the_commit(
    store: EventStore, django_capture_on_commit_callbacks: Any
) -> None:
    memory = InMemorySnapshotStore()
    repo = Repository(SnapshottedTask, store, snapshot_store=memory)
    task = SnapshottedTask.create("t")
    for n in range(4):
        task.rename(f"r{n}")

    class Abort(Exception):
        pass

    with suppress(Abort), transaction.atomic():
        repo.save(task)
        raise Abort
    assert memory.load("Task", task.id) is None  # rolled back: never stored

    task = SnapshottedTask.create("t")
    for n in range(4):
        task.rename(f"r{n}")
    with django_capture_on_commit_callbacks(execute=True):
        repo.save(task)
    assert memory.load("Task", task.id).version == 5  # type: ignore[union-attr]


def test_snapshots_must_share_the_events_database(store: EventStore) -> None:
    repo = Repository(SnapshottedTask, store, snapshot_store=DatabaseSnapshotStore("other"))
    task = SnapshottedTask.create("t")
    for n in range(4):
        task.rename(f"r{n}")
    with pytest.raises(ImproperlyConfigured, match="share the append's transaction"):
        repo.save(task)
    assert store.stream_version(task.id) == 0


# Async twins --------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("kind", ["memory", "database"])
def test_async_twins(kind: str) -> None:
    store = InMemoryEventStore() if kind == "memory" else EventStore()
    repo = Repository(SnapshottedTask, store)

    async def scenario() -> tuple[SnapshottedTask, SnapshottedTask, list[int]]:
        task = SnapshottedTask.create("a")
        stored = await repo.asave(task)
        assert [s.aggregate_version for s in stored] == [1]
        loaded = await repo.aload(task.id)
        with pytest.raises(AggregateNotFound):
            await repo.aload(uuid4())
        calls: list[int] = []

        async def rename(aggregate: SnapshottedTask) -> None:
            calls.append(aggregate.version)
            if len(calls) == 1:
                competitor = await repo.aload(task.id)
                competitor.rename("competitor")
                await repo.asave(competitor)
            aggregate.rename(f"{aggregate.title}!")

        updated = await repo.aupdate(task.id, rename)
        # A plain function works too.
        updated = await repo.aupdate(task.id, lambda t: [t.rename(f"r{n}") for n in range(3)])
        return loaded, updated, calls

    loaded, updated, calls = run_async(scenario())
    assert (loaded.title, loaded.version) == ("a", 1)
    assert calls == [1, 2]
    assert (updated.title, updated.version) == ("r2", 6)
    assert repo.snapshot_store.load("Task", updated.id).version == 6  # type: ignore[union-attr]
    assert stream_titles(store, updated.id)[1:3] == [
        (2, "TaskRenamed", "competitor"),
        (3, "TaskRenamed", "competitor!"),
    ]

"""Projections over the test app's read models: routing, embedded checkpoints (ADR-016),
gap detection, failures that leave nothing half-written, catch-up, inline projections and
tenants."""

from __future__ import annotations

from contextlib import suppress
from typing import Any
from uuid import UUID, uuid4

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction

from django_eventsource import (
    DatabaseCheckpointStore,
    DeclarativeProjection,
    EventGapError,
    EventStore,
    InMemoryCheckpointStore,
    InMemoryEventStore,
    ProjectionError,
    catch_up,
    handles,
)
from django_eventsource.models import Event, ProjectionState
from tests.factories import task_history
from tests.fold import fold_task_board, task_board_rows
from tests.helpers import run_async as run
from tests.testapp.events import Counted, TaskCompleted, TaskCreated, TaskRenamed
from tests.testapp.models import TaskIndex, TaskSummary, TenantStats
from tests.testapp.projections import TaskBoard, TaskIndexProjection, TenantStatsProjection

# On PostgreSQL read_all() only returns committed events (its ordering horizon excludes
# transactions still in progress, the test's own included): commit for real.
pytestmark = pytest.mark.django_db(transaction=True)


def summary(task: UUID, tenant_id: str = "") -> dict[str, Any]:
    row = TaskSummary.objects.get(task_id=task, tenant_id=tenant_id)
    return {
        "title": row.title,
        "done": row.done,
        "renames": row.renames,
        "events_applied": row.events_applied,
        "last_event_version": row.last_event_version,
        "last_event_position": row.last_event_position,
        "last_event_id": row.last_event_id,
    }


def lifecycle(store: EventStore, title: str = "A", tenant_id: str | None = None) -> list[Any]:
    """created v1, renamed v2, completed v3 of one new task."""
    task = uuid4()
    return store.append(
        task,
        [
            TaskCreated(aggregate_id=task, title=title, tenant_id=tenant_id),
            TaskRenamed(aggregate_id=task, title=f"{title}2", tenant_id=tenant_id),
            TaskCompleted(aggregate_id=task, tenant_id=tenant_id),
        ],
    )


def gap_error(exc: BaseException) -> EventGapError:
    """The EventGapError raised, or chained as the cause of the handler's ProjectionError."""
    if isinstance(exc, ProjectionError):
        assert isinstance(exc.__cause__, EventGapError), exc
        return exc.__cause__
    assert isinstance(exc, EventGapError), exc
    return exc


# Routing ----------------------------------------------------------------------------------


def test_handle_routes_by_event_type(store: EventStore) -> None:
    created, renamed, completed = lifecycle(store, "Route")
    task = created.aggregate_id
    board = TaskBoard()

    assert board.handle(created) is True
    assert summary(task)["title"] == "Route"
    assert board.handle(renamed) is True
    assert (summary(task)["title"], summary(task)["renames"]) == ("Route2", 1)
    assert board.handle(completed) is True
    row = summary(task)
    assert row["done"] is True
    assert row["events_applied"] == 3
    assert row["last_event_version"] == 3
    assert row["last_event_position"] == completed.position
    assert row["last_event_id"] == completed.event_id


def test_handle_ignores_unhandled_types(store: EventStore) -> None:
    counter = uuid4()
    [counted] = store.append(counter, [Counted(aggregate_id=counter, writer=1, seq=1)])
    created, renamed, _completed = lifecycle(store)
    board, stats = TaskBoard(), TenantStatsProjection()

    assert board.handle(counted) is False
    assert TaskSummary.objects.count() == 0
    assert stats.handle(renamed) is False
    assert TenantStats.objects.count() == 0
    assert board.handled_types() == {"TaskCreated", "TaskRenamed", "TaskCompleted"}
    assert stats.handled_types() == {"TaskCreated", "TaskCompleted"}
    assert stats.handle(created) is True
    assert TenantStats.objects.get(tenant_id="").tasks == 1


def test_two_handlers_for_one_type_fail_at_class_creation() -> None:
    with pytest.raises(
        ImproperlyConfigured, match=r"two handlers for 'TaskCreated': a\(\) and b\(\)"
    ):

        class Twice(DeclarativeProjection):  # no name: never registered
            @handles(TaskCreated)
            def a(self, event: TaskCreated) -> None: ...

            @handles("TaskCreated")
            def b(self, event: TaskCreated) -> None: ...


def test_a_subclass_inherits_and_overrides_handlers() -> None:
    class Base(DeclarativeProjection):
        @handles(TaskCreated, TaskRenamed)
        def first(self, event: TaskCreated) -> None: ...

    class Child(Base):
        @handles(TaskRenamed)
        def second(self, event: TaskRenamed) -> None: ...

    assert Child._handlers == {"TaskCreated": "first", "TaskRenamed": "second"}
    assert Base._handlers == {"TaskCreated": "first", "TaskRenamed": "first"}


def test_handle_accepts_the_typed_event(store: EventStore) -> None:
    task = uuid4()
    [stored] = store.append(task, [TaskCreated(aggregate_id=task, title="typed")])
    assert TaskBoard().handle(stored.event) is True
    assert summary(task)["title"] == "typed"
    assert summary(task)["last_event_position"] == stored.position


def test_ahandle(store: EventStore) -> None:
    created, renamed, _ = lifecycle(store, "Async")
    counter = uuid4()
    [counted] = store.append(counter, [Counted(aggregate_id=counter)])
    board = TaskBoard()

    async def scenario() -> list[bool]:
        return [
            await board.ahandle(created),
            await board.ahandle(renamed),
            await board.ahandle(counted),
        ]

    assert run(scenario()) == [True, True, False]
    row = summary(created.aggregate_id)
    assert (row["title"], row["renames"], row["events_applied"]) == ("Async2", 1, 2)


# Idempotence (embedded checkpoints) -------------------------------------------------------


def test_applying_the_same_event_twice_changes_nothing(store: EventStore) -> None:
    created, renamed, _ = lifecycle(store, "Twice")
    task = created.aggregate_id
    board = TaskBoard()

    board.handle(created)
    once = summary(task)
    assert board.handle(created) is True  # handled, but the row already holds it
    assert summary(task) == once
    assert once["events_applied"] == 1

    board.handle(renamed)
    board.handle(renamed)
    board.handle(created)
    row = summary(task)
    assert (row["events_applied"], row["renames"], row["title"]) == (2, 1, "Twice2")
    assert row["last_event_version"] == 2


def test_replaying_from_an_older_checkpoint_changes_nothing(store: EventStore) -> None:
    task_history(store, tasks=8, seed=3)
    board = TaskBoard()
    first = catch_up(board, event_store=store, batch_size=5)
    assert first.position == store.head_position()
    rows = task_board_rows()
    assert rows == fold_task_board(store)

    DatabaseCheckpointStore().save("task_board", 0)
    again = catch_up(TaskBoard(), event_store=store, batch_size=3)
    assert again.start_position == 0
    assert again.events_read == first.events_read
    assert task_board_rows() == rows

    middle = store.read_all(limit=first.events_read // 2).last_position
    DatabaseCheckpointStore().save("task_board", middle)
    catch_up(TaskBoard(), event_store=store)
    assert task_board_rows() == rows


def test_rows_checkpointed_by_position_skip_events_at_or_before_it(store: EventStore) -> None:
    first, _, first_done = lifecycle(store, "one")
    second, _, _ = lifecycle(store, "two")
    assert first.position < first_done.position < second.position
    stats = TenantStatsProjection()

    stats.handle(second)
    row = TenantStats.objects.get(tenant_id="")
    assert (row.tasks, row.completed, row.last_event_position) == (1, 0, second.position)

    stats.handle(second)  # at the row's position
    stats.handle(first)  # before it
    stats.handle(first_done)  # before it
    row.refresh_from_db()
    assert (row.tasks, row.completed, row.last_event_position) == (1, 0, second.position)

    task = uuid4()
    [third] = store.append(task, [TaskCreated(aggregate_id=task, title="three")])
    stats.handle(third)
    row.refresh_from_db()
    assert (row.tasks, row.last_event_position, row.last_event_id) == (
        2,
        third.position,
        third.event_id,
    )


def test_rows_checkpointed_by_position_refuse_an_unstored_event() -> None:
    event = TaskCreated(aggregate_id=uuid4(), title="never stored")
    with pytest.raises(ProjectionError) as info:
        TenantStatsProjection().handle(event)
    assert isinstance(info.value.__cause__, ValueError)
    assert "has not been stored" in str(info.value.__cause__)
    assert not TenantStats.objects.exists()


# Gaps -------------------------------------------------------------------------------------


def test_a_gap_in_a_stream_is_detected_and_nothing_is_written(store: EventStore) -> None:
    created, _renamed, completed = lifecycle(store, "Gap")
    task = created.aggregate_id
    board = TaskBoard()
    board.handle(created)
    before = summary(task)

    with pytest.raises((EventGapError, ProjectionError)) as info:
        board.handle(completed)
    gap = gap_error(info.value)
    assert gap.aggregate_id == task
    assert (gap.held_version, gap.incoming_version) == (1, 3)
    assert gap.model == "TaskSummary"
    assert summary(task) == before


def test_a_gap_is_detected_in_the_in_memory_store() -> None:
    memory = InMemoryEventStore(inline_projections=False)
    task = uuid4()
    created, _renamed, completed = memory.append(
        task,
        [
            TaskCreated(aggregate_id=task, title="m"),
            TaskRenamed(aggregate_id=task, title="m2"),
            TaskCompleted(aggregate_id=task),
        ],
    )
    board = TaskBoard()
    board.event_store = memory
    board.handle(created)
    with pytest.raises((EventGapError, ProjectionError)) as info:
        board.handle(completed)
    assert gap_error(info.value).incoming_version == 3
    assert summary(task)["last_event_version"] == 1


class CreatedAndCompleted(DeclarativeProjection):
    """Version-checkpointed rows, but no handler for TaskRenamed (and no name: unregistered)."""

    models = (TaskSummary,)

    @handles(TaskCreated)
    def created(self, event: TaskCreated) -> None:
        if row := self.row(TaskSummary, event, task_id=event.aggregate_id):
            row.title = event.title

    @handles(TaskCompleted)
    def completed(self, event: TaskCompleted) -> None:
        if row := self.row(TaskSummary, event, task_id=event.aggregate_id):
            row.done = True


def test_skipping_an_unhandled_type_is_no_gap(store: EventStore) -> None:
    created, _renamed, completed = lifecycle(store, "NoGap")
    projection = CreatedAndCompleted()
    assert projection.handle(created) is True
    assert projection.handle(completed) is True
    row = summary(created.aggregate_id)
    assert (row["title"], row["done"], row["last_event_version"]) == ("NoGap", True, 3)


def test_a_gap_over_a_handled_type_is_still_detected_by_a_partial_projection(
    store: EventStore,
) -> None:
    task = uuid4()
    created, _, _, done = store.append(
        task,
        [
            TaskCreated(aggregate_id=task, title="a"),
            TaskRenamed(aggregate_id=task, title="b"),
            TaskCompleted(aggregate_id=task),
            TaskCompleted(aggregate_id=task),
        ],
    )
    projection = CreatedAndCompleted()
    projection.handle(created)
    with pytest.raises((EventGapError, ProjectionError)) as info:
        projection.handle(done)  # skips v3, a TaskCompleted it handles
    assert (gap_error(info.value).held_version, gap_error(info.value).incoming_version) == (1, 4)


# Handler errors ---------------------------------------------------------------------------


def test_a_failing_handler_stops_catch_up_just_before_its_event(store: EventStore) -> None:
    checkpoints = DatabaseCheckpointStore()
    earlier = lifecycle(store, "earlier")
    result = catch_up(TaskBoard(), event_store=store)
    assert result.position == earlier[-1].position
    rows_before = task_board_rows()

    good = lifecycle(store, "good")
    task = good[0].aggregate_id
    [bad] = store.append(task, [TaskRenamed(aggregate_id=task, title="boom")])
    lifecycle(store, "after")

    with pytest.raises(ProjectionError) as info:
        catch_up(TaskBoard(), event_store=store, batch_size=100)
    error = info.value
    assert error.projection == "task_board"
    assert error.event_id == bad.event_id
    assert error.event_type == "TaskRenamed"
    assert error.position == bad.position
    assert error.tenant_id is None
    assert isinstance(error.__cause__, ValueError)
    assert error.cause is error.__cause__
    assert "task_board" in str(error)
    assert "boom" in str(error)

    # The worker's loop: the good events before it are applied and checkpointed, the
    # failing event's transaction rolled back, and the projection is failed.
    assert task_board_rows() != rows_before
    assert checkpoints.load("task_board") == store.read_all().events[-1 - 3 - 1].position
    state = ProjectionState.objects.get(name="task_board")
    assert (state.status, state.failed_event_position) == ("failed", bad.position)


def test_a_failing_handler_via_handle_writes_nothing(store: EventStore) -> None:
    created, _, _ = lifecycle(store, "h")
    task = created.aggregate_id
    board = TaskBoard()
    board.handle(created)
    before = summary(task)
    [bad] = store.append(task, [TaskRenamed(aggregate_id=task, title="boom")], expected_version=3)
    with pytest.raises(ProjectionError) as info:
        board.handle(bad)
    assert info.value.position == bad.position
    assert summary(task) == before


# Catch-up ---------------------------------------------------------------------------------


def test_catch_up_resumes_from_its_checkpoint(store: EventStore) -> None:
    task_history(store, tasks=12, seed=1)
    head = store.head_position()
    total = len(store.read_all())
    checkpoints = DatabaseCheckpointStore()

    partial = catch_up(TaskBoard(), event_store=store, batch_size=4, max_events=10)
    assert (partial.events_read, partial.batches) == (10, 3)
    tenth = store.read_all(limit=10).last_position
    assert partial.position == tenth
    assert checkpoints.load("task_board") == tenth

    rest = catch_up(TaskBoard(), event_store=store, batch_size=4)
    assert rest.start_position == tenth
    assert rest.events_read == total - 10
    assert rest.position == head
    assert checkpoints.load("task_board") == head
    assert task_board_rows() == fold_task_board(store)

    idle = catch_up(TaskBoard(), event_store=store)
    assert (idle.events_read, idle.batches, idle.position) == (0, 0, head)


def test_catch_up_reports_progress(store: EventStore) -> None:
    task_history(store, tasks=3, seed=2)
    calls: list[tuple[str, dict[str, Any]]] = []
    result = catch_up(
        TaskBoard(),
        event_store=store,
        batch_size=2,
        progress_callback=lambda kind, **data: calls.append((kind, data)),
    )
    kinds = [kind for kind, _ in calls]
    assert kinds[0] == "start"
    assert kinds[-1] == "done"
    assert kinds.count("batch") == result.batches
    assert sum(data["events"] for kind, data in calls if kind == "batch") == result.events_read
    assert calls[-1][1]["result"] is result


def test_catch_up_with_in_memory_stores() -> None:
    memory = InMemoryEventStore(inline_projections=False)
    checkpoints = InMemoryCheckpointStore()
    task_history(memory, tasks=6, seed=4)
    result = catch_up(TaskBoard(), event_store=memory, checkpoint_store=checkpoints, batch_size=5)
    assert result.position == memory.head_position()
    assert checkpoints.load("task_board") == memory.head_position()
    assert not ProjectionState.objects.exists()
    assert task_board_rows() == fold_task_board(memory)


def test_tenant_stats_fold(store: EventStore) -> None:
    task_history(store, tasks=9, seed=5, tenants=("acme", "globex", None))
    catch_up(TenantStatsProjection(), event_store=store, batch_size=4)
    expected: dict[str, dict[str, int]] = {}
    for stored in store.read_all():
        row = expected.setdefault(stored.tenant_id or "", {"tasks": 0, "completed": 0})
        if stored.event_type == "TaskCreated":
            row["tasks"] += 1
        elif stored.event_type == "TaskCompleted":
            row["completed"] += 1
    actual = {
        row.tenant_id: {"tasks": row.tasks, "completed": row.completed}
        for row in TenantStats.objects.all()
    }
    assert actual == expected


# Inline projections -----------------------------------------------------------------------


def test_inline_projection_writes_in_the_appends_transaction(store: EventStore) -> None:
    assert TaskIndexProjection.inline
    task = uuid4()
    [stored] = store.append(task, [TaskCreated(aggregate_id=task, title="inline")])
    row = TaskIndex.objects.get(task_id=task)
    assert (row.title, row.last_event_position, row.last_event_version) == (
        "inline",
        stored.position,
        1,
    )

    class Abort(Exception):
        pass

    other = uuid4()
    with suppress(Abort), transaction.atomic():
        store.append(other, [TaskCreated(aggregate_id=other, title="rolled back")])
        seen_inside = TaskIndex.objects.filter(task_id=other).exists()
        raise Abort
    assert seen_inside
    assert not TaskIndex.objects.filter(task_id=other).exists()
    assert not Event.objects.filter(aggregate_id=other).exists()


def test_a_failing_inline_projection_stores_nothing(store: EventStore) -> None:
    head = store.head_position()
    task = uuid4()
    event = TaskCreated(aggregate_id=task, title="inline-boom")
    with pytest.raises(ProjectionError) as info:
        store.append(task, [event, TaskRenamed(aggregate_id=task, title="ok")])
    error = info.value
    assert error.projection == "task_index"
    assert error.event_id == event.event_id
    assert error.event_type == "TaskCreated"
    assert isinstance(error.__cause__, RuntimeError)
    assert "task_index" in str(error)
    assert str(event.event_id) in str(error)

    assert store.head_position() == head
    assert not Event.objects.filter(aggregate_id=task).exists()
    assert store.stream_version(task) == 0
    assert not TaskIndex.objects.filter(task_id=task).exists()
    # The stream is still empty: the same append with a good title succeeds.
    store.append(task, [TaskCreated(aggregate_id=task, title="fine")], expected_version=0)
    assert TaskIndex.objects.get(task_id=task).title == "fine"


def test_a_failing_inline_projection_in_the_in_memory_store() -> None:
    memory = InMemoryEventStore()
    task = uuid4()
    with pytest.raises(ProjectionError) as info:
        memory.append(task, [TaskCreated(aggregate_id=task, title="inline-boom")])
    assert info.value.projection == "task_index"
    assert memory.head_position() == 0
    assert not TaskIndex.objects.filter(task_id=task).exists()


def test_inline_projections_can_be_switched_off(store: EventStore) -> None:
    quiet = EventStore(inline_projections=False)
    task = uuid4()
    quiet.append(task, [TaskCreated(aggregate_id=task, title="inline-boom")])
    assert Event.objects.filter(aggregate_id=task).exists()
    assert not TaskIndex.objects.filter(task_id=task).exists()


# Tenants ----------------------------------------------------------------------------------


def test_catch_up_per_tenant(store: EventStore) -> None:
    task_history(store, tasks=10, seed=6, tenants=("acme", "globex"))
    checkpoints = DatabaseCheckpointStore()

    acme = catch_up(TaskBoard(), event_store=store, tenant_id="acme", batch_size=3)
    assert acme.tenant_id == "acme"
    assert set(TaskSummary.objects.values_list("tenant_id", flat=True)) == {"acme"}
    assert task_board_rows("acme") == fold_task_board(store, tenant_id="acme")
    last_acme = store.read_all(tenant_id="acme").last_position
    assert checkpoints.load("task_board", tenant_id="acme") == last_acme
    assert checkpoints.load("task_board", tenant_id="globex") is None
    assert checkpoints.load("task_board") is None
    assert list(ProjectionState.objects.values_list("name", "tenant_id")) == [
        ("task_board", "acme")
    ]

    catch_up(TaskBoard(), event_store=store, tenant_id="globex")
    assert task_board_rows("globex") == fold_task_board(store, tenant_id="globex")
    assert task_board_rows("acme") == fold_task_board(store, tenant_id="acme")
    assert task_board_rows() == fold_task_board(store)

    globex_rows = task_board_rows("globex")
    TaskBoard()._truncate_read_models(tenant_id="acme")
    assert not TaskSummary.objects.filter(tenant_id="acme").exists()
    assert task_board_rows("globex") == globex_rows


def test_truncate_without_a_tenant_deletes_every_row(store: EventStore) -> None:
    task_history(store, tasks=4, seed=7, tenants=("acme", "globex"))
    catch_up(TaskBoard(), event_store=store)
    assert TaskSummary.objects.count() == 4
    TaskBoard()._truncate_read_models()
    assert not TaskSummary.objects.exists()


def test_the_same_stream_id_in_two_tenants_has_two_rows(store: EventStore) -> None:
    task = uuid4()
    for tenant in ("acme", "globex"):
        store.append(task, [TaskCreated(aggregate_id=task, title=tenant, tenant_id=tenant)])
    store.append(task, [TaskCompleted(aggregate_id=task, tenant_id="globex")])
    catch_up(TaskBoard(), event_store=store)
    assert summary(task, "acme")["title"] == "acme"
    assert summary(task, "acme")["done"] is False
    assert summary(task, "globex")["done"] is True
    assert summary(task, "globex")["last_event_version"] == 2


class SneakyStats(DeclarativeProjection):
    """Writes TenantStats (tenant_stats' model) without declaring it."""

    @handles(TaskCreated)
    def created(self, event: TaskCreated) -> None:
        if row := self.row(TenantStats, event, tenant_id=event.tenant_id or ""):
            row.tasks += 1


def test_row_refuses_a_model_the_projection_does_not_declare() -> None:
    """An undeclared model escapes the system check for two projections writing one model
    (E009) and the rebuild's reset: the second writer found the rows past its events and
    silently applied nothing. row() now refuses it, so the run fails on the first event
    with a message that says what to declare, and no row is written."""
    store = EventStore()
    task_history(store, tasks=2, seed=41)
    with pytest.raises(ProjectionError) as info:
        catch_up(SneakyStats(), event_store=store)
    cause = info.value.__cause__
    assert isinstance(cause, ImproperlyConfigured)
    assert "writes testapp.TenantStats through row() but does not declare it" in str(cause)
    assert not TenantStats.objects.exists()

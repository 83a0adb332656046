"""A read-model row the database refuses (a value too long for its column, a constraint) is
the event's failure to apply, as a handler's error is: an inline projection raises
``ProjectionError`` and rolls the append back, a runner hands it to its error policy.

A string longer than a ``CharField``'s ``max_length`` is refused by the library before the
write, on both databases (PostgreSQL would raise ``DataError``, SQLite would store it).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from uuid import uuid4

import pytest
from django.db import IntegrityError

from django_eventsource import (
    DeclarativeProjection,
    EventStore,
    ProjectionError,
    ValueTooLong,
    handles,
    projection_registry,
)
from django_eventsource.deadletters import retry
from django_eventsource.models import DeadLetter, Event, ProjectionState
from django_eventsource.runner import ProjectionRunner
from tests.helpers import run_async, settled
from tests.testapp.events import TaskCreated, TaskRenamed
from tests.testapp.models import TaskIndex, TaskSummary
from tests.testapp.projections import TaskBoard

pytestmark = pytest.mark.django_db(transaction=True)

LONG = "t" * 101  # TaskIndex.tenant_id and TaskSummary.tenant_id: max_length=100


def assert_nothing_stored(task: Any) -> None:
    assert not Event.objects.filter(aggregate_id=task).exists()
    assert not TaskIndex.objects.filter(task_id=task).exists()


def test_an_inline_row_too_long_for_its_column_rolls_the_append_back() -> None:
    store = EventStore()
    head = store.head_position()
    task = uuid4()
    created = TaskCreated(aggregate_id=task, title="ok", tenant_id=LONG)
    with pytest.raises(ProjectionError) as info:
        store.append(task, [created, TaskRenamed(aggregate_id=task, title="x", tenant_id=LONG)])
    error = info.value
    assert (error.projection, error.event_id, error.event_type) == (
        "task_index",
        created.event_id,
        "TaskCreated",
    )
    assert error.position is not None  # it had one inside the rolled-back transaction
    assert error.tenant_id == LONG
    cause = error.__cause__
    assert isinstance(cause, ValueTooLong)
    assert (cause.model, cause.field, cause.max_length, cause.length) == (
        "TaskIndex",
        "tenant_id",
        100,
        101,
    )
    assert str(error).startswith(
        f"Projection 'task_index' failed on event TaskCreated {created.event_id} at position "
    )
    assert "TaskIndex.tenant_id would hold 101 characters, but its max_length is 100" in str(error)
    assert store.head_position() == head
    assert_nothing_stored(task)
    # The same append with a tenant id the column can hold goes through.
    store.append(task, [TaskCreated(aggregate_id=task, title="ok", tenant_id="t" * 100)])
    assert TaskIndex.objects.get(task_id=task).tenant_id == "t" * 100


def test_aappend_refuses_it_the_same_way() -> None:
    store = EventStore()
    task = uuid4()
    with pytest.raises(ProjectionError) as info:
        run_async(
            store.aappend(task, [TaskCreated(aggregate_id=task, title="ok", tenant_id=LONG)])
        )
    assert info.value.projection == "task_index"
    assert isinstance(info.value.__cause__, ValueTooLong)
    assert_nothing_stored(task)


class SecondIndexRow(DeclarativeProjection):
    """Inline: creates a second TaskIndex row for each created task (its lookup includes the
    title), which the (tenant_id, task_id) unique constraint refuses on both databases."""

    name = "zz_second_index_row"
    inline = True
    models = (TaskIndex,)

    @handles(TaskCreated)
    def created(self, event: TaskCreated) -> None:
        self.row(TaskIndex, event, task_id=event.aggregate_id, title="second")


projection_registry.unregister(SecondIndexRow.name)  # registered by its fixture only


@pytest.fixture
def second_index_row() -> Iterator[None]:
    projection_registry.register(SecondIndexRow)
    try:
        yield
    finally:
        projection_registry.unregister(SecondIndexRow.name)


@pytest.mark.usefixtures("second_index_row")
def test_an_inline_row_the_database_refuses_is_a_projection_error() -> None:
    store = EventStore()
    task = uuid4()
    renamed = TaskRenamed(aggregate_id=task, title="r")
    created = TaskCreated(aggregate_id=task, title="first")
    with pytest.raises(ProjectionError) as info:
        store.append(task, [created, renamed])
    error = info.value
    # The rows of the refused statement were the created event's alone: it is named.
    assert (error.projection, error.event_id, error.event_type) == (
        "zz_second_index_row",
        created.event_id,
        "TaskCreated",
    )
    assert isinstance(error.__cause__, IntegrityError)
    assert str(error.__cause__) in str(error)
    assert_nothing_stored(task)


def test_a_runner_hands_a_row_too_long_to_its_error_policy() -> None:
    store = EventStore(inline_projections=False)  # the runner's refusal, not the append's
    good = uuid4()
    store.append(good, [TaskCreated(aggregate_id=good, title="good")])
    bad = uuid4()
    [poison] = store.append(bad, [TaskCreated(aggregate_id=bad, title="bad", tenant_id=LONG)])
    settled(store)

    result = ProjectionRunner([TaskBoard()], batch_size=100).run_until_caught_up()

    assert result.failed == ["task_board"]
    state = ProjectionState.objects.get(name="task_board", tenant_id="")
    assert state.status == "failed"
    assert state.failed_event_position == poison.position
    assert "ValueTooLong: TaskSummary.tenant_id would hold 101 characters" in state.last_error
    assert list(TaskSummary.objects.values_list("title", flat=True)) == ["good"]


def test_a_runner_dead_letters_a_row_too_long(settings: Any) -> None:
    settings.EVENTSOURCE = {**settings.EVENTSOURCE, "ERROR_POLICY": "dead_letter"}
    store = EventStore(inline_projections=False)
    bad = uuid4()
    [poison] = store.append(bad, [TaskCreated(aggregate_id=bad, title="bad", tenant_id=LONG)])
    good = uuid4()
    store.append(good, [TaskCreated(aggregate_id=good, title="good")])
    settled(store)

    result = ProjectionRunner([TaskBoard()], batch_size=100).run_until_caught_up()

    assert not result.failed
    [letter] = DeadLetter.objects.filter(projection="task_board")
    assert letter.event_position == poison.position
    assert "ValueTooLong" in letter.error
    assert list(TaskSummary.objects.values_list("title", flat=True)) == ["good"]


def test_handle_refuses_it_as_a_projection_error() -> None:
    store = EventStore(inline_projections=False)
    bad = uuid4()
    [event] = store.append(bad, [TaskCreated(aggregate_id=bad, title="bad", tenant_id=LONG)])
    with pytest.raises(ProjectionError) as info:
        TaskBoard().handle(event)
    assert (info.value.event_id, info.value.position) == (event.event_id, event.position)
    assert isinstance(info.value.__cause__, ValueTooLong)
    assert not TaskSummary.objects.exists()


def test_a_dead_letter_retry_whose_row_is_refused_again_fails_again(settings: Any) -> None:
    """A retry writes the rows itself: a refused row is the event failing again (the letter
    stays, with the error), not a raw database error out of the retry."""
    settings.EVENTSOURCE = {**settings.EVENTSOURCE, "ERROR_POLICY": "dead_letter"}
    store = EventStore(inline_projections=False)
    bad = uuid4()
    [poison] = store.append(bad, [TaskCreated(aggregate_id=bad, title="bad", tenant_id=LONG)])
    settled(store)
    ProjectionRunner([TaskBoard()], batch_size=100).run_until_caught_up()
    [letter] = DeadLetter.objects.filter(projection="task_board")
    attempts = letter.attempts

    outcome = retry(letter, store)

    assert outcome.failed is not None and outcome.failed.event_position == poison.position
    assert f"Event #{poison.position} failed again" in outcome.reason
    assert "ValueTooLong" in outcome.failed.traceback
    letter.refresh_from_db()
    assert letter.resolved_at is None and letter.attempts == attempts + 1
    assert not TaskSummary.objects.exists()

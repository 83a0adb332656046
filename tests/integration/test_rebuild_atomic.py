"""``rebuild(atomic=True)`` / ``rebuild_projections --atomic``: readers never see a half-built
projection, and a rebuild that cannot finish changes nothing."""

from __future__ import annotations

from typing import Any
from uuid import uuid4

import pytest
from django.core.management import CommandError, call_command

from django_eventsource import (
    DatabaseCheckpointStore,
    DeadLetter,
    EventStore,
    ProjectionState,
    RebuildAborted,
    catch_up,
)
from django_eventsource.rebuild import rebuild
from tests.factories import task_history
from tests.fold import fold_task_board, task_board_rows
from tests.helpers import start_command
from tests.testapp.events import TaskCreated, TaskRenamed
from tests.testapp.models import TaskSummary
from tests.testapp.projections import TaskBoard

pytestmark = pytest.mark.django_db(transaction=True)


def corrupt_one_row() -> dict[Any, dict]:
    """Make the live rows differ from a fresh fold, so a rebuild's effect is visible."""
    row = TaskSummary.objects.order_by("pk").first()
    assert row is not None
    TaskSummary.objects.filter(pk=row.pk).update(title="corrupted")
    return task_board_rows()


def test_atomic_rebuild_replaces_the_rows_with_a_fresh_fold() -> None:
    store = EventStore()
    task_history(store, tasks=8, seed=3)
    catch_up(TaskBoard(), event_store=store)
    corrupt_one_row()
    call_command("rebuild_projections", "task_board", "--noinput", "--atomic", verbosity=0)
    assert task_board_rows() == fold_task_board(store)
    state = ProjectionState.objects.get(name="task_board")
    assert state.status == "idle"
    assert state.position == store.head_position()


def test_a_failing_event_rolls_the_whole_rebuild_back() -> None:
    store = EventStore()
    task_history(store, tasks=6, seed=4)
    catch_up(TaskBoard(), event_store=store)
    before = corrupt_one_row()
    checkpoint = DatabaseCheckpointStore().load("task_board")
    task = uuid4()
    store.append(task, [TaskCreated(aggregate_id=task, title="fine")])
    store.append(task, [TaskRenamed(aggregate_id=task, title="boom")])

    with pytest.raises(RebuildAborted, match=r"task_board.*boom.*previous rows") as info:
        rebuild(TaskBoard(), event_store=store, atomic=True)
    assert info.value.projection == "task_board"

    assert task_board_rows() == before  # not even the good events of the replay
    assert DatabaseCheckpointStore().load("task_board") == checkpoint
    state = ProjectionState.objects.get(name="task_board")
    assert state.status == "idle"
    assert state.last_error == ""
    assert not DeadLetter.objects.exists()

    with pytest.raises(CommandError, match="was rolled back"):
        call_command("rebuild_projections", "task_board", "--noinput", "--atomic", verbosity=0)
    assert task_board_rows() == before


def watch_rebuild(db_url: str, *flags: str) -> tuple[list[dict[Any, dict]], str]:
    """Run a slow rebuild in a real process and snapshot the rows until it exits."""
    flags = ("--batch-size", "5", *flags)
    process = start_command(
        db_url,
        *("rebuild_projections", "task_board", "--noinput", *flags),
        TESTAPP_HANDLER_SLEEP="0.004",
    )
    seen = []
    while process.poll() is None:
        seen.append(task_board_rows())  # one SELECT: a consistent snapshot
    _, err = process.communicate()
    assert process.returncode == 0, err
    seen.append(task_board_rows())
    return seen, err


@pytest.mark.slow
def test_readers_never_see_a_half_built_projection(child_db_url: str) -> None:
    store = EventStore()
    task_history(store, tasks=40, seed=5)
    catch_up(TaskBoard(), event_store=store)
    before = corrupt_one_row()
    expected = fold_task_board(store)

    seen, _ = watch_rebuild(child_db_url, "--atomic")

    assert len(seen) > 3, "the reader never looked while the rebuild ran"
    assert all(rows in (before, expected) for rows in seen), "a reader saw a half-built table"
    assert seen[0] == before and seen[-1] == expected


@pytest.mark.slow
def test_without_atomic_readers_see_the_projection_fill_up(child_db_url: str) -> None:
    """The control experiment: the check above does catch a half-built projection."""
    store = EventStore()
    task_history(store, tasks=40, seed=5)
    catch_up(TaskBoard(), event_store=store)
    before = corrupt_one_row()
    expected = fold_task_board(store)

    seen, _ = watch_rebuild(child_db_url)

    assert seen[-1] == expected
    assert any(rows not in (before, expected) for rows in seen)

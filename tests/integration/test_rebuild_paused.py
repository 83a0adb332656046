"""An operator's pause survives a rebuild of every kind (default, ``--atomic``, ``--shadow``):
the rows are rebuilt, the projection stays paused, its checkpoint where the rebuild ended.

A default or atomic rebuild of a paused projection made it ``idle`` (runners then applied it
again), while a shadow rebuild kept it paused."""

from __future__ import annotations

import signal
from io import StringIO
from typing import Any
from uuid import uuid4

import pytest
from django.core.management import call_command
from django.db.models import F

from django_eventsource import (
    EventStore,
    NotSupportedOnBackend,
    ProjectionState,
    RebuildAborted,
    control,
)
from django_eventsource.rebuild import plan_rebuild, rebuild
from django_eventsource.runner import ProjectionRunner
from tests.factories import task_history
from tests.fold import fold_task_board, task_board_rows
from tests.helpers import drop_shadow_schemas
from tests.testapp.events import TaskCreated, TaskRenamed
from tests.testapp.models import TaskIndex, TaskSummary
from tests.testapp.projections import TaskBoard, TaskIndexProjection

pytestmark = pytest.mark.django_db(transaction=True)

MODES = ["default", "atomic", "shadow"]


def row(name: str = "task_board") -> ProjectionState:
    return ProjectionState.objects.get(name=name, tenant_id="")


def paused_and_tampered(store: EventStore) -> None:
    """A task board caught up, then paused by an operator, whose rows need a rebuild."""
    task_history(store, tasks=6, renames=2, seed=31)
    ProjectionRunner([TaskBoard()]).run_until_caught_up()
    control.pause("task_board")
    TaskSummary.objects.update(renames=F("renames") + 100)


@pytest.fixture
def shadows(vendor: str) -> Any:
    if vendor == "postgresql":
        drop_shadow_schemas()
    yield
    if vendor == "postgresql":
        drop_shadow_schemas()


@pytest.mark.usefixtures("shadows")
@pytest.mark.parametrize("mode", MODES)
def test_a_rebuild_of_a_paused_projection_leaves_it_paused(mode: str, vendor: str) -> None:
    store = EventStore()
    paused_and_tampered(store)
    if mode == "shadow" and vendor != "postgresql":
        with pytest.raises(NotSupportedOnBackend):
            rebuild(TaskBoard(), shadow=True)
        assert row().status == "paused"  # refused, nothing changed
        return
    result = rebuild(TaskBoard(), atomic=mode == "atomic", shadow=mode == "shadow")
    assert not (result.failed or result.stopped or result.lost)
    assert task_board_rows() == fold_task_board(store)  # rebuilt
    after = row()
    assert after.status == "paused"  # the operator's pause survived
    assert (after.position, after.owner, after.suspended_rebuild) == (
        store.head_position(),
        "",
        False,
    )
    # Runners still skip it until the operator resumes it.
    skipped = ProjectionRunner([TaskBoard()]).run_until_caught_up()
    assert skipped.skipped_statuses == {"task_board": "paused"}
    control.resume("task_board")
    assert row().status == "idle"
    task_history(store, tasks=2, seed=32)
    ProjectionRunner([TaskBoard()]).run_until_caught_up()
    assert task_board_rows() == fold_task_board(store)


def test_while_it_rebuilds_a_paused_projection_stays_paused_in_the_middle_of_its_rebuild() -> None:
    store = EventStore()
    paused_and_tampered(store)
    seen: list[tuple[str, bool, str]] = []

    def progress(kind: str, **data: Any) -> None:
        if kind == "batch" and not seen:
            state = row()
            seen.append((state.status, state.suspended_rebuild, state.owner))

    rebuild(TaskBoard(), batch_size=2, progress_callback=progress)
    [(status, suspended, owner)] = seen
    assert (status, suspended) == ("paused", True)  # appends leave an inline one alone
    assert owner  # claimed by the rebuild: its batches pass the fence
    assert row().status == "paused"


def test_a_stopped_rebuild_of_a_paused_projection_stays_paused_and_the_next_one_resumes_it() -> (
    None
):
    store = EventStore()
    paused_and_tampered(store)

    def stop_at_the_first_batch(kind: str, **data: Any) -> None:
        if kind == "batch":
            signal.raise_signal(signal.SIGTERM)  # the rebuild's handler: stop after it

    result = rebuild(
        TaskBoard(),
        batch_size=2,
        progress_callback=stop_at_the_first_batch,
        install_signal_handlers=True,
    )
    assert result.stopped
    stopped = row()
    assert (stopped.status, stopped.suspended_rebuild, stopped.owner) == ("paused", True, "")
    assert 0 < (stopped.position or 0) < store.head_position()
    # Workers skip it; the status says it is half-built.
    assert ProjectionRunner([TaskBoard()]).run_until_caught_up().skipped == ["task_board"]
    status = StringIO()
    call_command("projection_status", "task_board", stdout=status)
    assert "task_board: paused in the middle of its rebuild" in status.getvalue()
    # The next rebuild resumes from the checkpoint (no reset) and leaves it paused.
    plan = plan_rebuild(TaskBoard())
    assert (plan.resuming, plan.position, plan.paused) == (True, stopped.position, True)
    kinds: list[tuple[str, Any]] = []
    rebuild(
        TaskBoard(),
        batch_size=2,
        progress_callback=lambda kind, **data: kinds.append((kind, data.get("position"))),
    )
    assert ("reset", None) not in kinds
    assert kinds[0] == ("start", stopped.position)
    assert task_board_rows() == fold_task_board(store)
    after = row()
    assert (after.status, after.suspended_rebuild, after.position) == (
        "paused",
        False,
        store.head_position(),
    )


def poison(store: EventStore) -> int:
    bad = uuid4()
    store.append(bad, [TaskCreated(aggregate_id=bad, title="ok")])
    [event] = store.append(bad, [TaskRenamed(aggregate_id=bad, title="boom")])
    return event.position


def test_a_paused_projection_whose_rebuild_fails_is_failed_with_its_error() -> None:
    """Its failure was lost: the status stayed paused, without the error or the event, and
    the command said "Rebuild … failed: ." (the fail transition did not apply)."""
    store = EventStore()
    paused_and_tampered(store)
    at = poison(store)
    result = rebuild(TaskBoard())
    assert result.failed == ["task_board"]
    failed = row()
    assert (failed.status, failed.suspended_rebuild, failed.failed_event_position) == (
        "failed",
        True,
        at,
    )
    assert "the handler refuses the title 'boom'" in failed.last_error
    # An atomic rebuild rolls it all back: paused, as it was.
    control.retry("task_board")  # back to the rebuild, then paused again by the operator
    control.pause("task_board")
    before = (task_board_rows(), row().position)
    with pytest.raises(RebuildAborted, match="the handler refuses the title 'boom'"):
        rebuild(TaskBoard(), atomic=True)
    assert (task_board_rows(), row().position) == before
    assert row().status == "paused"


def test_the_command_and_the_admin_say_it_stays_paused(django_user_model: Any) -> None:
    from django.test import Client
    from django.urls import reverse

    store = EventStore()
    paused_and_tampered(store)
    out = StringIO()
    call_command("rebuild_projections", "task_board", "--noinput", stdout=out)
    said = out.getvalue()
    assert "and replay " in said and "events. It is paused, and stays paused." in said
    assert (
        "task_board: rebuilt. task_board is still paused: resume it (admin, or "
        "control.resume()) to let runners apply new events."
    ) in said
    assert row().status == "paused"
    assert task_board_rows() == fold_task_board(store)

    boss = django_user_model.objects.create_superuser("boss", password="x")
    browser = Client()
    browser.force_login(boss)
    url = reverse(
        "admin:django_eventsource_projectionstate_action", args=["task_board", "rebuild"]
    )
    page = browser.post(url, {"tenant": ""}).content.decode()
    assert "It is paused, and stays paused." in page
    response = browser.post(url, {"tenant": "", "confirm": "yes"}, follow=True)
    messages = " ".join(str(m) for m in response.context["messages"])
    assert "It is still paused: resume it to let runners apply new events." in messages
    assert row().status == "paused"


def test_an_inline_projection_rebuilt_while_paused_is_handed_over_and_stays_paused() -> None:
    """The pause earlier versions let an operator store for an inline projection (one can
    no longer: see test_inline_pause): a rebuild hands it over and leaves the pause."""
    store = EventStore()
    titles = {}
    for n in range(5):
        task = uuid4()
        store.append(task, [TaskCreated(aggregate_id=task, title=f"t{n}")])
        titles[task] = f"t{n}"
    ProjectionState.objects.create(name="task_index", status="paused")
    TaskIndex.objects.update(title="tampered")
    rebuild(TaskIndexProjection(), batch_size=2)
    assert dict(TaskIndex.objects.values_list("task_id", "title")) == titles
    after = row("task_index")
    assert (after.status, after.suspended_rebuild, after.owner) == ("paused", False, "")
    # Its hand-over ended the suspended rebuild: appends apply it again.
    task = uuid4()
    store.append(task, [TaskCreated(aggregate_id=task, title="after")])
    assert TaskIndex.objects.get(task_id=task).title == "after"

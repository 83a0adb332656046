"""Every failure while applying an event falls under the projection's error policy.

Decoding the stored event, the stream-gap check, the handler and writing the batch's rows
are all "applying this event": a failure in any of them is retried, then pauses the
projection (status failed, the error and event recorded, the checkpoint just before it) or
dead-letters the event, and the good events of the same batch are applied either way.

Dead letters park their stream: later events of the stream wait behind the dead letter
while other streams go on, and a retry (from any letter, in any order) applies the stream
in order. A retry never claims an event it did not apply.
"""

from __future__ import annotations

import json
import signal
import time
from typing import Any, ClassVar
from uuid import UUID, uuid4

import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from django_eventsource import (
    DatabaseCheckpointStore,
    DeadLetter,
    EventStore,
    ProjectionError,
    ProjectionState,
    StoredEvent,
    catch_up,
    control,
    handles,
    projection_registry,
)
from django_eventsource.rebuild import rebuild
from django_eventsource.runner import ProjectionRunner
from tests.factories import task_history
from tests.fold import fold_task_board, fold_tenant_stats, task_board_rows, tenant_stats_rows
from tests.helpers import settled, start_command, wait_for
from tests.testapp.events import TaskCompleted, TaskCreated, TaskRenamed
from tests.testapp.models import TaskSummary, TenantStats
from tests.testapp.projections import TaskBoard, TenantStatsProjection

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def dead_letter_policy(settings: Any) -> None:
    settings.EVENTSOURCE = {**settings.EVENTSOURCE, "ERROR_POLICY": "dead_letter"}


def set_payload(event: StoredEvent, payload: dict[str, Any]) -> None:
    """Rewrite a stored payload, as if the event's class had changed since it was written
    (the ORM refuses to change stored events: this is raw SQL, for the test's sake)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE django_eventsource_event SET payload = %s WHERE position = %s",
            [json.dumps(payload), event.position],
        )


def task(store: EventStore, *, title: str = "t", tenant: str | None = None) -> list[StoredEvent]:
    """A task: created, renamed, completed (three events of one stream)."""
    aggregate = uuid4()
    return store.append(
        aggregate,
        [
            TaskCreated(aggregate_id=aggregate, tenant_id=tenant, title=title),
            TaskRenamed(aggregate_id=aggregate, tenant_id=tenant, title=f"{title}2"),
            TaskCompleted(aggregate_id=aggregate, tenant_id=tenant),
        ],
    )


def undecodable_history(store: EventStore) -> StoredEvent:
    """Two good tasks, a task whose rename no longer decodes, two more good tasks."""
    task(store, title="a")
    task(store, title="b")
    bad = task(store, title="bad")
    task(store, title="c")
    task(store, title="d")
    set_payload(bad[1], {"no_title": True})
    return bad[1]


def rows_without(store: EventStore, positions: set[int]) -> dict[Any, dict]:
    """fold_task_board of every event but those at ``positions``."""
    kept = [e for e in store.read_all() if e.position not in positions]
    memory = _FoldStore(kept)
    return fold_task_board(memory)  # type: ignore[arg-type]


class _FoldStore:
    def __init__(self, events: list[StoredEvent]) -> None:
        self.events = events

    def read_all(self, tenant_id: str | None = None) -> list[StoredEvent]:
        return self.events


# Undecodable events ---------------------------------------------------------------------------


def test_an_undecodable_event_pauses_the_projection_and_the_batch_is_applied() -> None:
    store = EventStore()
    poison = undecodable_history(store)
    feed = settled(store).read_all().events
    index = feed.index(poison)

    settled(store)

    result = ProjectionRunner([TaskBoard()], batch_size=100).run_until_caught_up()

    assert result.failed == ["task_board"]
    state = ProjectionState.objects.get(name="task_board")
    assert state.status == "failed"
    assert state.failed_event_position == poison.position
    assert state.position == feed[index - 1].position  # the good events before it applied
    assert "InvalidEventPayload" in state.last_error and "title" in state.last_error
    assert state.attempts == 4
    applied = sum(row["events_applied"] for row in task_board_rows().values())
    assert applied == index
    # The status shows it.
    out = call_command_text("projection_status", "--format", "json")
    [row] = [r for r in json.loads(out)["projections"] if r["projection"] == "task_board"]
    assert row["status"] == "failed" and row["failed_event_position"] == poison.position
    assert "Invalid payload for event 'TaskRenamed'" in row["last_error"]


def call_command_text(*args: str) -> str:
    from io import StringIO

    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_replay_projections_reports_an_undecodable_event_not_a_traceback() -> None:
    store = EventStore()
    poison = undecodable_history(store)
    settled(store)
    with pytest.raises(CommandError, match="failed and were paused: task_board"):
        call_command_text("replay_projections", "task_board")
    assert ProjectionState.objects.get(name="task_board").failed_event_position == (
        poison.position
    )


@pytest.mark.usefixtures("dead_letter_policy")
def test_an_undecodable_event_is_dead_lettered_and_its_stream_parked() -> None:
    store = EventStore()
    poison = undecodable_history(store)
    completed = store.read_stream(poison.aggregate_id).events[2]

    settled(store)

    result = ProjectionRunner([TaskBoard()], batch_size=100).run_until_caught_up()

    assert not result.failed
    state = ProjectionState.objects.get(name="task_board")
    assert (state.status, state.position, state.last_error) == (
        "idle",
        store.read_all().events[-1].position,
        "",
    )
    letters = {letter.event_position: letter for letter in DeadLetter.objects.all()}
    assert set(letters) == {poison.position, completed.position}
    failed, parked = letters[poison.position], letters[completed.position]
    assert "Invalid payload for event 'TaskRenamed'" in failed.error
    assert failed.parked_behind is None and failed.aggregate_id == poison.aggregate_id
    assert parked.parked_behind == poison.position and parked.attempts == 0
    assert "waits behind dead letter" in parked.error
    # Every other stream was applied in full; the bad stream stopped before its poison.
    assert task_board_rows() == rows_without(store, {poison.position, completed.position})


# A poison event in a stream with later events --------------------------------------------------


def poisoned_stream(store: EventStore) -> tuple[list[StoredEvent], UUID]:
    """Tasks around one whose second event is a rename to 'boom' (TaskBoard refuses it),
    followed by three more events of that stream."""
    task_history(store, tasks=3, renames=1, seed=21)
    bad = uuid4()
    stream = store.append(bad, [TaskCreated(aggregate_id=bad, title="ok")])
    stream += store.append(bad, [TaskRenamed(aggregate_id=bad, title="boom")])
    task_history(store, tasks=2, renames=1, seed=22)
    stream += store.append(bad, [TaskRenamed(aggregate_id=bad, title="after")])
    stream += store.append(bad, [TaskRenamed(aggregate_id=bad, title="after2")])
    task_history(store, tasks=2, renames=1, seed=23)
    stream += store.append(bad, [TaskCompleted(aggregate_id=bad)])
    return stream, bad


@pytest.fixture
def fixed_handler(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Call it to "deploy the fix": TaskBoard stops refusing 'boom'."""

    def fix() -> None:
        def renamed(self: TaskBoard, event: TaskRenamed) -> None:
            if row := self._touch(event):
                row.title = event.title
                row.renames += 1

        monkeypatch.setattr(TaskBoard, "renamed", renamed)

    return fix


@pytest.mark.usefixtures("dead_letter_policy")
@pytest.mark.parametrize("order", ["newest first", "oldest first", "a parked one alone"])
def test_a_poison_event_parks_its_stream_and_a_retry_applies_it_in_order(
    order: str, fixed_handler: Any
) -> None:
    store = EventStore()
    stream, _ = poisoned_stream(store)
    poison = stream[1]

    settled(store)

    ProjectionRunner([TaskBoard()], batch_size=4).run_until_caught_up()

    letters = list(DeadLetter.objects.order_by("event_position"))
    # One failed event; the later events of its stream wait behind it (no gap errors).
    assert [letter.event_position for letter in letters] == [e.position for e in stream[1:]]
    assert [letter.parked_behind for letter in letters] == [None] + [poison.position] * 3
    assert "boom" in letters[0].error
    assert all("EventGapError" not in letter.error for letter in letters)
    assert task_board_rows() == rows_without(store, {e.position for e in stream[1:]})

    # Retrying before the fix: the poison fails again, nothing of the stream is applied.
    outcome = control.retry_dead_letter(letters[-1])
    assert not outcome and outcome.failed is not None
    assert outcome.failed.event_position == poison.position
    assert "failed again" in outcome.message and "Nothing was applied" in outcome.message
    assert DeadLetter.objects.filter(resolved_at=None).count() == 4

    fixed_handler()
    if order == "newest first":
        picked = sorted(letters, key=lambda letter: -letter.event_position)
    elif order == "oldest first":
        picked = letters
    else:
        picked = [letters[2]]
    outcomes = [control.retry_dead_letter(letter) for letter in picked]
    assert outcomes[0], outcomes[0].message
    assert [letter.event_position for letter in outcomes[0].applied] == [
        e.position for e in stream[1:]
    ]
    assert all(o.already_resolved for o in outcomes[1:])
    assert not DeadLetter.objects.filter(resolved_at=None).exists()
    assert set(DeadLetter.objects.values_list("resolution", flat=True)) == {"applied"}
    # Nothing lost, nothing doubled: the rows equal a fresh fold of every event.
    assert task_board_rows() == fold_task_board(store)
    # The stream is no longer parked: its next event is applied by the runner.
    store.append(
        stream[0].aggregate_id, [TaskRenamed(aggregate_id=stream[0].aggregate_id, title="z")]
    )
    settled(store)
    ProjectionRunner([TaskBoard()]).run_until_caught_up()
    assert task_board_rows() == fold_task_board(store)


@pytest.mark.usefixtures("dead_letter_policy")
def test_a_stream_parked_while_the_runner_goes_on_is_applied_when_retried(
    fixed_handler: Any,
) -> None:
    """Events of the parked stream that arrive after the dead letter are parked too, and
    the retry applies them all, in order; afterwards the runner takes the stream again."""
    store = EventStore()
    _, bad = poisoned_stream(store)
    settled(store)
    ProjectionRunner([TaskBoard()], batch_size=3).run_until_caught_up()
    more = store.append(bad, [TaskRenamed(aggregate_id=bad, title="later still")])
    settled(store)
    ProjectionRunner([TaskBoard()], batch_size=3).run_until_caught_up()
    assert DeadLetter.objects.filter(resolved_at=None).count() == 5
    fixed_handler()
    outcome = control.retry_dead_letter(DeadLetter.objects.get(event_position=more[0].position))
    assert len(outcome.applied) == 5, outcome.message
    assert task_board_rows() == fold_task_board(store)


@pytest.mark.usefixtures("dead_letter_policy")
def test_catch_up_leaves_a_parked_stream_alone() -> None:
    """The same rule in catch_up (what testing.run_projections runs)."""
    store = EventStore()
    stream, _ = poisoned_stream(store)
    settled(store)
    ProjectionRunner([TaskBoard()], batch_size=4).run_until_caught_up()
    DatabaseCheckpointStore().delete("task_board")
    catch_up(TaskBoard(), event_store=store)  # a replay from the start
    assert task_board_rows() == rows_without(store, {e.position for e in stream[1:]})
    assert DeadLetter.objects.count() == 4


def test_dead_lettering_a_failed_event_parks_its_stream(fixed_handler: Any) -> None:
    """The pause policy, then an operator sets the failed event aside by hand."""
    store = EventStore()
    stream, _ = poisoned_stream(store)
    settled(store)
    ProjectionRunner([TaskBoard()], batch_size=4).run_until_caught_up()
    letter = control.dead_letter_failed("task_board")
    assert letter.aggregate_id == stream[0].aggregate_id
    settled(store)
    result = ProjectionRunner([TaskBoard()], batch_size=4).run_until_caught_up()
    assert not result.failed  # later events of the stream are parked, not gap errors
    state = ProjectionState.objects.get(name="task_board")
    assert (state.status, state.position) == ("idle", store.read_all().events[-1].position)
    assert DeadLetter.objects.filter(resolved_at=None).count() == 4
    fixed_handler()
    assert control.retry_dead_letter(letter)
    assert task_board_rows() == fold_task_board(store)


# A retry never claims what it did not apply ------------------------------------------------


@pytest.mark.usefixtures("dead_letter_policy")
def test_a_retry_that_a_row_has_passed_applies_nothing_and_says_why() -> None:
    """A per-tenant row (checkpoint_by="position") goes on with other streams after a dead
    letter; retrying the letter later would apply it out of order. Nothing is applied, the
    letter stays, and the message says to rebuild; the rebuild resolves it."""
    store = EventStore()
    task(store, title="a", tenant="acme")
    bad = task(store, title="bad", tenant="acme")
    task(store, title="c", tenant="acme")
    set_payload(bad[0], {"no_title": True})  # its TaskCreated no longer decodes

    settled(store)

    ProjectionRunner([TenantStatsProjection()]).run_until_caught_up()
    letter, parked = DeadLetter.objects.filter(projection="tenant_stats").order_by(
        "event_position"
    )
    assert letter.event_position == bad[0].position
    assert (parked.event_position, parked.parked_behind) == (
        bad[2].position,
        letter.event_position,
    )
    assert tenant_stats_rows()["acme"] == {
        "tasks": 2,
        "completed": 2,
        "last_event_position": store.read_all().events[-1].position,
        "last_event_id": store.read_all().events[-1].event_id,
    }

    set_payload(bad[0], {"title": "bad"})  # "deploy the fix": the event decodes again
    outcome = control.retry_dead_letter(letter)
    assert not outcome
    assert outcome.applied == [] and outcome.failed is None
    assert "Nothing was applied" in outcome.message
    assert f"Event #{bad[0].position} was not applied" in outcome.message
    assert "TenantStats row (tenant_id='acme')" in outcome.message
    assert "Rebuild the projection" in outcome.message
    letter.refresh_from_db()
    assert letter.resolved_at is None
    assert tenant_stats_rows()["acme"]["tasks"] == 2  # nothing applied out of order
    assert DeadLetter.objects.filter(resolved_at=None).count() == 2

    rebuild(TenantStatsProjection())
    assert set(DeadLetter.objects.values_list("resolution", flat=True)) == {"rebuilt"}
    assert tenant_stats_rows() == fold_tenant_stats(store)


# Writing the rows is applying the events too ---------------------------------------------------


class DuplicateTenantRow(TenantStatsProjection):
    """On the task titled 'dup' its lookup misses the tenant's row, and the second row it
    makes for the tenant is refused by the unique constraint when the batch's rows are
    written (after every handler of the batch ran)."""

    @handles(TaskCreated)
    def created(self, event: TaskCreated) -> None:
        lookup: dict[str, Any] = {"tenant_id": event.tenant_id or ""}
        if event.title == "dup":
            lookup["tasks"] = 0
        if row := self.row(TenantStats, event, **lookup):
            row.tasks += 1


def test_a_batch_whose_rows_cannot_be_written_finds_the_failing_event() -> None:
    store = EventStore()
    task(store, title="a")
    task(store, title="b")
    dup = task(store, title="dup")[0]
    task(store, title="c")
    feed = settled(store).read_all().events
    index = feed.index(dup)

    settled(store)

    result = ProjectionRunner([DuplicateTenantRow()], batch_size=100).run_until_caught_up()

    assert result.failed == ["tenant_stats"]
    state = ProjectionState.objects.get(name="tenant_stats")
    assert state.failed_event_position == dup.position
    assert state.position == feed[index - 1].position  # the events before it were applied
    assert "IntegrityError" in state.last_error
    assert tenant_stats_rows()[""]["tasks"] == 2


# A follow worker keeps running ------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["pause", "dead_letter"])
def test_a_follow_worker_keeps_running_past_an_undecodable_event(
    child_db_url: str, policy: str
) -> None:
    store = EventStore()
    poison = undecodable_history(store)
    worker = start_command(
        child_db_url,
        *("replay_projections", "task_board", "tenant_stats", "--follow"),
        EVENTSOURCE_ERROR_POLICY=policy,
        EVENTSOURCE_MAX_RETRIES="1",
        EVENTSOURCE_HEARTBEAT_INTERVAL="0.3",
        EVENTSOURCE_POLL_INTERVAL="0.05",
    )
    try:

        def handled() -> bool:
            if policy == "pause":
                return ProjectionState.objects.filter(name="task_board", status="failed").exists()
            return DeadLetter.objects.filter(event_position=poison.position).exists()

        assert wait_for(handled, 60), worker.poll()
        time.sleep(1.0)
        assert worker.poll() is None, worker.communicate()
        # It still applies new events (tenant_stats is not affected by the poison).
        late = task(store, title="late", tenant="acme")
        assert wait_for(
            lambda: (
                tenant_stats_rows().get("acme", {}).get("last_event_position") == late[2].position
            ),
            60,
        )
        assert worker.poll() is None
    finally:
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=60)
    assert "Traceback" not in err, err
    state = ProjectionState.objects.get(name="task_board")
    if policy == "pause":
        assert state.status == "failed" and "InvalidEventPayload" in state.last_error
    else:
        assert state.status != "failed"
        assert DeadLetter.objects.get(event_position=poison.position).resolved_at is None


# Rebuild's hook, the tutorial's way ----------------------------------------------------------------


class AsyncTruncateBoard(TaskBoard):
    """The tutorial's form of the hook: ``async def``, no tenant argument."""

    deleted: ClassVar[int] = 0

    async def _truncate_read_models(self) -> None:  # type: ignore[override]
        deleted, _ = await TaskSummary.objects.all().adelete()
        AsyncTruncateBoard.deleted += deleted


@pytest.fixture
def async_board() -> Any:
    classes = dict(projection_registry._classes)
    projection_registry._classes["task_board"] = AsyncTruncateBoard
    try:
        yield AsyncTruncateBoard
    finally:
        projection_registry._classes.clear()
        projection_registry._classes.update(classes)


def test_an_async_truncate_hook_is_awaited_by_a_rebuild(async_board: Any) -> None:
    store = EventStore()
    task_history(store, tasks=4, seed=31)
    settled(store)
    rebuild(AsyncTruncateBoard())
    stale = TaskSummary.objects.create(task_id=uuid4(), title="stale row")
    AsyncTruncateBoard.deleted = 0
    rebuild(AsyncTruncateBoard(), restart=True)
    assert AsyncTruncateBoard.deleted == 5  # four tasks and the stale row
    assert not TaskSummary.objects.filter(pk=stale.pk).exists()
    assert task_board_rows() == fold_task_board(store)


def test_a_truncate_hook_without_a_tenant_refuses_a_tenant_rebuild(
    async_board: Any, django_user_model: Any
) -> None:
    """The tutorial's hook (``_truncate_read_models(self)``) cannot reset one tenant: a
    tenant's rebuild refuses up front (RebuildRefused, before any lock or state row), from
    the API, the command (a CommandError, not a traceback) and the admin (a message, not a
    server error), and --dry-run says so too."""
    from django.contrib.auth.models import Permission
    from django.test import Client
    from django.urls import reverse

    from django_eventsource import ProjectionState, RebuildRefused
    from django_eventsource.rebuild import plan_rebuild

    store = EventStore()
    task_history(store, tasks=3, tenants=("acme", "globex"), seed=32)
    settled(store)
    rebuild(AsyncTruncateBoard())
    rows = task_board_rows()
    states = list(ProjectionState.objects.values_list("name", "tenant_id", "status"))
    with pytest.raises(RebuildRefused, match="takes no tenant_id, so it cannot reset tenant"):
        rebuild(AsyncTruncateBoard(), tenant_id="acme")
    with pytest.raises(RebuildRefused, match="takes no tenant_id"):
        plan_rebuild(AsyncTruncateBoard(), tenant_id="acme")
    for extra in ([], ["--dry-run"]):
        with pytest.raises(CommandError, match=r"takes no tenant_id.*Nothing was changed"):
            call_command(
                "rebuild_projections", "task_board", "--tenant", "acme", "--noinput", *extra
            )
    user = django_user_model.objects.create_user("op", password="x", is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(codename__in=["view_projectionstate", "rebuild_projection"])
    )
    client = Client()
    client.force_login(user)
    url = reverse(
        "admin:django_eventsource_projectionstate_action", args=["task_board", "rebuild"]
    )
    # No "next": it goes back to the tenant's page, or (no state row: none) to the list.
    response = client.post(url, {"tenant": "acme", "confirm": "yes"}, follow=True)
    assert response.status_code == 200
    assert response.redirect_chain[-1][0] == reverse(
        "admin:django_eventsource_projectionstate_changelist"
    )
    said = " ".join(str(m) for m in response.context["messages"])
    assert "takes no tenant_id" in said, said
    assert task_board_rows() == rows == fold_task_board(store)  # nothing was deleted
    assert list(ProjectionState.objects.values_list("name", "tenant_id", "status")) == states


def test_a_failed_projection_error_is_a_projection_error() -> None:
    """catch_up (what tests run) raises the decode failure as a ProjectionError too."""
    store = EventStore()
    poison = undecodable_history(store)
    settled(store)
    with pytest.raises(ProjectionError) as info:
        catch_up(TaskBoard(), event_store=store)
    assert info.value.position == poison.position
    assert type(info.value.__cause__).__name__ == "InvalidEventPayload"

"""``rebuild(shadow=True)`` / ``rebuild_projections --shadow``: build in a shadow schema, swap
in one short transaction; refusals; Django migrations still apply after the swap."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import connection, models
from prometheus_client import REGISTRY

from django_eventsource import (
    EventStore,
    NotSupportedOnBackend,
    ProjectionState,
    RebuildRefused,
    catch_up,
    control,
)
from django_eventsource.rebuild import rebuild
from django_eventsource.shadow import find_shadow_build, shadow_builds, shadow_schema
from tests.factories import task_history
from tests.fold import fold_task_board, task_board_rows
from tests.helpers import drop_shadow_schemas
from tests.testapp.models import TaskSummary
from tests.testapp.projections import TaskBoard

pytestmark = pytest.mark.django_db(transaction=True)


def corrupt_rows() -> dict[Any, dict]:
    """Make every live row differ from a fresh fold (renames + 1000)."""
    TaskSummary.objects.update(renames=models.F("renames") + 1000)
    return task_board_rows()


def applied_counts(label: str) -> dict[str, float]:
    """This process's applied-events counters of ``label``, the live one and the shadow's."""
    return {
        "eventsource_events_applied_total": REGISTRY.get_sample_value(
            "eventsource_events_applied_total", {"projection": label, "tenant": ""}
        )
        or 0.0,
        "eventsource_shadow_events_applied_total": REGISTRY.get_sample_value(
            "eventsource_shadow_events_applied_total", {"projection": label}
        )
        or 0.0,
    }


def names_of(table: str) -> dict[str, list[str]]:
    """The index, constraint and sequence names Django's migrations rely on."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT relname FROM pg_class WHERE relkind = 'i' AND oid IN "
            "(SELECT indexrelid FROM pg_index WHERE indrelid = %s::regclass) ORDER BY 1",
            [table],
        )
        indexes = [r[0] for r in cursor.fetchall()]
        cursor.execute(
            "SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass ORDER BY 1",
            [table],
        )
        constraints = [r[0] for r in cursor.fetchall()]
        cursor.execute("SELECT pg_get_serial_sequence(%s, 'id')", [table])
        sequence = [cursor.fetchone()[0]]
    return {"indexes": indexes, "constraints": constraints, "sequence": sequence}


def test_sqlite_refuses_a_shadow_rebuild_and_changes_nothing(vendor: str) -> None:
    if vendor != "sqlite":
        pytest.skip("the PostgreSQL tests below cover --shadow there")
    store = EventStore()
    task_history(store, tasks=3, seed=1)
    catch_up(TaskBoard(), event_store=store)
    before = corrupt_rows()
    with pytest.raises(NotSupportedOnBackend, match=r"shadow rebuild.*--atomic"):
        rebuild(TaskBoard(), shadow=True)
    with pytest.raises(CommandError, match="not supported on the 'sqlite' backend"):
        call_command("rebuild_projections", "task_board", "--noinput", "--shadow", verbosity=0)
    assert task_board_rows() == before


@pytest.fixture
def postgresql(vendor: str) -> Iterator[None]:
    if vendor != "postgresql":
        pytest.skip("--shadow is PostgreSQL only; SQLite's refusal is tested above")
    drop_shadow_schemas()  # the test database's flush does not reach them
    yield
    drop_shadow_schemas()


@pytest.mark.usefixtures("postgresql")
def test_a_shadow_rebuild_replaces_the_rows_and_keeps_every_name() -> None:
    store = EventStore()
    task_history(store, tasks=12, seed=3)
    catch_up(TaskBoard(), event_store=store)
    corrupt_rows()
    names = names_of(TaskSummary._meta.db_table)
    assert names["indexes"] and names["constraints"] and names["sequence"][0]
    counted = applied_counts("task_board")

    result = rebuild(TaskBoard(), shadow=True, batch_size=5)

    assert task_board_rows() == fold_task_board(store)
    # The build's work is counted as the shadow's: the live projection did none of it (its
    # counter counted the replay).
    assert {n: v - counted[n] for n, v in applied_counts("task_board").items()} == {
        "eventsource_events_applied_total": 0.0,
        "eventsource_shadow_events_applied_total": float(result.events_applied),
    }
    assert result.events_applied == len(store.read_all().events)
    assert names_of(TaskSummary._meta.db_table) == names
    assert result.swap_seconds is not None
    state = ProjectionState.objects.get(name="task_board")
    assert (state.status, state.position, state.owner) == ("idle", store.head_position(), "")
    assert shadow_builds("default") == []
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT 1 FROM pg_namespace WHERE nspname = %s", [shadow_schema("task_board")]
        )
        assert cursor.fetchone() is None
    # New rows get ids from the table's own identity sequence.
    row = TaskSummary.objects.order_by("-id").first()
    assert row is not None
    fresh = TaskSummary.objects.create(task_id=row.task_id, tenant_id="other")
    assert fresh.id == row.id + 1


@pytest.mark.usefixtures("postgresql")
def test_migrations_still_apply_after_a_swap() -> None:
    """A migration that drops an index, one that drops a constraint and one that adds a
    field, run by Django's schema editor, as ``migrate`` runs them, after a shadow swap."""
    store = EventStore()
    task_history(store, tasks=5, seed=4)
    catch_up(TaskBoard(), event_store=store)
    index = models.Index(fields=["title"], name="testapp_summary_title")
    constraint = TaskSummary._meta.constraints[0]
    field = models.CharField(max_length=20, default="x")
    field.set_attributes_from_name("shadow_note")
    with connection.schema_editor() as editor:
        editor.add_index(TaskSummary, index)
    try:
        rebuild(TaskBoard(), shadow=True)
        assert task_board_rows() == fold_task_board(store)
        with connection.schema_editor() as editor:
            editor.remove_index(TaskSummary, index)  # RemoveIndex: by its name
            editor.remove_constraint(TaskSummary, constraint)  # RemoveConstraint: by name
            editor.add_field(TaskSummary, field)  # AddField
            editor.remove_field(TaskSummary, field)
            editor.add_constraint(TaskSummary, constraint)
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP INDEX IF EXISTS testapp_summary_title")


@pytest.mark.usefixtures("postgresql")
def test_refusals_change_nothing() -> None:
    store = EventStore()
    task_history(store, tasks=3, seed=1)
    catch_up(TaskBoard(), event_store=store)
    before = corrupt_rows()
    with pytest.raises(RebuildRefused, match="one tenant"):
        rebuild(TaskBoard(), shadow=True, tenant_id="acme")
    with pytest.raises(CommandError, match="one tenant"):
        call_command(
            "rebuild_projections", "task_board", "--noinput", "--shadow", "--tenant", "acme"
        )
    table = TaskSummary._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE TABLE shadow_test_ref (summary bigint REFERENCES {table}(id))")
    try:
        with pytest.raises(RebuildRefused, match=r"foreign keys.*shadow_test_ref"):
            rebuild(TaskBoard(), shadow=True)
        with pytest.raises(CommandError, match="foreign keys"):
            call_command("rebuild_projections", "task_board", "--noinput", "--shadow")
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP TABLE shadow_test_ref")
    control.get_state("task_board", "acme")  # a runner of one tenant's events
    with pytest.raises(RebuildRefused, match="run per tenant"):
        rebuild(TaskBoard(), shadow=True)
    ProjectionState.objects.filter(tenant_id="acme").delete()
    with pytest.raises(CommandError, match="not both"):
        call_command("rebuild_projections", "task_board", "--noinput", "--shadow", "--atomic")
    assert task_board_rows() == before
    assert find_shadow_build("task_board", "default") is None


@pytest.mark.usefixtures("postgresql")
def test_the_command_builds_and_swaps(capsys: pytest.CaptureFixture[str]) -> None:
    store = EventStore()
    task_history(store, tasks=6, seed=2)
    catch_up(TaskBoard(), event_store=store)
    corrupt_rows()
    call_command("rebuild_projections", "task_board", "--noinput", "--shadow", "--dry-run")
    out = capsys.readouterr().out
    assert "in a shadow schema" in out and "Dry run" in out
    assert find_shadow_build("task_board", "default") is None
    call_command("rebuild_projections", "task_board", "--noinput", "--shadow", verbosity=0)
    assert "swapped the shadow tables in" in capsys.readouterr().out
    assert task_board_rows() == fold_task_board(store)


@pytest.mark.usefixtures("postgresql")
def test_an_interrupted_build_shows_in_the_status_and_resumes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from django_eventsource.shadow import _create_shadow, discard_shadow
    from django_eventsource.status import projection_statuses

    store = EventStore()
    task_history(store, tasks=4, seed=5)
    catch_up(TaskBoard(), event_store=store)
    corrupt_rows()
    _create_shadow(TaskBoard(), shadow_schema("task_board"))  # as a build killed at once
    [row] = [r for r in projection_statuses(["task_board"]) if r.projection == "task_board"]
    assert row.shadow_position == 0
    call_command("projection_status", "task_board")
    assert "a shadow rebuild is built up to event #0" in capsys.readouterr().out
    call_command("rebuild_projections", "task_board", "--noinput", "--shadow", "--dry-run")
    assert "will resume its shadow build (at event #0)" in capsys.readouterr().out
    assert discard_shadow("task_board", "default") is True
    assert discard_shadow("task_board", "default") is False
    _create_shadow(TaskBoard(), shadow_schema("task_board"))
    rebuild(TaskBoard(), shadow=True)
    assert task_board_rows() == fold_task_board(store)
    [row] = [r for r in projection_statuses(["task_board"]) if r.projection == "task_board"]
    assert row.shadow_position is None


@pytest.mark.usefixtures("postgresql")
def test_a_shadow_of_a_table_that_changed_is_not_swapped_in() -> None:
    from django_eventsource import RebuildAborted
    from django_eventsource.shadow import _create_shadow

    store = EventStore()
    task_history(store, tasks=4, seed=6)
    catch_up(TaskBoard(), event_store=store)
    before = corrupt_rows()
    _create_shadow(TaskBoard(), shadow_schema("task_board"))
    field = models.CharField(max_length=20, null=True)
    field.set_attributes_from_name("shadow_note")
    with connection.schema_editor() as editor:
        editor.add_field(TaskSummary, field)  # a migration ran meanwhile
    try:
        with pytest.raises(RebuildAborted, match="has changed since its shadow"):
            rebuild(TaskBoard(), shadow=True)
        assert task_board_rows() == before
        rebuild(TaskBoard(), shadow=True, restart=True)  # a new shadow, like the new table
        assert TaskSummary.objects.count() == len(fold_task_board(store))
    finally:
        with connection.schema_editor() as editor:
            editor.remove_field(TaskSummary, field)
    assert task_board_rows() == fold_task_board(store)


@pytest.mark.usefixtures("postgresql")
def test_a_handler_that_raises_during_the_build_is_reported_as_a_failed_shadow_build(
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    django_user_model: Any,
) -> None:
    """It said the projection was "paused", although the rebuild stopped (RebuildAborted),
    the live projection was untouched and nothing was swapped; projection_status showed an
    ordinary build in progress."""
    import logging
    from io import StringIO
    from uuid import uuid4

    from django.test import Client
    from django.urls import reverse

    from tests.testapp import projections
    from tests.testapp.events import TaskCreated, TaskRenamed

    store = EventStore()
    task_history(store, tasks=5, seed=7)
    catch_up(TaskBoard(), event_store=store)
    live = ProjectionState.objects.get(name="task_board")
    bad = uuid4()
    store.append(bad, [TaskCreated(aggregate_id=bad, title="a")])
    [boom] = store.append(bad, [TaskRenamed(aggregate_id=bad, title="boom")])
    before = task_board_rows()
    feed = [e.position for e in store.read_all()]
    built = feed[feed.index(boom.position) - 1]  # the event before it, in feed order

    def failures() -> dict[str, float]:
        """This process's failure counters of task_board (prometheus_client's registry)."""
        return {
            name: REGISTRY.get_sample_value(name, {"projection": "task_board"}) or 0.0
            for name in (
                "eventsource_projection_failures_total",
                "eventsource_shadow_build_failures_total",
            )
        }

    counted = failures()
    out, err = StringIO(), StringIO()
    with (
        caplog.at_level(logging.INFO, logger="django_eventsource"),
        pytest.raises(CommandError) as info,
    ):
        call_command(
            "rebuild_projections", "task_board", "--noinput", "--shadow", stdout=out, stderr=err
        )
    assert info.value.returncode == 1
    message = str(info.value)
    assert message == (
        "Shadow rebuild of 'task_board' stopped before its swap: its build failed on event "
        f"#{boom.position} (TaskRenamed {boom.event_id}): ValueError: the handler refuses the "
        f"title 'boom'. The shadow is kept, built up to event #{built}: fix the handler, then "
        "run the shadow rebuild again (rebuild_projections task_board --shadow) to resume it "
        "from there, or with restart=True (--restart) to start over. The live tables still "
        "serve, unchanged; nothing was swapped."
    )
    assert f"task_board (shadow build): FAILED at event #{boom.position}" in err.getvalue()
    logged = [r.getMessage() for r in caplog.records]
    assert not [m for m in logged if "paused" in m or "rolled back" in m], logged
    [failed] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert failed.getMessage().startswith(
        f"The shadow build of task_board failed on event #{boom.position} "
    )
    assert (
        "after 4 attempts; the live projection keeps serving and being applied, and nothing "
        "is swapped: the handler"
    ) in failed.getMessage()
    assert failed.shadow is True  # type: ignore[attr-defined]
    # Counted as the shadow's failure: the live projection did not fail (it counted one).
    assert {name: value - counted[name] for name, value in failures().items()} == {
        "eventsource_projection_failures_total": 0.0,
        "eventsource_shadow_build_failures_total": 1.0,
    }
    aborted = [r for r in caplog.records if r.name == "django_eventsource.rebuild"][-1]
    assert aborted.levelno == logging.WARNING and aborted.getMessage() == message

    # The live projection: untouched, serving, not failed.
    assert task_board_rows() == before
    state = ProjectionState.objects.get(name="task_board")
    assert (state.status, state.position, state.last_error) == ("idle", live.position, "")
    # The shadow: kept, with its failure.
    build = find_shadow_build("task_board", "default")
    assert build is not None
    assert (build.position, build.failed_position, build.error) == (
        built,
        boom.position,
        "ValueError: the handler refuses the title 'boom'",
    )
    status = StringIO()
    call_command("projection_status", "task_board", stdout=status)
    assert (
        f"task_board: a shadow rebuild failed at event #{boom.position}: ValueError: the "
        f"handler refuses the title 'boom'. Its tables are built up to event #{built}; the "
        "live tables still serve, nothing was swapped. Fix the handler, then "
        "rebuild_projections task_board --shadow resumes it, --restart discards it."
    ) in status.getvalue()
    # The check fails on it (and so does the health view), the live projection not failed.
    shadow_failed = (
        f"shadow rebuild failed at event #{boom.position}, built up to #{built}: nothing was "
        "swapped, the live tables still serve (fix the handler, then rebuild_projections "
        "--shadow resumes it)"
    )
    check = StringIO()
    with pytest.raises(SystemExit) as exited:
        call_command("projection_status", "task_board", "--check", stdout=StringIO(), stderr=check)
    assert exited.value.code == 1
    assert check.getvalue().strip() == (
        f"Check failed: task_board: {shadow_failed}: ValueError: the handler refuses the "
        "title 'boom'"
    )
    health = Client().get("/eventsource/health/")
    assert (health.status_code, health.json()["problems"]) == (
        503,
        [
            {
                "check": "shadow_failed",
                "projection": "task_board",
                "tenant_id": "",
                "message": shadow_failed,
            }
        ],
    )
    assert ProjectionState.objects.get(name="task_board").status == "idle"
    plan = StringIO()
    call_command("rebuild_projections", "task_board", "--shadow", "--dry-run", stdout=plan)
    assert f"it failed at event #{boom.position} last time" in plan.getvalue()
    boss = django_user_model.objects.create_superuser("boss", password="x")
    browser = Client()
    browser.force_login(boss)
    page = browser.get(reverse("admin:django_eventsource_projectionstate_changelist"))
    assert f"shadow rebuild failed at #{boom.position}; the live tables serve" in (
        page.content.decode()
    )

    # Fix the handler (a deploy) and run it again: it resumes the shadow and swaps it in.
    monkeypatch.setattr(projections, "REFUSED_TITLE", None)
    call_command("rebuild_projections", "task_board", "--noinput", "--shadow", verbosity=0)
    assert task_board_rows() == fold_task_board(store)
    assert find_shadow_build("task_board", "default") is None
    call_command("projection_status", "task_board", "--check", stdout=StringIO())  # passes


@pytest.mark.usefixtures("postgresql")
def test_a_handler_that_raises_during_the_swap_rolls_the_swap_back_and_is_recorded() -> None:
    """The swap catches the shadow up with the events appended since the build's last batch,
    inside its transaction: a failure there rolls the swap back (the live tables stay) and
    is recorded once the rollback is done."""
    import threading
    from uuid import uuid4

    from django.db import connections

    from django_eventsource import RebuildAborted
    from tests.testapp.events import TaskCreated, TaskRenamed

    store = EventStore()
    task_history(store, tasks=4, seed=8)
    catch_up(TaskBoard(), event_store=store)
    before = task_board_rows()
    appended: list[Any] = []

    def append_boom() -> None:  # another connection, as another process would
        try:
            bad = uuid4()
            appended.extend(
                store.append(
                    bad,
                    [
                        TaskCreated(aggregate_id=bad, title="a"),
                        TaskRenamed(aggregate_id=bad, title="boom"),
                    ],
                )
            )
        finally:
            connections.close_all()

    def progress(kind: str, **data: Any) -> None:
        if kind == "done" and not appended:  # the build caught up; the swap comes next
            writer = threading.Thread(target=append_boom)
            writer.start()
            writer.join()

    with pytest.raises(RebuildAborted, match="stopped before its swap: its build failed"):
        rebuild(TaskBoard(), shadow=True, progress_callback=progress)
    boom = appended[1]
    assert task_board_rows() == before  # the swap rolled back
    build = find_shadow_build("task_board", "default")
    assert build is not None and build.failed_position == boom.position
    assert ProjectionState.objects.get(name="task_board").status == "idle"

"""The projection state machine (django_eventsource.state): one place changes a status, each
transition checks where it comes from, and the reported statuses (stale, inline)."""

from __future__ import annotations

import ast
import json
from datetime import timedelta
from pathlib import Path
from uuid import uuid4

import pytest
from django.utils import timezone

import django_eventsource
from django_eventsource import (
    EventStore,
    IllegalTransition,
    ProjectionError,
    ProjectionState,
    control,
    state,
)
from django_eventsource.models import ProjectionStatus as Status
from django_eventsource.status import projection_statuses
from tests.testapp.events import TaskCreated

pytestmark = pytest.mark.django_db(transaction=True)

NAME = "task_board"
DB = "default"


def status() -> str:
    return str(ProjectionState.objects.get(name=NAME, tenant_id="").status)


def put(value: str, owner: str = "", *, suspended: bool = False) -> None:
    """Set up a row in ``value`` (a test's precondition, written directly); ``suspended``:
    paused or failed in the middle of a rebuild."""
    ProjectionState.objects.update_or_create(
        name=NAME,
        tenant_id="",
        defaults={"status": value, "owner": owner, "suspended_rebuild": suspended},
    )


def row() -> ProjectionState:
    return ProjectionState.objects.get(name=NAME, tenant_id="")


def an_error() -> ProjectionError:
    event = TaskCreated(aggregate_id=uuid4(), title="t")
    try:
        raise ValueError("boom")
    except ValueError as exc:
        return ProjectionError(
            NAME,
            event_id=event.event_id,
            event_type="TaskCreated",
            position=7,
            cause=exc,
        )


# Every transition, from every status ------------------------------------------------------------

STORED = [Status.IDLE, Status.RUNNING, Status.REBUILDING, Status.PAUSED, Status.FAILED]


def run(transition: str) -> bool | None:
    """Run the transition by its name, as its caller does."""
    if transition == "start":
        return state.start(NAME, None, DB, owner="me")
    if transition == "finish":
        return state.finish(NAME, None, DB, owner="me", caught_up=False)
    if transition == "interrupt_rebuild":
        return state.interrupt_rebuild(NAME, None, DB, owner="me")
    if transition in ("begin_rebuild", "begin_paused_rebuild"):
        state.begin_rebuild(NAME, None, DB)
    elif transition == "finish_rebuild":
        return state.finish_rebuild(NAME, None, DB)
    elif transition == "fail":
        return state.fail(NAME, None, DB, an_error(), attempts=2, strict=True)
    elif transition == "fail_paused_rebuild":  # the runner of that rebuild
        return state.fail(NAME, None, DB, an_error(), attempts=2, owner="me", strict=True)
    elif transition == "pause":
        state.pause(NAME, None, DB)
    elif transition in ("resume", "resume_rebuild"):
        state.resume(NAME, None, DB)
    elif transition in ("set_aside", "set_aside_in_rebuild"):
        state.set_aside(NAME, None, DB, position=7)
    elif transition == "swap_shadow":
        state.swap_shadow(NAME, None, DB, position=7)
    return None


#: The transitions an operator's call makes in a suspended rebuild, and that call's name.
REBUILD_VARIANTS = {
    "resume_rebuild": "resume",
    "set_aside_in_rebuild": "set_aside",
    "begin_paused_rebuild": "begin_rebuild",
    "fail_paused_rebuild": "fail",
}


@pytest.mark.parametrize("transition", sorted(state.TRANSITIONS))
@pytest.mark.parametrize("source", STORED)
def test_each_transition_from_each_status(transition: str, source: str) -> None:
    step = state.TRANSITIONS[transition]
    # The rebuild's variants of resume, set_aside, begin_rebuild and fail: a row paused or
    # failed in the middle of a rebuild (only those statuses suspend one).
    in_rebuild = transition in REBUILD_VARIANTS
    put(source, owner="me", suspended=in_rebuild and source in state.SUSPENDED)
    if source in step.sources:
        run(transition)
        assert status() == step.target
        return
    # The rebuild's variants and their main transition: the call makes whichever applies.
    main = state.TRANSITIONS.get(REBUILD_VARIANTS.get(transition, ""))
    if transition.endswith("_paused_rebuild") and main and source in main.sources:
        run(transition)
        assert status() == main.target
        return
    if transition == "begin_rebuild" and source == Status.PAUSED:
        # A rebuild of a paused projection: it stays paused, its rebuild suspended.
        run(transition)
        began = ProjectionState.objects.get(name=NAME)
        assert (began.status, began.suspended_rebuild) == (Status.PAUSED, True)
        return
    if transition == "start" and source == Status.REBUILDING:
        # A runner continuing an interrupted rebuild claims the row; it stays rebuilding.
        assert run(transition) is True
    elif transition == "finish" and source == Status.REBUILDING:
        # A rebuild that stops before it caught up is interrupted: it stays rebuilding.
        assert run(transition) is True
        assert ProjectionState.objects.get(name=NAME).owner == ""
    elif transition in ("start", "finish", "finish_rebuild", "interrupt_rebuild"):
        # A runner's transitions: refused quietly, and the runner acts on what the row says.
        assert run(transition) is False
    elif transition == "swap_shadow":
        # The swap replaced the tables: a paused projection stays paused, its checkpoint moves.
        run(transition)
        row = ProjectionState.objects.get(name=NAME)
        assert (row.position, row.owner) == (7, "")
    else:
        with pytest.raises(IllegalTransition) as info:
            run(transition)
        assert info.value.current == source
        assert info.value.transition == REBUILD_VARIANTS.get(transition, transition)
        assert "Nothing was changed" in str(info.value)
    assert status() == source  # nothing changed


def test_the_transition_table() -> None:
    assert {name: (sorted(t.sources), t.target) for name, t in state.TRANSITIONS.items()} == {
        "start": (["idle", "running"], "running"),
        "finish": (["running"], "idle"),
        "begin_rebuild": (["failed", "idle", "rebuilding", "running"], "rebuilding"),
        "begin_paused_rebuild": (["paused"], "paused"),
        "finish_rebuild": (["rebuilding"], "idle"),
        "interrupt_rebuild": (["rebuilding"], "rebuilding"),
        "fail": (["rebuilding", "running"], "failed"),
        "fail_paused_rebuild": (["paused"], "failed"),
        "pause": (["failed", "idle", "rebuilding", "running"], "paused"),
        "resume": (["failed", "paused"], "idle"),
        "resume_rebuild": (["failed", "paused"], "rebuilding"),
        "set_aside": (["failed"], "idle"),
        "set_aside_in_rebuild": (["failed"], "rebuilding"),
        "swap_shadow": (["failed", "idle", "rebuilding", "running"], "idle"),
    }


def test_start_claims_the_row_and_keeps_a_rebuild_rebuilding() -> None:
    put(Status.REBUILDING, owner="a dead runner")
    assert state.start(NAME, None, DB, owner="me")
    row = ProjectionState.objects.get(name=NAME)
    assert (row.status, row.owner) == ("rebuilding", "me")
    assert row.heartbeat_at is not None


@pytest.mark.parametrize("held", [Status.PAUSED, Status.FAILED])
def test_start_skips_a_paused_or_failed_projection_and_claims_nothing(held: str) -> None:
    put(held, owner="someone")
    assert not state.start(NAME, None, DB, owner="me")
    assert ProjectionState.objects.get(name=NAME).owner == "someone"


def test_a_runner_that_lost_the_row_cannot_change_its_status() -> None:
    put(Status.RUNNING, owner="the successor")
    assert not state.finish(NAME, None, DB, owner="me", caught_up=True)
    assert not state.heartbeat(NAME, None, DB, owner="me")
    assert not state.fail(NAME, None, DB, an_error(), attempts=1, owner="me")
    assert status() == "running"
    assert state.finish(NAME, None, DB, owner="the successor", caught_up=True)
    assert ProjectionState.objects.get(name=NAME).owner == ""


def test_finish_keeps_an_interrupted_rebuild_rebuilding() -> None:
    put(Status.REBUILDING, owner="me")
    state.finish(NAME, None, DB, owner="me", caught_up=False)
    assert status() == "rebuilding"
    assert ProjectionState.objects.get(name=NAME).owner == ""  # no runner claims it now
    state.start(NAME, None, DB, owner="the next runner")  # it resumes the rebuild
    state.finish(NAME, None, DB, owner="the next runner", caught_up=True)
    assert status() == "idle"


def test_an_unclaimed_rebuild_is_reported_interrupted_a_claimed_one_rebuilding_or_stale() -> None:
    now = timezone.now()
    unclaimed = ProjectionState(name=NAME, status=Status.REBUILDING, owner="", heartbeat_at=now)
    assert state.reported_status(unclaimed, now=now) == "interrupted"
    # Interrupted, never stale: no runner is supposed to beat for it.
    later = now + timedelta(seconds=state.stale_after() + 60)
    assert state.reported_status(unclaimed, now=later) == "interrupted"
    claimed = ProjectionState(name=NAME, status=Status.REBUILDING, owner="me", heartbeat_at=now)
    assert state.reported_status(claimed, now=now) == "rebuilding"
    assert state.reported_status(claimed, now=later) == "stale"  # its runner died
    idle = ProjectionState(name=NAME, status=Status.IDLE, owner="")
    assert state.reported_status(idle, now=now) == "idle"


def test_begin_rebuild_claims_the_row_for_its_runner() -> None:
    put(Status.IDLE)
    state.begin_rebuild(NAME, None, DB, owner="the rebuild")
    row = ProjectionState.objects.get(name=NAME)
    assert (row.status, row.owner) == ("rebuilding", "the rebuild")
    assert row.heartbeat_at is not None
    assert projection_statuses([NAME])[0].status == "rebuilding"  # not interrupted


def test_fail_records_the_error_and_its_event() -> None:
    put(Status.RUNNING)
    state.fail(NAME, None, DB, an_error(), attempts=4)
    row = ProjectionState.objects.get(name=NAME)
    assert (row.status, row.failed_event_position, row.attempts) == ("failed", 7, 4)
    assert "ValueError: boom" in row.last_error and "Traceback" in row.last_error
    control.resume(NAME)
    row.refresh_from_db()
    assert (row.status, row.attempts) == ("idle", 0)


def test_control_refuses_what_makes_no_sense() -> None:
    put(Status.RUNNING)
    with pytest.raises(IllegalTransition, match="it is running"):
        control.resume(NAME)  # a running projection has nothing to resume
    control.pause(NAME)
    with pytest.raises(IllegalTransition, match="it is paused"):
        control.pause(NAME)
    with pytest.raises(IllegalTransition):
        control.record_failure(NAME, None, an_error(), attempts=1)
    assert status() == "paused"


# A rebuild paused or failed midway is suspended, not over ----------------------------------------


def reported() -> str:
    [line] = projection_statuses([NAME])
    return line.status


def test_pausing_a_rebuild_suspends_it_and_resuming_returns_it_to_rebuilding() -> None:
    """Before: resume made it ``idle``, and the rebuild's state was lost (appends then
    applied an inline projection to rows the replay had not reached)."""
    state.begin_rebuild(NAME, None, DB, owner="the rebuild")
    control.pause(NAME)
    assert (row().status, row().suspended_rebuild) == ("paused", True)
    control.resume(NAME)
    resumed = row()
    assert (resumed.status, resumed.suspended_rebuild) == ("rebuilding", False)
    # The rebuild that was running when it was paused may still be: it keeps its claim.
    assert resumed.owner == "the rebuild"
    assert reported() == "rebuilding"
    # Its runner carries on and hands it over.
    assert state.finish(NAME, None, DB, owner="the rebuild", caught_up=True)
    assert (status(), row().suspended_rebuild) == ("idle", False)


def test_a_rebuild_that_failed_is_suspended_and_retry_or_dead_letter_resume_it() -> None:
    """A failed event in a rebuild's replay: retrying it (resume), or setting it aside,
    returns the projection to ``rebuilding``, unclaimed (no runner works on a failed
    projection), so it is reported ``interrupted`` until a rebuild or a runner carries on."""
    for operate in ("retry", "dead_letter"):
        state.begin_rebuild(NAME, None, DB, owner="the rebuild")
        assert state.fail(NAME, None, DB, an_error(), attempts=3, owner="the rebuild")
        assert (row().status, row().suspended_rebuild) == ("failed", True)
        if operate == "retry":
            control.retry(NAME)
        else:
            control.dead_letter_failed(NAME)
        after = row()
        assert (after.status, after.suspended_rebuild, after.owner, after.attempts) == (
            "rebuilding",
            False,
            "",
            0,
        )
        assert reported() == "interrupted"
        if operate == "dead_letter":
            assert (after.position, after.failed_event_position) == (7, None)


def test_a_failed_rebuild_paused_stays_suspended() -> None:
    put(Status.REBUILDING, owner="the rebuild")
    state.fail(NAME, None, DB, an_error(), attempts=1, owner="the rebuild")
    control.pause(NAME)
    assert (row().status, row().suspended_rebuild) == ("paused", True)
    control.resume(NAME)
    assert status() == "rebuilding"


def test_pausing_or_failing_outside_a_rebuild_suspends_nothing() -> None:
    put(Status.RUNNING, owner="me")
    state.fail(NAME, None, DB, an_error(), attempts=1, owner="me")
    control.pause(NAME)  # from failed
    assert row().suspended_rebuild is False
    control.resume(NAME)
    assert status() == "idle"


def test_a_runner_that_lets_go_of_a_paused_rebuild_ends_its_claim() -> None:
    """Stopped cleanly while paused: the claim ends, the rebuild stays suspended (and is
    reported interrupted once resumed, not stale); caught up while paused (its replay
    went on to the end): the suspended rebuild is over, and resuming makes it idle."""
    put(Status.PAUSED, owner="the rebuild", suspended=True)
    assert not state.finish(NAME, None, DB, owner="another runner", caught_up=True)
    assert (row().owner, row().suspended_rebuild) == ("the rebuild", True)  # not its claim
    assert not state.finish(NAME, None, DB, owner="the rebuild", caught_up=False)
    assert (status(), row().owner, row().suspended_rebuild) == ("paused", "", True)
    control.resume(NAME)
    assert (status(), reported()) == ("rebuilding", "interrupted")

    put(Status.PAUSED, owner="the rebuild", suspended=True)
    state.finish(NAME, None, DB, owner="the rebuild", caught_up=True)
    assert (status(), row().owner, row().suspended_rebuild) == ("paused", "", False)
    control.resume(NAME)
    assert status() == "idle"

    put(Status.PAUSED, owner="a follower", suspended=True)
    state.finish_rebuild(NAME, None, DB)  # a follower's replay caught up
    assert (status(), row().suspended_rebuild) == ("paused", False)


@pytest.mark.parametrize("suspend", ["pause", "fail"])
def test_projection_status_says_a_rebuild_is_suspended(suspend: str) -> None:
    from io import StringIO

    from django.core.management import call_command

    put(Status.REBUILDING, owner="the rebuild")
    if suspend == "pause":
        control.pause(NAME)
    else:
        state.fail(NAME, None, DB, an_error(), attempts=1, owner="the rebuild")
    out = StringIO()
    call_command("projection_status", NAME, "--format", "json", stdout=out)
    [line] = json.loads(out.getvalue())["projections"]
    assert (line["status"], line["suspended_rebuild"]) == (
        "paused" if suspend == "pause" else "failed",
        True,
    )
    out = StringIO()
    call_command("projection_status", NAME, stdout=out)
    said = " ".join(out.getvalue().split())
    what = "Resuming it" if suspend == "pause" else "Retrying or dead-lettering the failed event"
    assert (
        f"in the middle of its rebuild, at event #0 of 0: the read model is half-built. {what}"
        in said
    )
    assert "returns it to the rebuild, which rebuild_projections task_board" in said
    paused = "While it is paused, rebuild_projections task_board carries it on too, and leaves"
    assert (paused in said) is (suspend == "pause")
    control.resume(NAME)
    out = StringIO()
    call_command("projection_status", NAME, stdout=out)
    assert "in the middle of its rebuild" not in out.getvalue()


@pytest.mark.parametrize(
    ("end", "suspended_by"), [("begin_rebuild", Status.FAILED), ("swap_shadow", Status.PAUSED)]
)
def test_a_new_rebuild_or_a_shadow_swap_ends_a_suspended_one(end: str, suspended_by: str) -> None:
    put(suspended_by, suspended=True)
    run(end)
    assert row().suspended_rebuild is False


def test_a_rebuild_of_a_paused_projection_keeps_it_paused_and_claims_it() -> None:
    """begin_rebuild made a paused projection `rebuilding`: the rebuild ended the
    operator's pause (a shadow rebuild's swap kept it)."""
    for suspended in (False, True):  # paused, or paused in the middle of a rebuild
        put(Status.PAUSED, owner="a dead rebuild", suspended=suspended)
        ProjectionState.objects.filter(name=NAME).update(last_error="old", attempts=3)
        state.begin_rebuild(NAME, None, DB, owner="me")
        began = row()
        assert (began.status, began.suspended_rebuild, began.owner) == ("paused", True, "me")
        assert (began.last_error, began.attempts, began.heartbeat_at is not None) == (
            "",
            0,
            True,
        )
    # Only a rebuild of a paused projection in the middle of its rebuild claims it.
    assert state.claim_paused_rebuild(NAME, None, DB, owner="next") is True
    assert row().owner == "next"
    put(Status.PAUSED, owner="", suspended=False)
    assert state.claim_paused_rebuild(NAME, None, DB, owner="next") is False
    assert row().owner == ""


def test_an_event_failing_in_a_paused_rebuild_fails_it_only_for_its_runner() -> None:
    put(Status.PAUSED, owner="me", suspended=True)
    assert state.fail(NAME, None, DB, an_error(), attempts=4, owner="someone else") is False
    assert status() == "paused"
    assert state.fail(NAME, None, DB, an_error(), attempts=4, owner="me") is True
    failed = row()
    assert (failed.status, failed.suspended_rebuild, failed.failed_event_position) == (
        "failed",
        True,
        7,
    )
    assert "at position 7: ValueError: boom" in failed.last_error
    put(Status.PAUSED, owner="me", suspended=False)  # paused, not in a rebuild: stays so
    assert state.fail(NAME, None, DB, an_error(), attempts=4, owner="me") is False
    assert status() == "paused"


# Reported statuses --------------------------------------------------------------------------------


def test_a_live_status_without_a_fresh_heartbeat_is_reported_stale(settings) -> None:
    settings.EVENTSOURCE = {**settings.EVENTSOURCE, "HEARTBEAT_INTERVAL": 2.0}
    assert state.stale_after() == 6.0
    now = timezone.now()
    for stored in (Status.RUNNING, Status.REBUILDING):
        row = ProjectionState(
            name=NAME, status=stored, owner="a runner", heartbeat_at=now - timedelta(seconds=5)
        )
        assert state.reported_status(row, now=now) == stored
        row.heartbeat_at = now - timedelta(seconds=7)
        assert state.reported_status(row, now=now) == Status.STALE
        row.heartbeat_at = None
        assert state.reported_status(row, now=now) == Status.STALE
    for stored in (Status.IDLE, Status.PAUSED, Status.FAILED):
        row = ProjectionState(name=NAME, status=stored, heartbeat_at=now - timedelta(days=1))
        assert state.reported_status(row, now=now) == stored


def test_status_rows_report_stale_and_inline_from_the_enum(settings) -> None:
    settings.EVENTSOURCE = {**settings.EVENTSOURCE, "HEARTBEAT_INTERVAL": 0.1}
    task = uuid4()
    EventStore().append(task, [TaskCreated(aggregate_id=task, title="t")])
    put(Status.RUNNING)
    ProjectionState.objects.filter(name=NAME).update(
        heartbeat_at=timezone.now() - timedelta(seconds=5)
    )
    rows = {row.projection: row for row in projection_statuses()}
    assert (rows[NAME].status, rows[NAME].stored_status) == ("stale", "running")
    assert rows["task_index"].status == Status.INLINE == "inline"
    assert {row.status for row in rows.values()} <= set(Status.values)


def test_an_inline_projection_is_reported_inline_after_a_rebuild() -> None:
    """A rebuild (or a catch-up) of an inline projection leaves a checkpoint that appends
    never move: its status said `idle` with a lag that grew with every append, so
    --check --max-lag, the health view and the lag metric all failed while it was current."""
    from django.core.management import call_command

    store = EventStore()
    for title, tenant in (("a", None), ("b", "acme")):  # acme: a tenant --tenant accepts
        task = uuid4()
        store.append(task, [TaskCreated(aggregate_id=task, title=title, tenant_id=tenant)])
    call_command("rebuild_projections", "task_index", "--noinput", verbosity=0)
    call_command("replay_projections", "task_index", "--tenant", "acme", verbosity=0)
    for tenant in (None, "acme"):
        task = uuid4()
        store.append(task, [TaskCreated(aggregate_id=task, title="c", tenant_id=tenant)])
    rows = projection_statuses(["task_index"])
    assert {(row.tenant_id, row.status, row.lag_events) for row in rows} == {
        ("", "inline", 0),
        ("acme", "inline", 0),
    }
    call_command("projection_status", "task_index", "--check", "--max-lag", "0", verbosity=0)
    # A failed one (a catch-up of it failed) says so, with its lag since that run.
    ProjectionState.objects.filter(name="task_index", tenant_id="").update(status=Status.FAILED)
    [row] = [r for r in projection_statuses(["task_index"]) if not r.tenant_id]
    assert (row.status, row.lag_events) == ("failed", 2)  # both appends since the rebuild
    # A pause stored by an earlier version is no pause: appends applied both events.
    ProjectionState.objects.filter(name="task_index", tenant_id="").update(status=Status.PAUSED)
    [row] = [r for r in projection_statuses(["task_index"]) if not r.tenant_id]
    assert (row.status, row.lag_events, row.stored_status) == ("inline", 0, "paused")


# One place changes a status -----------------------------------------------------------------------

PACKAGE = Path(django_eventsource.__file__).parent
#: Methods that write rows from keyword arguments (``defaults=`` included).
WRITERS = {"update", "create", "get_or_create", "update_or_create", "bulk_update"}


def _status_writes(source: str) -> list[int]:
    """Lines that write a ``status``: ``x.update(status=...)`` (and the other writers,
    directly or in ``defaults={"status": ...}``), or ``row.status = ...`` on anything but
    ``self``."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) in WRITERS:
            for keyword in node.keywords:
                if keyword.arg == "status" or (
                    keyword.arg == "defaults"
                    and isinstance(keyword.value, ast.Dict)
                    and any(
                        isinstance(k, ast.Constant) and k.value == "status"
                        for k in keyword.value.keys
                    )
                ):
                    lines.append(node.lineno)
        if isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if (
                    isinstance(target, ast.Attribute)
                    and target.attr == "status"
                    and not (isinstance(target.value, ast.Name) and target.value.id == "self")
                ):
                    lines.append(node.lineno)
    return lines


def test_only_the_state_module_writes_a_status() -> None:
    writers = {
        str(path.relative_to(PACKAGE)): lines
        for path in PACKAGE.rglob("*.py")
        if "migrations" not in path.parts and (lines := _status_writes(path.read_text()))
    }
    assert set(writers) == {"state.py"}, writers


def test_the_status_write_finder_finds_writes() -> None:
    """The test above can fail: the finder sees each way of writing a status."""
    source = (
        "rows.update(status='idle')\n"
        "State.objects.update_or_create(name='x', defaults={'status': 'idle'})\n"
        "row.status = 'paused'\n"
        "self.status = status\n"
    )
    assert sorted(_status_writes(source)) == [1, 2, 3]


@pytest.mark.parametrize(
    ("name", "tenant", "error", "says"),
    [
        ("nope", None, KeyError, "Unknown projection 'nope'"),
        ("task_board", "zzz-invented", django_eventsource.UnknownTenant, "Unknown tenant"),
        ("task_board", "a\x00", ValueError, "NUL"),
        ("task_board", "x" * 300, ValueError, "255"),
    ],
    ids=["unknown-projection", "unknown-tenant", "nul-tenant", "long-tenant"],
)
@pytest.mark.parametrize("operate", ["pause", "resume"])
def test_acting_on_what_nobody_knows_is_refused_and_writes_nothing(
    operate: str, name: str, tenant: str | None, error: type[Exception], says: str
) -> None:
    """A typo in ``control.pause``/``resume`` used to create a state row (shown in the status
    and the admin forever, listed as a known tenant); a NUL was stored on SQLite and a raw
    DataError on PostgreSQL. Now each is refused before anything is written, the same on
    both databases; a known tenant (it has events) can be paused and resumed."""
    from django_eventsource import EventStore, ProjectionState, control

    event = TaskCreated(aggregate_id=uuid4(), title="t", tenant_id="acme")
    EventStore().append(event.aggregate_id, [event])
    with pytest.raises(error, match=says):
        getattr(control, operate)(name, tenant)
    assert not ProjectionState.objects.exists()
    control.pause("task_board", "acme")
    control.resume("task_board", "acme")
    assert list(ProjectionState.objects.values_list("name", "tenant_id", "status")) == [
        ("task_board", "acme", Status.IDLE)
    ]

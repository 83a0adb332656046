"""The management commands, through call_command and once each as a real process."""

from __future__ import annotations

import gc
import json
import re
import signal
import subprocess
import sys
from io import StringIO
from typing import Any
from uuid import uuid4

import pytest
from django.core.management import CommandError, call_command

from django_eventsource import EventStore, ProjectionState
from django_eventsource.locks import lock_for
from tests.factories import task_history
from tests.fold import fold_task_board, task_board_rows
from tests.helpers import ROOT, all_events, child_env
from tests.testapp.events import TaskCreated, TaskRenamed

pytestmark = pytest.mark.django_db(transaction=True)


def run(*args: str, **options) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command(*args, stdout=out, stderr=err, **options)
    return out.getvalue(), err.getvalue()


def cli(db_url: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "django", *args],
        env=child_env(db_url),
        cwd=ROOT,
        capture_output=True,
        text=True,
        input=stdin,
        timeout=120,
        check=False,
    )


# replay_projections ------------------------------------------------------------------------


def test_replay_catches_up_and_reports() -> None:
    store = EventStore()
    task_history(store, tasks=10, seed=1)
    out, _ = run("replay_projections", "task_board", "tenant_stats", "--batch-size", "4")
    assert "Catching up projections:" in out
    assert "task_board 0 →" in out and "OK" in out
    assert task_board_rows() == fold_task_board(store)
    assert ProjectionState.objects.get(name="tenant_stats").position == store.head_position()


def test_replay_dry_run_writes_nothing() -> None:
    task_history(EventStore(), tasks=3, seed=2)
    out, _ = run("replay_projections", "--dry-run")
    assert "dry run" in out and "task_board: idle, from 0" in out
    assert task_board_rows() == {}
    assert not ProjectionState.objects.exclude(position=None).exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["task_bored"], "Unknown projection 'task_bored'. Did you mean 'task_board'?"),
        (["--batch-size", "0"], "--batch-size must be a positive integer."),
        (["--batch-size", "-3"], "--batch-size must be a positive integer."),
        (["--follow", "--dry-run"], "--follow and --dry-run cannot be combined"),
        (["task_board", "--all"], "not both"),
        (["--database", "nope"], "Unknown database 'nope'"),
    ],
)
def test_replay_bad_input(args: list[str], message: str) -> None:
    task_history(EventStore(), tasks=1)
    with pytest.raises(
        CommandError,
        match=message.replace("(", r"\(")
        .replace(")", r"\)")
        .replace("?", r"\?")
        .replace(".", r"\."),
    ):
        run("replay_projections", *args)
    assert not ProjectionState.objects.exclude(position=None).exists()


def test_replay_fails_with_exit_code_and_pauses() -> None:
    store = EventStore()
    bad = uuid4()
    store.append(
        bad,
        [TaskCreated(aggregate_id=bad, title="a"), TaskRenamed(aggregate_id=bad, title="boom")],
    )
    with pytest.raises(CommandError, match="failed and were paused: task_board") as info:
        run("replay_projections", "task_board")
    assert info.value.returncode == 1
    assert ProjectionState.objects.get(name="task_board").status == "failed"


@pytest.mark.slow
def test_replay_cli_exit_codes(child_db_url: str) -> None:
    task_history(EventStore(), tasks=2)
    bad = cli(child_db_url, "replay_projections", "nope")
    assert bad.returncode == 1
    assert "Unknown projection 'nope'" in bad.stderr
    good = cli(child_db_url, "replay_projections", "task_board")
    assert good.returncode == 0, good.stderr
    assert "OK" in good.stdout


# projection_status ---------------------------------------------------------------------------


def test_status_table_json_and_check() -> None:
    store = EventStore()
    task_history(store, tasks=3, seed=3)
    out, _ = run("projection_status")
    assert "PROJECTION" in out and "task_board" in out and "tenant_stats" in out
    data = json.loads(run("projection_status", "task_board", "--format", "json")[0])
    [row] = data["projections"]
    assert row["head"] == store.head_position()
    # Every committed event after the checkpoint, counted (not head - checkpoint).
    assert row["lag_events"] == row["behind_events"] == len(store.read_all())
    assert (row["held_events"], row["held_seconds"]) == (0, 0.0)
    assert data["horizon_holders"] == []
    assert row["status"] == "idle"
    assert (data["ok"], data["problems"]) == (True, [])  # no --max-lag: lag alone is fine
    with pytest.raises(SystemExit) as exit_info:
        run("projection_status", "--check", "--max-lag", "0")
    assert exit_info.value.code == 1
    # The JSON says why the check fails, as the health view does (not only on stderr).
    out = StringIO()
    with pytest.raises(SystemExit):
        call_command(
            "projection_status", "--check", "--max-lag", "0", "--format", "json", stdout=out
        )
    data = json.loads(out.getvalue())
    assert data["ok"] is False
    assert {(p["check"], p["projection"]) for p in data["problems"]} == {
        ("lag", "task_board"),
        ("lag", "tenant_stats"),
    }
    run("replay_projections")
    run("projection_status", "--check", "--max-lag", "0")  # caught up: no exit
    data = json.loads(run("projection_status", "--check", "--max-lag", "0", "--format", "json")[0])
    assert (data["ok"], data["problems"]) == (True, [])
    with pytest.raises(CommandError, match="only makes sense with --check"):
        run("projection_status", "--max-lag", "3")
    with pytest.raises(CommandError, match="only makes sense with --check"):
        run("projection_status", "--max-held-seconds", "3")
    for bad in ("-1", "nan", "inf"):
        with pytest.raises(CommandError, match="--max-held-seconds must be a finite number"):
            run("projection_status", "--check", "--max-held-seconds", bad)
    run("projection_status", "--check", "--max-held-seconds", "0")  # nothing held: no exit


@pytest.mark.slow
def test_status_check_cli(child_db_url: str) -> None:
    store = EventStore()
    bad = uuid4()
    store.append(
        bad,
        [TaskCreated(aggregate_id=bad, title="a"), TaskRenamed(aggregate_id=bad, title="boom")],
    )
    cli(child_db_url, "replay_projections", "task_board")
    result = cli(child_db_url, "projection_status", "--check")
    assert result.returncode == 1
    assert "Check failed: task_board: failed at event #" in result.stderr
    assert "failed" in result.stdout


# rebuild_projections -------------------------------------------------------------------------


def test_rebuild_resets_and_replays() -> None:
    store = EventStore()
    task_history(store, tasks=6, seed=4)
    run("replay_projections", "task_board")
    from tests.testapp.models import TaskSummary

    TaskSummary.objects.update(title="tampered")
    out, _ = run("rebuild_projections", "task_board", "--noinput", "--batch-size", "5")
    assert "will delete 6 rows" in out
    assert task_board_rows() == fold_task_board(store)
    assert ProjectionState.objects.get(name="task_board").status == "idle"


def test_a_tenant_rebuild_plans_to_delete_that_tenant_s_rows_only() -> None:
    """--dry-run (and the admin's confirmation page) counted every tenant's rows."""
    from tests.testapp.models import TaskSummary

    store = EventStore()
    task_history(store, tasks=4, seed=5, tenants=("acme",))
    task_history(store, tasks=3, seed=6, tenants=("globex",))
    run("replay_projections", "task_board", "--tenant", "acme")
    run("replay_projections", "task_board", "--tenant", "globex")
    assert TaskSummary.objects.count() == 7
    out, _ = run("rebuild_projections", "task_board", "--tenant", "globex", "--dry-run")
    assert "will delete 3 rows" in out, out
    with pytest.raises(CommandError, match="Unknown tenant 'nobody'"):  # not "0 rows"
        run("rebuild_projections", "task_board", "--tenant", "nobody", "--dry-run")
    out, _ = run("rebuild_projections", "task_board", "--dry-run")
    assert "will delete 7 rows" in out, out
    assert TaskSummary.objects.count() == 7


def test_a_tenant_rebuild_plans_to_replay_up_to_that_tenant_s_last_event() -> None:
    """It said "replay up to N events", N the store's head: every tenant's last event."""
    store = EventStore()
    task_history(store, tasks=3, seed=17, tenants=("acme",))
    task_history(store, tasks=4, seed=18, tenants=("globex",))  # the head is globex's
    acme = store.read_all(tenant_id="acme").events
    last = max(e.position for e in acme)
    assert last < store.head_position()
    run("replay_projections", "task_board", "--tenant", "acme")
    out, _ = run("rebuild_projections", "task_board", "--tenant", "acme", "--dry-run")
    assert (
        f"task_board: will delete 3 rows of testapp_tasksummary and replay up to event "
        f"#{last} (tenant acme: {len(acme)} events)."
    ) in out, out
    assert f"up to {store.head_position()}" not in out
    from django_eventsource.rebuild import plan_rebuild
    from tests.testapp.projections import TaskBoard

    plan = plan_rebuild(TaskBoard(), tenant_id="acme")
    assert (plan.events, plan.tenant_events) == (last, len(acme))
    whole = plan_rebuild(TaskBoard())
    assert (whole.events, whole.tenant_events) == (store.head_position(), None)


@pytest.mark.slow
def test_the_plan_counts_the_events_the_replay_applies_as_its_summary_does(
    child_db_url: str, vendor: str
) -> None:
    """It said "replay up to H events", H the head's position: not a count (positions have
    gaps), and on PostgreSQL events an open appending transaction holds back are not
    replayed. The plan now counts what the replay reads, the number its summary ends with.
    SQLite has no horizon (an open writer would block the append): its twin has no held
    events, and the counts agree all the same."""
    from django_eventsource.rebuild import plan_rebuild
    from tests.concurrency.test_writers import start_hold, tell, wait
    from tests.testapp.projections import TaskBoard

    store = EventStore()
    task_history(store, tasks=3, seed=18)
    readable = len(all_events(store))
    worker = start_hold(child_db_url, str(uuid4()))[0] if vendor == "postgresql" else None
    try:
        held = 0
        if worker is not None:  # committed after the open append took its id: held back
            task_history(store, tasks=2, seed=19)
            held = store.pending_events(0).held  # what the horizon holds back now
            assert held > 0 and store.pending_events(0).readable == readable
        plan = plan_rebuild(TaskBoard())
        assert (plan.replayed, plan.held) == (readable, held)
        assert plan.events == store.head_position()  # a position, not what is replayed
        out, _ = run("rebuild_projections", "task_board", "--noinput")
        said = (
            f"task_board: will delete 0 rows of testapp_tasksummary and replay {readable} events"
        )
        if held:
            said += (
                f" ({held} more committed, held back by a transaction still open: the next "
                "catch-up applies them if the replay does not)."
            )
        else:
            said += "."
        assert said in out, out
        assert f"({readable} events, " in out, out  # the summary: "task_board 0 → P (N events"
    finally:
        if worker is not None:
            tell(worker, "commit")
            wait(worker)


def test_rebuild_needs_names_and_confirmation(monkeypatch: pytest.MonkeyPatch) -> None:
    task_history(EventStore(), tasks=2)
    run("replay_projections", "task_board")
    before = task_board_rows()
    with pytest.raises(CommandError, match="or pass --all"):
        run("rebuild_projections", "--noinput")
    monkeypatch.setattr("builtins.input", lambda prompt: "no")
    with pytest.raises(CommandError, match="Rebuild cancelled"):
        run("rebuild_projections", "task_board")
    with pytest.raises(CommandError, match="--batch-size must be a positive integer"):
        run("rebuild_projections", "task_board", "--noinput", "--batch-size", "-1")
    out, _ = run("rebuild_projections", "task_board", "--dry-run")
    assert "Dry run" in out
    assert task_board_rows() == before


def test_rebuild_refuses_while_a_runner_holds_the_projection() -> None:
    task_history(EventStore(), tasks=2)
    run("replay_projections", "task_board")
    before = task_board_rows()
    lock = lock_for("task_board", None, "default")
    assert lock.acquire()
    try:
        with pytest.raises(CommandError) as info:
            run("rebuild_projections", "task_board", "--noinput")
    finally:
        lock.release()
    # The advice once, not twice ("... or wait for it. Nothing was changed. Stop that
    # runner, or run again with --wait.").
    assert re.fullmatch(
        r"Projection 'task_board' is locked by .*\. Stop that runner first, or wait for it\. "
        r"Nothing was changed \(--wait waits for it\)\.",
        str(info.value),
    ), str(info.value)
    assert task_board_rows() == before


@pytest.mark.slow
def test_rebuild_cli(child_db_url: str) -> None:
    store = EventStore()
    task_history(store, tasks=4, seed=5)
    result = cli(child_db_url, "rebuild_projections", "task_board", "--noinput")
    assert result.returncode == 0, result.stderr
    assert task_board_rows() == fold_task_board(store)
    refused = cli(child_db_url, "rebuild_projections", "task_board", stdin="no\n")
    assert refused.returncode == 1
    assert "Rebuild cancelled" in refused.stderr
    # No terminal to answer (cron, CI): a cancellation, not an EOFError traceback.
    unanswered = cli(child_db_url, "rebuild_projections", "task_board", stdin="")
    assert unanswered.returncode == 1
    assert "Traceback" not in unanswered.stderr, unanswered.stderr
    assert "Rebuild cancelled: no answer (pass --noinput to rebuild without asking)" in (
        unanswered.stderr
    )


# --tenant: only a tenant the projection knows ------------------------------------------------


def tenant_rows() -> list[tuple[str, str]]:
    return sorted(ProjectionState.objects.exclude(tenant_id="").values_list("name", "tenant_id"))


@pytest.mark.parametrize(
    "command",
    [
        ["replay_projections"],
        ["replay_projections", "--dry-run"],
        ["rebuild_projections", "--noinput"],
        ["rebuild_projections", "--dry-run"],
        ["rebuild_projections", "--noinput", "--atomic"],
        ["projection_status"],
        ["projection_status", "--check"],
    ],
)
def test_an_unknown_tenant_is_refused_and_nothing_is_written(command: list[str]) -> None:
    """A typo created a state row for an invented tenant, shown forever after (and
    ``projection_status --check --tenant acmee`` checked nothing and passed)."""
    store = EventStore()
    task_history(store, tasks=4, seed=7, tenants=("acme", "globex"))
    run("replay_projections", "task_board", "--tenant", "acme")
    before = task_board_rows()
    with pytest.raises(CommandError) as info:
        run(*command, "task_board", "--tenant", "acmee")
    message = str(info.value)
    assert "Unknown tenant 'acmee' for projection 'task_board'" in message
    assert "Did you mean 'acme'?" in message
    assert "'acme', 'globex'" in message and "Nothing was changed." in message
    with pytest.raises(CommandError, match="Unknown tenant 'acmee' for projection 'task_board'"):
        run(*command, "--all", "--tenant", "acmee")
    assert tenant_rows() == [("task_board", "acme")]
    assert task_board_rows() == before


@pytest.mark.parametrize(
    ("tenant", "message"),
    [
        ("", "--tenant '' is not a tenant id: leave --tenant out for every tenant's events"),
        ("x" * 256, "--tenant: tenant_id is 256 characters long"),
        ("a\x00b", "--tenant: tenant_id contains a NUL character"),
    ],
)
@pytest.mark.parametrize("command", [["replay_projections"], ["rebuild_projections", "--noinput"]])
def test_a_tenant_no_event_can_carry_is_refused(
    command: list[str], tenant: str, message: str
) -> None:
    """``--tenant ""`` read only the events without a tenant into the checkpoint of every
    tenant's events (the others were skipped for good); 256 characters created a state row
    on SQLite that broke projection_status, and a raw DataError on PostgreSQL."""
    store = EventStore()
    task_history(store, tasks=4, seed=8, tenants=(None, "acme"))
    with pytest.raises(CommandError, match=re.escape(message)):
        run(*command, "task_board", "--tenant", tenant)
    assert not ProjectionState.objects.filter(name="task_board").exists()
    run("projection_status")  # still works
    run("replay_projections", "task_board")
    assert task_board_rows() == fold_task_board(store)


def test_a_tenant_is_known_by_its_events_or_its_state_row() -> None:
    """The commands accept what the admin accepts: a tenant whose first events were just
    appended (no state row yet), and one with a state row of this projection."""
    store = EventStore()
    task_history(store, tasks=2, seed=9, tenants=("acme",))
    run("replay_projections", "task_board", "--tenant", "acme")
    task_history(store, tasks=2, seed=10, tenants=("newco",))  # its first events
    out, _ = run("rebuild_projections", "task_board", "--tenant", "newco", "--noinput")
    assert "task_board 0 →" in out and "OK" in out
    assert tenant_rows() == [("task_board", "acme"), ("task_board", "newco")]
    # tenant_stats knows neither yet: no state row, and it asks the events, which it has.
    out, _ = run("replay_projections", "tenant_stats", "--tenant", "newco")
    assert "OK" in out
    # A state row without events (one a run created before this check) stays reachable,
    # for this projection only, as in the admin.
    ProjectionState.objects.create(name="task_board", tenant_id="gone")
    run("replay_projections", "task_board", "--tenant", "gone")
    with pytest.raises(CommandError, match="Unknown tenant 'gone'"):
        run("replay_projections", "tenant_stats", "--tenant", "gone")
    # The status shows a tenant that any of the projections knows.
    out, _ = run("projection_status", "--tenant", "gone")
    assert re.search(r"^task_board +gone +idle", out, re.MULTILINE), out


def test_the_refusal_lists_the_tenants_nearest_to_the_typo() -> None:
    # Names other tests use too: the metrics label only the first 20 tenants a process sees.
    tenants = ("a", "acme", "c", "globex", "initech", "newco", "t1", "t2")
    task_history(EventStore(), tasks=len(tenants), seed=11, tenants=tenants)
    with pytest.raises(CommandError) as info:
        run("replay_projections", "task_board", "--tenant", "globx")
    listed = re.search(
        r"Known tenants \(the nearest in sort order\): (.*)\. Nothing", str(info.value)
    )
    assert listed is not None
    assert listed.group(1) == "'acme', 'c', 'globex', 'initech', 'newco', 't1'"
    assert "Did you mean 'globex'?" in str(info.value)


@pytest.mark.slow
def test_a_new_tenant_is_known_while_the_horizon_still_holds_its_first_events(
    child_db_url: str, vendor: str
) -> None:
    """Known means committed, not readable: on PostgreSQL an open appending transaction
    holds a new tenant's first events back from readers, and the tenant is known anyway.
    SQLite has no horizon (its open writer would block the append), so there the events are
    readable at once; the twin asserts that."""
    from tests.concurrency.test_writers import start_hold, tell, wait

    store = EventStore()
    worker = start_hold(child_db_url, str(uuid4()))[0] if vendor == "postgresql" else None
    try:
        task_history(store, tasks=2, seed=12, tenants=("newco",))
        readable = store.read_all(tenant_id="newco").events
        if worker is not None:
            assert readable == []  # committed, held back
        else:
            assert readable
        out, _ = run("replay_projections", "task_board", "--tenant", "newco")
        assert "OK" in out
        if worker is not None:
            assert "still held back" in out
    finally:
        if worker is not None:
            tell(worker, "commit")
            wait(worker)
    run("replay_projections", "task_board", "--tenant", "newco")
    assert task_board_rows() == fold_task_board(store)


# How a rebuild ends, as an operator reads it ---------------------------------------------------


def test_a_quiet_rebuild_prints_nothing_and_a_dry_run_still_prints_its_plan() -> None:
    task_history(EventStore(), tasks=3, seed=14)
    out, err = run("rebuild_projections", "task_board", "--noinput", verbosity=0)
    assert (out, err) == ("", "")  # the plan was printed at -v0
    out, _ = run("rebuild_projections", "task_board", "--dry-run", verbosity=0)
    assert "task_board: will delete 3 rows" in out and "Dry run" in out


def test_the_plan_of_an_interrupted_rebuild_says_resume_or_start_over() -> None:
    """It read "will resume the interrupted rebuild of replay up to N events", and said
    "resume" with --restart too, which starts over."""
    store = EventStore()
    task_history(store, tasks=4, seed=15)
    run("replay_projections", "task_board")
    feed = [e.position for e in all_events(store)]
    third = feed[2]
    ProjectionState.objects.filter(name="task_board").update(status="rebuilding", position=third)
    out, _ = run("rebuild_projections", "task_board", "--dry-run")
    assert (
        "task_board: will resume the interrupted rebuild of testapp_tasksummary from event "
        f"#{third} and replay {len(feed) - 3} events."  # the events after it, in feed order
    ) in out
    out, _ = run("rebuild_projections", "task_board", "--dry-run", "--restart")
    assert (
        f"task_board: will delete 4 rows of testapp_tasksummary and replay {len(feed)} events."
    ) in out


def test_a_replay_dry_run_counts_the_tenant_s_events() -> None:
    """It printed the head minus the checkpoint: every tenant's events (and the gaps)."""
    store = EventStore()
    task_history(store, tasks=6, seed=16, tenants=("acme", "globex"))
    acme = len(store.read_all(tenant_id="acme"))
    assert 0 < acme < store.head_position()
    out, _ = run("replay_projections", "task_board", "--tenant", "acme", "--dry-run")
    assert f"task_board: idle, from 0 to {store.head_position()} ({acme} events)" in out


def test_shadow_and_wait_are_refused_together(vendor: str) -> None:
    """--wait did nothing with --shadow (it takes no runner lock); its refusal comes first on
    both backends."""
    task_history(EventStore(), tasks=2, seed=17)
    with pytest.raises(CommandError, match="a --shadow rebuild leaves the live runner running"):
        run("rebuild_projections", "task_board", "--noinput", "--shadow", "--wait")
    assert not ProjectionState.objects.exists()


def test_another_shadow_rebuild_is_named_as_such(vendor: str) -> None:
    """It said "is locked by another shadow rebuild. Stop that runner first ... run again
    with --wait", and --wait does not wait for a shadow rebuild."""
    from django_eventsource.backends.postgresql.locks import PostgresAdvisoryLock
    from tests.helpers import drop_shadow_schemas

    task_history(EventStore(), tasks=2, seed=18)
    if vendor == "sqlite":  # the twin: SQLite has no shadow rebuild at all
        with pytest.raises(CommandError, match="not supported on the 'sqlite' backend"):
            run("rebuild_projections", "task_board", "--noinput", "--shadow")
        return
    drop_shadow_schemas()
    other = PostgresAdvisoryLock("task_board#shadow", None, "default")
    assert other.acquire()
    try:
        with pytest.raises(CommandError) as info:
            run("rebuild_projections", "task_board", "--noinput", "--shadow")
    finally:
        other.release()
        drop_shadow_schemas()
    assert str(info.value) == (
        "Another shadow rebuild of 'task_board' is running. Nothing was changed; let it "
        "finish (stopped, its shadow is kept and the next one resumes it)."
    )
    gc.collect()  # the session it opened to try the lock was left open (a ResourceWarning)


def test_a_failed_rebuild_says_where_and_what_next_and_leaves_the_rest_alone() -> None:
    store = EventStore()
    task_history(store, tasks=3, seed=19)
    bad = uuid4()
    store.append(bad, [TaskCreated(aggregate_id=bad, title="a")])
    [boom] = store.append(bad, [TaskRenamed(aggregate_id=bad, title="boom")])
    with pytest.raises(CommandError) as info:
        run("rebuild_projections", "task_board", "tenant_stats", "--noinput")
    assert info.value.returncode == 1
    message = str(info.value)
    assert message.startswith(
        "Rebuild of 'task_board' failed: Projection 'task_board' failed on event TaskRenamed "
        f"{boom.event_id} at position {boom.position}: ValueError: the handler refuses"
    ), message
    assert message.endswith(
        "fix the handler, then retry the event (admin, or control.retry()) and "
        "rebuild_projections task_board carries the rebuild on from there (run without the "
        "retry, it starts over). Not rebuilt: tenant_stats."
    ), message
    assert not ProjectionState.objects.filter(name="tenant_stats").exists()


def test_a_rebuild_that_loses_its_lock_says_so_instead_of_a_traceback(
    settings: Any, monkeypatch: pytest.MonkeyPatch, vendor: str
) -> None:
    """Another runner took the projection over mid-rebuild: the private _LockLost escaped
    as a traceback. The handler hands the state row to "a successor" inside a batch, as a
    runner that took over would (tests/testapp/projections.py)."""
    from tests.testapp import projections

    settings.EVENTSOURCE = {**settings.EVENTSOURCE, "HEARTBEAT_INTERVAL": 0.001}
    store = EventStore()
    task_history(store, tasks=10, seed=20)
    monkeypatch.setattr(projections, "TAKEOVER_AFTER", projections._handled + 5)
    with pytest.raises(CommandError) as info:
        run("rebuild_projections", "task_board", "tenant_stats", "--noinput", "--batch-size", "2")
    assert info.value.returncode == 1
    state = ProjectionState.objects.get(name="task_board")
    assert (state.status, state.owner) == ("rebuilding", "a successor")
    assert str(info.value) == (
        f"Rebuild of 'task_board' lost its lock to a successor at event #{state.position}: "
        "the batch in hand was rolled back. It stays rebuilding, and the runner that holds "
        "it now continues the replay from there. Not rebuilt: tenant_stats."
    )


@pytest.mark.slow
# --atomic: tests/integration/test_rebuild_signals.py (its first progress line reached this
# test only as the process exited, where a signal killed it: exit -2, once in CI).
@pytest.mark.parametrize("mode", ["default", "shadow"])
def test_a_stopped_rebuild_says_how_to_resume_and_leaves_the_rest_alone(
    child_db_url: str, vendor: str, mode: str
) -> None:
    """SIGINT stops the projection in hand; the command says where, names the projections
    it leaves alone and ends (exit 0: a clean stop). A
    stopped shadow rebuild went on to the next projection, and said only "stopped before
    the swap" (not at -v0)."""
    from django_eventsource.shadow import find_shadow_build
    from tests.helpers import drop_shadow_schemas, start_command, wait_for

    shadow = mode == "shadow"
    store = EventStore()
    task_history(store, tasks=30, seed=21)
    if shadow and vendor == "sqlite":  # the twin: SQLite has no shadow rebuild
        with pytest.raises(CommandError, match="not supported on the 'sqlite' backend"):
            run("rebuild_projections", "task_board", "--noinput", "--shadow")
        return
    run("replay_projections", "task_board", "tenant_stats")
    stats_before = ProjectionState.objects.get(name="tenant_stats").updated_at
    if shadow:
        drop_shadow_schemas()  # the test database's flush does not reach them
    process = start_command(
        child_db_url,
        *("rebuild_projections", "task_board", "tenant_stats", "--noinput", "--batch-size", "2"),
        *(["--shadow"] if shadow else []),
        TESTAPP_HANDLER_SLEEP="0.05",
    )
    try:

        def progressed() -> bool:
            if shadow:
                build = find_shadow_build("task_board", "default")
                return build is not None and build.position > 0
            return ProjectionState.objects.filter(
                name="task_board", status="rebuilding", position__gt=0
            ).exists()

        assert wait_for(progressed)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, out + err
    if shadow:
        build = find_shadow_build("task_board", "default")
        assert build is not None
        assert (
            f"task_board: the shadow rebuild stopped before its swap, built up to event "
            f"#{build.position}; the live tables still serve, nothing was swapped: run "
            "rebuild_projections task_board --shadow again to resume it. Not rebuilt: "
            "tenant_stats."
        ) in out, out + err
        assert ProjectionState.objects.get(name="task_board").status == "idle"
    else:
        state = ProjectionState.objects.get(name="task_board")
        assert state.status == "rebuilding"
        assert (
            f"task_board: the rebuild stopped at event #{state.position} before it caught up; "
            "the read model is half-built until it is resumed: run rebuild_projections "
            "task_board again (a catch-up of it, replay_projections task_board, resumes it "
            "too). Not rebuilt: tenant_stats."
        ) in out, out + err
        plan, _ = run("rebuild_projections", "task_board", "--dry-run")
        assert (
            "task_board: will resume the interrupted rebuild of testapp_tasksummary from "
            f"event #{state.position} and replay"
        ) in plan
    assert ProjectionState.objects.get(name="tenant_stats").updated_at == stats_before
    try:
        run("rebuild_projections", "task_board", "--noinput", *(["--shadow"] if shadow else []))
    finally:
        if shadow:
            drop_shadow_schemas()
    assert task_board_rows() == fold_task_board(store)


def test_a_rebuild_of_a_paused_projection_that_loses_its_lock_says_what_is_left(
    settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It said "It stays rebuilding, and the runner that holds it now continues the
    replay": a paused projection is not rebuilding, and workers skip it while it is
    paused, so nobody did (only a rebuild carries it on, or a resume)."""
    from django_eventsource import control
    from tests.testapp import projections

    settings.EVENTSOURCE = {**settings.EVENTSOURCE, "HEARTBEAT_INTERVAL": 0.001}
    store = EventStore()
    task_history(store, tasks=10, seed=22)
    run("replay_projections", "task_board")
    control.pause("task_board")
    monkeypatch.setattr(projections, "TAKEOVER_AFTER", projections._handled + 5)
    with pytest.raises(CommandError) as info:
        run("rebuild_projections", "task_board", "--noinput", "--batch-size", "2")
    assert info.value.returncode == 1
    state = ProjectionState.objects.get(name="task_board")
    assert (state.status, state.suspended_rebuild, state.owner) == ("paused", True, "a successor")
    assert str(info.value) == (
        f"Rebuild of 'task_board' lost its lock to a successor at event #{state.position}: "
        "the batch in hand was rolled back. It is paused in the middle of its rebuild, "
        "which workers skip while it is paused: another rebuild_projections task_board "
        "carries the rebuild on from there (it stays paused), or resume it (admin, or "
        "control.resume()) for a worker to."
    )

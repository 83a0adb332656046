"""The management commands, through call_command and once each as a real process."""

from __future__ import annotations

import json
import subprocess
import sys
from io import StringIO
from uuid import uuid4

import pytest
from django.core.management import CommandError, call_command

from django_eventsource import EventStore, ProjectionState
from django_eventsource.locks import lock_for
from tests.factories import task_history
from tests.fold import fold_task_board, task_board_rows
from tests.helpers import ROOT, child_env
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
    assert row["lag_events"] == store.head_position()
    assert row["status"] == "idle"
    with pytest.raises(SystemExit) as exit_info:
        run("projection_status", "--check", "--max-lag", "0")
    assert exit_info.value.code == 1
    run("replay_projections")
    run("projection_status", "--check", "--max-lag", "0")  # caught up: no exit
    with pytest.raises(CommandError, match="only makes sense with --check"):
        run("projection_status", "--max-lag", "3")


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
    assert "task_board (failed" in result.stderr
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
        with pytest.raises(CommandError, match=r"is locked by .*Nothing was changed"):
            run("rebuild_projections", "task_board", "--noinput")
    finally:
        lock.release()
    assert task_board_rows() == before


def test_rebuild_cli(child_db_url: str) -> None:
    store = EventStore()
    task_history(store, tasks=4, seed=5)
    result = cli(child_db_url, "rebuild_projections", "task_board", "--noinput")
    assert result.returncode == 0, result.stderr
    assert task_board_rows() == fold_task_board(store)
    refused = cli(child_db_url, "rebuild_projections", "task_board", stdin="no\n")
    assert refused.returncode == 1
    assert "Rebuild cancelled" in refused.stderr

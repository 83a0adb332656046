"""SIGINT and SIGTERM stop ``rebuild_projections`` cleanly wherever they land, in a real
process: the documented exit code (0; ``--atomic``: 1), a message, and an ``--atomic``
read model either wholly old or wholly new.

The runner installed its handlers for one rebuild at a time and restored Python's default
between them and before the first, so a signal there raised ``KeyboardInterrupt`` and
killed the process (exit -2, in CI once). Each test waits for a marker (a line of output,
a lock the command waits for), never for a time.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection, models, transaction

from django_eventsource import EventStore, ProjectionState
from tests.factories import task_history
from tests.fold import fold_task_board, task_board_rows
from tests.helpers import start_command, wait_for
from tests.testapp.models import TaskSummary

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

REBUILD = ("rebuild_projections", "task_board", "tenant_stats", "--noinput", "--batch-size", "2")


class Output:
    """A process's stdout and stderr, read line by line as they come (no pipe fills up)."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.out: list[str] = []
        self.err: list[str] = []
        self._threads = [
            threading.Thread(target=self._read, args=(stream, lines), daemon=True)
            for stream, lines in ((process.stdout, self.out), (process.stderr, self.err))
        ]
        for thread in self._threads:
            thread.start()

    @staticmethod
    def _read(stream: Any, lines: list[str]) -> None:
        with stream:
            lines.extend(stream)

    def saw(self, text: str) -> bool:
        return any(text in line for line in list(self.out))

    def wait(self) -> tuple[int, str, str]:
        returncode = self.process.wait(timeout=120)
        for thread in self._threads:
            thread.join(timeout=30)
        return returncode, "".join(self.out), "".join(self.err)


@contextlib.contextmanager
def rebuilding(db_url: str, *args: str, **env: str) -> Iterator[Output]:
    process = start_command(db_url, *REBUILD, *args, PYTHONUNBUFFERED="1", **env)
    try:
        yield Output(process)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                with contextlib.suppress(ValueError, OSError):
                    stream.close()


def signal_repeatedly(process: subprocess.Popen[str]) -> None:
    """Ctrl-C, then Ctrl-C again and a SIGTERM, as an impatient operator would."""
    for signum in (signal.SIGINT, signal.SIGINT, signal.SIGTERM):
        process.send_signal(signum)


def old_rows(store: EventStore) -> tuple[dict[Any, dict], dict[Any, dict]]:
    """Catch the projections up, then make every task_board row differ from a rebuild's
    (renames + 1000): returns those rows and the rows a rebuild makes."""
    from django.core.management import call_command

    call_command("replay_projections", "task_board", "tenant_stats", verbosity=0)
    TaskSummary.objects.update(renames=models.F("renames") + 1000)
    return task_board_rows(), fold_task_board(store)


def states() -> dict[str, tuple[str, int | None]]:
    return {s.name: (s.status, s.position) for s in ProjectionState.objects.all()}


@contextlib.contextmanager
def blocking_the_plan(vendor: str, process: subprocess.Popen[str]) -> Iterator[None]:
    """Hold a lock that the command waits for before its first rebuild starts, and return
    once it waits: PostgreSQL, task_board's table (its plan counts the rows); SQLite, the
    whole database (the checks before the plan read it; a reader waits for an exclusive
    lock without WAL)."""
    if vendor == "postgresql":
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute(f"LOCK TABLE {TaskSummary._meta.db_table} IN ACCESS EXCLUSIVE MODE")

            def waits() -> bool:
                with connection.cursor() as cursor:
                    cursor.execute(
                        "SELECT 1 FROM pg_locks WHERE relation = %s::regclass AND NOT granted",
                        [TaskSummary._meta.db_table],
                    )
                    return cursor.fetchone() is not None

            assert wait_for(waits), "the command never waited for the lock"
            yield
        return
    path = connection.settings_dict["NAME"]
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")

        def opened() -> bool:  # it opens the database to read it, and waits there
            fds = f"/proc/{process.pid}/fd"
            with contextlib.suppress(OSError):
                return any(
                    os.path.realpath(os.path.join(fds, fd)) == os.path.realpath(path)
                    for fd in os.listdir(fds)
                )
            return False

        assert wait_for(opened), "the command never opened the database"
        yield
        holder.execute("ROLLBACK")
    finally:
        holder.close()


@pytest.mark.parametrize("atomic", [True, False], ids=["atomic", "default"])
def test_a_signal_before_the_first_rebuild_changes_nothing_and_exits_as_documented(
    child_db_url: str, vendor: str, atomic: bool
) -> None:
    """Signals while the command checks and plans (before any rebuild installed the
    runner's handlers) raised KeyboardInterrupt: a traceback and exit -2."""
    store = EventStore()
    task_history(store, tasks=8, seed=31)
    before, _ = old_rows(store)
    states_before = states()
    with rebuilding(child_db_url, *(["--atomic"] if atomic else [])) as output:
        with blocking_the_plan(vendor, output.process):
            signal_repeatedly(output.process)
        returncode, out, err = output.wait()
    said = (
        "Stopped by SIGINT before the rebuild of task_board started: nothing of it was "
        "changed. Not rebuilt: task_board, tenant_stats."
    )
    if atomic:
        assert (returncode, said in err) == (1, True), out + err
    else:
        assert (returncode, said in out) == (0, True), out + err
    assert "Traceback" not in err, err
    assert task_board_rows() == before
    assert states() == states_before


def test_signals_during_an_atomic_replay_roll_it_all_back(child_db_url: str) -> None:
    store = EventStore()
    task_history(store, tasks=30, seed=32)
    before, _ = old_rows(store)
    states_before = states()
    with rebuilding(child_db_url, "--atomic", "-v", "2", TESTAPP_HANDLER_SLEEP="0.02") as output:
        # Its progress is uncommitted: -v 2 prints each batch.
        assert wait_for(lambda: output.saw("  task_board: at ")), output.out
        signal_repeatedly(output.process)
        returncode, out, err = output.wait()
    assert returncode == 1, out + err
    assert "Received SIGINT: finishing the batch in hand..." in out, out
    assert (
        "Rebuild of 'task_board' was rolled back: it was stopped before it caught up. "
        "Readers still see the previous rows and checkpoint; nothing was changed. Not "
        "rebuilt: tenant_stats."
    ) in err, out + err
    assert "Traceback" not in err, err
    assert task_board_rows() == before  # the old rows, whole
    assert states() == states_before


def test_a_signal_as_an_atomic_rebuild_ends_leaves_it_wholly_old_or_wholly_new(
    child_db_url: str,
) -> None:
    """Sent as task_board's replay caught up: around its commit, the window before
    tenant_stats' rebuild (where no handler of the runner's was installed), or as the
    process exits (where Python puts its default handler back: killed, exit -2, once in CI)."""
    store = EventStore()
    task_history(store, tasks=8, seed=33)
    before, rebuilt = old_rows(store)
    stats_before = ProjectionState.objects.get(name="tenant_stats").updated_at
    with rebuilding(child_db_url, "--atomic", "-v", "2") as output:
        assert wait_for(lambda: output.saw("  task_board 0 → ")), output.out
        signal_repeatedly(output.process)
        returncode, out, err = output.wait()
    assert "Traceback" not in err, err
    rows = task_board_rows()
    stats = ProjectionState.objects.get(name="tenant_stats")
    if rows == before:  # stopped before it committed: rolled back
        assert returncode == 1 and "Rebuild of 'task_board' was rolled back" in err, out + err
        assert stats.updated_at == stats_before
    elif stats.updated_at == stats_before:  # task_board committed; tenant_stats not started
        assert rows == rebuilt
        assert returncode == 1, out + err
        assert (
            "Stopped by SIGINT before the rebuild of tenant_stats started: nothing of it "
            "was changed. Not rebuilt: tenant_stats."
        ) in err or "Rebuild of 'tenant_stats' was rolled back" in err, out + err
    else:  # the signal came once both had committed: nothing left to stop
        assert rows == rebuilt
        assert returncode == 0, out + err
        assert "tenant_stats 0 → " in out, out


def test_a_signal_as_the_command_exits_does_not_kill_it(child_db_url: str) -> None:
    """The last line printed, the process exits: a signal then killed it (exit -2, the
    exit code lost), as Python puts its default handler back as it exits."""
    store = EventStore()
    task_history(store, tasks=3, seed=34)
    old_rows(store)
    with rebuilding(child_db_url, "--atomic", "-v", "2") as output:
        assert wait_for(lambda: output.saw("  tenant_stats 0 → ")), output.out
        signal_repeatedly(output.process)
        returncode, out, err = output.wait()
    assert "Traceback" not in err, err
    assert returncode == 0, out + err  # both were rebuilt: the signal had nothing to stop
    assert task_board_rows() == fold_task_board(store)

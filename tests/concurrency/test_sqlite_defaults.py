"""The library on Django's default SQLite settings: no ``OPTIONS``, so every transaction
begins DEFERRED and waits at most 5 s (Python's ``sqlite3`` default) for the lock.

A deferred transaction that reads, then writes, must upgrade its read lock to the write lock;
while another connection writes, SQLite refuses that at once with ``database is locked``
(waiting could deadlock), whatever the timeout. The test settings set
``transaction_mode="IMMEDIATE"``, which hides this, so these tests drop it: the child
processes through ``EVENTSOURCE_TEST_SQLITE_DEFAULTS`` (``tests/settings.py``), the test's
own connection through the ``default_sqlite_options`` fixture.

On PostgreSQL the settings change nothing and the same tests run as their own twins.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from uuid import uuid4

import pytest
from django.db import connection, transaction
from django.db.transaction import Atomic

from django_eventsource import (
    DatabaseSnapshotStore,
    EventStore,
    InMemoryCheckpointStore,
    ProjectionError,
    SnapshotRecord,
    apply_batch,
    catch_up,
    control,
)
from django_eventsource.locks import lock_for
from django_eventsource.models import DeadLetter, Event
from django_eventsource.rebuild import rebuild
from django_eventsource.transactions import write_transaction
from tests.fold import fold_task_board, fold_tenant_stats, task_board_rows, tenant_stats_rows
from tests.helpers import (
    ROOT,
    all_events,
    child_env,
    settled,
    start_command,
    start_worker,
    wait_until_following,
)
from tests.testapp import projections
from tests.testapp.events import TaskCreated, TaskRenamed
from tests.testapp.projections import TaskBoard

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

#: Child processes on Django's default SQLite OPTIONS (tests/settings.py).
DEFAULTS = {"EVENTSOURCE_TEST_SQLITE_DEFAULTS": "1"}
TENANTS = ("acme", "globex")


def _started(process: subprocess.Popen[str]) -> None:
    assert process.stdout is not None
    line = process.stdout.readline()
    if line.strip() != "started":
        process.kill()
        raise AssertionError(f"worker did not start: {line!r} {process.communicate()[1]}")


def _summary(process: subprocess.Popen[str]) -> dict[str, int]:
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_writers_runners_and_an_operator_on_default_settings(
    child_db_url: str, tmp_path: Path
) -> None:
    """Two writer processes append while a catch-up process takes and releases the
    lease of ``task_board`` again and again, a follower runs ``tenant_stats``, and an
    operator pauses and resumes it: nothing fails, and the rows equal a fold of every
    committed event. (Before the library began its own transactions IMMEDIATE on SQLite,
    the catch-up failed within milliseconds with ``database is locked`` in the lease's
    ``acquire``, and the follower and operator in the state transitions.)"""
    stop = tmp_path / "stop"
    follower = start_command(
        child_db_url,
        *("replay_projections", "tenant_stats", "--follow", "--batch-size", "3"),
        EVENTSOURCE_HEARTBEAT_INTERVAL="0.3",
        EVENTSOURCE_POLL_INTERVAL="0.02",
        PYTHONUNBUFFERED="1",
        **DEFAULTS,
    )
    started = [follower]
    try:
        # Its SIGTERM below must stop it, not kill it while it starts (a loaded machine).
        wait_until_following(follower)
        workers = [
            start_worker(
                child_db_url, "tests.concurrency.sqlite_defaults_worker", role, stop, **DEFAULTS
            )
            for role in ("catchup", "operate")
        ]
        started += workers
        for worker in workers:
            _started(worker)
        writers = [
            start_worker(
                child_db_url, "tests.concurrency.task_writer", n, 40, 700 + n, *TENANTS, **DEFAULTS
            )
            for n in range(2)
        ]
        started += writers
        stats = [_summary(writer) for writer in writers]
        stop.touch()
        catchup, operator = (_summary(worker) for worker in workers)
        follower.send_signal(signal.SIGTERM)
        out, err = follower.communicate(timeout=60)
    finally:
        stop.touch()
        for process in started:
            if process.poll() is None:  # a failure above: leave nothing running
                process.kill()
                process.communicate()
    assert follower.returncode == 0, out + err
    # A follower survives a failed transaction (it reports the database unavailable, or
    # busy, and retries): that must not have happened either.
    assert "Database unavailable" not in err and "Database busy" not in err, err

    done = start_command(child_db_url, "replay_projections", "tenant_stats", "--wait", **DEFAULTS)
    out, err = done.communicate(timeout=120)
    assert done.returncode == 0, out + err
    store = EventStore()
    events = all_events(store)
    assert len(events) == Event.objects.count() == sum(s["events"] for s in stats)
    assert task_board_rows() == fold_task_board(store)
    assert tenant_stats_rows() == fold_tenant_stats(store)
    # The runs really overlapped the writers.
    assert catchup["rounds"] > 1 and catchup["applied"] == len(events)
    assert operator["rounds"] > 0


# One library call while another process holds the write lock ------------------------------


@pytest.fixture
def default_sqlite_options(child_db_url: str) -> Iterator[str]:
    """The test's own connection on Django's default SQLite OPTIONS for the test (then the
    test settings' again); on PostgreSQL nothing changes. Yields the child processes' URL."""
    options = connection.settings_dict.setdefault("OPTIONS", {})
    saved = dict(options)
    connection.close()
    if connection.vendor == "sqlite":
        options.pop("transaction_mode", None)
        options.pop("timeout", None)
    try:
        yield child_db_url
    finally:
        connection.close()
        options.clear()
        options.update(saved)


def _other_writer_blocked() -> bool:
    """Whether another connection to the database cannot take the write lock now."""
    other = sqlite3.connect(connection.settings_dict["NAME"], timeout=0, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        return "locked" in str(exc)
    else:
        other.execute("ROLLBACK")
        return False
    finally:
        other.close()


def test_write_transaction_takes_the_write_lock_at_begin(default_sqlite_options: str) -> None:
    """On SQLite, the library's transaction holds the write lock from BEGIN (a read is its
    only statement so far); the application's transactions keep Django's DEFERRED mode,
    and inside one of them, the library's block is a savepoint."""
    if connection.vendor != "sqlite":
        assert isinstance(write_transaction("default"), Atomic)  # atomic itself
        return
    with write_transaction("default"):
        EventStore().head_position()
        assert _other_writer_blocked()
    assert connection.transaction_mode is None  # the settings' mode again
    with transaction.atomic():
        EventStore().head_position()
        assert not _other_writer_blocked()  # DEFERRED: a read takes no write lock
        with write_transaction("default"):
            assert len(connection.savepoint_ids) == 1
        assert not _other_writer_blocked()


def _tasks(*titles: str) -> list:
    """Append one task per title (created, then renamed to the title); its stored events."""
    stored = []
    for title in titles:
        task = uuid4()
        stored += EventStore().append(
            task,
            [
                TaskCreated(aggregate_id=task, title="new"),
                TaskRenamed(aggregate_id=task, title=title),
            ],
            expected_version=0,
        )
    return stored


def _failed_task_board() -> None:
    """task_board failed on a refused title (its checkpoint before that event)."""
    _tasks("fine", "boom")
    with pytest.raises(ProjectionError):
        catch_up(TaskBoard(), event_store=settled())


def _catch_up() -> Callable[[], None]:
    _tasks("a", "b")

    def run() -> None:
        catch_up(TaskBoard())
        assert {row["title"] for row in task_board_rows().values()} == {"a", "b"}

    return run


def _lease() -> Callable[[], None]:
    def run() -> None:
        lock = lock_for("task_board", None, "default")
        assert lock.acquire()
        lock.release()

    return run


def _pause() -> Callable[[], None]:
    def run() -> None:
        assert control.pause("task_board").status == "paused"

    return run


def _resume() -> Callable[[], None]:
    control.pause("task_board")

    def run() -> None:
        assert control.resume("task_board").status == "idle"

    return run


def _dead_letter_failed() -> Callable[[], None]:
    _failed_task_board()

    def run() -> None:
        letter = control.dead_letter_failed("task_board")
        assert letter.event_type == "TaskRenamed"
        assert control.get_state("task_board").status == "idle"

    return run


def _retry_dead_letter() -> Callable[[], None]:
    _failed_task_board()
    letter = control.dead_letter_failed("task_board")
    projections.REFUSED_TITLE = None  # the fix is deployed (the fixture restores it)

    def run() -> None:
        assert control.retry_dead_letter(letter)
        assert DeadLetter.objects.get(pk=letter.pk).resolved_at is not None

    return run


def _snapshot() -> Callable[[], None]:
    snapshots = DatabaseSnapshotStore()
    task = uuid4()
    snapshots.save(SnapshotRecord("Task", task, None, 1, 1, {"title": "old"}))

    def run() -> None:
        snapshots.save(SnapshotRecord("Task", task, None, 2, 1, {"title": "new"}))
        record = snapshots.load("Task", task)
        assert record is not None and record.version == 2

    return run


def _handle() -> Callable[[], None]:
    created, _ = _tasks("a")

    def run() -> None:
        assert TaskBoard().handle(created)
        assert [row["title"] for row in task_board_rows().values()] == ["new"]

    return run


def _apply_batch() -> Callable[[], None]:
    stored = _tasks("a")

    def run() -> None:
        assert apply_batch(TaskBoard(), stored, InMemoryCheckpointStore()) == 2
        assert [row["title"] for row in task_board_rows().values()] == ["a"]

    return run


def _rebuild(atomic: bool) -> Callable[[], Callable[[], None]]:
    def setup() -> Callable[[], None]:
        _tasks("a")
        catch_up(TaskBoard(), event_store=settled())

        def run() -> None:
            result = rebuild(TaskBoard(), atomic=atomic)
            assert not result.failed and not result.lost
            assert [row["title"] for row in task_board_rows().values()] == ["a"]

        return run

    return setup


def _inline_append() -> Callable[[], None]:
    """An append with an inline projection (task_index) in its transaction. It writes
    first, so it never needed more; kept here so that it stays so."""

    def run() -> None:
        [created] = _tasks("a")[:1]
        assert created.position > 0

    return run


OPERATIONS: dict[str, Callable[[], Callable[[], None]]] = {
    "catch_up": _catch_up,
    "lease": _lease,
    "pause": _pause,
    "resume": _resume,
    "dead_letter_failed": _dead_letter_failed,
    "retry_dead_letter": _retry_dead_letter,
    "snapshot_save": _snapshot,
    "projection_handle": _handle,
    "apply_batch_in_memory_checkpoint": _apply_batch,
    "rebuild": _rebuild(atomic=False),
    "rebuild_atomic": _rebuild(atomic=True),
    "append_with_inline_projection": _inline_append,
}


@pytest.mark.parametrize("operation", OPERATIONS)
def test_a_library_write_waits_for_another_writer(
    operation: str, default_sqlite_options: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each of the library's write transactions, on Django's default SQLite settings, while
    another process holds the write lock (it appended, and commits a second later): it
    waits for the lock and succeeds, as a write does. Before the library began its own
    transactions IMMEDIATE, each one that reads before it writes failed at once with
    ``database is locked``. (PostgreSQL: the same calls, beside an open appending
    transaction.)"""
    monkeypatch.setattr(projections, "REFUSED_TITLE", projections.REFUSED_TITLE)
    run = OPERATIONS[operation]()
    stream = uuid4()
    holder = subprocess.Popen(
        [sys.executable, "-m", "tests.concurrency.hold_worker", str(stream)],
        env=child_env(default_sqlite_options),
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert holder.stdin is not None and holder.stdout is not None
    line = holder.stdout.readline()
    if not line.startswith("holding "):
        holder.kill()
        raise AssertionError(f"the holder did not start: {line!r} {holder.communicate()[1]}")
    timer = threading.Timer(1.0, _commit, (holder,))
    timer.start()
    try:
        run()
    finally:
        timer.join()
        out, err = holder.communicate(timeout=60)
    assert holder.returncode == 0 and out.strip() == "done", err
    assert Event.objects.filter(aggregate_id=stream).count() == 1  # the holder's, committed


def _commit(holder: subprocess.Popen[str]) -> None:
    assert holder.stdin is not None
    holder.stdin.write("commit\n")
    holder.stdin.flush()

"""A busy database: another connection holds the write lock for longer than this one waits
for it (SQLite's ``OPTIONS["timeout"]``; PostgreSQL's ``lock_timeout``, when one is set).

The library's calls raise the typed, transient ``DatabaseBusy`` (still Django's
``OperationalError``) with nothing written, and a ``replay_projections --follow`` worker waits
it out, keeps its projection, and catches up once the lock is free. The lock is held by a
connection of the test's own (``BEGIN IMMEDIATE`` on SQLite, an ``EXCLUSIVE`` table lock on
PostgreSQL, which blocks writes and not reads).
"""

from __future__ import annotations

import json
import signal
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from io import StringIO
from pathlib import Path
from uuid import uuid4

import pytest
from django.core.management import CommandError, call_command
from django.db import OperationalError, connection, transaction

from django_eventsource import DatabaseBusy, EventSourceError, EventStore, ProjectionState
from django_eventsource.models import Event
from tests.concurrency.test_sqlite_defaults import OPERATIONS
from tests.factories import task_history
from tests.fold import fold_task_board, task_board_rows
from tests.helpers import run_async, start_follower, wait_for, wait_until_following
from tests.testapp import projections
from tests.testapp.events import TaskCreated

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

#: How long the test's connection (and a follower's) waits for a lock, in seconds.
TIMEOUT = 0.05


@pytest.fixture
def short_lock_wait(transactional_db: None) -> Iterator[None]:
    """The test's connections wait ``TIMEOUT`` for a lock (then the settings' again)."""
    options = connection.settings_dict.setdefault("OPTIONS", {})
    saved = dict(options)
    connection.close()
    if connection.vendor == "sqlite":
        options["timeout"] = TIMEOUT
    else:
        options["options"] = f"{options.get('options', '')} -c lock_timeout={TIMEOUT * 1000:g}"
    try:
        yield
    finally:
        connection.close()
        options.clear()
        options.update(saved)


@contextmanager
def write_lock_held(table: str = "django_eventsource_event") -> Iterator[None]:
    """Another connection holds the write lock until the block ends: SQLite's (the whole
    database's), PostgreSQL's on ``table`` (``EXCLUSIVE``: writes wait, reads do not)."""
    settings = connection.settings_dict
    if connection.vendor == "sqlite":
        other = sqlite3.connect(settings["NAME"], isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            yield
            other.execute("ROLLBACK")
        finally:
            other.close()
        return
    import psycopg

    with psycopg.connect(
        dbname=settings["NAME"],
        user=settings.get("USER") or "postgres",
        password=settings.get("PASSWORD") or None,
        host=settings.get("HOST") or "127.0.0.1",
        port=settings.get("PORT") or 5432,
    ) as other:
        other.execute(f"LOCK TABLE {table} IN EXCLUSIVE MODE")
        yield
        other.rollback()


@pytest.mark.parametrize("inline", [True, False], ids=["inline", "bare"])
@pytest.mark.parametrize("call", ["append", "aappend"])
def test_an_append_that_cannot_get_the_lock_raises_database_busy(
    short_lock_wait: None, inline: bool, call: str
) -> None:
    """The append waits ``TIMEOUT`` for the lock, then raises ``DatabaseBusy``: nothing
    written, the caller's event unstamped, and the same append succeeds once the lock is
    free. ``inline``: in a transaction with the inline projections (task_index); ``bare``:
    the append's one statement."""
    store = EventStore(inline_projections=inline)
    task = uuid4()
    created = TaskCreated(aggregate_id=task, title="t")

    def append() -> object:
        if call == "append":
            return store.append(task, [created], expected_version=0)
        return run_async(store.aappend(task, [created], expected_version=0))

    with write_lock_held(), pytest.raises(DatabaseBusy) as info:
        append()
    busy = info.value
    assert isinstance(busy, EventSourceError) and isinstance(busy, OperationalError)
    assert busy.using == "default"
    assert busy.doing == f"the append to stream {task}"
    if connection.vendor == "sqlite":
        assert busy.setting == """DATABASES['default']["OPTIONS"]["timeout"]"""
        assert busy.timeout == TIMEOUT
        assert 'DATABASES[\'default\']["OPTIONS"]["timeout"] = 0.05 s' in str(busy)
        assert "database is locked" in str(busy.__cause__) and busy.error == "database is locked"
        assert str(busy).startswith("Database 'default' is busy (database is locked): ")
    else:
        assert busy.setting == "lock_timeout" and busy.timeout is None
    assert "nothing of it was written" in str(busy) and "keep the transactions" in str(busy)
    assert not Event.objects.filter(aggregate_id=task).exists()
    assert not hasattr(created, "position") and created.aggregate_version == 0
    [stored] = append()  # type: ignore[misc]
    assert stored.aggregate_version == 1 and created.position == stored.position


@pytest.mark.parametrize("inline", [True, False], ids=["inline", "bare"])
def test_a_busy_append_inside_the_callers_transaction(short_lock_wait: None, inline: bool) -> None:
    """Inside the caller's transaction, which read first. SQLite, on Django's default
    DEFERRED mode: the append's write cannot wait (SQLite refuses the upgrade at once), and
    the error says so and names ``transaction_mode``; the caller's transaction goes on.
    PostgreSQL: the append in a savepoint (inline) leaves the caller's transaction usable;
    the bare statement aborted it, and it is marked for rollback."""
    if connection.vendor == "sqlite":
        connection.settings_dict["OPTIONS"].pop("transaction_mode", None)
        connection.close()
    store = EventStore(inline_projections=inline)
    task = uuid4()
    with write_lock_held(), transaction.atomic():
        Event.objects.count()  # the caller's transaction reads first
        with pytest.raises(DatabaseBusy) as info:
            store.append(task, [TaskCreated(aggregate_id=task, title="t")], expected_version=0)
        deferred = "began DEFERRED" in str(info.value)
        if connection.vendor == "sqlite":
            assert deferred and '["transaction_mode"] = "IMMEDIATE"' in str(info.value)
            assert "W004" in str(info.value)
        else:
            assert not deferred
        usable = connection.vendor == "sqlite" or inline
        assert transaction.get_rollback() is not usable
        if usable:
            assert not Event.objects.filter(aggregate_id=task).exists()
    assert not Event.objects.filter(aggregate_id=task).exists()


@pytest.mark.parametrize("operation", OPERATIONS)
def test_a_library_write_that_cannot_get_the_lock_raises_database_busy(
    operation: str, short_lock_wait: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each of the library's write transactions (the list of test_sqlite_defaults.py):
    ``DatabaseBusy`` while another connection holds SQLite's write lock past the timeout,
    and nothing half-written: the same call succeeds once the lock is free."""
    if connection.vendor != "sqlite":
        pytest.skip("SQLite's one write lock; the append test is the PostgreSQL twin")
    monkeypatch.setattr(projections, "REFUSED_TITLE", projections.REFUSED_TITLE)
    run = OPERATIONS[operation]()
    with write_lock_held(), pytest.raises(DatabaseBusy) as info:
        run()
    assert info.value.timeout == TIMEOUT
    run()


def test_a_catch_up_command_on_a_busy_database_exits_1_with_the_message(
    short_lock_wait: None,
) -> None:
    """``replay_projections`` (no ``--follow``) on a busy database: a CommandError (exit 1)
    that says what to do, not a traceback of a raw ``OperationalError``."""
    if connection.vendor != "sqlite":
        pytest.skip("SQLite's one write lock; the append test is the PostgreSQL twin")
    task_history(EventStore(), tasks=2, seed=1)
    with write_lock_held(), pytest.raises(CommandError) as info:
        call_command("replay_projections", "task_board", stdout=StringIO(), stderr=StringIO())
    assert info.value.returncode == 1
    assert isinstance(info.value.__cause__, DatabaseBusy)
    assert str(info.value).startswith("Database 'default' is busy")
    assert 'raise DATABASES[\'default\']["OPTIONS"]["timeout"]' in str(info.value)


def _records(log: Path) -> list[dict[str, object]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def _busy_records(log: Path) -> list[dict[str, object]]:
    return [r for r in _records(log) if str(r["message"]).startswith("The database is busy")]


def test_a_follower_waits_out_a_busy_database(child_db_url: str, tmp_path: Path) -> None:
    """A follower whose writes wait ``TIMEOUT`` for the lock, while another connection holds
    it much longer: it warns that the database is busy, backs off and retries, keeping its
    projection (it never reports the database unavailable, nor lets go of its lease), and
    once the lock is free it applies the events appended meanwhile; SIGTERM then stops it
    cleanly. (Before, it took the busy database for a lost connection: it let go of its
    projection, closed its connections and warned "Database unavailable" every half
    second.)"""
    store = EventStore()
    task_history(store, tasks=6, renames=2, seed=5)
    log = tmp_path / "follower.jsonl"
    follower = start_follower(
        child_db_url,
        handler_sleep="0",
        EVENTSOURCE_TEST_SQLITE_TIMEOUT=str(TIMEOUT),
        EVENTSOURCE_TEST_PG_LOCK_TIMEOUT=str(TIMEOUT),
        EVENTSOURCE_TEST_LOG_FILE=str(log),
        EVENTSOURCE_TEST_LOG_LEVEL="INFO",
    )
    try:
        wait_until_following(follower)

        def position() -> int:
            state = ProjectionState.objects.filter(name="task_board").first()
            return (state.position or 0) if state else 0

        assert wait_for(lambda: position() == store.head_position())
        owner = ProjectionState.objects.get(name="task_board").owner
        # The follower's batches and heartbeats write the projection's state row.
        with write_lock_held("django_eventsource_projectionstate"):
            assert wait_for(lambda: len(_busy_records(log)) >= 2), _records(log)
        task_history(store, tasks=4, renames=2, seed=6)
        head = store.head_position()
        assert wait_for(lambda: position() == head), _records(log)
        assert ProjectionState.objects.get(name="task_board").owner == owner
    finally:
        if follower.poll() is None:
            follower.send_signal(signal.SIGTERM)
        out, err = follower.communicate(timeout=60)
    assert follower.returncode == 0, out + err
    assert "Database busy (" in err and "retrying in" in err
    assert "Database unavailable" not in err and "Traceback" not in err, err
    records = _records(log)
    messages = [str(r["message"]) for r in records]
    assert not any("unavailable" in m or "Lost the lease" in m for m in messages), messages
    [first, *_] = _busy_records(log)
    assert first["levelname"] == "WARNING" and first["attempt"] == 1
    assert any(m.startswith("The database took writes again after") for m in messages)
    assert task_board_rows() == fold_task_board(store)

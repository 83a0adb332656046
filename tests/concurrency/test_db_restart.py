"""Follow mode survives a database restart (PostgreSQL).

A real ``replay_projections --follow`` worker; every backend it holds (Django's connection,
the LISTEN connection, the advisory-lock connection) is terminated with
``pg_terminate_backend``, which is what a server restart or failover looks like from the
client, without restarting the shared server. Once while idle, once in the middle of a
catch-up. The worker must reconnect, take its lock again, catch up to exactly the fold of
the events, and still stop gracefully (exit 0) on SIGTERM.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from django.db import connection

from django_eventsource import EventStore, ProjectionState
from django_eventsource.backends.postgresql.locks import lock_key
from tests import helpers
from tests.factories import task_history
from tests.fold import fold_task_board, task_board_rows
from tests.helpers import start_follower

if connection.vendor != "postgresql":
    pytest.skip(
        "terminating server backends is PostgreSQL-only; SQLite has no server to restart "
        "(its runner keeps no connection across waits that could break)",
        allow_module_level=True,
    )

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

KEY = lock_key("task_board", None)


def wait_for(predicate: Callable[[], object], timeout: float = 90.0) -> bool:
    """Reconnecting takes longer than a failover: a longer deadline than the default."""
    return helpers.wait_for(predicate, timeout)


def position() -> int:
    state = ProjectionState.objects.filter(name="task_board").first()
    return (state.position or 0) if state else 0


def lock_holder() -> int | None:
    """The pid of the backend holding task_board's advisory lock (None: nobody)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND classid::bigint = %s AND objid::bigint = %s AND objsubid = 1 "
            # Advisory locks are per database: other test runs on the server hold this key too.
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            [(KEY >> 32) & 0xFFFFFFFF, KEY & 0xFFFFFFFF],
        )
        row = cursor.fetchone()
    return row[0] if row else None


def listener() -> int | None:
    """The pid of the worker's LISTEN connection (None: not connected)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = 'django_eventsource listener'"
        )
        row = cursor.fetchone()
    return row[0] if row else None


def terminate_all() -> set[int]:
    """Terminate every other backend of the test database (the worker's, all of them)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return {pid for pid, done in cursor.fetchall() if done}


def terminate(pid: int) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
        return bool(cursor.fetchone()[0])


def test_follow_reconnects_after_its_backends_are_terminated(
    child_db_url: str, tmp_path: Path
) -> None:
    store = EventStore()
    task_history(store, tasks=10, renames=2, seed=61)
    log = tmp_path / "worker.jsonl"
    worker = start_follower(
        child_db_url,
        handler_sleep="0.02",
        EVENTSOURCE_TEST_LOG_FILE=str(log),
        EVENTSOURCE_TEST_LOG_LEVEL="INFO",
    )
    try:
        assert wait_for(lambda: position() == store.head_position()), "never caught up"
        assert wait_for(lambda: listener() is not None), "never listened"
        first_holder, first_listener = lock_holder(), listener()
        assert first_holder is not None

        # 1. Killed while idle (waiting on LISTEN): append while it reconnects.
        killed = terminate_all()
        assert {first_holder, first_listener} <= killed
        task_history(store, tasks=10, renames=2, seed=62)
        head = store.head_position()
        assert wait_for(lambda: position() == head), f"stuck at {position()} of {head}"
        assert lock_holder() not in (None, *killed)
        assert wait_for(lambda: listener() not in (None, first_listener)), "never listened again"

        # 2. Killed in the middle of a catch-up (handlers sleep, batches of 5).
        start = position()
        task_history(store, tasks=40, renames=3, seed=63)
        head = store.head_position()
        assert wait_for(lambda: start < position() < head, timeout=60)
        holder = lock_holder()
        killed = terminate_all()
        assert holder in killed
        assert worker.poll() is None
        assert wait_for(lambda: position() == head), f"stuck at {position()} of {head}"
        assert lock_holder() not in (None, *killed)
        assert task_board_rows() == fold_task_board(store)

        # 3. Only the lock's session dies, in the middle of a catch-up (Django's and LISTEN's
        # survive): the next heartbeat notices, takes the lock again on a new session, and
        # the worker carries on instead of stopping.
        start = position()
        task_history(store, tasks=40, renames=3, seed=64)
        head = store.head_position()
        assert wait_for(lambda: start < position() < head, timeout=60)
        holder = lock_holder()
        assert holder is not None and terminate(holder)
        assert wait_for(lambda: position() == head), f"stuck at {position()} of {head}"
        assert lock_holder() not in (None, holder)
        assert worker.poll() is None
        assert task_board_rows() == fold_task_board(store)
    finally:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
        out, err = worker.communicate(timeout=60)
        print(f"worker exit {worker.returncode}; stdout:\n{out}\nstderr:\n{err}")  # on failure
    assert worker.returncode == 0, err
    assert "Database unavailable" in err, err
    assert wait_for(lambda: lock_holder() is None)  # the server lets go once the process is gone
    # What the operator's logs say: the outage, the reconnect, the lock's session and LISTEN.
    records = [json.loads(line) for line in log.read_text().splitlines()]
    down = [r for r in records if r["message"].startswith("The database is unavailable")]
    assert down and all(
        r["name"] == "django_eventsource.runner" and r["levelname"] == "WARNING" for r in down
    )
    assert all(r["error_type"] in ("OperationalError", "InterfaceError") for r in down)
    back = [r for r in records if r["message"].startswith("Reconnected to the database")]
    assert back and all(r["levelname"] == "INFO" and r["down_seconds"] > 0 for r in back)
    sessions = [r for r in records if "The session holding the lock" in r["message"]]
    assert sessions and {r["projection"] for r in sessions} == {"task_board"}
    assert any(r["name"].endswith(".listen") and r["levelname"] == "WARNING" for r in records)


def test_active_and_standby_both_survive(child_db_url: str) -> None:
    """Every session of both workers dies at once: one takes the lock again, the other goes
    back to waiting as its standby; neither crashes, and the work gets done."""
    store = EventStore()
    task_history(store, tasks=10, renames=2, seed=71)
    workers = [start_follower(child_db_url, handler_sleep="0.02") for _ in range(2)]
    outputs: list[tuple[str, str]] = []
    try:
        assert wait_for(lambda: position() == store.head_position()), "never caught up"
        holder = lock_holder()
        assert holder is not None
        for seed in (72, 73):
            killed = terminate_all()
            assert holder in killed
            task_history(store, tasks=10, renames=2, seed=seed)
            head = store.head_position()
            assert wait_for(lambda head=head: position() == head), f"stuck at {position()}"
            holder = lock_holder()
            assert holder is not None and holder not in killed
            assert [w.poll() for w in workers] == [None, None], "a worker exited"
        assert task_board_rows() == fold_task_board(store)
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        for worker in workers:
            outputs.append(worker.communicate(timeout=60))
            print(f"worker exit {worker.returncode}; stderr:\n{outputs[-1][1]}")  # on failure
    for worker, (_, err) in zip(workers, outputs, strict=True):
        # 0, or the documented 1 of a follower whose session died in the middle of a batch
        # and whose lock the other worker then took (the batch rolled back, the other one
        # redid it): which of the two happens depends on where the restarts land.
        lost = "Lost the lock of task_board to another runner while applying events" in err
        assert worker.returncode == 0 or (worker.returncode == 1 and lost), err
    assert wait_for(lambda: lock_holder() is None)

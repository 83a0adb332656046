"""Writers are not serialized on PostgreSQL, and an open transaction holds readers back
without loss. On SQLite writers are serialized by design; the twins assert that instead."""

from __future__ import annotations

import subprocess
import sys
import threading
from uuid import uuid4

import pytest
from django.db import OperationalError, connection

from django_eventsource import ConcurrencyError, DatabaseBusy, EventStore
from tests.helpers import ROOT, child_env
from tests.testapp.events import Counted

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def start_hold(db_url: str, stream: str) -> tuple[subprocess.Popen[str], int]:
    """A process that appended one event to ``stream`` and keeps its transaction open."""
    worker = subprocess.Popen(
        [sys.executable, "-m", "tests.concurrency.hold_worker", stream],
        env=child_env(db_url),
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert worker.stdout is not None
    line = worker.stdout.readline()
    if not line.startswith("holding "):
        worker.kill()
        raise AssertionError(f"worker did not start: {line!r} {worker.communicate()[1]}")
    worker.backend_pid = int(line.split()[2])  # type: ignore[attr-defined]  # PostgreSQL's
    return worker, int(line.split()[1])


def tell(worker: subprocess.Popen[str], action: str) -> None:
    assert worker.stdin is not None
    worker.stdin.write(f"{action}\n")
    worker.stdin.flush()


def wait(worker: subprocess.Popen[str]) -> None:
    out, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err
    assert out.strip().endswith("done")


def test_an_open_writer_and_a_second_writer(child_db_url: str, vendor: str) -> None:
    store = EventStore()
    worker, held_position = start_hold(child_db_url, str(uuid4()))
    mine = uuid4()
    try:
        if vendor == "postgresql":
            # A writer that waited on a lock held by the open transaction would fail here.
            with connection.cursor() as cursor:
                cursor.execute("SET lock_timeout = '3s'")
            [stored] = store.append(mine, [Counted(aggregate_id=mine)])
            assert stored.position > held_position
            # The reader must not pass the open, older transaction: it sees nothing yet.
            assert store.read_all().events == []
        else:
            # SQLite: the open transaction holds the database lock; writers queue behind it.
            with connection.cursor() as cursor:
                cursor.execute("PRAGMA busy_timeout = 100")
            with pytest.raises(DatabaseBusy, match="database is locked") as info:
                store.append(mine, [Counted(aggregate_id=mine)])
            assert isinstance(info.value, OperationalError)
            assert info.value.timeout == 0.1  # the connection's, not OPTIONS'
    finally:
        tell(worker, "commit")
        wait(worker)
    if vendor == "postgresql":
        assert [e.position for e in store.read_all()] == [held_position, stored.position]
    else:
        [stored] = store.append(mine, [Counted(aggregate_id=mine)])
        assert [e.position for e in store.read_all()] == [held_position, stored.position]


def test_a_rolled_back_writer_leaves_no_trace(child_db_url: str, vendor: str) -> None:
    store = EventStore()
    worker, held_position = start_hold(child_db_url, str(uuid4()))
    tell(worker, "rollback")
    wait(worker)
    mine = uuid4()
    [stored] = store.append(mine, [Counted(aggregate_id=mine)])
    assert [e.aggregate_id for e in store.read_all()] == [mine]
    if vendor == "postgresql":
        assert stored.position > held_position  # a sequence value is never handed out twice
    else:
        assert stored.position == held_position  # SQLite reuses a rolled-back rowid: harmless


def test_concurrent_exact_appends_to_one_stream_exactly_one_wins(child_db_url: str) -> None:
    stream = uuid4()
    store = EventStore()
    store.append(stream, [Counted(aggregate_id=stream)], expected_version=0)
    worker, _ = start_hold(child_db_url, str(stream))  # version 2, not committed yet
    timer = threading.Timer(0.5, tell, (worker, "commit"))
    timer.start()
    try:
        # Waits for the open transaction (its version 2 or the SQLite lock), then conflicts.
        with pytest.raises(ConcurrencyError) as info:
            store.append(stream, [Counted(aggregate_id=stream)], expected_version=1)
        assert info.value.actual_version == 2
    finally:
        timer.join()
        wait(worker)
    assert [e.aggregate_version for e in store.read_stream(stream)] == [1, 2]

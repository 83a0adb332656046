"""Inline projections: concurrent appends that create the same new read-model row.

Two transactions append events for a row that does not exist yet (a per-tenant total,
``checkpoint_by = "position"``, fed by many streams). On PostgreSQL neither sees the other's
uncommitted row, so both used to insert it: the second append failed on the unique
constraint (or, without one, a second row split the count). The creation of a missing row
is now serialized (a transaction-scoped advisory lock on its table and key, then a second
look), so both appends succeed and the row counts both. SQLite serializes writers: the
second append waits for the first to commit.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from django.db import connection, connections, transaction

from django_eventsource import EventStore, StoredEvent
from tests.concurrency.inline_rows import InlineTenantTotal, register, restore
from tests.helpers import start_worker, wait_for
from tests.testapp.events import TaskCreated
from tests.testapp.models import TenantStats

pytestmark = [pytest.mark.django_db(transaction=True)]

WAIT = 30.0


class Actor(threading.Thread):
    """A thread with its own database connection; re-raises its error in ``finish()``."""

    def __init__(self, body: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self.body = body
        self.result: Any = None
        self.error: BaseException | None = None
        self.pid: int | None = None

    def run(self) -> None:
        try:
            if connection.vendor == "postgresql":
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_backend_pid()")
                    self.pid = cursor.fetchone()[0]
            self.result = self.body()
        except BaseException as exc:  # noqa: BLE001 (handed to the test thread by finish())
            self.error = exc
        finally:
            connections.close_all()

    def finish(self) -> Any:
        self.join(WAIT)
        assert not self.is_alive(), "the thread is stuck"
        if self.error is not None:
            raise self.error
        return self.result


@pytest.fixture
def inline_total() -> Iterator[type[InlineTenantTotal]]:
    previous = register()
    try:
        yield InlineTenantTotal
    finally:
        restore(previous)


def created(tenant: str, title: str = "t") -> tuple[Any, list[TaskCreated]]:
    task = uuid4()
    return task, [TaskCreated(aggregate_id=task, tenant_id=tenant, title=title)]


def waits_on_a_lock(pid: int | None) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", [pid])
        row = cursor.fetchone()
    return row is not None and row[0] == "Lock"


def test_two_appends_create_one_new_row(inline_total: type[InlineTenantTotal]) -> None:
    """A appends for tenant acme (its inline row is new) and keeps its transaction open; B
    appends for acme and waits (on PostgreSQL: for A's row, shown by pg_stat_activity; on
    SQLite: for the write lock); A commits; B's append succeeds and the one row counts 2."""
    store = EventStore()
    a_appended, a_may_commit = threading.Event(), threading.Event()

    def a() -> StoredEvent:
        with transaction.atomic():
            [stored] = store.append(*created("acme", "A"))
            a_appended.set()
            assert a_may_commit.wait(WAIT)
        return stored

    def b() -> StoredEvent:
        [stored] = store.append(*created("acme", "B"))
        return stored

    first, second = Actor(a), Actor(b)
    first.start()
    try:
        assert a_appended.wait(WAIT)
        second.start()
        if connection.vendor == "postgresql":
            # B found no row, and now waits for A's (the advisory lock; before the fix, the
            # unique index: then the insert failed once A committed).
            assert wait_for(lambda: second.pid is not None and waits_on_a_lock(second.pid))
    finally:
        a_may_commit.set()
    a_event, b_event = first.finish(), second.finish()
    rows = list(TenantStats.objects.filter(tenant_id="acme"))
    assert len(rows) == 1
    assert rows[0].tasks == 2
    assert rows[0].last_event_position in (a_event.position, b_event.position)


def test_a_new_row_per_stream_key_is_created_once(inline_total: type[InlineTenantTotal]) -> None:
    """The batch path (``row_keys``, prefetched with one query) serializes new rows too: an
    inline projection keyed by stream whose two appends race for the same new row cannot
    both insert it. (Two appends to one stream race on its version first, so this drives
    the RowSet directly: two transactions prefetch the same missing row.) On SQLite the
    second transaction waits at BEGIN for the first to commit."""
    from django_eventsource.rows import RowSet
    from tests.testapp.models import TaskIndex
    from tests.testapp.projections import TaskIndexProjection

    task = uuid4()
    [event] = EventStore(inline_projections=False).append(
        task, [TaskCreated(aggregate_id=task, title="t")]
    )
    a_flushed, a_may_commit = threading.Event(), threading.Event()

    def write(signal: threading.Event | None) -> None:
        projection = TaskIndexProjection()
        with transaction.atomic():
            rows = RowSet(projection, fresh=True)
            rows.prefetch([event])
            row = rows.get(TaskIndex, event.event, task_id=task)
            if row is not None:
                row.title += "!"
            rows.flush()
            if signal is not None:
                signal.set()
                assert a_may_commit.wait(WAIT)

    first, second = Actor(lambda: write(a_flushed)), Actor(lambda: write(None))
    first.start()
    try:
        assert a_flushed.wait(WAIT)
        second.start()
        if connection.vendor == "postgresql":
            assert wait_for(lambda: second.pid is not None and waits_on_a_lock(second.pid))
    finally:
        a_may_commit.set()
    first.finish()
    second.finish()
    # B found A's row on its second look, which already holds the event: one row, applied
    # once (before the fix, B inserted a second row and failed on the unique constraint).
    assert list(TaskIndex.objects.filter(task_id=task).values_list("title", flat=True)) == ["!"]


@pytest.mark.slow
def test_writer_processes_racing_for_new_rows(
    inline_total: type[InlineTenantTotal], child_db_url: str, tmp_path: Path
) -> None:
    """Several writer processes append, in the same tenant order, one event each to tenants
    whose rows do not exist yet: every append succeeds and every row counts every writer."""
    writers_count, tenants = 4, 40
    go = tmp_path / "go"
    writers = [
        start_worker(child_db_url, "tests.concurrency.inline_rows_writer", "race", go, tenants, n)
        for n in range(writers_count)
    ]
    go.touch()
    for w in writers:
        out, err = w.communicate(timeout=180)
        assert w.returncode == 0, err
        assert json.loads(out.strip().splitlines()[-1])["appended"] == tenants
    counts = dict(TenantStats.objects.values_list("tenant_id", "tasks"))
    assert counts == {f"n{n}": writers_count for n in range(tenants)}

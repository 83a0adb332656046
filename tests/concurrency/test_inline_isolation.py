"""Inline projections and a rebuild that reads under one snapshot (PostgreSQL's
``REPEATABLE READ`` and ``SERIALIZABLE``, every transaction of its connection, as
``OPTIONS={"isolation_level": ...}`` makes them): real transactions on separate connections,
in a fixed order.

The rebuild's hand-over locks appends out, waits for the appending transactions in flight,
and reads what they appended. Its first statement used to be a heartbeat: under one
snapshot that statement took the snapshot before the wait, the hand-over read the events
without the ones the appends it waited for had left to it, and set the projection idle:
those events were lost. The lock-out now comes first (it takes no snapshot).

SQLite serializes writers: the same sequence ends with the same counts.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any
from uuid import uuid4

import pytest
from django.db import connection, transaction

from django_eventsource import EventStore
from django_eventsource.constants import EVENT_TABLE
from django_eventsource.models import ProjectionState
from django_eventsource.rebuild import rebuild
from tests.concurrency.inline_rows import InlineTenantTotal, register, restore
from tests.concurrency.test_inline_new_rows import WAIT, Actor
from tests.helpers import all_events, wait_for
from tests.testapp.events import TaskCreated
from tests.testapp.models import TenantStats

pytestmark = [pytest.mark.django_db(transaction=True)]

NAME = "inline_tenant_total"
LEVELS = ["REPEATABLE READ", "SERIALIZABLE"]


@pytest.fixture
def inline_total() -> Iterator[type[InlineTenantTotal]]:
    previous = register()
    try:
        yield InlineTenantTotal
    finally:
        restore(previous)


def fold() -> dict[str, int]:
    """TenantStats.tasks per tenant, from every committed event."""
    return dict(Counter(e.tenant_id or "" for e in all_events() if e.event_type == "TaskCreated"))


def counts() -> dict[str, int]:
    return dict(TenantStats.objects.values_list("tenant_id", "tasks"))


def append(tenant: str) -> None:
    task = uuid4()
    EventStore().append(task, [TaskCreated(aggregate_id=task, tenant_id=tenant, title="i")])


class Session(Actor):
    """An ``Actor`` whose connection runs every transaction at ``isolation``, as Django's
    ``DATABASES[...]["OPTIONS"]["isolation_level"]`` makes it (PostgreSQL; None: the
    server's default, READ COMMITTED)."""

    def __init__(self, body: Callable[[], Any], isolation: str | None = None) -> None:
        super().__init__(body)
        self.isolation = isolation

    def run(self) -> None:
        if self.isolation and connection.vendor == "postgresql":
            from psycopg import IsolationLevel

            level = IsolationLevel[self.isolation.replace(" ", "_")]
            settings = connection.settings_dict
            # This thread's connection only (it has not connected yet).
            connection.settings_dict = {
                **settings,
                "OPTIONS": {**settings.get("OPTIONS", {}), "isolation_level": level},
            }
        super().run()


@pytest.mark.parametrize("isolation", LEVELS)
def test_a_hand_over_under_one_snapshot_reads_the_appends_it_waited_for(
    inline_total: type[InlineTenantTotal], vendor: str, isolation: str
) -> None:
    """The rebuild runs every transaction at ``isolation`` (its connection's OPTIONS). An
    append (READ COMMITTED) leaves its event to the rebuild and keeps its transaction open;
    the rebuild's hand-over waits for it (its lock-out), then commits. Before: the
    hand-over's first statement (a heartbeat) took its snapshot before the wait, so it read
    the events without the append's and set the projection idle: the event was lost."""
    from django_eventsource import state

    append("acme")
    state.begin_rebuild(NAME, None, "default")
    appended, may_commit = threading.Event(), threading.Event()

    def deferred_append() -> None:
        with transaction.atomic():
            append("acme")  # left to the rebuild
            appended.set()
            assert may_commit.wait(WAIT)

    writer = Actor(deferred_append)
    writer.start()
    assert appended.wait(WAIT)
    rebuilder = Session(lambda: rebuild(InlineTenantTotal()), isolation)
    rebuilder.start()
    try:
        if vendor == "postgresql":
            # The hand-over's lock-out waits for the open append.
            assert wait_for(a_lock_out_waits)
    finally:
        may_commit.set()  # SQLite: the rebuild waits for the write lock meanwhile
    writer.finish()
    assert not rebuilder.finish().failed
    assert ProjectionState.objects.get(name=NAME).status == "idle"
    assert counts() == fold() == {"acme": 2}


def a_lock_out_waits() -> bool:
    """Whether a session of the test database waits to lock appends out (the runner may
    have reconnected since its thread started: found by its statement, not its pid)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT EXISTS (SELECT FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND query LIKE %s)",
            [f"LOCK TABLE {EVENT_TABLE} IN %"],
        )
        return bool(cursor.fetchone()[0])

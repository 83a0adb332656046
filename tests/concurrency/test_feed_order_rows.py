"""Rows fed by many streams (``checkpoint_by = "position"``) compare events in feed order.

On PostgreSQL the feed is ordered by ``(stamp, position)``, and positions are not monotonic
in that order: a transaction that took its id early (it wrote something else first) and
appends after a younger one gets the higher position and is delivered first. A row that
compared positions alone treated the younger, lower-positioned event as already applied
and skipped it. These tests build that interleaving deterministically with two threads (two
connections); SQLite serializes writers, so there the second writer waits and the feed is
position order (the twins assert that).

Inline projections apply events of transactions that have not committed yet, in the order
their transactions lock the row, which is neither position nor feed order: they must apply
every fresh event, whatever the row's checkpoint says.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any, ClassVar
from uuid import uuid4

import pytest
from django.db import OperationalError, connection, connections, transaction

from django_eventsource import (
    DatabaseCheckpointStore,
    DeclarativeProjection,
    EventStore,
    StoredEvent,
    handles,
    projection_registry,
)
from django_eventsource.testing import run_projections
from tests.helpers import all_events
from tests.testapp.events import TaskCreated
from tests.testapp.models import Note, TenantStats

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

WAIT = 20.0


class Actor(threading.Thread):
    """A thread with its own database connection; re-raises its error in ``finish()``."""

    def __init__(self, body: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self.body = body
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
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


def created(tenant: str = "acme") -> tuple[Any, list[TaskCreated]]:
    task = uuid4()
    return task, [TaskCreated(aggregate_id=task, tenant_id=tenant, title="t")]


def early_writer_appends_second(store: EventStore) -> tuple[StoredEvent, StoredEvent]:
    """The issue's reproduction; returns (A's event, B's event).

    A opens a transaction and writes a Note (it takes its transaction id), then waits. B
    appends one event for tenant acme inside a transaction and waits. A appends one event
    for acme. Both commit. On PostgreSQL: B has position 1 and the younger stamp, A position
    2 and the older stamp, so the feed is [A, B].
    """
    a_has_id, b_appended, a_appended = threading.Event(), threading.Event(), threading.Event()

    def a() -> StoredEvent:
        with transaction.atomic():
            Note.objects.create(text="A writes before it appends")
            a_has_id.set()
            assert b_appended.wait(WAIT)
            [stored] = store.append(*created())
            a_appended.set()
        return stored

    def b() -> StoredEvent:
        assert a_has_id.wait(WAIT)
        with transaction.atomic():
            [stored] = store.append(*created())
            b_appended.set()
            assert a_appended.wait(WAIT)
        return stored

    first, second = Actor(a), Actor(b)
    first.start()
    second.start()
    try:
        return first.finish(), second.finish()
    finally:
        a_has_id.set(), b_appended.set(), a_appended.set()


def test_a_lower_position_delivered_second_is_applied(vendor: str) -> None:
    if vendor != "postgresql":
        pytest.skip("SQLite serializes writers: see test_sqlite_serializes_the_two_writers")
    store = EventStore()
    a, b = early_writer_appends_second(store)
    # The interleaving really happened: A's higher position comes first in the feed.
    assert b.position < a.position
    assert [e.position for e in all_events(store)] == [a.position, b.position]

    run_projections("tenant_stats", batch_size=1)  # one event per batch: B arrives alone
    row = TenantStats.objects.get(tenant_id="acme")
    assert row.tasks == 2
    # The row's checkpoint names the last event in feed order.
    assert (row.last_event_position, row.last_event_id) == (b.position, b.event_id)

    # Replaying from the start changes nothing: A (the higher position) is not applied again.
    DatabaseCheckpointStore().delete("tenant_stats")
    run_projections("tenant_stats")
    row.refresh_from_db()
    assert (row.tasks, row.last_event_position) == (2, b.position)


def test_sqlite_serializes_the_two_writers(vendor: str) -> None:
    """The SQLite twin: B cannot append while A's transaction is open, so positions follow
    commit order and the row counts both events."""
    if vendor != "sqlite":
        pytest.skip("the PostgreSQL interleaving is test_a_lower_position_delivered_second_…")
    store = EventStore()
    a_has_id, a_may_go = threading.Event(), threading.Event()

    def a() -> StoredEvent:
        with transaction.atomic():
            Note.objects.create(text="A writes before it appends")
            a_has_id.set()
            assert a_may_go.wait(WAIT)
            [stored] = store.append(*created())
        return stored

    first = Actor(a)
    first.start()
    try:
        assert a_has_id.wait(WAIT)
        with connection.cursor() as cursor:
            cursor.execute("PRAGMA busy_timeout = 100")
        with pytest.raises(OperationalError, match="locked"), transaction.atomic():
            store.append(*created())
    finally:
        a_may_go.set()
    a_event = first.finish()
    [b_event] = store.append(*created())
    assert [e.position for e in all_events(store)] == [a_event.position, b_event.position]
    run_projections("tenant_stats", batch_size=1)
    row = TenantStats.objects.get(tenant_id="acme")
    assert (row.tasks, row.last_event_position) == (2, b_event.position)


# Inline projections ---------------------------------------------------------------------------


class InlineTenantCount(DeclarativeProjection):
    """Inline, into a row fed by many streams; ``pause`` lets a test hold a handler.

    Registered only while a test uses it (its name is set after the class statement, which
    keeps it out of the registry at import time).
    """

    inline = True
    models = (TenantStats,)
    #: Called with the event's title before the handler asks for its row.
    pause: ClassVar[Callable[[str], None] | None] = None

    @handles(TaskCreated)
    def created(self, event: TaskCreated) -> None:
        if InlineTenantCount.pause is not None:
            InlineTenantCount.pause(event.title)
        if row := self.row(TenantStats, event, tenant_id=event.tenant_id or ""):
            row.tasks += 1


InlineTenantCount.name = "inline_tenant_count"


@pytest.fixture
def inline_count(vendor: str) -> Iterator[type[InlineTenantCount]]:
    if vendor != "postgresql":
        pytest.skip("SQLite serializes writers: see test_sqlite_inline_rows_count_every_append")
    classes = dict(projection_registry._classes)
    projection_registry.register(InlineTenantCount)
    try:
        yield InlineTenantCount
    finally:
        InlineTenantCount.pause = None
        projection_registry._classes.clear()
        projection_registry._classes.update(classes)


def titled(title: str) -> tuple[Any, list[TaskCreated]]:
    task = uuid4()
    return task, [TaskCreated(aggregate_id=task, tenant_id="acme", title=title)]


def test_inline_row_applies_an_event_older_in_the_feed(
    inline_count: type[InlineTenantCount],
) -> None:
    """A takes its id early; B appends and holds the row; A appends (older stamp, higher
    position) and waits for the row; B commits; A applies. A's event is first in the feed
    but reaches the row second: it must still be applied."""
    store = EventStore()
    store.append(*titled("first"))  # the row exists, so that B's update locks it
    a_has_id, b_holds_row, a_in_handler = threading.Event(), threading.Event(), threading.Event()

    def pause(title: str) -> None:
        if title == "A":
            a_in_handler.set()

    inline_count.pause = pause

    def a() -> StoredEvent:
        with transaction.atomic():
            Note.objects.create(text="A writes before it appends")
            a_has_id.set()
            assert b_holds_row.wait(WAIT)
            [stored] = store.append(*titled("A"))
        return stored

    def b() -> StoredEvent:
        assert a_has_id.wait(WAIT)
        with transaction.atomic():
            [stored] = store.append(*titled("B"))  # the inline row is now locked by B
            b_holds_row.set()
            assert a_in_handler.wait(WAIT)  # A's event is stored (stamp taken), not applied
        return stored

    first, second = Actor(a), Actor(b)
    first.start()
    second.start()
    try:
        a_event, b_event = first.finish(), second.finish()
    finally:
        a_has_id.set(), b_holds_row.set(), a_in_handler.set()
    assert [e.position for e in all_events(store)][1:] == [a_event.position, b_event.position]
    row = TenantStats.objects.get(tenant_id="acme")
    assert row.tasks == 3
    # The checkpoint names the row's latest event in feed order (B), so that a replay of the
    # feed skips all three.
    assert row.last_event_position == b_event.position
    DatabaseCheckpointStore().delete("inline_tenant_count")
    run_projections(InlineTenantCount(), event_store=EventStore(inline_projections=False))
    row.refresh_from_db()
    assert row.tasks == 3


def test_inline_row_applies_an_event_that_reaches_it_late(
    inline_count: type[InlineTenantCount],
) -> None:
    """B appends first (lower position) but its handler is held before it asks for the row;
    A appends, applies and commits; then B applies. B's position is below the row's
    checkpoint by then: it must still be applied."""
    store = EventStore()
    b_in_handler, b_may_go = threading.Event(), threading.Event()

    def pause(title: str) -> None:
        if title == "B":
            b_in_handler.set()
            assert b_may_go.wait(WAIT)

    inline_count.pause = pause

    def b() -> StoredEvent:
        [stored] = store.append(*titled("B"))
        return stored

    second = Actor(b)
    second.start()
    try:
        assert b_in_handler.wait(WAIT)
        [a_event] = store.append(*titled("A"))
    finally:
        b_may_go.set()
    b_event = second.finish()
    assert b_event.position < a_event.position
    row = TenantStats.objects.get(tenant_id="acme")
    assert row.tasks == 2
    feed = [e.position for e in all_events(store)]
    assert feed.index(row.last_event_position) == 1  # the later of the two in feed order
    DatabaseCheckpointStore().delete("inline_tenant_count")
    run_projections(InlineTenantCount(), event_store=EventStore(inline_projections=False))
    row.refresh_from_db()
    assert row.tasks == 2


def test_sqlite_inline_rows_count_every_append(vendor: str) -> None:
    """The SQLite twin of the inline tests: appends are serialized, every one is counted."""
    if vendor != "sqlite":
        pytest.skip("the PostgreSQL interleavings are test_inline_row_applies_…")
    classes = dict(projection_registry._classes)
    projection_registry.register(InlineTenantCount)
    try:
        store = EventStore()
        stored = [store.append(*titled(t))[0] for t in "AB"]
        row = TenantStats.objects.get(tenant_id="acme")
        assert (row.tasks, row.last_event_position) == (2, stored[-1].position)
    finally:
        projection_registry._classes.clear()
        projection_registry._classes.update(classes)

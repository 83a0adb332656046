"""Inline projections in transactions that read under one snapshot (PostgreSQL's
``REPEATABLE READ`` and ``SERIALIZABLE``): real transactions on separate connections, in a
fixed order.

At READ COMMITTED an append reads the projection's state (is a rebuild replaying it?) and its
rows with a new snapshot taken after its lock on the event table, so it sees every rebuild
reset and hand-over that committed before it (the lock waits for those in flight). Under one
snapshot it read them as they were when the transaction's first statement ran:

* a hand-over that committed after the snapshot: the append still saw ``rebuilding``, left
  its event to the rebuild, which had already finished: the event was never applied (lost);
* a reset that committed after the snapshot: the append still saw the projection idle and
  applied it to rows the reset had deleted (a serialization failure, reported as the
  handler's ``ProjectionError``);
* a row another append wrote after the snapshot: a serialization failure, or a second copy
  of a new row (a unique violation), raw.

Now every lock-out bumps a fence row, an append under one snapshot runs into it, and such an
append raises ``StaleSnapshot`` (nothing written, its transaction marked for rollback); the
retry, a new transaction, applies the event exactly once. A new row whose lookup no unique
constraint covers is refused (``IsolationNotSupported``): nothing could stop a second copy.
A rebuild that runs under one snapshot itself (``OPTIONS={"isolation_level": ...}`` is every
transaction's) takes its lock-outs before it reads, so it reads what the appends it waited for
wrote.

SQLite serializes writers (the suite's transactions take the write lock at BEGIN): the same
sequences end with the same counts, the later writer waiting for the earlier one.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar
from uuid import uuid4

import pytest
from django.db import connection, transaction
from django.db.transaction import TransactionManagementError

from django_eventsource import (
    DeclarativeProjection,
    EventStore,
    IsolationNotSupported,
    StaleSnapshot,
    handles,
)
from django_eventsource.constants import EVENT_TABLE
from django_eventsource.models import Event, ProjectionState
from django_eventsource.rebuild import rebuild
from tests.concurrency.inline_rows import InlineTenantTotal, register, restore
from tests.concurrency.test_inline_new_rows import WAIT, Actor, waits_on_a_lock
from tests.helpers import all_events, wait_for
from tests.testapp.events import TaskCreated
from tests.testapp.models import Note, TaskSummary, TenantStats

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


@contextmanager
def one_snapshot(isolation: str, how: str) -> Iterator[None]:
    """A transaction whose snapshot is taken before it yields (PostgreSQL; on SQLite it holds
    the write lock from BEGIN). ``how``: ``set_transaction`` sets the level first thing;
    ``options``: the connection's OPTIONS did (see `Session`)."""
    with transaction.atomic():
        if how == "set_transaction" and connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(f"SET TRANSACTION ISOLATION LEVEL {isolation}")
        Note.objects.count()  # the snapshot
        yield


class Writer:
    """In a transaction that took its snapshot, waits for ``go``, then appends for
    ``tenant``; on ``StaleSnapshot`` the transaction refuses further queries, rolls back,
    and the writer appends again in a new one. ``outcome``: ``"appended"`` or
    ``"retried"``; ``error``: the StaleSnapshot."""

    def __init__(self, tenant: str, isolation: str, how: str = "set_transaction") -> None:
        self.tenant, self.isolation, self.how = tenant, isolation, how
        self.taken, self.go = threading.Event(), threading.Event()
        self.error: StaleSnapshot | None = None
        self.doomed = False

    def __call__(self) -> str:
        try:
            with one_snapshot(self.isolation, self.how):
                self.taken.set()
                assert self.go.wait(WAIT)
                try:
                    append(self.tenant)
                except StaleSnapshot as exc:
                    self.error = exc
                    try:
                        Note.objects.count()
                    except TransactionManagementError:
                        self.doomed = True  # the append marked the transaction for rollback
                    raise
        except StaleSnapshot:
            before = Event.objects.count()
            append(self.tenant)  # the retry: a new transaction, a new snapshot
            assert Event.objects.count() == before + 1
            return "retried"
        return "appended"

    def start(self, *, options: bool = False) -> Session:
        session = Session(self, self.isolation if options else None)
        session.start()
        assert self.taken.wait(WAIT)
        return session


def assert_stale(writer: Writer, result: str, vendor: str, projection: str | None) -> None:
    """On PostgreSQL the first append raised StaleSnapshot and the retry appended; on
    SQLite the append went through at once."""
    if vendor == "sqlite":
        assert (result, writer.error) == ("appended", None)
        return
    assert result == "retried"
    assert writer.error is not None
    assert writer.doomed
    assert writer.error.isolation == writer.isolation.lower()
    assert writer.error.projection == projection
    assert writer.error.tenant_id == writer.tenant
    assert writer.isolation in str(writer.error)


@pytest.mark.parametrize("how", ["set_transaction", "options"])
@pytest.mark.parametrize("isolation", LEVELS)
def test_an_append_under_a_snapshot_from_before_the_hand_over(
    inline_total: type[InlineTenantTotal], vendor: str, isolation: str, how: str
) -> None:
    """W takes its snapshot while the projection is ``rebuilding``; the rebuild hands it
    over (``idle``: W is no appender yet, so it does not wait for W) and commits; then W
    appends. Before: W read ``rebuilding`` from its snapshot and left its event to a rebuild
    that was over: the event was never applied (counts 2, the fold 3)."""
    from django_eventsource import state

    append("acme")
    state.begin_rebuild(NAME, None, "default")  # an interrupted rebuild: appends defer
    append("acme")
    assert counts() == {"acme": 1}
    writer = Writer("acme", isolation, how)
    session = writer.start(options=how == "options")
    if vendor == "sqlite":
        writer.go.set()  # W holds the write lock: the rebuild below waits for its commit
    rebuilder = Actor(lambda: rebuild(InlineTenantTotal()))
    rebuilder.start()
    if vendor == "postgresql":
        assert not rebuilder.finish().failed
        assert ProjectionState.objects.get(name=NAME).status == "idle"
        writer.go.set()
    result = session.finish()
    assert not rebuilder.finish().failed
    assert_stale(writer, result, vendor, None)
    assert ProjectionState.objects.get(name=NAME).status == "idle"
    assert counts() == fold() == {"acme": 3}


@pytest.mark.parametrize("isolation", LEVELS)
def test_an_append_under_a_snapshot_from_before_the_reset(
    inline_total: type[InlineTenantTotal], vendor: str, isolation: str
) -> None:
    """W takes its snapshot; a rebuild resets the projection (its rows deleted,
    ``rebuilding``) and replays its first batch; then W appends, and the rebuild goes on
    once W is done. Before: W read the projection idle and applied it to a row the reset
    had deleted (a serialization failure, raised as the handler's ProjectionError)."""
    for tenant in ("acme", "acme", "globex"):
        append(tenant)
    writer = Writer("acme", isolation)
    session = writer.start()
    if vendor == "sqlite":
        writer.go.set()  # W holds the write lock: the rebuild waits for its commit

    def let_the_writer_in(kind: str, **data: object) -> None:
        if kind == "batch" and not writer.go.is_set():
            # The reset has committed and the replay is under way.
            writer.go.set()
            session.join(WAIT)

    rebuilder = Actor(
        lambda: rebuild(InlineTenantTotal(), batch_size=1, progress_callback=let_the_writer_in)
    )
    rebuilder.start()
    result = session.finish()
    assert not rebuilder.finish().failed
    # The retry left the event to the rebuild, which applied it.
    assert_stale(writer, result, vendor, None)
    assert ProjectionState.objects.get(name=NAME).status == "idle"
    assert counts() == fold() == {"acme": 3, "globex": 1}


@pytest.mark.parametrize("row", ["existing", "new"])
@pytest.mark.parametrize("isolation", LEVELS)
def test_an_append_under_one_snapshot_to_a_row_another_append_wrote(
    inline_total: type[InlineTenantTotal], vendor: str, isolation: str, row: str
) -> None:
    """W takes its snapshot; another append (READ COMMITTED) writes the row W's event goes
    to (an existing row, or a new one) and commits; then W appends. Before: a serialization
    failure (raised as the handler's ProjectionError), or W created the row a second time
    and failed on its unique constraint (a raw IntegrityError)."""
    append("acme")
    tenant = "acme" if row == "existing" else "newco"
    writer = Writer(tenant, isolation)
    session = writer.start()
    other = Actor(lambda: append(tenant))
    other.start()
    if vendor == "postgresql":
        other.finish()
    writer.go.set()  # SQLite: the other append waits for W's commit
    result = session.finish()
    other.finish()
    assert_stale(writer, result, vendor, NAME)
    assert counts() == fold()
    assert counts()[tenant] == (3 if row == "existing" else 2)


@pytest.mark.parametrize("isolation", LEVELS)
def test_an_append_under_one_snapshot_waits_for_the_row_then_retries(
    inline_total: type[InlineTenantTotal], vendor: str, isolation: str
) -> None:
    """As above, but the other append still holds the row when W reaches it: W waits for
    it (PostgreSQL: a row lock, shown by pg_stat_activity), and then its snapshot is older
    than the row."""
    if vendor == "sqlite":
        pytest.skip("SQLite: W holds the write lock from BEGIN; the test above is the twin")
    append("acme")
    writer = Writer("acme", isolation)
    session = writer.start()
    appended, may_commit = threading.Event(), threading.Event()

    def other_append() -> None:
        with transaction.atomic():
            append("acme")
            appended.set()
            assert may_commit.wait(WAIT)

    other = Actor(other_append)
    other.start()
    try:
        assert appended.wait(WAIT)
        writer.go.set()
        assert wait_for(lambda: session.pid is not None and waits_on_a_lock(session.pid))
    finally:
        may_commit.set()
    other.finish()
    assert session.finish() == "retried"
    assert writer.error is not None and writer.error.projection == NAME
    assert writer.doomed
    assert counts() == fold() == {"acme": 3}


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


class TitledSummaries(DeclarativeProjection):
    """Inline, one TaskSummary per title: no unique constraint covers (tenant_id, title).
    Registered only by the test (its name is set after the class statement)."""

    inline = True
    models = (TaskSummary,)

    @handles(TaskCreated)
    def created(self, event: TaskCreated) -> None:
        if row := self.row(TaskSummary, event, title=event.title):
            row.task_id = event.aggregate_id
            row.events_applied += 1


TitledSummaries.name = "titled_summaries"


@pytest.mark.parametrize("isolation", ["READ COMMITTED", *LEVELS])
def test_a_new_row_no_unique_constraint_covers_is_refused_under_one_snapshot(
    vendor: str, isolation: str
) -> None:
    """Under one snapshot a second look cannot see a row another append created since,
    and without a unique constraint nothing would stop a second copy: the append refuses
    (IsolationNotSupported, nothing written). At READ COMMITTED (and on SQLite) the row is
    created as before."""
    from django_eventsource import projection_registry

    previous = dict(projection_registry._classes)
    projection_registry.register(TitledSummaries)
    try:
        with transaction.atomic():
            if vendor == "postgresql":
                with connection.cursor() as cursor:
                    cursor.execute(f"SET TRANSACTION ISOLATION LEVEL {isolation}")
            if vendor == "postgresql" and isolation != "READ COMMITTED":
                with pytest.raises(IsolationNotSupported) as info:
                    append("acme")
                assert info.value.model is TaskSummary
                assert set(info.value.lookup) == {"tenant_id", "title"}
                assert info.value.isolation == isolation.lower()
            else:
                append("acme")
        expected = 0 if vendor == "postgresql" and isolation != "READ COMMITTED" else 1
        assert Event.objects.count() == expected
        assert TaskSummary.objects.count() == expected
    finally:
        projection_registry._classes.clear()
        projection_registry._classes.update(previous)


class StreamSummaries(DeclarativeProjection):
    """Inline, one TaskSummary per stream, prefetched by ``row_keys``: the unique
    constraint (tenant_id, task_id) covers the lookup. Registered only by the test."""

    inline = True
    models = (TaskSummary,)
    row_keys: ClassVar = {TaskSummary: "task_id"}

    @handles(TaskCreated)
    def created(self, event: TaskCreated) -> None:
        if row := self.row(TaskSummary, event, task_id=event.aggregate_id):
            row.title = event.title


StreamSummaries.name = "stream_summaries"


@pytest.mark.parametrize("isolation", LEVELS)
def test_new_rows_a_unique_constraint_covers_are_created_under_one_snapshot(
    vendor: str, isolation: str
) -> None:
    """The batch path (``row_keys``, one query for the streams' rows) creates new rows under
    one snapshot when a unique constraint covers their lookup."""
    from django_eventsource import projection_registry

    previous = dict(projection_registry._classes)
    projection_registry.register(StreamSummaries)
    try:
        with transaction.atomic():
            if vendor == "postgresql":
                with connection.cursor() as cursor:
                    cursor.execute(f"SET TRANSACTION ISOLATION LEVEL {isolation}")
            append("acme")
        assert list(TaskSummary.objects.values_list("tenant_id", "title")) == [("acme", "i")]
    finally:
        projection_registry._classes.clear()
        projection_registry._classes.update(previous)


@pytest.mark.parametrize(
    ("model", "lookup", "unique"),
    [
        (TaskSummary, {"tenant_id", "task_id"}, True),  # a UniqueConstraint
        (TaskSummary, {"tenant_id", "task_id", "title"}, True),
        (TaskSummary, {"tenant_id", "title"}, False),
        (TaskSummary, {"task_id"}, False),  # the constraint includes tenant_id
        (TenantStats, {"tenant_id"}, True),  # unique=True
        (TaskSummary, {"pk"}, True),
        (TaskSummary, {"id"}, True),
    ],
)
def test_which_lookups_a_unique_constraint_covers(
    model: Any, lookup: set[str], unique: bool
) -> None:
    from django_eventsource.rows import _unique_among

    assert _unique_among(model, frozenset(lookup)) is unique

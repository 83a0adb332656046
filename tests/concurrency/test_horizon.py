"""Only event writers hold readers back (PostgreSQL's writer-scoped horizon), and nothing is
lost for it: real transactions on separate connections and processes.

* A transaction that holds an id in another database, or writes another table of this one,
  does not hold a follow worker back; on the cluster-wide rule it did.
* The rule's "ended since the snapshot" term is needed: with a sleep injected between the
  reader's snapshot and its ``pg_locks`` read, the library's function loses nothing, and a
  copy of it without that term loses an event (the test can fail).
* ... and it is no wider than needed: a transaction that ends after the ``pg_locks`` read,
  or rolls back, holds nobody back (version 1 of the function held readers back at both,
  so on a busy server a read right after a commit could miss the event); and where a
  transaction did end in that window, ``read_all`` reads a short page again.
* A writer that is committing while the reader reads ``pg_locks`` (its table lock released,
  its transaction id not yet) still holds the reader back; version 2 of the function let it
  go and the reader skipped its event (the test can fail).
* A REPEATABLE READ or SERIALIZABLE transaction that wrote before it appended inserts under
  an old snapshot; its events still arrive after what a reader passed.
* SQLite serializes writers: nothing is ever held back there.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from importlib import import_module
from uuid import uuid4

import psycopg
import pytest
from django.db import connection, connections, transaction

from django_eventsource import EventStore
from django_eventsource.backends.postgresql.horizon import (
    CLUSTER_HORIZON_SQL,
    HORIZON_SQL,
    TEST_SLEEP_AFTER_SETTING,
    TEST_SLEEP_SETTING,
    horizon_holders,
)
from django_eventsource.constants import EVENT_TABLE
from tests.factories import TaskCreatedFactory
from tests.fold import fold_task_board, task_board_rows
from tests.helpers import start_follower, wait_for
from tests.testapp.events import Counted
from tests.testapp.models import Note, TaskSummary

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

ON_POSTGRES = connection.vendor == "postgresql"
PG_ONLY = "only PostgreSQL has a horizon; test_sqlite_never_holds_anything_back is the twin"


def postgres_only(test: Callable[..., None]) -> Callable[..., None]:
    return pytest.mark.postgres(pytest.mark.skipif(not ON_POSTGRES, reason=PG_ONLY)(test))


#: How long a foreign transaction stays open: the latency bound below is far under it.
HOLD = 8.0


@contextmanager
def foreign_transaction(db_url: str, where: str) -> Iterator[None]:
    """A transaction that holds a transaction id, and never touches the event table, until
    the block ends: in another database of the server, or writing another table of ours."""
    if where == "another database":
        dsn = db_url.rsplit("/", 1)[0] + "/postgres"
        statement = "SELECT pg_current_xact_id()"
    else:
        dsn = db_url
        statement = f"INSERT INTO {Note._meta.db_table} (text) VALUES ('foreign')"
    with psycopg.connect(dsn) as foreign:
        foreign.execute(statement)  # psycopg opened a transaction: it now has an id
        try:
            yield
        finally:
            foreign.rollback()


def cluster_hides_something() -> bool:
    """Whether the cluster-wide rule would hide a committed event now."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT EXISTS (SELECT FROM {EVENT_TABLE} WHERE stamp >= {CLUSTER_HORIZON_SQL})"
        )
        return bool(cursor.fetchone()[0])


@postgres_only
@pytest.mark.parametrize("where", ["another database", "another table"])
def test_a_foreign_transaction_does_not_hold_a_follower_back(
    child_db_url: str, where: str
) -> None:
    store = EventStore()
    worker = start_follower(child_db_url, handler_sleep="0")
    latencies: list[float] = []
    try:
        first = TaskCreatedFactory.build(title="warm-up")
        store.append(first.aggregate_id, [first])
        assert wait_for(lambda: TaskSummary.objects.filter(task_id=first.aggregate_id).exists())
        started = time.monotonic()
        with foreign_transaction(child_db_url, where):
            hidden_by_the_old_rule = False
            while time.monotonic() - started < HOLD - 1.0:
                event = TaskCreatedFactory.build(title="during the hold")
                store.append(event.aggregate_id, [event])
                committed = time.monotonic()
                hidden_by_the_old_rule |= cluster_hides_something()
                assert wait_for(
                    lambda e=event: TaskSummary.objects.filter(task_id=e.aggregate_id).exists(),
                    timeout=HOLD,
                )
                latencies.append(time.monotonic() - committed)
                time.sleep(0.1)
            # Still open: every event above was applied while it held its transaction id.
            assert time.monotonic() - started < HOLD + 5
    finally:
        worker.terminate()
        _out, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err
    # The scenario is real: the cluster-wide rule would have hidden these events.
    assert hidden_by_the_old_rule
    latencies.sort()
    p95 = latencies[int(len(latencies) * 0.95) - 1]
    assert len(latencies) >= 10 and p95 < 0.5, latencies
    assert task_board_rows() == fold_task_board(store)


# The rule, step by step ---------------------------------------------------------------------


def read_pairs(after: tuple[int, int] | None, horizon: str) -> list[tuple[int, int]]:
    """``read_all``'s statement with another horizon: ``(stamp, position)`` after a pair."""
    sql = f"SELECT stamp, position FROM {EVENT_TABLE} WHERE stamp < {horizon}"
    params: list[int] = []
    if after is not None:
        sql += " AND (stamp, position) > (%s, %s)"
        params += after
    with connection.cursor() as cursor:
        cursor.execute(sql + " ORDER BY stamp, position", params)
        return [(int(s), int(p)) for s, p in cursor.fetchall()]


def library_reader() -> Callable[[int], list[int]]:
    store = EventStore()
    return lambda after: [e.position for e in store.read_all(after)]


def reader_with(horizon: str) -> Callable[[int], list[int]]:
    """A reader with another horizon expression, resuming after pairs as ``read_all`` does."""
    stamps: dict[int, int] = {}

    def read(after: int) -> list[int]:
        pairs = read_pairs((stamps[after], after) if after else None, horizon)
        stamps.update((p, s) for s, p in pairs)
        return [p for _, p in pairs]

    return read


#: The conditions of the library's rule (migration 0009), and two weaker ones.
HOLDS = import_module("django_eventsource.migrations.0009_horizon_committing_writers").HOLDS
WITHOUT_ENDED_SINCE = """
        (x.xid & 4294967295) = ANY (v_writers)
        OR ((x.xid & 4294967295) = ANY (v_running)
            AND pg_xact_status(x.xid::text::xid8) = 'committed')
"""


def reader_with_holds(holds: str, name: str) -> Callable[[int], list[int]]:
    """A copy of the library's horizon function with other conditions (a temporary function
    that lives as long as this test's connection)."""
    frozen = import_module("django_eventsource.migrations.0009_horizon_committing_writers")
    assert HOLDS in frozen.HORIZON
    sql = frozen.HORIZON.replace(HOLDS, holds).replace(
        "django_eventsource_horizon_v3(", f"pg_temp.{name}("
    )
    with connection.cursor() as cursor:
        cursor.execute(sql)
    return reader_with(f"(SELECT pg_temp.{name}(pg_current_snapshot()))")


def earlier_version(migration: str, function: str, name: str, term: str | None = None) -> str:
    """The horizon expression of an earlier version of the function (a temporary copy),
    optionally with its "ended since" term replaced."""
    frozen = import_module(f"django_eventsource.migrations.{migration}").HORIZON
    if term is not None:
        assert VERSION_2_ENDED_TERM in frozen
        frozen = frozen.replace(VERSION_2_ENDED_TERM, term)
    with connection.cursor() as cursor:
        cursor.execute(frozen.replace(f"{function}(", f"pg_temp.{name}("))
    return f"(SELECT pg_temp.{name}(pg_current_snapshot()))"


#: Version 2's term for transactions that ended since the snapshot (migration 0007).
VERSION_2_ENDED_TERM = """OR (NOT (x.xid & 4294967295) = ANY (v_running)  -- ended before the read
            AND pg_xact_status(x.xid::text::xid8) IS DISTINCT FROM 'aborted')"""


def sabotaged_reader() -> Callable[[int], list[int]]:
    """The library's rule without the "ended since the snapshot" term."""
    return reader_with_holds(WITHOUT_ENDED_SINCE, "horizon_without_ended_since")


def version_1_reader() -> Callable[[int], list[int]]:
    """Migration 0004's rule (in 0007's function, which checks after its second sleep): any
    transaction of the snapshot that is no longer running when checked after the
    ``pg_locks`` read holds readers back, whether it ended before or after that read,
    committed or rolled back."""
    return reader_with(
        earlier_version(
            "0007_horizon_running_at_the_read",
            "django_eventsource_horizon_v2",
            "horizon_version_1_rule",
            "OR pg_xact_status(x.xid::text::xid8) IS DISTINCT FROM 'in progress'",
        )
    )


@contextmanager
def horizon_sleep(seconds: float, setting: str = TEST_SLEEP_SETTING) -> Iterator[None]:
    with connection.cursor() as cursor:
        cursor.execute(f"SET {setting} = %s", [str(seconds)])
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"RESET {setting}")


def follow(read: Callable[[int], list[int]], after: int, rounds: int = 3) -> list[int]:
    seen: list[int] = []
    for _ in range(rounds):
        page = read(after)
        seen += page
        after = page[-1] if page else after
        time.sleep(0.05)
    return seen


@contextmanager
def in_thread(body: Callable[[], None]) -> Iterator[threading.Thread]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            body()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            errors.append(exc)
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    try:
        yield thread
    finally:
        thread.join(60)
    if errors:
        raise errors[0]


def ended_since_scenario(read: Callable[[int], list[int]]) -> tuple[list[int], list[int]]:
    """W appends and stays open; Y appends after it and commits (a higher stamp); the reader
    takes its snapshot, and W commits while the horizon function sleeps before reading
    pg_locks. W is then neither a writer nor visible to the snapshot: only the "ended since"
    term keeps the reader from passing Y, and W's event, for good."""
    store = EventStore()
    appended, go = threading.Event(), threading.Event()
    positions: list[int] = []

    def writer_w() -> None:
        stream = uuid4()
        with transaction.atomic():
            [event] = store.append(stream, [Counted(aggregate_id=stream, writer=1)])
            positions.append(event.position)
            appended.set()
            assert go.wait(30)
            time.sleep(0.5)  # commits during the reader's sleep

    with in_thread(writer_w):
        assert appended.wait(30)
        stream = uuid4()
        [y] = store.append(stream, [Counted(aggregate_id=stream, writer=2)])
        positions.append(y.position)
        with horizon_sleep(1.5):
            go.set()
            seen = read(0)
    seen += follow(read, seen[-1] if seen else 0)
    return positions, seen


@postgres_only
def test_a_transaction_that_ended_since_the_snapshot_holds_the_reader() -> None:
    committed, seen = ended_since_scenario(library_reader())
    assert sorted(seen) == sorted(committed) and len(seen) == len(set(seen))


@postgres_only
def test_without_the_ended_since_term_an_event_is_lost() -> None:
    """The scenario above can fail: the same rule without the term skips W's event."""
    (_w_position, y_position), seen = ended_since_scenario(sabotaged_reader())
    assert seen == [y_position]  # W's event was passed for good


def bystander_scenario(
    read: Callable[[int], list[int]], ends: str, setting: str
) -> tuple[int, list[int]]:
    """B writes another table (it has an id) and is still open when Y appends and commits
    (Y's stamp is above B's id) and when the reader takes its snapshot; B then ends
    (``ends``: commit or rollback) while the horizon function sleeps (``setting``: before or
    after its ``pg_locks`` read). B never appended: only Y's event is there to read."""
    opened, go = threading.Event(), threading.Event()
    # After the read: B must still run when the function reads pg_locks (a loaded machine
    # may be slow to get there), and end well within the sleep that follows.
    ends_in, sleep = (1.0, 3.0) if setting == TEST_SLEEP_AFTER_SETTING else (0.5, 1.5)

    def bystander() -> None:
        with transaction.atomic():
            Note.objects.create(text="bystander")
            opened.set()
            assert go.wait(30)
            time.sleep(ends_in)  # ends during the reader's sleep
            if ends == "rollback":
                transaction.set_rollback(True)

    with in_thread(bystander):
        assert opened.wait(30)
        stream = uuid4()
        [y] = store_append(stream)
        with horizon_sleep(sleep, setting):
            go.set()
            seen = read(0)
    return y.position, seen


def store_append(stream: object) -> list:
    return EventStore().append(stream, [Counted(aggregate_id=stream, writer=2)])  # type: ignore[arg-type]


@postgres_only
def test_a_bystander_that_ends_after_the_read_holds_nobody_back() -> None:
    """Still running at the ``pg_locks`` read and not appending: whenever it ends, anything
    it could append sorts after what the reader passes, so the reader gets Y at once."""
    y, seen = bystander_scenario(library_reader(), "commit", TEST_SLEEP_AFTER_SETTING)
    assert seen == [y]


@postgres_only
def test_a_bystander_that_rolls_back_holds_nobody_back() -> None:
    """Ended between the snapshot and the read, but rolled back: it wrote nothing."""
    y, seen = bystander_scenario(library_reader(), "rollback", TEST_SLEEP_SETTING)
    assert seen == [y]


@postgres_only
def test_a_read_stopped_by_a_momentary_hold_reads_again() -> None:
    """B ended (committed) between the snapshot and the ``pg_locks`` read: the horizon must
    hold at B, so the first read stops short of Y. Nothing appends any more, so
    ``read_all`` reads again at once and returns Y; a single read does not."""
    y, seen = bystander_scenario(library_reader(), "commit", TEST_SLEEP_SETTING)
    assert seen == [y]
    y, seen = bystander_scenario(reader_with(HORIZON_SQL), "commit", TEST_SLEEP_SETTING)
    assert y not in seen


@postgres_only
def test_a_count_stopped_by_a_momentary_hold_counts_again() -> None:
    """The same momentary hold, met by ``pending_events`` (the status's counts): nothing
    appends any more, so it counts again at once, and Y is readable, not held back."""
    counts: list[tuple[int, int]] = []

    def count(after: int) -> list[int]:
        pending = EventStore().pending_events(after)
        counts.append((pending.readable, pending.held))
        return []

    bystander_scenario(count, "commit", TEST_SLEEP_SETTING)
    assert counts == [(1, 0)]


@postgres_only
@pytest.mark.parametrize(
    ("ends", "setting"),
    [("commit", TEST_SLEEP_AFTER_SETTING), ("rollback", TEST_SLEEP_SETTING)],
)
def test_version_1_of_the_function_missed_the_event_in_both(ends: str, setting: str) -> None:
    """The tests above can fail: with migration 0004's rule the same reads return nothing,
    though Y committed before the reader started."""
    _y, seen = bystander_scenario(version_1_reader(), ends, setting)
    assert seen == []


#: Advisory locks the committing writer below holds: releasing them at its commit takes
#: about a millisecond, in which ``pg_locks`` shows its id but no longer its table lock.
RELEASE_LOCKS = 3000
#: The sleep injected before the reader's ``pg_locks`` read; the writer commits near its end.
COMMIT_SLEEP = 0.02


def append_and_hold_locks(
    positions: list[int], ready: threading.Event, go: threading.Event
) -> None:
    """W: append an event, take ``RELEASE_LOCKS`` advisory locks, commit when told."""
    stream = uuid4()
    with transaction.atomic():
        [event] = EventStore().append(stream, [Counted(aggregate_id=stream, writer=1)])
        positions.append(event.position)
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(pg_advisory_xact_lock(16, k)) FROM generate_series(1, %s) AS k",
                [RELEASE_LOCKS],
            )
        ready.set()
        assert go.wait(30)


def committing_writer_skips(horizon: str, attempts: int, *, until_a_skip: bool) -> int:
    """W appends an event and takes ``RELEASE_LOCKS`` advisory locks; Y appends a later one
    (a higher stamp) and commits; the reader reads after the pair it last passed, with a
    sleep before its ``pg_locks`` read, and W commits near the end of that sleep, at a
    random offset, so that the read often lands while W releases its locks. A read that
    returns Y's event without W's has skipped W's for good. Returns how many reads did."""
    rng = random.Random(16)
    after: tuple[int, int] | None = None
    skips = 0
    for _ in range(attempts):
        ready, go = threading.Event(), threading.Event()
        w_positions: list[int] = []
        writer_w = partial(append_and_hold_locks, w_positions, ready, go)
        with in_thread(writer_w):
            assert ready.wait(30)
            [y] = store_append(uuid4())
            timer = threading.Timer(COMMIT_SLEEP + rng.uniform(-0.004, 0.001), go.set)
            with horizon_sleep(COMMIT_SLEEP):
                timer.start()
                read = read_pairs(after, horizon)
            timer.join()
        if [p for _, p in read] == [y.position]:
            skips += 1
            if until_a_skip:
                return skips
        # Both have committed: go on after the later of the two.
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT max((stamp, position)::text) FROM {EVENT_TABLE} WHERE position IN (%s, %s)",
                [w_positions[0], y.position],
            )
            stamp, position = cursor.fetchone()[0].strip("()").split(",")
        after = (int(stamp), int(position))
    return skips


@postgres_only
def test_a_writer_that_commits_during_the_read_still_holds_it() -> None:
    """PostgreSQL makes a commit visible, then releases the table lock of the append, then
    the transaction id: a ``pg_locks`` read in between sees the writer's id without its
    table lock. The writer must still hold the reader back (migration 0009)."""
    assert committing_writer_skips(HORIZON_SQL, 100, until_a_skip=False) == 0


@postgres_only
def test_version_2_of_the_function_let_a_committing_writer_go() -> None:
    """The test above can fail: with migration 0007's rule the reader skips W's event."""
    version_2 = earlier_version(
        "0007_horizon_running_at_the_read", "django_eventsource_horizon_v2", "horizon_v2"
    )
    assert committing_writer_skips(version_2, 400, until_a_skip=True) == 1


@postgres_only
@pytest.mark.parametrize("isolation", ["REPEATABLE READ", "SERIALIZABLE"])
def test_an_append_under_an_old_snapshot_still_arrives(isolation: str) -> None:
    """T takes its id and its snapshot first (it writes another table), is no writer yet
    when the reader passes a later event, then appends: under its old snapshot the highest
    stamp it sees is below that event's, so its stamp takes an id assigned after its lock."""
    store = EventStore()
    started, passed = threading.Event(), threading.Event()
    positions: list[int] = []

    def old_snapshot_writer() -> None:
        stream = uuid4()
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute(f"SET TRANSACTION ISOLATION LEVEL {isolation}")
            Note.objects.create(text="first")
            started.set()
            assert passed.wait(30)
            [event] = store.append(stream, [Counted(aggregate_id=stream, writer=1)])
            positions.append(event.position)

    read = library_reader()
    with in_thread(old_snapshot_writer):
        assert started.wait(30)
        stream = uuid4()
        [later] = store.append(stream, [Counted(aggregate_id=stream, writer=2)])
        # Not a writer yet, still running: the reader passes the later event.
        assert read(0) == [later.position]
        passed.set()
    assert follow(read, later.position) == positions


def test_sqlite_never_holds_anything_back(child_db_url: str, vendor: str) -> None:
    """SQLite serializes writers: a committed event is always readable; no holder, ever.
    On PostgreSQL the same open writer is named (and holds the later event back)."""
    from tests.concurrency.test_writers import start_hold, tell, wait

    store = EventStore()
    worker, held = start_hold(child_db_url, str(uuid4()))
    try:
        holders = horizon_holders()
        if vendor == "sqlite":
            assert holders == []
        else:
            assert [h.pid for h in holders] == [worker.backend_pid]
            assert holders[0].query == ""  # only on request
    finally:
        tell(worker, "commit")
        wait(worker)
    assert [e.position for e in store.read_all()] == [held]
    assert horizon_holders() == []


# What the status shows --------------------------------------------------------------------


def status(*args: str) -> tuple[int, dict]:
    from io import StringIO

    from django.core.management import call_command

    out, err = StringIO(), StringIO()
    try:
        call_command(
            "projection_status", "task_board", "--format", "json", *args, stdout=out, stderr=err
        )
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, json.loads(out.getvalue())


def test_an_uncommitted_append_holds_readers_back_and_the_status_names_it(
    child_db_url: str, vendor: str
) -> None:
    """PostgreSQL: an appending transaction that has not committed holds back the events
    committed after it took its id; they count as lag (never 0 while they wait), as held
    back for as long as they wait, with the transaction named, and ``--check`` fails past
    ``--max-held-seconds``. SQLite: the open writer serializes everyone: nothing is held."""
    from tests.concurrency.test_writers import start_hold, tell, wait

    store = EventStore()
    worker, held_position = start_hold(child_db_url, str(uuid4()))
    try:
        if vendor == "postgresql":
            event = TaskCreatedFactory.build(title="committed behind the open one")
            [later] = store.append(event.aggregate_id, [event])
            assert store.read_all().events == []  # its events are coming: wait for them
            time.sleep(1.2)
        code, data = status("--check", "--max-held-seconds", "1")
        [row] = data["projections"]
        if vendor == "postgresql":
            assert code == 1
            assert (row["lag_events"], row["behind_events"], row["held_events"]) == (1, 0, 1)
            assert row["held_seconds"] >= 1.0
            [holder] = data["horizon_holders"]
            assert holder == data["horizon_holder"]
            assert holder["pid"] == worker.backend_pid
            assert holder["database"] == connection.settings_dict["NAME"]
            assert holder["user"] and holder["transaction_id"] and holder["age_seconds"] > 1
            assert holder["state"] == "idle in transaction"
            # Under the threshold (the default is 60 s) the same state passes the check.
            code, _ = status("--check")
            assert code == 0
        else:
            assert code == 0
            assert (row["lag_events"], row["held_events"]) == (0, 0)
            assert data["horizon_holders"] == []
    finally:
        tell(worker, "commit")
        wait(worker)
    expected = [held_position] + ([later.position] if vendor == "postgresql" else [])
    assert [e.position for e in store.read_all()] == expected
    code, data = status("--check", "--max-held-seconds", "0")
    [row] = data["projections"]
    assert code == 0 and row["held_events"] == 0 and data["horizon_holders"] == []
    assert row["lag_events"] == len(expected)  # readable now, not applied: still lag

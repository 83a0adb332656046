"""Re-basing event stamps after a logical dump/restore (DESIGN §4).

A restore into another cluster keeps the stamps but not the server's transaction counter. We
simulate it by raising every stamp far above the counter with raw SQL, then check that the
problem is detected (diagnosis, system check E008, ``projection_status``), that it really
stalls readers, and that ``rebase_event_stamps`` repairs it: readers resume from old
checkpoints with nothing skipped, duplicated or reordered, and new appends become visible.
On SQLite there are no stamps to re-base: the command refuses clearly.
"""

from __future__ import annotations

import itertools
import json
import random
import threading
import time
from io import StringIO
from uuid import uuid4

import pytest
from django.core.checks import run_checks
from django.core.management import CommandError, call_command
from django.db import connection, connections, transaction

from django_eventsource import EventStore, catch_up, projection_registry
from django_eventsource.maintenance import diagnose_stamps, rebase_stamps
from django_eventsource.store import TABLE
from tests.factories import task_history
from tests.fold import fold_task_board, task_board_rows
from tests.integration.test_commands import cli
from tests.testapp.events import TaskCreated

pytestmark = pytest.mark.django_db(transaction=True)

RESTORE_OFFSET = 10**12
ON_POSTGRES = connection.vendor == "postgresql"
PG_ONLY = (
    "transaction-id stamps exist only on PostgreSQL; test_refused_on_sqlite is the SQLite twin"
)


def run(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def order() -> list[int]:
    """Every position in the readers' order, ignoring the horizon."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT position FROM {TABLE} ORDER BY stamp, position")
        return [row[0] for row in cursor.fetchall()]


def scramble_stamps(seed: int) -> None:
    """Give the events small stamps that disagree with the position order, as concurrent
    writers whose commits land out of position order produce (all below the horizon). Like
    real stamps they keep each stream's versions in order."""
    rng = random.Random(seed)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT position, tenant_id, aggregate_id FROM {TABLE} ORDER BY position")
        rows = cursor.fetchall()
        stamps = [rng.randint(1, 20) for _ in rows]
        streams: dict[tuple[str, object], list[int]] = {}
        for index, (_position, tenant, aggregate) in enumerate(rows):
            streams.setdefault((tenant, aggregate), []).append(index)
        for indexes in streams.values():  # within a stream, stamps grow with the version
            for index, stamp in zip(indexes, sorted(stamps[i] for i in indexes), strict=True):
                stamps[index] = stamp
        cursor.execute(
            f"UPDATE {TABLE} AS e SET stamp = v.stamp FROM unnest(%s::bigint[], %s::bigint[]) "
            "AS v(position, stamp) WHERE e.position = v.position",
            [[row[0] for row in rows], stamps],
        )


def simulate_restore() -> None:
    """What a dump restored into a fresh cluster looks like: stamps far above its counter."""
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {TABLE} SET stamp = stamp + %s", [RESTORE_OFFSET])


def all_read(store: EventStore, start: int) -> list[int]:
    return [e.position for e in store.read_all(start)]


def e008() -> list[str]:
    return [
        m.id or "" for m in run_checks(databases=["default"]) if m.id == "django_eventsource.E008"
    ]


@pytest.mark.postgres
@pytest.mark.skipif(not ON_POSTGRES, reason=PG_ONLY)
def test_restore_is_detected_stalls_readers_and_rebase_repairs_it() -> None:
    store = EventStore()
    task_history(store, tasks=12, renames=3, seed=21)
    scramble_stamps(seed=5)
    expected = order()
    assert expected != sorted(expected), "the scramble must make the stamp order matter"
    assert all_read(store, 0) == expected
    board = projection_registry.get("task_board")()
    checkpoint = catch_up(board, max_events=len(expected) // 2).position
    assert checkpoint == expected[len(expected) // 2 - 1]
    healthy = diagnose_stamps()
    assert healthy is not None and not healthy.needs_rebase
    assert e008() == []

    simulate_restore()
    tail = [p for p in expected if p not in expected[: len(expected) // 2]]
    diagnosis = diagnose_stamps()
    assert diagnosis is not None and diagnosis.needs_rebase
    assert diagnosis.max_stamp is not None and diagnosis.max_stamp > diagnosis.next_xid
    # The stall: nothing after the checkpoint is visible, and new appends are not either.
    assert all_read(store, checkpoint) == []
    late = task_history(store, tasks=2, renames=1, seed=22)
    assert late
    assert all_read(store, checkpoint) == []
    assert catch_up(board).events_read == 0
    # Surfaced: the database check, projection_status (table, JSON, --check).
    assert e008() == ["django_eventsource.E008"]
    assert not [m for m in run_checks() if m.id == "django_eventsource.E008"]  # needs --database
    out, _ = run("projection_status", "task_board")
    assert "rebase_event_stamps" in out
    data = json.loads(run("projection_status", "--format", "json")[0])
    assert data["stamps_need_rebase"]["needs_rebase"] is True
    assert data["stamps_need_rebase"]["max_stamp"] == diagnosis.max_stamp
    with pytest.raises(SystemExit) as exit_info:
        run("projection_status", "--check")
    assert exit_info.value.code == 1

    before_rows = order()  # the restored order, late appends included
    out, _ = run("rebase_event_stamps", "--dry-run")
    assert "Dry run" in out and "Will re-base" in out
    assert diagnose_stamps().needs_rebase  # type: ignore[union-attr]

    out, _ = run("rebase_event_stamps", "--noinput")
    assert "Re-based" in out
    assert order() == before_rows, "the re-base changed the order of events"
    after = diagnose_stamps()
    assert after is not None and not after.needs_rebase
    assert after.max_stamp is not None and after.max_stamp < after.horizon
    # Resume from the old checkpoint: exactly the unread events, in the same order.
    late_positions = before_rows[len(expected) :]
    assert sorted(late_positions) == late_positions and min(late_positions) > max(expected)
    assert all_read(store, checkpoint) == tail + late_positions
    assert all_read(store, 0) == before_rows
    result = catch_up(board)
    assert result.events_read == len(tail) + len(late_positions)
    assert task_board_rows() == fold_task_board(store)
    # New appends after the re-base are visible, after everything else.
    task_history(store, tasks=1, renames=0, seed=23)
    assert order()[: len(before_rows)] == before_rows
    fresh = all_read(store, before_rows[-1])
    assert fresh and min(fresh) > max(before_rows)
    assert catch_up(board).events_read == len(fresh)
    assert task_board_rows() == fold_task_board(store)
    assert e008() == []
    out, _ = run("rebase_event_stamps", "--noinput")
    assert "Nothing to do" in out


@pytest.mark.postgres
@pytest.mark.skipif(not ON_POSTGRES, reason=PG_ONLY)
def test_rebase_keeps_ties_and_needs_few_stamps() -> None:
    """Many old stamps collapse onto as few as the order allows, ties stay in position order."""
    store = EventStore()
    task_history(store, tasks=8, renames=2, seed=31)
    scramble_stamps(seed=7)
    simulate_restore()
    expected = order()
    result = rebase_stamps()
    assert result.changed == result.events == len(expected)
    assert order() == expected
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT COUNT(DISTINCT stamp) FROM {TABLE}")
        distinct = cursor.fetchone()[0]
    assert distinct == result.stamps
    descents = sum(1 for a, b in itertools.pairwise(expected) if b < a)
    assert result.stamps == descents + 1
    assert rebase_stamps().changed == 0  # healthy now: nothing to do


@pytest.mark.postgres
@pytest.mark.skipif(not ON_POSTGRES, reason=PG_ONLY)
@pytest.mark.slow
def test_rebase_cli(child_db_url: str) -> None:
    store = EventStore()
    task_history(store, tasks=5, seed=41)
    checkpoint = store.read_all(limit=3).last_position
    simulate_restore()
    restored = order()
    expected = restored[restored.index(checkpoint) + 1 :]
    assert all_read(store, checkpoint) == []
    refused = cli(child_db_url, "rebase_event_stamps", stdin="no\n")
    assert refused.returncode == 1
    assert "Re-base cancelled" in refused.stderr
    assert diagnose_stamps().needs_rebase  # type: ignore[union-attr]
    checked = cli(child_db_url, "check", "--database", "default")
    assert checked.returncode == 1 and "django_eventsource.E008" in checked.stderr
    result = cli(child_db_url, "rebase_event_stamps", "--noinput")
    assert result.returncode == 0, result.stderr
    assert "Re-based" in result.stdout
    assert all_read(store, checkpoint) == expected
    assert cli(child_db_url, "check", "--database", "default").returncode == 0


@pytest.mark.skipif(ON_POSTGRES, reason="the SQLite twin of the PostgreSQL tests above")
def test_refused_on_sqlite(child_db_url: str) -> None:
    store = EventStore()
    task_history(store, tasks=2, seed=51)
    assert diagnose_stamps() is None
    assert e008() == []
    with pytest.raises(CommandError, match="not supported on the 'sqlite' backend"):
        run("rebase_event_stamps", "--noinput")
    data = json.loads(run("projection_status", "--format", "json")[0])
    assert data["stamps_need_rebase"] is None
    result = cli(child_db_url, "rebase_event_stamps", "--noinput")
    assert result.returncode == 1
    assert "Only PostgreSQL stores transaction-id stamps" in result.stderr
    assert all_read(store, 0) == order()


@pytest.mark.postgres
@pytest.mark.skipif(not ON_POSTGRES, reason=PG_ONLY)
def test_an_append_waiting_on_the_rebase_lands_after_it_and_stays_visible() -> None:
    """An append that arrives while the re-base holds its lock waits, then commits a stamp
    above every re-based one and below the horizon: no new stall, nothing skipped."""
    store = EventStore()
    task_history(store, tasks=4, seed=81)
    simulate_restore()
    expected = order()
    locked, release = threading.Event(), threading.Event()
    appended: list[int] = []
    errors: list[Exception] = []

    def rebase_and_hold() -> None:
        try:
            with transaction.atomic():
                rebase_stamps()  # a savepoint: the lock lasts until the outer commit
                locked.set()
                release.wait(30)
        except Exception as exc:  # noqa: BLE001 - a thread: re-raised by the assert below
            errors.append(exc)
        finally:
            locked.set()
            connections.close_all()

    def append() -> None:
        try:
            task_id = uuid4()
            [stored] = EventStore().append(
                task_id, [TaskCreated(aggregate_id=task_id, title="late")]
            )
            appended.append(stored.position)
        except Exception as exc:  # noqa: BLE001 - a thread: re-raised by the assert below
            errors.append(exc)
        finally:
            connections.close_all()

    rebaser = threading.Thread(target=rebase_and_hold)
    rebaser.start()
    assert locked.wait(30)
    appender = threading.Thread(target=append)
    appender.start()
    try:
        assert wait_until(waiting_on_event_table), "the append did not wait for the lock"
    finally:
        release.set()
        rebaser.join(30)
        appender.join(30)
    assert not errors, errors
    [late] = appended
    diagnosis = diagnose_stamps()
    assert diagnosis is not None and not diagnosis.needs_rebase, diagnosis
    assert order() == [*expected, late]
    assert all_read(store, expected[-1]) == [late]


def waiting_on_event_table() -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT EXISTS (SELECT FROM pg_locks WHERE NOT granted AND relation = %s::regclass)",
            [TABLE],
        )
        return bool(cursor.fetchone()[0])


def wait_until(predicate, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False

"""Shadow rebuilds under load, with real processes (PostgreSQL; SQLite refuses ``--shadow``,
see tests/integration/test_rebuild_shadow.py):

* another process reads the live table in a loop during a shadow rebuild while writers
  append, and sees only the old table or the new one (never empty, never a mix), for an
  asynchronous projection (its live runner keeps applying) and an inline one (the appends
  write its live rows); at the end the read model equals a fresh fold;
* kill -9 during the build (several times): the live rows are untouched, the next run
  resumes the shadow; kill -9 during the swap (several times, at the lock on the live
  tables and after the renames): the old tables stay whole, the next run swaps.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.db import connection, models

from django_eventsource import EventStore, ProjectionState, catch_up
from django_eventsource.shadow import CHECKPOINT_TABLE, find_shadow_build, shadow_schema
from tests.factories import task_history
from tests.fold import fold_task_board, task_board_rows
from tests.helpers import (
    drop_shadow_schemas,
    settled,
    start_command,
    start_follower,
    start_worker,
    wait_for,
)
from tests.testapp.models import TaskIndex, TaskSummary
from tests.testapp.projections import TaskBoard

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def postgresql(vendor: str) -> Iterator[None]:
    if vendor != "postgresql":
        pytest.skip("--shadow is PostgreSQL only; SQLite's refusal is tested in integration")
    drop_shadow_schemas()  # the test database's flush does not reach them
    yield
    drop_shadow_schemas()


def fold_task_index(store: EventStore) -> dict[Any, tuple[str, Any]]:
    return {
        (e.tenant_id or "", e.aggregate_id): (e.event.title, e.event_id)
        for e in store.read_all()
        if e.event_type == "TaskCreated" and e.event.title != "inline-boom"
    }


def task_index_rows() -> dict[Any, tuple[str, Any]]:
    return {(r.tenant_id, r.task_id): (r.title, r.last_event_id) for r in TaskIndex.objects.all()}


def start_reader(db_url: str, name: str, tmp_path: Path) -> subprocess.Popen[str]:
    table = TaskSummary if name == "task_board" else TaskIndex
    ids = tmp_path / "start_ids.txt"
    ids.write_text("\n".join(str(t) for t in table.objects.values_list("task_id", flat=True)))
    reads = tmp_path / "reads.jsonl"
    reader = start_worker(db_url, "tests.concurrency.shadow_reader", name, ids, reads)
    assert reader.stdout is not None
    assert json.loads(reader.stdout.readline()) == {"ready": True}, reader.communicate()
    return reader


def stop(process: subprocess.Popen[str]) -> tuple[str, str]:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    return out, err


def check_reads(out: str, start: int) -> list[str]:
    """Every read saw the old table (every start row marked) or the new one (none marked),
    every start row present, and never the old table again after the new one."""
    reads = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert not [r for r in reads if "error" in r], [r for r in reads if "error" in r][:3]
    kinds = []
    for read in reads:
        assert read["present"] == start, f"a reader saw {read} (start rows missing)"
        assert read["marked"] in (0, start), f"a reader saw a mixed table: {read}"
        kinds.append("old" if read["marked"] == start else "new")
    assert "old" in kinds and "new" in kinds, kinds[:5]
    flips = [k for i, k in enumerate(kinds) if i == 0 or kinds[i - 1] != k]
    assert flips == ["old", "new"], f"the reader went back to the old table: {flips}"
    return kinds


def run_shadow_rebuild(db_url: str, name: str, sleep: str) -> subprocess.Popen[str]:
    return start_command(
        db_url,
        *("rebuild_projections", name, "--shadow", "--noinput", "--batch-size", "5"),
        TESTAPP_HANDLER_SLEEP=sleep,
    )


def start_writers(db_url: str, count: int = 2) -> list[subprocess.Popen[str]]:
    """Writers that keep appending until `finish` stops them."""
    return [
        start_worker(db_url, "tests.concurrency.task_writer", n, 10**6, 100 + n, "", "acme")
        for n in range(count)
    ]


def finish(writers: list[subprocess.Popen[str]], store: EventStore) -> None:
    """Let the writers append some more after the swap (into the new table), then stop them
    (SIGTERM: an append in flight rolls back)."""
    assert all(w.poll() is None for w in writers), "a writer stopped before the swap"
    head = store.head_position()
    assert wait_for(lambda: store.head_position() >= head + 20, timeout=120)
    for writer in writers:
        writer.send_signal(signal.SIGTERM)
        writer.communicate(timeout=120)


def test_readers_see_old_or_new_while_an_async_projection_rebuilds(
    child_db_url: str, tmp_path: Path
) -> None:
    store = EventStore()
    task_history(store, tasks=60, renames=4, seed=21)
    catch_up(TaskBoard(), event_store=store)
    TaskSummary.objects.update(renames=models.F("renames") + 1000)  # the old table's marker
    start = TaskSummary.objects.count()
    reader = start_reader(child_db_url, "task_board", tmp_path)
    follower = start_follower(child_db_url, handler_sleep="0")  # the live projection
    writers = start_writers(child_db_url)
    rebuild = run_shadow_rebuild(child_db_url, "task_board", "0.004")
    out, err = rebuild.communicate(timeout=300)
    assert rebuild.returncode == 0, err
    assert "swapped the shadow tables in" in out
    finish(writers, store)
    settled(store)
    assert wait_for(lambda: task_board_rows() == fold_task_board(store), timeout=120), (
        "the live runner did not bring the swapped table to a fresh fold"
    )
    stop(reader)
    stop(follower)
    kinds = check_reads((tmp_path / "reads.jsonl").read_text(), start)
    assert kinds.count("old") > 3, "the reader never looked while the shadow was built"
    assert find_shadow_build("task_board", "default") is None


def test_readers_see_old_or_new_while_an_inline_projection_rebuilds(
    child_db_url: str, tmp_path: Path
) -> None:
    store = EventStore()
    task_history(store, tasks=150, renames=1, seed=22)  # TaskIndex is written by the appends
    TaskIndex.objects.update(title=models.functions.Concat(models.Value("old:"), "title"))
    start = TaskIndex.objects.count()
    reader = start_reader(child_db_url, "task_index", tmp_path)
    writers = start_writers(child_db_url)
    rebuild = run_shadow_rebuild(child_db_url, "task_index", "0.01")
    _out, err = rebuild.communicate(timeout=300)
    assert rebuild.returncode == 0, err
    finish(writers, store)
    stop(reader)
    kinds = check_reads((tmp_path / "reads.jsonl").read_text(), start)
    assert kinds.count("old") > 3, "the reader never looked while the shadow was built"
    # The rows the appends wrote to the live table during the build were not lost.
    assert task_index_rows() == fold_task_index(settled(store))
    assert ProjectionState.objects.filter(name="task_index", position__isnull=False).count() == 0


def shadow_position() -> int | None:
    build = find_shadow_build("task_board", "default")
    return None if build is None else build.position


def test_kill_9_during_the_build_leaves_the_live_rows_and_resumes(child_db_url: str) -> None:
    store = EventStore()
    task_history(store, tasks=80, renames=3, seed=23)
    catch_up(TaskBoard(), event_store=store)
    TaskSummary.objects.update(renames=models.F("renames") + 1000)
    before = task_board_rows()
    checkpoint = ProjectionState.objects.get(name="task_board").position
    positions: list[int] = []
    for _ in range(3):
        rebuild = run_shadow_rebuild(child_db_url, "task_board", "0.005")
        reached = (positions[-1] if positions else 0) + 10
        seen: list[int | None] = []

        def progressed(r: int = reached, seen: list[int | None] = seen) -> bool:
            seen.append(shadow_position())
            return (seen[-1] or 0) >= r

        assert wait_for(progressed, timeout=120)
        if positions:  # it resumed: the shadow never went back (dropped, or rebuilt from 0)
            assert None not in seen and min(seen) >= positions[-1], seen  # type: ignore[type-var]
        rebuild.send_signal(signal.SIGKILL)
        rebuild.communicate()
        assert rebuild.returncode == -signal.SIGKILL
        assert task_board_rows() == before, "a killed shadow build touched the live rows"
        assert ProjectionState.objects.get(name="task_board").position == checkpoint
        position = shadow_position()
        assert position is not None and position >= reached
        positions.append(position)
    rebuild = run_shadow_rebuild(child_db_url, "task_board", "0")
    _out, err = rebuild.communicate(timeout=300)
    assert rebuild.returncode == 0, err
    assert task_board_rows() == fold_task_board(store)
    assert find_shadow_build("task_board", "default") is None


def dsn() -> str:
    s = connection.settings_dict
    return f"host={s['HOST'] or '127.0.0.1'} port={s['PORT'] or 5432} user={s['USER'] or 'postgres'} dbname={s['NAME']}"


def waiting_on(relation: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = to_regclass(%s)",
            [relation],
        )
        return bool(cursor.fetchone()[0])


@pytest.mark.parametrize("point", ["before the renames", "after the renames"])
def test_kill_9_during_the_swap_leaves_the_old_tables_whole(child_db_url: str, point: str) -> None:
    """A transaction of the test holds a lock the swap needs: on the live table (the swap
    waits before its renames) or on the shadow's checkpoint table (it waits for the schema's
    drop, after its renames). The swap is killed while it waits, inside its transaction."""
    store = EventStore()
    task_history(store, tasks=30, renames=3, seed=24)
    catch_up(TaskBoard(), event_store=store)
    TaskSummary.objects.update(renames=models.F("renames") + 1000)
    before = task_board_rows()
    checkpoint = ProjectionState.objects.get(name="task_board").position
    table = TaskSummary._meta.db_table
    schema = shadow_schema("task_board")
    for _ in range(3):
        rebuild = run_shadow_rebuild(child_db_url, "task_board", "0")
        if point == "before the renames":
            blocker = psycopg.connect(dsn())
            blocker.execute(f"SELECT count(*) FROM {table}")  # holds ACCESS SHARE
            relation = table
        else:
            assert wait_for(lambda: shadow_position() is not None, timeout=120)
            blocker = psycopg.connect(dsn())
            blocker.execute(f'SELECT count(*) FROM "{schema}".{CHECKPOINT_TABLE}')
            relation = f'"{schema}".{CHECKPOINT_TABLE}'
        try:
            assert wait_for(lambda r=relation: waiting_on(r), timeout=120), (
                rebuild.poll(),
                rebuild.communicate() if rebuild.poll() is not None else "",
            )
            rebuild.send_signal(signal.SIGKILL)
            rebuild.communicate()
        finally:
            blocker.rollback()
            blocker.close()
        assert rebuild.returncode == -signal.SIGKILL
        assert task_board_rows() == before, "a killed swap left the live table changed"
        assert ProjectionState.objects.get(name="task_board").position == checkpoint
        assert find_shadow_build("task_board", "default") is not None  # kept, to resume
    rebuild = run_shadow_rebuild(child_db_url, "task_board", "0")
    _out, err = rebuild.communicate(timeout=300)
    assert rebuild.returncode == 0, err
    assert task_board_rows() == fold_task_board(store)
    assert ProjectionState.objects.get(name="task_board").position == store.head_position()

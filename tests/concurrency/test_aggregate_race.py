"""Two real processes save the same aggregate at once: one wins, the other conflicts.

Each worker loads the task, reports the version it holds and waits at a barrier (a file the
test creates once both have loaded), so both really hold the same version when they save.
The stream must then hold exactly the winner's events, the snapshot the winner's state, and
the loser nothing at all. With ``update()``, the loser reloads and re-runs its command.
"""

from __future__ import annotations

import json
from pathlib import Path
from uuid import UUID

import pytest

from django_eventsource import EventStore
from django_eventsource.aggregates import Repository
from django_eventsource.models import Event, Snapshot
from tests.concurrency.aggregate_worker import RENAMES
from tests.helpers import start_worker
from tests.testapp.aggregates import SnapshottedTask

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

WORKER = "tests.concurrency.aggregate_worker"


def new_task() -> UUID:
    """A task at version 2: created and renamed once (no snapshot yet)."""
    repo = Repository(SnapshottedTask, EventStore())
    task = SnapshottedTask.create("start")
    task.rename("renamed")
    repo.save(task)
    return task.id


def race(db_url: str, mode: str, task_id: UUID, go: Path) -> list[dict]:
    """Start two workers, release them together once both have loaded, collect results."""
    workers = [start_worker(db_url, WORKER, mode, task_id, n, go) for n in (1, 2)]
    try:
        for worker in workers:
            assert worker.stdout is not None
            line = worker.stdout.readline()
            if not line.startswith("loaded "):
                worker.wait(timeout=60)
                pytest.fail(f"worker did not load: {line!r} {worker.stderr.read()}")  # type: ignore[union-attr]
            assert line.split() == ["loaded", "2"], "both must hold version 2 before saving"
        go.touch()
        results = []
        for writer, worker in enumerate(workers, start=1):
            out, err = worker.communicate(timeout=120)
            assert worker.returncode == 0, err
            results.append({**json.loads(out.strip().splitlines()[-1]), "writer": writer})
        return results
    finally:
        for worker in workers:
            if worker.poll() is None:  # only when the test already failed
                worker.kill()
                worker.communicate(timeout=30)


def stream(task_id: UUID) -> list[tuple[int, str]]:
    return [
        (s.aggregate_version, getattr(s.event, "title", ""))
        for s in EventStore().read_stream(task_id)
    ]


@pytest.mark.parametrize("round_", [1, 2])
def test_concurrent_saves_one_wins_the_other_conflicts(
    child_db_url: str, tmp_path: Path, round_: int
) -> None:
    task_id = new_task()
    results = race(child_db_url, "save", task_id, tmp_path / "go")

    outcomes = sorted(r["result"] for r in results)
    assert outcomes == ["conflict", "won"], results
    [winner] = [r["writer"] for r in results if r["result"] == "won"]
    [loser] = [r for r in results if r["result"] == "conflict"]
    assert (loser["expected"], loser["actual"]) == (2, 2 + RENAMES)

    # Exactly the winner's events, nothing of the loser's, no gap, nothing twice.
    expected = [(1, "start"), (2, "renamed")] + [(3 + n, f"w{winner}-{n}") for n in range(RENAMES)]
    assert stream(task_id) == expected
    assert Event.objects.filter(aggregate_id=task_id).count() == 2 + RENAMES
    # The snapshot (due at version 5) is the winner's, written with its append.
    snapshot = Snapshot.objects.get(aggregate_id=task_id)
    assert snapshot.version == 2 + RENAMES
    assert snapshot.state["title"] == f"w{winner}-{RENAMES - 1}"
    loaded = Repository(SnapshottedTask, EventStore()).load(task_id)
    assert (loaded.version, loaded.title) == (2 + RENAMES, f"w{winner}-{RENAMES - 1}")


def test_update_retries_the_loser_under_a_real_conflict(child_db_url: str, tmp_path: Path) -> None:
    task_id = new_task()
    results = race(child_db_url, "update", task_id, tmp_path / "go")

    assert all(r["result"] == "saved" for r in results), results
    attempts = {r["writer"]: r["attempts"] for r in results}
    assert sorted(attempts.values()) == [1, 2], results  # the loser re-ran its command once
    first = next(w for w, a in attempts.items() if a == 1)
    second = next(w for w, a in attempts.items() if a == 2)
    assert {r["writer"]: r["version"] for r in results} == {
        first: 2 + RENAMES,
        second: 2 + 2 * RENAMES,
    }
    # Both commands' events, each contiguous, the retried one after the winner's.
    assert stream(task_id) == [(1, "start"), (2, "renamed")] + [
        (3 + n, f"w{first}-{n}") for n in range(RENAMES)
    ] + [(3 + RENAMES + n, f"w{second}-{n}") for n in range(RENAMES)]
    loaded = Repository(SnapshottedTask, EventStore()).load(task_id)
    assert loaded.renames == 1 + 2 * RENAMES
    assert loaded.history[-1] == f"w{second}-{RENAMES - 1}"

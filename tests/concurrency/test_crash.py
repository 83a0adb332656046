"""Crash safety: a projection worker SIGKILLed at random points, many times, ends in
exactly the state of an uninterrupted run (nothing lost, nothing applied twice)."""

from __future__ import annotations

import os
import random
import signal
import time

import pytest

from django_eventsource import DatabaseCheckpointStore, EventStore
from django_eventsource.projections import truncate_read_models
from tests.factories import task_history
from tests.fold import fold_task_board, task_board_rows
from tests.helpers import start_worker
from tests.testapp.projections import TaskBoard

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

KILLS = int(os.environ.get("CRASH_TEST_KILLS", "25"))


def test_sigkill_mid_batch_then_resume(child_db_url: str) -> None:
    store = EventStore()
    task_history(store, tasks=60, renames=6, tenants=(None, "acme"), seed=7)
    head = store.head_position()
    rng = random.Random(11)
    kills = completed = rounds = 0
    checkpoints: list[int] = []
    progressed: set[int] = set()
    # The longest wait before a kill adapts to the machine: doubled when a worker made no
    # progress before its kill (a loaded machine starts workers slowly), halved when it did
    # more than its share of the work left, so that kills land between batches.
    longest = 0.15
    for _ in range(KILLS * 8):
        worker = start_worker(
            child_db_url,
            "tests.concurrency.catchup_worker",
            "task_board",
            rng.choice([3, 5, 8, 13]),
            TESTAPP_HANDLER_SLEEP="0.002",
        )
        assert worker.stdout is not None
        assert worker.stdout.readline().strip() == "started", worker.communicate()[1]
        if kills < KILLS:
            time.sleep(rng.uniform(0.0, longest))
            if worker.poll() is None:
                worker.send_signal(signal.SIGKILL)
        _, err = worker.communicate(timeout=120)  # reap it and close its pipes
        if worker.returncode == -signal.SIGKILL:
            kills += 1
        else:  # it finished before the signal landed, or was left to finish
            assert worker.returncode == 0, err
            completed += 1
        checkpoint = DatabaseCheckpointStore().load("task_board") or 0
        previous = checkpoints[-1] if checkpoints else 0
        assert checkpoint >= previous, "checkpoint went backwards"
        if checkpoint == previous and checkpoint != head:
            longest = min(longest * 2, 2.0)
        elif kills < KILLS and (checkpoint - previous) * (KILLS - kills) > head - checkpoint:
            longest = max(longest / 2, 0.01)
        checkpoints.append(checkpoint)
        progressed.add(checkpoint)
        if checkpoint == head:
            if kills >= KILLS:
                break
            # The work ran out before enough kills landed (a fast machine): check this
            # round's result, then start again from nothing and go on killing.
            assert task_board_rows() == fold_task_board(store)
            truncate_read_models(TaskBoard())
            DatabaseCheckpointStore().save("task_board", 0)
            checkpoints.clear()
            rounds += 1
    assert kills >= KILLS, f"only {kills} kills landed in {rounds + 1} rounds"
    assert len(progressed) > 3, "kills never landed between batches of progress"
    # One more uninterrupted run must find nothing left to do or finish the work.
    worker = start_worker(child_db_url, "tests.concurrency.catchup_worker", "task_board", 50)
    out, err = worker.communicate(timeout=120)
    assert worker.returncode == 0, err
    assert out.strip().endswith(f"done {head}")
    assert task_board_rows() == fold_task_board(store)

"""Crash safety: a projection worker SIGKILLed at random points, many times, ends in
exactly the state of an uninterrupted run (nothing lost, nothing applied twice)."""

from __future__ import annotations

import os
import random
import signal
import time

import pytest

from django_eventsource import DatabaseCheckpointStore, EventStore
from tests.factories import task_history
from tests.fold import fold_task_board, task_board_rows
from tests.helpers import start_worker

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

KILLS = int(os.environ.get("CRASH_TEST_KILLS", "25"))


def test_sigkill_mid_batch_then_resume(child_db_url: str) -> None:
    store = EventStore()
    task_history(store, tasks=60, renames=6, tenants=(None, "acme"), seed=7)
    head = store.head_position()
    rng = random.Random(11)
    kills = completed = 0
    checkpoints: list[int] = []
    for _ in range(KILLS * 4):
        worker = start_worker(
            child_db_url,
            "tests.concurrency.catchup_worker",
            "task_board",
            rng.choice([3, 5, 8, 13]),
            TESTAPP_HANDLER_SLEEP="0.002",
        )
        assert worker.stdout is not None
        assert worker.stdout.readline().strip() == "started", worker.communicate()[1]
        time.sleep(rng.uniform(0.0, 0.15))
        if worker.poll() is None:
            worker.send_signal(signal.SIGKILL)
        _, err = worker.communicate()  # reap it and close its pipes
        if worker.returncode == -signal.SIGKILL:
            kills += 1
        else:  # it finished before the signal landed
            assert worker.returncode == 0, err
            completed += 1
        checkpoint = DatabaseCheckpointStore().load("task_board") or 0
        assert not checkpoints or checkpoint >= checkpoints[-1], "checkpoint went backwards"
        checkpoints.append(checkpoint)
        if kills >= KILLS and checkpoint == head:
            break
        if kills >= KILLS:
            rng = random.Random()  # enough kills: let the next runs finish
    assert kills >= KILLS, f"only {kills} kills landed; the worker finished too fast"
    assert len(set(checkpoints)) > 3, "kills never landed between batches of progress"
    # One more uninterrupted run must find nothing left to do or finish the work.
    worker = start_worker(child_db_url, "tests.concurrency.catchup_worker", "task_board", 50)
    out, err = worker.communicate(timeout=120)
    assert worker.returncode == 0, err
    assert out.strip().endswith(f"done {head}")
    assert task_board_rows() == fold_task_board(store)

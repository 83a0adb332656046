"""The read side under concurrent writers: a per-tenant row and a per-stream row each equal
an independent fold of every committed event.

Several writer processes append task events to tenants they share (transactions that take
their id early, multi-event appends, slow commits, rollbacks), while a ``replay_projections
--follow`` worker applies them and is SIGKILLed and restarted at random moments. On
PostgreSQL the feed is ordered by ``(stamp, position)``, so the per-tenant rows
(``checkpoint_by = "position"``) meet lower positions after higher ones; on SQLite writers
are serialized and the same test runs as its own twin.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time

import pytest

from django_eventsource import EventStore
from django_eventsource.models import Event
from tests.fold import fold_task_board, fold_tenant_stats, task_board_rows, tenant_stats_rows
from tests.helpers import all_events, start_command, start_worker

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

TENANTS = ("acme", "globex")


def follower(db_url: str) -> subprocess.Popen[str]:
    return start_command(
        db_url,
        *("replay_projections", "task_board", "tenant_stats", "--follow", "--batch-size", "4"),
        EVENTSOURCE_HEARTBEAT_INTERVAL="0.3",
        EVENTSOURCE_POLL_INTERVAL="0.05",
    )


def test_rows_equal_a_fold_of_every_committed_event(child_db_url: str, vendor: str) -> None:
    writers_count, transactions = (6, 70) if vendor == "postgresql" else (3, 25)
    rng = random.Random(20260511)
    writers = [
        start_worker(
            child_db_url, "tests.concurrency.task_writer", n, transactions, 500 + n, *TENANTS
        )
        for n in range(writers_count)
    ]
    kills = 0
    worker = follower(child_db_url)
    try:
        while any(w.poll() is None for w in writers):
            time.sleep(rng.uniform(0.2, 0.8))
            worker.send_signal(signal.SIGKILL)
            worker.communicate()
            kills += 1
            worker = follower(child_db_url)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.communicate()
    stats = []
    for w in writers:
        out, err = w.communicate(timeout=120)
        assert w.returncode == 0, err
        stats.append(json.loads(out.strip().splitlines()[-1]))
    assert kills >= 2, "the follower was never killed mid-run"

    # Resume once more, to the end; then compare with folds of everything committed.
    # --wait: on SQLite the last follower's lease outlives it for a few heartbeats.
    done = start_command(
        child_db_url, "replay_projections", "task_board", "tenant_stats", "--wait"
    )
    out, err = done.communicate(timeout=120)
    assert done.returncode == 0, out + err
    store = EventStore()
    assert len(all_events(store)) == Event.objects.count()
    expected = fold_tenant_stats(store)
    assert set(expected) == set(TENANTS)
    assert tenant_stats_rows() == expected
    assert task_board_rows() == fold_task_board(store)

    # The scenarios this test is about really happened.
    assert sum(s["early_xid"] for s in stats) > 0
    assert sum(s["rolled_back"] for s in stats) > 0
    assert sum(s["multi_event"] for s in stats) > 0
    if vendor == "postgresql":
        feed = [e.position for e in all_events(store)]
        assert feed != sorted(feed), "no event was delivered after a higher position"

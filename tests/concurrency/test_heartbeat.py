"""A live worker is never reported `stale`, whatever its loop is doing; a dead one always is.

Real follower processes with a heartbeat every 0.5 s (stale after 1.5 s), and a status read
over and over while they work: through a batch far longer than that (a slow handler), and
through a retry's backoff (a failing handler). Then kill -9 makes them `stale`, and SIGTERM
leaves the projection `idle` with no heartbeat behind.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from typing import Any
from uuid import uuid4

import pytest
from django.utils import timezone

from django_eventsource import EventStore, ProjectionState
from django_eventsource.models import RunnerHeartbeat
from django_eventsource.state import stale_after
from django_eventsource.status import check_status, projection_statuses
from tests.factories import task_history
from tests.helpers import ROOT, child_env, settled, start_command, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

#: The followers' heartbeat interval: a runner is stale 1.5 s after its last beat.
INTERVAL = {"EVENTSOURCE_HEARTBEAT_INTERVAL": "0.5"}


@pytest.fixture(autouse=True)
def follower_heartbeat(settings: Any) -> None:
    """This process reads statuses with the followers' heartbeat interval."""
    settings.EVENTSOURCE = {**settings.EVENTSOURCE, "HEARTBEAT_INTERVAL": 0.5}


def follower(db_url: str, *, handler_sleep: str, **env: str) -> subprocess.Popen[str]:
    """A ``replay_projections task_board --follow`` worker, in batches of 5 events."""
    return start_command(
        db_url,
        *("replay_projections", "task_board", "--follow", "--batch-size", "5"),
        TESTAPP_HANDLER_SLEEP=handler_sleep,
        EVENTSOURCE_POLL_INTERVAL="0.1",
        **INTERVAL,
        **env,
    )


def state() -> ProjectionState | None:
    return ProjectionState.objects.filter(name="task_board", tenant_id="").first()


def reported() -> str:
    return next(r.status for r in projection_statuses(["task_board"]))


class Samples:
    """The status, read again and again while the worker works: what was reported, and the
    age of the beat the worker's loop wrote in the state row itself."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, float]] = []

    def take(self) -> ProjectionState | None:
        row = state()
        status = reported()
        problems = {p.check for p in check_status(["task_board"]).problems}
        if row is None or row.heartbeat_at is None:
            return row
        age = (timezone.now() - row.heartbeat_at).total_seconds()
        self.seen.append((str(row.status), status, age))
        assert "stale" not in problems, (row.status, status, age)
        return row

    def assert_never_stale(self) -> None:
        live = [(s, r, a) for s, r, a in self.seen if s in ("running", "rebuilding")]
        assert live, self.seen
        assert all(r == s for s, r, _ in live), [x for x in live if x[0] != x[1]]
        # What makes the test: the loop's own beat was older than the stale threshold
        # while the status said running (the heartbeat thread, or the living process).
        assert any(a > stale_after() for _, _, a in live), self.seen


def check_cli(db_url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "django", "projection_status", "task_board", "--check"],
        env=child_env(db_url, **INTERVAL),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def kill(worker: subprocess.Popen[str]) -> None:
    worker.send_signal(signal.SIGKILL)
    worker.communicate(timeout=60)


def test_a_worker_in_a_long_batch_stays_running_and_is_stale_once_killed(
    child_db_url: str,
) -> None:
    """Batches of 5 events at 0.6 s each: every batch outlasts the stale threshold (1.5 s)
    twice, and on PostgreSQL holds the state row's lock until it commits."""
    store = EventStore()
    task_history(store, tasks=6, seed=71)
    settled(store)
    worker = follower(child_db_url, handler_sleep="0.6")
    samples = Samples()
    try:
        assert wait_for(lambda: (row := state()) is not None and row.status == "running", 60)
        first = state()
        assert first is not None
        start = first.position or 0
        # Until the worker has committed two batches (and a third is in hand).
        assert wait_for(
            lambda: (row := samples.take()) is not None and (row.position or 0) > start + 5,
            120,
        )
        checked = check_cli(child_db_url)  # the command, mid-batch
        assert checked.returncode == 0, checked.stderr
        samples.take()
        samples.assert_never_stale()
        assert worker.poll() is None
    finally:
        kill(worker)
    # Dead: stale within a few intervals (its beats stopped with it).
    assert wait_for(lambda: reported() == "stale", 60)
    row = state()
    assert row is not None and row.status == "running"  # as it was left


def test_a_worker_in_a_retry_backoff_stays_running_and_is_stale_once_killed(
    child_db_url: str,
) -> None:
    """A handler that keeps failing, retried with a backoff of 3 s, then 6 s, then 12 s:
    the loop sleeps far longer than the stale threshold between its beats."""
    from tests.testapp.events import TaskCreated, TaskRenamed

    store = EventStore()
    bad = uuid4()
    store.append(bad, [TaskCreated(aggregate_id=bad, title="ok")])
    store.append(bad, [TaskRenamed(aggregate_id=bad, title="boom")])  # the handler refuses it
    settled(store)
    worker = follower(
        child_db_url,
        handler_sleep="0",
        EVENTSOURCE_RETRY_BACKOFF="3.0",
        EVENTSOURCE_MAX_RETRIES="3",
    )
    samples = Samples()
    try:
        assert wait_for(lambda: (row := state()) is not None and row.status == "running", 60)
        # Sample until the worker has slept in its backoff for two stale thresholds.
        assert wait_for(
            lambda: (
                (row := samples.take()) is not None
                and row.status == "running"
                and samples.seen[-1][2] > 2 * stale_after()
            ),
            60,
        )
        samples.assert_never_stale()
        row = state()
        assert row is not None and (row.status, row.attempts) == ("running", 0)
        assert worker.poll() is None
    finally:
        kill(worker)
    assert wait_for(lambda: reported() == "stale", 60)


def test_sigterm_in_a_long_batch_leaves_the_projection_idle_and_no_heartbeat(
    child_db_url: str,
) -> None:
    store = EventStore()
    task_history(store, tasks=4, seed=72)
    settled(store)
    worker = follower(child_db_url, handler_sleep="0.5")
    try:
        assert wait_for(lambda: (row := state()) is not None and row.status == "running", 60)
        # Its heartbeat thread beats (on SQLite, once no batch holds the write lock).
        owner = state().owner  # type: ignore[union-attr]
        assert wait_for(lambda: RunnerHeartbeat.objects.filter(owner=owner).exists(), 60)
    finally:
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err
    row = state()
    assert row is not None and (row.status, row.owner) == ("idle", "")
    assert not RunnerHeartbeat.objects.exists()  # a clean stop leaves no beat behind
    assert reported() == "idle"

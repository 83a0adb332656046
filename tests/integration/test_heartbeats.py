"""Runner heartbeats beyond the state row (django_eventsource.heartbeats): the status takes the
newer of the two beats; on SQLite a living runner of this host is never stale; the runner's
heartbeat thread runs while it holds projections and leaves nothing behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from django_eventsource import EventStore, ProjectionState
from django_eventsource.backends.base import runner_alive, runner_identity
from django_eventsource.models import RunnerHeartbeat
from django_eventsource.projections import projection_registry
from django_eventsource.runner import ProjectionRunner
from django_eventsource.state import stale_after
from django_eventsource.status import projection_statuses
from tests.factories import task_history
from tests.helpers import settled

pytestmark = pytest.mark.django_db(transaction=True)

NAME = "task_board"
#: A runner of another host: only its beats can tell whether it lives.
ELSEWHERE = "another-host.invalid:4242#abcdef"


@pytest.fixture(autouse=True)
def short_heartbeat(settings: Any) -> None:
    settings.EVENTSOURCE = {**settings.EVENTSOURCE, "HEARTBEAT_INTERVAL": 0.5}  # stale: 1.5 s


def running(owner: str, beat_age: float) -> None:
    ProjectionState.objects.update_or_create(
        name=NAME,
        tenant_id="",
        defaults={
            "status": "running",
            "owner": owner,
            "heartbeat_at": timezone.now() - timedelta(seconds=beat_age),
        },
    )


def report() -> Any:
    return next(r for r in projection_statuses([NAME]) if r.tenant_id == "")


def test_the_status_takes_the_newer_of_the_state_rows_beat_and_its_runners_thread() -> None:
    running(ELSEWHERE, beat_age=60)
    assert report().status == "stale"
    # The runner's thread beat a moment ago (its batch held the state row meanwhile).
    RunnerHeartbeat.objects.create(owner=ELSEWHERE, beat_at=timezone.now())
    row = report()
    assert (row.status, row.stored_status) == ("running", "running")
    assert row.heartbeat_age is not None and row.heartbeat_age < 60
    # Another runner's beat says nothing about this one (a successor took the row over).
    ProjectionState.objects.filter(name=NAME).update(owner="another-host.invalid:1#000000")
    assert report().status == "stale"
    # An older thread beat than the row's own: the row's counts.
    ProjectionState.objects.filter(name=NAME).update(owner=ELSEWHERE, heartbeat_at=timezone.now())
    RunnerHeartbeat.objects.filter(owner=ELSEWHERE).update(
        beat_at=timezone.now() - timedelta(days=1)
    )
    row = report()
    assert row.status == "running" and row.heartbeat_age is not None and row.heartbeat_age < 60


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_runner_alive_knows_the_processes_of_this_host_only() -> None:
    host = runner_identity().rpartition(":")[0]
    me = f"{runner_identity()}#abcdef"
    assert runner_alive(me) is True
    assert runner_alive(me, since=timezone.now()) is True
    assert runner_alive(ELSEWHERE) is None
    assert runner_alive("not an owner") is None
    assert runner_alive(f"{host}:{_dead_pid()}#abcdef") is False
    # A pid that exists but started after the runner's last beat is another process.
    assert runner_alive(me, since=datetime(2000, 1, 1, tzinfo=UTC)) is False


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="zombies are told by /proc")
def test_a_zombie_runner_is_gone() -> None:
    """Killed, and not reaped yet by its parent: the pid exists, the runner does not."""
    host = runner_identity().rpartition(":")[0]
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        child.send_signal(signal.SIGKILL)
        owner = f"{host}:{child.pid}#abcdef"
        for _ in range(200):
            if runner_alive(owner) is False:
                break
            time.sleep(0.05)
        assert runner_alive(owner) is False
        os.kill(child.pid, 0)  # the pid is still there: a zombie
    finally:
        child.wait()


def test_a_living_runner_of_this_host_is_not_stale_on_sqlite_only() -> None:
    """On SQLite a batch holds the write lock that every beat needs: a runner of this host
    whose process lives is running, however old its beats. On PostgreSQL the beats never
    wait for a batch, and they alone tell."""
    running(f"{runner_identity()}#abcdef", beat_age=0)  # this process: it lives
    time.sleep(stale_after() + 0.2)  # its last beat is now older than the threshold
    row = report()
    expected = "running" if connection.vendor == "sqlite" else "stale"
    assert (row.status, row.stored_status) == (expected, "running")
    assert row.heartbeat_age is not None and row.heartbeat_age > stale_after()  # as it is
    host = runner_identity().rpartition(":")[0]
    running(f"{host}:{_dead_pid()}#abcdef", beat_age=60)
    assert report().status == "stale"  # its process is gone
    running(ELSEWHERE, beat_age=60)
    assert report().status == "stale"  # another host: only beats tell


def _heartbeat_threads() -> list[threading.Thread]:
    return [
        t
        for t in threading.enumerate()
        if t.name.startswith("django_eventsource heartbeat") and t.is_alive()
    ]


def test_the_runners_heartbeat_thread_beats_while_it_runs_and_leaves_nothing(
    settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.EVENTSOURCE = {**settings.EVENTSOURCE, "HEARTBEAT_INTERVAL": 0.05}
    monkeypatch.setattr("tests.testapp.projections.HANDLER_SLEEP", 0.05)
    store = EventStore()
    task_history(store, tasks=4, seed=81)
    settled(store)
    seen: list[tuple[int, int]] = []

    def progress(kind: str, **data: Any) -> None:
        if kind == "batch":
            seen.append((len(_heartbeat_threads()), RunnerHeartbeat.objects.count()))

    runner = ProjectionRunner(
        [projection_registry.get(NAME)()],
        event_store=store,
        batch_size=1,
        progress_callback=progress,
    )
    result = runner.run_until_caught_up()
    assert result.events_applied >= 4
    assert seen and all(threads == 1 for threads, _ in seen), seen
    if connection.vendor == "postgresql":
        # Its beats never wait for a batch there (on SQLite they wait for the write lock).
        assert any(rows for _, rows in seen), seen
    # Ended with the run: the thread is joined and its beats deleted.
    assert _heartbeat_threads() == []
    assert not RunnerHeartbeat.objects.exists()
    assert ProjectionState.objects.get(name=NAME, tenant_id="").status == "idle"

"""One active runner per projection: three real ``replay_projections --follow`` workers;
the active one is SIGKILLed mid-batch and a standby takes over and finishes the work.

The work is held back (the projection paused) until all three follow: on a loaded machine
one worker starts seconds after another, so the first could finish the work alone, and a
worker still starting when the test ends is killed by its SIGTERM (exit -15) instead of
stopping cleanly."""

from __future__ import annotations

import signal

import pytest

from django_eventsource import EventStore, ProjectionState, control
from tests.factories import task_history
from tests.fold import fold_task_board, task_board_rows
from tests.helpers import start_follower, wait_for, wait_until_following

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def state() -> ProjectionState | None:
    return ProjectionState.objects.filter(name="task_board").first()


def test_standby_takes_over_after_the_active_runner_is_killed(child_db_url: str) -> None:
    store = EventStore()
    task_history(store, tasks=40, renames=4, seed=9)
    head = store.head_position()
    control.pause("task_board")
    workers = [start_follower(child_db_url, handler_sleep="0.01") for _ in range(3)]
    try:
        for worker in workers:
            wait_until_following(worker)  # one holds the lease, two are standbys
        control.resume("task_board")
        assert wait_for(lambda: (s := state()) is not None and (s.position or 0) > 0 and s.owner)
        owner = state().owner  # host:pid#token of the active runner
        active_pid = int(owner.split(":")[1].split("#")[0])
        [active] = [w for w in workers if w.pid == active_pid]
        killed_at = state().position
        active.send_signal(signal.SIGKILL)
        active.communicate()
        assert killed_at < head, "the active runner finished before it could be killed"
        assert wait_for(lambda: (state().position or 0) == head, timeout=120), (
            "no standby took over"
        )
        new_owner = state().owner
        assert new_owner and not new_owner.startswith(owner.split("#")[0] + "#"), new_owner
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        for worker in workers:
            _out, err = worker.communicate(timeout=60)
            if worker.returncode not in (0, -signal.SIGKILL):
                pytest.fail(f"worker exited {worker.returncode}: {err}")
    assert task_board_rows() == fold_task_board(store)

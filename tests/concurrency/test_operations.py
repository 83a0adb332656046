"""What an operator sees, through real processes: a clean stop, a dead worker, dead letters,
exit codes, a lost lock and the lease after a crashed rebuild."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from django_eventsource import EventStore, ProjectionState
from django_eventsource.status import projection_statuses
from tests.factories import task_history
from tests.fold import fold_task_board, task_board_rows
from tests.helpers import (
    ROOT,
    all_events,
    child_env,
    settled,
    start_command,
    wait_for,
    wait_until_following,
)

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

#: The environment of every process here: a heartbeat every 0.5 s, so a runner is stale
#: (and its SQLite lease expires) 1.5 s after its last beat (3 x 0.5).
FAST = {"EVENTSOURCE_HEARTBEAT_INTERVAL": "0.5", "EVENTSOURCE_POLL_INTERVAL": "0.05"}


@pytest.fixture
def fast_heartbeat(settings: Any) -> None:
    """This process reads statuses with the workers' heartbeat interval."""
    settings.EVENTSOURCE = {**settings.EVENTSOURCE, "HEARTBEAT_INTERVAL": 0.5}


def cli(db_url: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "django", *args],
        env=child_env(db_url, **FAST, **env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def row(name: str = "task_board") -> ProjectionState:
    return ProjectionState.objects.get(name=name, tenant_id="")


def status_json(db_url: str, *names: str) -> dict[str, dict[str, Any]]:
    done = cli(db_url, "projection_status", *names, "--format", "json")
    assert done.returncode == 0, done.stderr
    return {r["projection"]: r for r in json.loads(done.stdout)["projections"]}


def follower(db_url: str, *names: str, **env: str) -> subprocess.Popen[str]:
    return start_command(db_url, "replay_projections", *names, "--follow", **FAST, **env)


def running(name: str = "task_board") -> bool:
    return ProjectionState.objects.filter(name=name, status="running").exists()


# A clean stop, and a dead worker --------------------------------------------------------------


@pytest.mark.usefixtures("fast_heartbeat")
def test_sigterm_leaves_the_projections_idle(child_db_url: str) -> None:
    store = EventStore()
    task_history(store, tasks=10, seed=41)
    worker = follower(child_db_url, "task_board", "tenant_stats")
    try:
        assert wait_for(lambda: running("task_board") and running("tenant_stats"), 60)
        settled(store)
        head = all_events(store)[-1].position
        assert wait_for(lambda: row().position == head and row("tenant_stats").position, 60)
        time.sleep(2.0)  # past the stale threshold: a live follower keeps beating
        assert {r.status for r in projection_statuses(["task_board", "tenant_stats"])} == {
            "running"
        }
    finally:
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err
    for name in ("task_board", "tenant_stats"):
        state = row(name)
        assert (state.status, state.owner) == ("idle", ""), name
    # Still idle (not stale) long after: nothing claims a runner is on it.
    time.sleep(2.0)
    assert {r.status for r in projection_statuses(["task_board", "tenant_stats"])} == {"idle"}
    assert cli(child_db_url, "projection_status", "--check", "--max-lag", "0").returncode == 0


def test_signals_while_a_worker_stops_do_not_kill_it(child_db_url: str) -> None:
    """An impatient operator: SIGTERM, then SIGINT and SIGTERM again and again while the
    worker stops. It still exits 0 with its projections idle. (Once its run was over, the
    runner had put Python's default handlers back, and a second SIGTERM killed it: -15.)"""
    store = EventStore()
    task_history(store, tasks=5, seed=43)
    worker = follower(child_db_url, "task_board", PYTHONUNBUFFERED="1")
    assert worker.stdout is not None
    try:
        wait_until_following(worker)
        assert wait_for(running, 60)
    finally:
        worker.send_signal(signal.SIGTERM)
        # Said once, before the signals that follow (stdout also has its progress lines).
        said = next((line for line in worker.stdout if "Received" in line), "")
        while worker.poll() is None:
            for signum in (signal.SIGINT, signal.SIGTERM):
                worker.send_signal(signum)
            time.sleep(0.002)
        _, err = worker.communicate(timeout=60)
    assert "Received SIGTERM" in said, said
    assert worker.returncode == 0, err
    assert "Traceback" not in err, err
    assert (row().status, row().owner) == ("idle", "")


def test_a_killed_worker_is_reported_stale(child_db_url: str, admin_client: Any) -> None:
    store = EventStore()
    task_history(store, tasks=5, seed=42)
    worker = follower(child_db_url, "task_board")
    try:
        assert wait_for(running, 60)
        assert status_json(child_db_url, "task_board")["task_board"]["status"] == "running"
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.communicate(timeout=60)
    assert row().status == "running"  # nobody could say otherwise: the process is gone
    time.sleep(1.7)  # three heartbeats, and a margin
    report = status_json(child_db_url, "task_board")["task_board"]
    assert (report["status"], report["stored_status"]) == ("stale", "running")
    assert report["heartbeat_age"] > 1.5
    table = cli(child_db_url, "projection_status", "task_board")
    assert "stale" in table.stdout
    check = cli(child_db_url, "projection_status", "task_board", "--check")
    assert check.returncode == 1
    assert "task_board: stale: running but no heartbeat for" in check.stderr
    # The admin says so too (with the workers' heartbeat interval).
    from django.test import override_settings

    with override_settings(EVENTSOURCE={"HEARTBEAT_INTERVAL": 0.5}):
        page = admin_client.get("/admin/django_eventsource/projectionstate/").content.decode()
    assert 'es-status-stale">stale<' in page
    # A new worker takes it over and it runs again.
    worker = follower(child_db_url, "task_board")
    try:
        assert wait_for(
            lambda: status_json(child_db_url, "task_board")["task_board"]["status"] == "running",
            60,
        )
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=60)
    assert worker.returncode == 0


# Dead letters, failures and exit codes --------------------------------------------------------------


def poison(store: EventStore) -> None:
    from uuid import uuid4

    from tests.testapp.events import TaskCreated, TaskRenamed

    task_history(store, tasks=3, seed=43)
    bad = uuid4()
    store.append(bad, [TaskCreated(aggregate_id=bad, title="ok")])
    store.append(bad, [TaskRenamed(aggregate_id=bad, title="boom")])
    store.append(bad, [TaskRenamed(aggregate_id=bad, title="after")])
    task_history(store, tasks=2, seed=44)


def test_dead_letters_show_in_status_json_and_fail_the_check(child_db_url: str) -> None:
    store = EventStore()
    poison(store)
    settled(store)
    replay = cli(
        child_db_url,
        *("replay_projections", "task_board"),
        EVENTSOURCE_ERROR_POLICY="dead_letter",
        EVENTSOURCE_MAX_RETRIES="0",
    )
    assert replay.returncode == 0, replay.stderr
    assert "DEAD-LETTERED" in replay.stderr
    report = status_json(child_db_url, "task_board")["task_board"]
    assert (report["status"], report["dead_letters"], report["lag_events"]) == ("idle", 2, 0)
    table = cli(child_db_url, "projection_status", "task_board").stdout
    header, line = table.splitlines()[:2]
    column = header.index("DEAD")
    assert line[column:].split()[0] == "2"
    check = cli(child_db_url, "projection_status", "task_board", "--check")
    assert check.returncode == 1
    assert "Check failed: task_board: 2 unresolved dead letter(s)" in check.stderr
    allowed = cli(
        child_db_url, "projection_status", "task_board", "--check", "--allow-dead-letters"
    )
    assert allowed.returncode == 0, allowed.stderr
    refused = cli(child_db_url, "projection_status", "--allow-dead-letters")
    assert refused.returncode == 1 and "only makes sense with --check" in refused.stderr


def test_replay_exits_1_when_a_projection_fails_or_was_skipped_as_failed(
    child_db_url: str,
) -> None:
    store = EventStore()
    poison(store)
    settled(store)
    first = cli(child_db_url, "replay_projections", "task_board", EVENTSOURCE_MAX_RETRIES="0")
    assert first.returncode == 1
    assert "1 projection(s) failed and were paused: task_board" in first.stderr
    assert row().status == "failed"
    # Asked again: it is skipped, and that is not a success either.
    again = cli(child_db_url, "replay_projections", "task_board", "tenant_stats")
    assert again.returncode == 1
    assert "were not run because they are failed: task_board" in again.stderr
    assert "task_board: failed; skipped" in again.stdout
    assert row("tenant_stats").status == "idle"  # the others still ran
    # Paused is an operator's choice: a warning, exit 0.
    from django_eventsource import control

    control.pause("tenant_stats")
    paused = cli(child_db_url, "replay_projections", "tenant_stats")
    assert paused.returncode == 0, paused.stderr
    assert "Skipped paused projection(s): tenant_stats" in paused.stderr


def test_a_follower_that_runs_a_projection_once_resumed_exits_0(
    child_db_url: str, tmp_path: Any
) -> None:
    """A follower skips a failed projection; the operator dead-letters the failed event and
    the follower runs it from then on. Its exit code and message say what holds at its end,
    not that the projection "was not run"."""
    from django_eventsource import control

    store = EventStore()
    poison(store)
    settled(store)
    first = cli(child_db_url, "replay_projections", "task_board", EVENTSOURCE_MAX_RETRIES="0")
    assert first.returncode == 1 and row().status == "failed"
    output = tmp_path / "follower.out"
    with output.open("w") as sink:
        worker = subprocess.Popen(
            [sys.executable, "-m", "django", "replay_projections", "task_board", "--follow"],
            env=child_env(child_db_url, **FAST, PYTHONUNBUFFERED="1"),
            cwd=ROOT,
            stdout=sink,
            stderr=subprocess.PIPE,
            text=True,
        )
    try:
        assert wait_for(lambda: "task_board: failed; skipped" in output.read_text(), 60)
        control.dead_letter_failed("task_board")
        head = store.read_all().events[-1].position
        assert wait_for(lambda: row().status == "running" and row().position == head, 60)
    finally:
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=60)
    out = output.read_text()
    assert worker.returncode == 0, out + err
    assert "not run" not in err and "failed and were paused" not in err
    assert row().status == "idle"


def steal() -> None:
    """PostgreSQL: take task_board's lock away from the runner that holds it, as a successor
    does after the runner's lock session died: end that session, take the advisory lock,
    claim the state row."""
    from django_eventsource.backends.postgresql.locks import lock_key

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name LIKE 'django_eventsource runner %%' "
            "AND datname = current_database()"
        )
        cursor.execute("SELECT pg_advisory_lock(%s)", [lock_key("task_board", None)])
    ProjectionState.objects.filter(name="task_board").update(owner="a successor")


def test_a_catch_up_that_loses_its_lock_says_so_and_exits_1(
    child_db_url: str, vendor: str
) -> None:
    store = EventStore()
    task_history(store, tasks=30, seed=45)
    settled(store)
    takeover = {} if vendor == "postgresql" else {"TESTAPP_TAKEOVER_AFTER": "20"}
    worker = start_command(
        child_db_url,
        *("replay_projections", "task_board", "--batch-size", "2"),
        TESTAPP_HANDLER_SLEEP="0.05",
        **FAST,
        **takeover,
    )
    try:
        if vendor == "postgresql":
            assert wait_for(lambda: running() and (row().position or 0) > 0, 60)
            steal()
        out, err = worker.communicate(timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()
        connection.close()  # lets go of the advisory lock taken in steal()
    assert worker.returncode == 1, out + err
    assert "task_board: lost its lock to" in err
    assert "Lost the lock of task_board to another runner" in err
    assert row().owner == "a successor"  # the loser wrote nothing after it lost
    assert row().position < all_events(store)[-1].position


# A rebuild stopped cleanly -------------------------------------------------------------------


def rebuild_stopped_by(
    db_url: str, store: EventStore, signum: int, *, seed: int
) -> tuple[str, str, int]:
    """Run ``rebuild_projections task_board`` over a fresh history and send it ``signum``
    in the middle of its replay; its stdout, stderr and exit code."""
    task_history(store, tasks=40, seed=seed)
    settled(store)
    rebuild = start_command(
        db_url,
        *("rebuild_projections", "task_board", "--noinput", "--batch-size", "2"),
        TESTAPP_HANDLER_SLEEP="0.05",
        **FAST,
    )
    try:
        assert wait_for(
            lambda: ProjectionState.objects.filter(
                name="task_board", status="rebuilding", position__gt=0
            ).exists(),
            60,
        )
    finally:
        rebuild.send_signal(signum)
        out, err = rebuild.communicate(timeout=60)
    return out, err, rebuild.returncode


@pytest.mark.usefixtures("fast_heartbeat")
@pytest.mark.parametrize("resume", ["rebuild_projections", "replay_projections"])
def test_a_rebuild_stopped_by_sigterm_is_reported_interrupted_until_resumed(
    child_db_url: str, resume: str, admin_client: Any
) -> None:
    """SIGTERM stops a rebuild cleanly in the middle of its replay: the read model is
    half-built. The status says so (``interrupted``, not ``stale``: no runner died), at which
    event, and what resumes it; ``--check`` fails until it is resumed, by a rebuild or by a
    catch-up (both carry on from the checkpoint)."""
    store = EventStore()
    out, err, code = rebuild_stopped_by(child_db_url, store, signal.SIGTERM, seed=50)
    assert code == 0, err  # a clean stop
    head = all_events(store)[-1].position
    stopped = row()
    at = stopped.position
    assert stopped.status == "rebuilding" and 0 < at < head
    assert f"task_board: the rebuild stopped at event #{at}" in out
    assert "rebuild_projections task_board" in out
    time.sleep(2.0)  # past three heartbeats: still interrupted, never stale
    report = status_json(child_db_url, "task_board")["task_board"]
    assert (report["status"], report["stored_status"], report["position"]) == (
        "interrupted",
        "rebuilding",
        at,
    )
    table = cli(child_db_url, "projection_status", "task_board")
    assert f"task_board: its rebuild was interrupted at event #{at} of {head}" in table.stdout
    check = cli(child_db_url, "projection_status", "task_board", "--check")
    assert check.returncode == 1
    assert f"task_board: rebuild interrupted at event #{at} of {head}" in check.stderr
    assert "half-built" in check.stderr and "stale" not in check.stderr
    changelist = admin_client.get("/admin/django_eventsource/projectionstate/")
    assert 'es-status-interrupted">interrupted<' in changelist.content.decode()
    detail = admin_client.get("/admin/django_eventsource/projectionstate/projection/task_board/")
    assert f"interrupted at event #{at} of {head}" in detail.content.decode()
    resumed = cli(
        child_db_url,
        resume,
        "task_board",
        *(["--noinput"] if resume == "rebuild_projections" else []),
    )
    assert resumed.returncode == 0, resumed.stderr
    if resume == "rebuild_projections":
        assert "resume the interrupted rebuild of" in resumed.stdout
    assert row().status == "idle"
    assert task_board_rows() == fold_task_board(store)
    assert cli(child_db_url, "projection_status", "task_board", "--check").returncode == 0


# The lease after a crashed rebuild (SQLite), and the lock (PostgreSQL) --------------------------


def test_a_crashed_rebuild_holds_the_projection_for_a_few_heartbeats_at_most(
    child_db_url: str, vendor: str
) -> None:
    """A rebuild killed in the middle of its replay (kill -9) leaves the projection
    ``rebuilding``, claimed by the dead process. Another runner does not wait for it: the
    lock died with the process (PostgreSQL), or the lease's process is gone from this host
    (SQLite; a lease whose process cannot be checked expires three heartbeats after its
    last renewal). It takes the projection over and carries the rebuild on from its
    checkpoint (not from the start) until it is handed over ``idle``."""
    store = EventStore()
    rebuild_stopped_by(child_db_url, store, signal.SIGKILL, seed=46)
    crashed = row()
    head = all_events(store)[-1].position
    assert crashed.status == "rebuilding" and crashed.owner  # the dead process's claim
    assert 0 < (crashed.position or 0) < head
    if vendor == "sqlite":
        # One lease rule: three heartbeats (1.5 s) past the last renewal, which came
        # before now; not 30 s.
        assert crashed.lease_until is not None
        assert crashed.lease_until <= timezone.now() + timedelta(seconds=2)
    # A catch-up skips a projection another runner holds ("held by ...") instead of
    # waiting for it: this one takes it over, and stopped after a few events, it leaves
    # the rebuild further on, claimed by nobody (interrupted).
    taken = cli(child_db_url, "replay_projections", "task_board", "--max-events", "4")
    assert taken.returncode == 0, taken.stderr
    assert "held by" not in taken.stdout
    carried = row()
    assert (carried.status, carried.owner) == ("rebuilding", "")
    assert (crashed.position or 0) < (carried.position or 0) < head
    assert status_json(child_db_url, "task_board")["task_board"]["status"] == "interrupted"
    finished = cli(child_db_url, "replay_projections", "task_board")
    assert finished.returncode == 0, finished.stderr
    assert "held by" not in finished.stdout
    assert (row().status, row().owner) == ("idle", "")
    assert task_board_rows() == fold_task_board(store)


def test_a_lease_of_another_host_expires_after_three_heartbeats(
    child_db_url: str, vendor: str
) -> None:
    """SQLite: a lease whose process cannot be checked (another host) is waited out, for the
    heartbeat timeout and no longer. PostgreSQL has no lease: its twin asserts the advisory
    lock alone decides."""
    store = EventStore()
    task_history(store, tasks=3, seed=47)
    settled(store)
    # A lease far longer than a process start on a loaded machine (a 1.5 s one expired
    # before the first command looked, under load), then one that has just run out.
    ProjectionState.objects.update_or_create(
        name="task_board",
        tenant_id="",
        defaults={
            "owner": "another-host:4242#abcdef",
            "lease_until": timezone.now() + timedelta(seconds=600),
        },
    )
    first = cli(child_db_url, "replay_projections", "task_board")
    assert first.returncode == 0, first.stderr
    if vendor == "sqlite":
        assert "task_board: held by another-host:4242#abcdef" in first.stdout
        expiry = timezone.now() + timedelta(seconds=1.5)
        ProjectionState.objects.filter(name="task_board", tenant_id="").update(lease_until=expiry)
        assert wait_for(lambda: timezone.now() > expiry, 60)
        second = cli(child_db_url, "replay_projections", "task_board")
        assert second.returncode == 0 and "held by" not in second.stdout
    else:
        assert "held by" not in first.stdout  # the row's owner is no lock on PostgreSQL
    assert task_board_rows() == fold_task_board(store)


def lose_the_lock_mid_batch(
    db_url: str, vendor: str, output: Path, seed: int
) -> subprocess.Popen[str]:
    """Start a ``replay_projections task_board --follow`` worker (stdout to ``output``) and
    take task_board over while it applies events, as a successor does: PostgreSQL steals
    the lock; on SQLite the handler hands the state row to "a successor" (the worker's own
    lease on the row lasts three minutes). The worker's next batch is fenced and rolled
    back, and it waits as the successor's standby when this returns."""
    store = EventStore()
    task_history(store, tasks=30, seed=seed)
    settled(store)
    takeover = {} if vendor == "postgresql" else {"TESTAPP_TAKEOVER_AFTER": "20"}
    follow = ("--follow", "--batch-size", "2")
    with output.open("w") as sink:
        worker = subprocess.Popen(
            [sys.executable, "-m", "django", "replay_projections", "task_board", *follow],
            env=child_env(
                db_url,
                TESTAPP_HANDLER_SLEEP="0.02",
                # No heartbeat meanwhile: the next batch's fence finds the takeover.
                EVENTSOURCE_HEARTBEAT_INTERVAL="60",
                EVENTSOURCE_POLL_INTERVAL="0.05",
                PYTHONUNBUFFERED="1",
                **takeover,
            ),
            cwd=ROOT,
            stdout=sink,
            stderr=subprocess.PIPE,
            text=True,
        )
    try:
        if vendor == "postgresql":
            assert wait_for(lambda: running() and (row().position or 0) > 0, 60)
            steal()
        assert wait_for(lambda: "waiting as a standby" in output.read_text(), 60)
    except BaseException:
        worker.kill()
        worker.communicate()
        raise
    return worker


def stop(worker: subprocess.Popen[str]) -> str:
    """SIGTERM, and the worker's stderr."""
    worker.send_signal(signal.SIGTERM)
    return worker.communicate(timeout=60)[1]


def test_a_follower_that_lost_its_lock_and_took_it_back_exits_0(
    child_db_url: str, vendor: str, tmp_path: Path
) -> None:
    """The follower's batch is fenced (another runner took task_board over); the other
    runner lets go, the follower takes the projection back and catches up. Stopped then,
    it holds the lock and nothing is failed: exit 0, and the projection goes idle."""
    output = tmp_path / "follower.out"
    worker = lose_the_lock_mid_batch(child_db_url, vendor, output, seed=48)
    try:
        if vendor == "postgresql":
            connection.close()  # the successor's session ends: its lock goes
        else:
            ProjectionState.objects.filter(owner="a successor").update(owner="", lease_until=None)
        head = all_events()[-1].position
        assert wait_for(
            lambda: (
                ProjectionState.objects.filter(name="task_board", position=head)
                .exclude(owner__in=("", "a successor"))
                .exists()
            ),
            60,
        )
    finally:
        err = stop(worker)
    out = output.read_text()
    assert "task_board: lost its lock to" in err and "took over" in out, out + err
    assert worker.returncode == 0, out + err
    assert "to another runner while applying events" not in err  # the exit-1 message
    assert (row().status, row().owner) == ("idle", "")


def test_a_follower_stopped_while_another_runner_holds_its_lost_lock_exits_1(
    child_db_url: str, vendor: str, tmp_path: Path
) -> None:
    """The follower's batch is fenced, and the other runner still holds task_board when the
    follower is stopped: exit 1, saying the lock was lost."""
    output = tmp_path / "follower.out"
    worker = lose_the_lock_mid_batch(child_db_url, vendor, output, seed=49)
    try:
        err = stop(worker)
    finally:
        connection.close()  # lets go of the advisory lock taken in steal()
    out = output.read_text()
    assert worker.returncode == 1, out + err
    assert "task_board: lost its lock to" in err
    assert "Lost the lock of task_board to another runner" in err
    assert row().owner == "a successor"

"""Rebuilding an inline projection while appends go on.

While an inline projection is ``rebuilding``, appends leave it alone: their events are in
the feed the rebuild reads. The reset waits for the appending transactions already open and
makes new ones wait until it commits; the rebuild's last catch-up (its hand-over) locks
appends out, applies what they appended since its last read and sets the projection back
to ``idle`` in the same transaction, so the next append applies it inline again and no
event falls between the two. ``--atomic`` locks appends out for the whole rebuild (they
wait, as on SQLite, where the rebuild holds the write lock) and commits everything at once.

Before: the appends applied the projection to the rows during the rebuild, and for rows fed
by many streams (``checkpoint_by = "position"``) the replay then skipped every older event
of those rows (their checkpoint was already past them): counts came out short.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest

from django_eventsource import EventStore
from django_eventsource.models import Event, ProjectionState
from django_eventsource.rebuild import rebuild
from tests.concurrency.inline_rows import InlineTenantTotal, register, restore
from tests.helpers import all_events, start_worker, wait_for
from tests.testapp.events import TaskCreated
from tests.testapp.models import TenantStats

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

TENANTS = ("acme", "globex", "initech")


@pytest.fixture
def inline_total() -> Iterator[type[InlineTenantTotal]]:
    previous = register()
    try:
        yield InlineTenantTotal
    finally:
        restore(previous)


def fold() -> dict[str, int]:
    """TenantStats.tasks per tenant, from every committed event."""
    return dict(Counter(e.tenant_id or "" for e in all_events() if e.event_type == "TaskCreated"))


def counts() -> dict[str, int]:
    return dict(TenantStats.objects.values_list("tenant_id", "tasks"))


def writers(child_db_url: str, stop: Path, n: int) -> list[subprocess.Popen[str]]:
    return [
        start_worker(
            child_db_url, "tests.concurrency.inline_rows_writer", "until", stop, 700 + i, *TENANTS
        )
        for i in range(n)
    ]


@pytest.mark.parametrize("atomic", [False, True], ids=["default", "atomic"])
def test_rebuild_while_appends_continue_equals_a_fold(
    inline_total: type[InlineTenantTotal], child_db_url: str, tmp_path: Path, atomic: bool
) -> None:
    store = EventStore()
    for n in range(300):
        task = uuid4()
        store.append(task, [TaskCreated(aggregate_id=task, tenant_id=TENANTS[n % 3], title="h")])
    assert counts() == fold()
    stop = tmp_path / "stop"
    procs = writers(child_db_url, stop, 3)
    try:
        before = Event.objects.count()
        assert wait_for(lambda: Event.objects.count() >= before + 30, 120), "no writer appends"
        appended_during: list[int] = []

        def after_first_batch(kind: str, **data: object) -> None:
            # Default rebuild: let the writers append while it replays (the machine may be
            # too loaded for them to get in otherwise). --atomic locks them out: no wait.
            if kind == "batch" and not atomic and not appended_during:
                base = Event.objects.count()
                assert wait_for(lambda: Event.objects.count() >= base + 5, 120)
                appended_during.append(Event.objects.count() - base)

        result = rebuild(
            InlineTenantTotal(), batch_size=10, atomic=atomic, progress_callback=after_first_batch
        )
        assert not result.failed
        after = Event.objects.count()
        # Appends go on after the rebuild: inline again.
        assert wait_for(lambda: Event.objects.count() >= after + 30, 120)
    finally:
        stop.touch()
        outputs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err
        assert json.loads(out.strip().splitlines()[-1])["appended"] > 0
    # Events were appended while the rebuild ran (not only before and after it).
    assert appended_during or atomic
    state = ProjectionState.objects.get(name="inline_tenant_total")
    assert state.status == "idle"
    assert counts() == fold()
    assert sum(counts().values()) == Event.objects.filter(event_type="TaskCreated").count()


def test_appends_leave_a_rebuilding_inline_projection_to_the_rebuild(
    inline_total: type[InlineTenantTotal],
) -> None:
    """Deterministic: while the projection is ``rebuilding`` (here: an interrupted rebuild),
    appends do not touch its rows; the rebuild that resumes applies their events and hands
    the projection back, after which appends apply it inline again."""
    from django_eventsource import state

    store = EventStore()

    def append(tenant: str = "acme") -> None:
        task = uuid4()
        store.append(task, [TaskCreated(aggregate_id=task, tenant_id=tenant, title="d")])

    append()
    assert counts() == {"acme": 1}
    state.begin_rebuild("inline_tenant_total", None, "default")
    append()
    append("globex")
    assert counts() == {"acme": 1}  # left to the rebuild
    result = rebuild(InlineTenantTotal())  # resumes the interrupted rebuild
    assert not result.failed
    assert counts() == {"acme": 2, "globex": 1}
    assert ProjectionState.objects.get(name="inline_tenant_total").status == "idle"
    append("globex")
    assert counts() == {"acme": 2, "globex": 2}  # inline again


def test_a_tenant_rebuild_defers_that_tenant_only(inline_total: type[InlineTenantTotal]) -> None:
    from django_eventsource import state

    store = EventStore()
    state.begin_rebuild("inline_tenant_total", "acme", "default")
    for tenant in ("acme", "globex"):
        task = uuid4()
        store.append(task, [TaskCreated(aggregate_id=task, tenant_id=tenant, title="d")])
    assert counts() == {"globex": 1}
    rebuild(InlineTenantTotal(), tenant_id="acme")
    assert counts() == {"acme": 1, "globex": 1}


@pytest.mark.parametrize("suspend", ["pause", "fail"])
def test_appends_leave_a_suspended_rebuild_to_the_rebuild(
    inline_total: type[InlineTenantTotal], suspend: str
) -> None:
    """Deterministic: a rebuild paused (or failed) in the middle of its replay is suspended:
    appends keep leaving the projection to it, during the pause and after the resume, and
    the rebuild that carries on applies their events and hands the projection back."""
    from django_eventsource import ProjectionError, control, state

    store = EventStore()

    def append(tenant: str = "acme") -> None:
        task = uuid4()
        store.append(task, [TaskCreated(aggregate_id=task, tenant_id=tenant, title="d")])

    append()
    state.begin_rebuild("inline_tenant_total", None, "default", owner="the rebuild")
    if suspend == "pause":
        control.pause("inline_tenant_total")
    else:
        event = all_events()[-1]
        error = ProjectionError(
            "inline_tenant_total",
            event_id=event.event_id,
            event_type=event.event_type,
            position=event.position,
            cause=ValueError("boom"),
        )
        state.fail("inline_tenant_total", None, "default", error, attempts=1)
    append()
    append("globex")
    assert counts() == {"acme": 1}  # left to the rebuild, though paused (or failed)
    control.resume("inline_tenant_total")
    assert ProjectionState.objects.get(name="inline_tenant_total").status == "rebuilding"
    append("globex")
    assert counts() == {"acme": 1}
    result = rebuild(InlineTenantTotal())  # resumes the suspended rebuild
    assert not result.failed
    assert counts() == fold() == {"acme": 2, "globex": 2}
    assert ProjectionState.objects.get(name="inline_tenant_total").status == "idle"
    append("globex")
    assert counts() == {"acme": 2, "globex": 3}  # inline again


def test_a_rebuild_stopped_as_it_caught_up_is_interrupted_not_finished(
    inline_total: type[InlineTenantTotal],
) -> None:
    """Stopped between its last batch and its hand-over, a rebuild of an inline projection
    stays ``rebuilding`` (interrupted): appends keep leaving it to the rebuild, and the
    next run hands it over. Before, the stop set it ``idle`` without the hand-over: appends
    then applied it again while the events they had left to the rebuild stayed unapplied."""
    from django_eventsource import state
    from django_eventsource.runner import ProjectionRunner, RunResult

    store = EventStore()

    def append(tenant: str = "acme") -> None:
        task = uuid4()
        store.append(task, [TaskCreated(aggregate_id=task, tenant_id=tenant, title="d")])

    append()
    state.begin_rebuild("inline_tenant_total", None, "default")
    append("globex")
    projection = InlineTenantTotal()
    runner: ProjectionRunner

    def stop_after_the_last_batch(kind: str, **data: object) -> None:
        if kind == "batch":
            runner.stop()  # the batch read everything: the run caught up, then stops

    runner = ProjectionRunner([projection], progress_callback=stop_after_the_last_batch)
    with runner.holding(projection):
        runner.run_projection(projection, RunResult())
    stopped = ProjectionState.objects.get(name="inline_tenant_total")
    assert (stopped.status, stopped.owner) == ("rebuilding", "")  # reported interrupted
    append("globex")
    assert counts() == {"acme": 1, "globex": 1}  # still left to the rebuild
    assert not rebuild(InlineTenantTotal()).failed
    assert counts() == fold() == {"acme": 1, "globex": 2}
    assert ProjectionState.objects.get(name="inline_tenant_total").status == "idle"


# Paused (or stopped) in the middle of its replay ----------------------------------------------

NAME = "inline_tenant_total"


def state_row() -> ProjectionState:
    return ProjectionState.objects.get(name=NAME, tenant_id="")


def reported() -> str:
    from django_eventsource.status import projection_statuses

    [row] = projection_statuses([NAME])
    return row.status


def append_to_each_tenant(store: EventStore) -> None:
    for tenant in TENANTS:
        task = uuid4()
        store.append(task, [TaskCreated(aggregate_id=task, tenant_id=tenant, title="p")])


def finish_the_rebuild(db_url: str, command: str) -> str:
    """Run ``command`` (rebuild_projections or replay_projections) of the projection in a
    process of its own; its stdout."""
    # --skip-checks: E009, since tenant_stats writes TenantStats too (in this test only).
    args = ["manage", command, NAME, "--skip-checks"]
    if command == "rebuild_projections":
        args.append("--noinput")
    finisher = start_worker(db_url, "tests.concurrency.inline_rebuild_worker", *args)
    out, err = finisher.communicate(timeout=300)
    assert finisher.returncode == 0, err
    return out


@pytest.mark.parametrize(
    "finish",
    ["same_process", "same_process_while_paused", "rebuild_projections", "replay_projections"],
)
def test_a_rebuild_paused_midway_and_resumed_stays_a_rebuild_and_equals_a_fold(
    inline_total: type[InlineTenantTotal], child_db_url: str, tmp_path: Path, finish: str
) -> None:
    """An operator pauses an inline projection (rows fed by many streams) while a rebuild
    process replays it, appends go on, the operator resumes it, and the rebuild finishes.
    ``same_process``: the rebuild process carries on after the resume.
    ``same_process_while_paused``: it carries on during the pause (a runner checks the
    status per pass, not per batch) to the end of its hand-over: the rebuild is over, the
    projection stays paused, and resuming it makes it idle. ``rebuild_projections`` and
    ``replay_projections``: the rebuild process is stopped (SIGTERM) during the pause, and
    after the resume that command resumes the rebuild from its checkpoint.

    While paused and after the resume, appends leave the projection to the rebuild: the
    pause remembers the rebuild (``suspended_rebuild``) and the resume returns it to
    ``rebuilding``. Before, the resume set it ``idle``, and appends (already during the
    pause) applied it to rows the replay had not reached, which then skipped their older
    events: counts came out short."""
    from django_eventsource import control

    store = EventStore()
    for n in range(150):
        task = uuid4()
        store.append(task, [TaskCreated(aggregate_id=task, tenant_id=TENANTS[n % 3], title="h")])
    gate = tmp_path / "gate"
    gate.mkdir()
    stop = tmp_path / "stop"
    procs = writers(child_db_url, stop, 2)
    rebuilder = start_worker(
        child_db_url, "tests.concurrency.inline_rebuild_worker", "rebuild", gate
    )

    def rebuilder_ends() -> dict[str, object]:
        """The rebuild process's outcome, once it exited 0."""
        out, err = rebuilder.communicate(timeout=300)
        assert rebuilder.returncode == 0, err
        outcome: dict[str, object] = json.loads(out.strip().splitlines()[-1])
        return outcome

    try:
        assert wait_for(lambda: (gate / "waiting").exists(), 120), "the rebuild never got going"
        # The rebuild waits between two batches: its rows stay as they are.
        rebuilt = counts()
        assert 0 < (state_row().position or 0) < store.head_position()
        control.pause(NAME)
        paused = state_row()
        assert (paused.status, paused.suspended_rebuild) == ("paused", True)
        append_to_each_tenant(store)
        base = Event.objects.count()
        assert wait_for(lambda: Event.objects.count() >= base + 5, 120), "no writer appends"
        assert counts() == rebuilt  # the appends left the rows to the rebuild
        if finish == "same_process_while_paused":
            (gate / "go").touch()
            outcome = rebuilder_ends()
            assert outcome["stopped"] is False and outcome["failed"] == []
            over = state_row()
            # Its replay and hand-over ran to the end: the rebuild is over, the pause stays.
            assert (over.status, over.suspended_rebuild, over.owner) == ("paused", False, "")
        if finish in ("rebuild_projections", "replay_projections"):
            rebuilder.send_signal(signal.SIGTERM)  # a clean stop, after the batch in hand
            (gate / "go").touch()
            assert rebuilder_ends()["stopped"] is True
            stopped = state_row()
            # Still paused, in its rebuild; the stopped process's claim ended.
            assert (stopped.status, stopped.suspended_rebuild, stopped.owner) == (
                "paused",
                True,
                "",
            )
        control.resume(NAME)
        resumed = state_row()
        if finish == "same_process_while_paused":
            assert (resumed.status, resumed.suspended_rebuild) == ("idle", False)
        else:
            assert (resumed.status, resumed.suspended_rebuild) == ("rebuilding", False)
        if finish in ("rebuild_projections", "replay_projections"):
            assert reported() == "interrupted"  # no runner works on it: half-built
        append_to_each_tenant(store)
        if finish == "same_process":
            (gate / "go").touch()
            outcome = rebuilder_ends()
            assert outcome["stopped"] is False and outcome["failed"] == []
        elif finish != "same_process_while_paused":
            out = finish_the_rebuild(child_db_url, finish)
            if finish == "rebuild_projections":
                assert "resume the interrupted rebuild of" in out  # not a reset
        assert state_row().status == "idle"
        after = Event.objects.count()
        # Appends go on after the rebuild: inline again.
        assert wait_for(lambda: Event.objects.count() >= after + 5, 120)
    finally:
        (gate / "go").touch()
        stop.touch()
        if rebuilder.poll() is None:
            rebuilder.kill()
        if rebuilder.stdout and not rebuilder.stdout.closed:
            rebuilder.communicate()
        outputs = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err
    assert counts() == fold()
    assert sum(counts().values()) == Event.objects.filter(event_type="TaskCreated").count()

"""Monitoring: the health view, the metrics view and ``--metrics-port``, checked against the
database they report on."""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Any
from uuid import uuid4

import pytest
from django.core.management import call_command
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from django_eventsource import DeadLetter, Event, EventStore, NotSupportedOnBackend
from django_eventsource.models import ProjectionStatus
from django_eventsource.runner import ProjectionRunner
from django_eventsource.status import projection_statuses
from tests.factories import task_history
from tests.helpers import ROOT, child_env, start_command
from tests.testapp.events import TaskCreated, TaskRenamed
from tests.testapp.projections import TaskBoard, TenantStatsProjection

pytestmark = pytest.mark.django_db(transaction=True)

ASYNC = [TaskBoard, TenantStatsProjection]


def caught_up() -> None:
    ProjectionRunner([p() for p in ASYNC]).run_until_caught_up()


def health(client: Client, url: str = "/eventsource/health/") -> tuple[int, dict[str, Any]]:
    response = client.get(url)
    assert response["Content-Type"] == "application/json"
    assert "no-cache" in response["Cache-Control"]
    return response.status_code, response.json()


def poison(store: EventStore, tenant: str | None = None) -> int:
    """A stream whose rename to 'boom' makes TaskBoard fail; returns the poison's position."""
    bad = uuid4()
    store.append(bad, [TaskCreated(aggregate_id=bad, title="ok", tenant_id=tenant)])
    [event] = store.append(bad, [TaskRenamed(aggregate_id=bad, title="boom", tenant_id=tenant)])
    return event.position


# The health view -------------------------------------------------------------------------


def test_health_is_200_when_every_check_passes(client: Client) -> None:
    task_history(EventStore(), tasks=6, seed=1)
    caught_up()
    assert health(client) == (200, {"status": "ok", "problems": []})
    # The strictest thresholds (no lag, nothing held) pass too: nothing waits.
    assert health(client, "/strict-health/") == (200, {"status": "ok", "problems": []})


def test_health_is_503_when_a_projection_failed(client: Client) -> None:
    store = EventStore()
    task_history(store, tasks=3, seed=2)
    position = poison(store)
    caught_up()
    response = client.get("/eventsource/health/")
    assert response.status_code == 503
    assert response.json() == {
        "status": "failing",
        "problems": [
            {
                "check": "failed",
                "projection": "task_board",
                "tenant_id": "",
                "message": f"failed at event #{position}",
            }
        ],
    }
    # Safe to expose: the handler's error text is not shown.
    assert b"boom" not in response.content and b"ValueError" not in response.content


def test_a_failed_shadow_build_is_a_problem_of_its_own() -> None:
    """A failed shadow rebuild passed the check (and the health view): the operator saw
    nothing. It is its own problem, never the live projection's ``failed``."""
    from dataclasses import replace

    from django_eventsource.status import Problem, ProjectionStatusRow, find_problems

    building = ProjectionStatusRow(
        projection="task_board",
        tenant_id="",
        status="running",
        position=40,
        head=40,
        lag_events=0,
        lag_seconds=0.0,
        heartbeat_age=1.0,
        last_progress_age=1.0,
        owner="worker",
        last_error="",
        failed_event_position=None,
        registered=True,
        shadow_position=33,
    )
    assert find_problems([building]) == []  # a shadow build in progress is no problem
    failed = replace(building, shadow_failed_position=34, shadow_error="ValueError: boom")
    assert find_problems([failed]) == [
        Problem(
            "shadow_failed",
            "task_board",
            "",
            "shadow rebuild failed at event #34, built up to #33: nothing was swapped, the "
            "live tables still serve (fix the handler, then rebuild_projections --shadow "
            "resumes it)",
        )
    ]


def test_health_is_503_when_a_projection_lags_more_than_max_lag(
    client: Client, settings: Any
) -> None:
    store = EventStore()
    task_history(store, tasks=4, seed=3)
    caught_up()
    task_history(store, tasks=2, renames=0, seed=4)
    # MAX_LAG is None by default: lag alone is not a problem.
    assert health(client)[0] == 200
    settings.EVENTSOURCE = {**settings.EVENTSOURCE, "MAX_LAG": 0}
    code, body = health(client)
    assert code == 503
    lagging = {row.projection: row.lag_events for row in projection_statuses() if row.lag_events}
    assert set(lagging) == {"task_board", "tenant_stats"}
    assert body["problems"] == [
        {
            "check": "lag",
            "projection": name,
            "tenant_id": "",
            "message": f"lag {events} > 0",
        }
        for name, events in sorted(lagging.items())
    ]
    # A larger limit passes; the view's own threshold overrides the setting.
    settings.EVENTSOURCE = {**settings.EVENTSOURCE, "MAX_LAG": 1000}
    assert health(client)[0] == 200
    assert health(client, "/strict-health/")[0] == 503


def test_health_is_503_while_events_are_held_back_too_long(
    client: Client, settings: Any, child_db_url: str, vendor: str
) -> None:
    """PostgreSQL: an appending transaction that has not committed holds back the events
    committed after it. SQLite: the open writer serializes everyone; nothing is held back."""
    from tests.concurrency.test_writers import start_hold, tell, wait

    store = EventStore()
    task_history(store, tasks=2, seed=5)
    caught_up()
    worker, _ = start_hold(child_db_url, str(uuid4()))
    try:
        if vendor == "postgresql":
            task_history(store, tasks=1, renames=0, seed=6)
            time.sleep(1.2)
        settings.EVENTSOURCE = {**settings.EVENTSOURCE, "MAX_HELD_SECONDS": 1}
        code, body = health(client)
        if vendor == "postgresql":
            assert code == 503
            assert {p["check"] for p in body["problems"]} == {"held"}
            assert {p["projection"] for p in body["problems"]} == {"task_board", "tenant_stats"}
            # Safe to expose: nothing about the holder (no query text, no pid).
            assert "pid" not in json.dumps(body) and "SELECT" not in json.dumps(body)
            settings.EVENTSOURCE = {**settings.EVENTSOURCE, "MAX_HELD_SECONDS": 60}
            assert health(client)[0] == 200
        else:
            assert (code, body) == (200, {"status": "ok", "problems": []})
    finally:
        tell(worker, "commit")
        wait(worker)


@pytest.mark.postgres
def test_health_is_503_when_the_stamps_need_a_rebase(client: Client, vendor: str) -> None:
    from django_eventsource.maintenance import rebase_stamps
    from tests.integration.test_maintenance import simulate_restore

    task_history(EventStore(), tasks=2, seed=7)
    caught_up()
    if vendor != "postgresql":
        # SQLite has no stamps to diagnose (the twin): re-basing is refused, health is 200.
        with pytest.raises(NotSupportedOnBackend):
            rebase_stamps()
        assert health(client)[0] == 200
        return
    simulate_restore()
    code, body = health(client)
    assert code == 503
    [problem] = body["problems"]
    assert problem["check"] == "stamps" and "rebase_event_stamps" in problem["message"]
    rebase_stamps()
    assert health(client)[0] == 200


def test_health_is_503_when_the_database_cannot_be_read(tmp_path: Any, vendor: str) -> None:
    """A real process whose database is unreachable: 503, and no error text in the body."""
    url = (
        "postgres://nobody:secret@127.0.0.1:1/nothing"
        if vendor == "postgresql"
        else f"sqlite:///{tmp_path}/missing/directory/db.sqlite3"
    )
    script = (
        "import django; django.setup()\n"
        "from django.test import Client\n"
        "r = Client().get('/eventsource/health/')\n"
        "print(r.status_code, r.content.decode())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=child_env(url),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    code, body = done.stdout.strip().split(" ", 1)
    assert code == "503"
    assert json.loads(body) == {
        "status": "failing",
        "problems": [
            {
                "check": "database",
                "projection": "",
                "tenant_id": "",
                "message": "the database could not be read",
            }
        ],
    }
    assert "secret" not in body and "nobody" not in body
    # The operator learns why from the log, not from the probe.
    assert "Health check: the database could not be read" in done.stderr


def test_projection_status_check_uses_the_max_lag_setting(settings: Any) -> None:
    store = EventStore()
    task_history(store, tasks=3, seed=8)
    caught_up()
    task_history(store, tasks=1, renames=0, seed=9)
    call_command("projection_status", "--check", stdout=_Sink(), stderr=_Sink())  # passes
    settings.EVENTSOURCE = {**settings.EVENTSOURCE, "MAX_LAG": 0}
    err = _Sink()
    with pytest.raises(SystemExit) as exit_info:
        call_command("projection_status", "--check", stdout=_Sink(), stderr=err)
    assert exit_info.value.code == 1
    assert "Check failed: task_board: lag" in err.text
    # --max-lag overrides the setting.
    call_command("projection_status", "--check", "--max-lag", "100", stdout=_Sink())


class _Sink:
    def __init__(self) -> None:
        self.text = ""

    def write(self, text: str) -> None:
        self.text += text

    def flush(self) -> None:
        pass


# The metrics view ------------------------------------------------------------------------


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample, keyed by name and sorted labels, read with prometheus_client's parser."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(client: Client) -> Samples:
    response = client.get("/eventsource/metrics/")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    return parse(response.content.decode())


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_match_the_database_after_appends_failures_and_catch_ups(
    client: Client, settings: Any
) -> None:
    store = EventStore()
    before = scrape(client)
    history = {}
    for tenant in ("t1", "t2"):
        task_history(store, tasks=3, tenants=(tenant,), seed=10)
        history[tenant] = len(store.read_all(tenant_id=tenant))
    failed_at = poison(store, "t1")
    parked_at = poison(store, "t2")
    appended = scrape(client)
    for tenant in ("t1", "t2"):
        delta = value(appended, "eventsource_events_appended_total", tenant=tenant) - value(
            before, "eventsource_events_appended_total", tenant=tenant
        )
        assert delta == history[tenant] + 2  # its history and its poisoned stream

    # t1 fails (pause), t2 sets its poison aside (dead letter) and goes on; then t2 lags.
    batches: list[dict[str, Any]] = []

    def catch_up(tenant: str) -> int:
        runner = ProjectionRunner(
            [TaskBoard()],
            tenant_id=tenant,
            batch_size=4,
            progress_callback=lambda kind, **data: kind == "batch" and batches.append(data),
        )
        return runner.run_until_caught_up().events_applied

    applied = {"t1": catch_up("t1")}
    settings.EVENTSOURCE = {**settings.EVENTSOURCE, "ERROR_POLICY": "dead_letter"}
    applied["t2"] = catch_up("t2")
    task_history(store, tasks=2, renames=1, tenants=("t2",), seed=11)

    samples = scrape(client)

    def delta(name: str, **labels: str) -> float:
        return value(samples, name, **labels) - value(before, name, **labels)

    # This process's counters: what its runners did.
    for tenant in ("t1", "t2"):
        assert (
            delta("eventsource_events_applied_total", projection="task_board", tenant=tenant)
            == applied[tenant]
        )
    assert delta("eventsource_batch_duration_seconds_count", projection="task_board") == len(
        batches
    )
    assert math.isclose(
        delta("eventsource_batch_duration_seconds_sum", projection="task_board"),
        sum(b["duration"] for b in batches),
        rel_tol=1e-6,
    )
    assert delta("eventsource_event_retries_total", projection="task_board") == 6  # 3 + 3
    assert delta("eventsource_projection_failures_total", projection="task_board") == 1  # t1
    assert delta("eventsource_events_dead_lettered_total", projection="task_board") == 1  # t2
    rows = {r.tenant_id: r for r in projection_statuses(["task_board"]) if r.tenant_id}
    assert rows["t1"].status == "failed" and rows["t1"].failed_event_position == failed_at
    assert value(samples, "eventsource_database_up") == 1
    assert value(samples, "eventsource_head_position") == store.head_position()
    for tenant, row in rows.items():
        labels = {"projection": "task_board", "tenant": tenant}
        assert value(samples, "eventsource_projection_position", **labels) == row.position
        assert value(samples, "eventsource_lag_events", **labels) == row.lag_events
        assert math.isclose(
            value(samples, "eventsource_lag_seconds", **labels), row.lag_seconds, abs_tol=5
        )
        assert value(samples, "eventsource_held_events", **labels) == row.held_events == 0
        for status in ProjectionStatus.values:
            assert value(
                samples, "eventsource_projection_status", status=status, **labels
            ) == float(status == row.status)
        letters = DeadLetter.objects.filter(
            projection="task_board", tenant_id=tenant, resolved_at=None
        ).count()
        assert value(samples, "eventsource_dead_letters", **labels) == letters
        assert value(samples, "eventsource_worker_up", **labels) == float(
            row.heartbeat_age is not None and row.heartbeat_age <= 15
        )
    assert rows["t2"].lag_events > 0 and rows["t2"].status == "idle"
    assert value(samples, "eventsource_dead_letters", projection="task_board", tenant="t2") >= 1
    assert DeadLetter.objects.filter(event_position=parked_at, tenant_id="t2").exists()
    # The check: exactly what projection_status --check says (one failed projection).
    assert value(samples, "eventsource_check_ok") == 0
    assert value(samples, "eventsource_check_problems", check="failed") == 1
    assert value(samples, "eventsource_check_problems", check="lag") == 0


def test_the_tenant_label_is_bounded(client: Client, settings: Any) -> None:
    """With METRICS_MAX_TENANTS = 1 the worst tenant keeps its label; the others are summed
    (events) or maxed (seconds) as tenant="(other)"."""
    store = EventStore()
    for n, tenant in enumerate(("a", "b", "c")):
        task_history(store, tasks=n + 1, renames=0, tenants=(tenant,), seed=12 + n)
        ProjectionRunner([TaskBoard()], tenant_id=tenant).run_until_caught_up()
    poison(store, "b")  # b fails: the worst
    ProjectionRunner([TaskBoard()], tenant_id="b").run_until_caught_up()
    task_history(store, tasks=2, renames=0, tenants=("a",), seed=20)
    task_history(store, tasks=3, renames=0, tenants=("c",), seed=21)
    settings.EVENTSOURCE = {**settings.EVENTSOURCE, "METRICS_MAX_TENANTS": 1}
    samples = scrape(client)
    rows = {r.tenant_id: r for r in projection_statuses(["task_board"]) if r.tenant_id}
    tenants = {
        dict(labels).get("tenant")
        for (name, labels) in samples
        if name == "eventsource_lag_events" and dict(labels)["projection"] == "task_board"
    }
    assert tenants == {"b", "(other)"}
    other = {"projection": "task_board", "tenant": "(other)"}
    assert value(samples, "eventsource_lag_events", **other) == (
        rows["a"].lag_events + rows["c"].lag_events
    )
    assert value(samples, "eventsource_projection_status", status="idle", **other) == 2
    assert ("eventsource_projection_position", tuple(sorted(other.items()))) not in samples


def test_a_worker_serves_its_metrics_over_http(child_db_url: str) -> None:
    """A real ``replay_projections --follow --metrics-port N`` process, scraped on 127.0.0.1."""
    store = EventStore()
    task_history(store, tasks=4, seed=30)
    port = free_port()
    worker = start_command(
        child_db_url,
        "replay_projections",
        "task_board",
        "--follow",
        "--metrics-port",
        str(port),
        "--metrics-address",
        "127.0.0.1",
    )
    labels = {"projection": "task_board", "tenant": ""}
    try:
        samples = wait_for_scrape(
            port, lambda s: s and value(s, "eventsource_lag_events", **labels) == 0
        )
        assert value(samples, "eventsource_worker_up", **labels) == 1
        assert value(samples, "eventsource_head_position") == store.head_position()
        # Only the projections it runs.
        assert {
            dict(k[1]).get("projection") for k in samples if k[0].startswith("eventsource_lag")
        } == {"task_board"}
        task_history(store, tasks=2, renames=0, seed=31)
        # The counters count after each batch commits: wait for them too.
        samples = wait_for_scrape(
            port,
            lambda s: (
                value(s, "eventsource_projection_position", **labels) == store.head_position()
                and value(s, "eventsource_events_applied_total", **labels) == Event.objects.count()
            ),
        )
        assert value(samples, "eventsource_lag_events", **labels) == 0
        assert value(samples, "eventsource_check_ok") == 1
        # The worker's own counters: every event it applied, in batches it timed.
        assert value(samples, "eventsource_events_applied_total", **labels) == (
            Event.objects.count()
        )
        assert value(samples, "eventsource_batch_duration_seconds_count", projection="task_board")
    finally:
        worker.terminate()
        out, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err
    assert f"Serving Prometheus metrics on http://127.0.0.1:{port}/metrics" in out


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_scrape(port: int, ready: Any, timeout: float = 60) -> Samples:
    deadline = time.monotonic() + timeout
    samples: Samples = {}
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                samples = parse(r.read().decode())
        except OSError:
            samples = {}
        if samples and ready(samples):
            return samples
        time.sleep(0.2)
    raise AssertionError(f"the scrape never got ready: {samples}")


def test_a_bad_metrics_port_is_a_command_error() -> None:
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="between 0 and 65535"):
        call_command("replay_projections", "--metrics-port", "70000")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(CommandError, match=f"Cannot serve metrics on 127.0.0.1:{port}"):
            call_command(
                "replay_projections",
                "--metrics-port",
                str(port),
                "--metrics-address",
                "127.0.0.1",
                stdout=_Sink(),
            )


def test_without_prometheus_client_the_library_runs_and_metrics_say_what_to_install(
    child_db_url: str,
) -> None:
    """prometheus_client made unimportable in a real process: appends, runners and the
    health view work; the metrics view, ``--metrics-port`` and the exposition module name
    the extra."""
    script = """
import sys
sys.modules["prometheus_client"] = None  # import prometheus_client raises ImportError
import django
django.setup()
from uuid import uuid4
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command
from django.test import Client
from django_eventsource import EventStore, metrics
from django_eventsource.runner import ProjectionRunner
from tests.testapp.events import TaskCreated
from tests.testapp.projections import TaskBoard

stream = uuid4()
EventStore().append(stream, [TaskCreated(aggregate_id=stream, title="no metrics")])
result = ProjectionRunner([TaskBoard()]).run_until_caught_up()
print("applied", result.events_applied, "available", metrics.available())
print("health", Client().get("/eventsource/health/").status_code)
try:
    Client().get("/eventsource/metrics/")
except ImproperlyConfigured as exc:
    print("view:", exc)
try:
    call_command("replay_projections", "task_board", "--metrics-port", "0")
except CommandError as exc:
    print("command:", exc)
try:
    import django_eventsource.prometheus
except ImproperlyConfigured as exc:
    print("module:", exc)
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=child_env(child_db_url),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:2] == ["applied 1 available False", "health 200"]
    extra = 'pip install "django-eventsource[prometheus]"'
    assert [line.split(":", 1)[0] for line in lines[2:]] == ["view", "command", "module"]
    assert all(extra in line for line in lines[2:]), lines


def test_appends_are_counted_when_they_commit_and_never_when_rolled_back(
    client: Client,
) -> None:
    from django.db import transaction

    store = EventStore()

    def appended() -> float:
        return value(scrape(client), "eventsource_events_appended_total", tenant="counted")

    start = appended()
    stream = uuid4()
    with transaction.atomic():
        store.append(stream, [TaskCreated(aggregate_id=stream, title="x", tenant_id="counted")])
        transaction.set_rollback(True)
    assert appended() == start
    with transaction.atomic():
        store.append(stream, [TaskCreated(aggregate_id=stream, title="x", tenant_id="counted")])
        assert appended() == start  # not committed yet
    assert appended() == start + 1
    # A repeat of a stored append (same event ids) appends nothing.
    [event] = store.read_stream(stream, tenant_id="counted").events
    store.append(stream, [event.event], expected_version=0)
    assert appended() == start + 1

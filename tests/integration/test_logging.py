"""Log records: one logger per module under ``django_eventsource``, structured fields in
``extra``, human text with control characters escaped."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import time
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from django_eventsource import Event, EventStore, control
from django_eventsource.locks import lock_for
from django_eventsource.runner import ProjectionRunner
from tests.factories import task_history
from tests.helpers import start_command, wait_for
from tests.testapp.events import TaskCreated, TaskRenamed
from tests.testapp.projections import TaskBoard

pytestmark = pytest.mark.django_db(transaction=True)

EVIL = "acme\x1b[2J\nFAKE"


def records(caplog: pytest.LogCaptureFixture, logger: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == logger]


def test_appends_are_logged_at_debug_with_their_fields(caplog: pytest.LogCaptureFixture) -> None:
    store = EventStore()
    stream = uuid4()
    with caplog.at_level(logging.INFO, logger="django_eventsource"):
        store.append(stream, [TaskCreated(aggregate_id=stream, title="quiet", tenant_id=EVIL)])
    assert records(caplog, "django_eventsource.store") == []  # DEBUG only
    with caplog.at_level(logging.DEBUG, logger="django_eventsource"):
        stored = store.append(
            stream,
            [
                TaskRenamed(aggregate_id=stream, title="a", tenant_id=EVIL),
                TaskRenamed(aggregate_id=stream, title="b", tenant_id=EVIL),
            ],
        )
    [record] = records(caplog, "django_eventsource.store")
    assert record.levelno == logging.DEBUG
    fields = {k: getattr(record, k) for k in ("stream", "tenant", "count")}
    assert fields == {"stream": str(stream), "tenant": EVIL, "count": 2}  # raw in extra
    assert (record.first_position, record.last_position) == (  # type: ignore[attr-defined]
        stored[0].position,
        stored[1].position,
    )
    message = record.getMessage()
    assert "\x1b" not in message and "\n" not in message  # escaped in the human text
    assert "acme\\x1b[2J\\nFAKE" in message


def test_the_lock_logs_when_it_is_taken(caplog: pytest.LogCaptureFixture, vendor: str) -> None:
    logger = (
        "django_eventsource.backends.postgresql.locks"
        if vendor == "postgresql"
        else "django_eventsource.backends.lease"
    )
    with caplog.at_level(logging.DEBUG, logger="django_eventsource"):
        lock = lock_for("task_board", EVIL, "default")
        assert lock.acquire()
        assert lock.acquire()  # already ours: nothing new to say
        lock.release()
    taken, released = records(caplog, logger)
    assert taken.levelno == logging.INFO and "Took the" in taken.getMessage()
    assert (taken.projection, taken.tenant, taken.owner) == (  # type: ignore[attr-defined]
        "task_board",
        EVIL,
        lock.owner,
    )
    assert "\x1b" not in taken.getMessage()
    assert released.levelno == logging.DEBUG and "Released" in released.getMessage()


def test_a_dead_letter_is_an_error_record_naming_the_event(
    caplog: pytest.LogCaptureFixture, settings: Any
) -> None:
    settings.EVENTSOURCE = {**settings.EVENTSOURCE, "ERROR_POLICY": "dead_letter"}
    store = EventStore()
    bad = uuid4()
    store.append(bad, [TaskCreated(aggregate_id=bad, title="ok")])
    [poison] = store.append(bad, [TaskRenamed(aggregate_id=bad, title="boom")])
    [parked] = store.append(bad, [TaskRenamed(aggregate_id=bad, title="after")])
    with caplog.at_level(logging.INFO, logger="django_eventsource"):
        ProjectionRunner([TaskBoard()], batch_size=2).run_until_caught_up()
    [letter] = [
        r for r in records(caplog, "django_eventsource.deadletters") if r.levelno == logging.ERROR
    ]
    assert {
        key: getattr(letter, key)
        for key in (
            "projection",
            "event_position",
            "event_type",
            "event_id",
            "stream",
            "stream_version",
            "attempts",
            "error_type",
        )
    } == {
        "projection": "task_board",
        "event_position": poison.position,
        "event_type": poison.event_type,
        "event_id": str(poison.event_id),
        "stream": str(bad),
        "stream_version": 2,
        "attempts": 4,  # the first try and MAX_RETRIES (3) retries
        "error_type": "ValueError",
    }
    assert "the handler refuses the title 'boom'" in letter.error  # type: ignore[attr-defined]
    [park] = [
        r
        for r in records(caplog, "django_eventsource.deadletters")
        if r.levelno == logging.WARNING
    ]
    assert park.count == 1 and park.first_position == parked.position  # type: ignore[attr-defined]


def test_one_attempt_and_one_event_are_said_in_the_singular(
    caplog: pytest.LogCaptureFixture, settings: Any
) -> None:
    """It said "after 1 attempts" (a catch-up tries a failing event once, so does a runner
    with MAX_RETRIES 0) and "after 1 events"."""
    from io import StringIO

    from django.core.management import call_command

    from django_eventsource import InMemoryCheckpointStore, ProjectionError, catch_up
    from django_eventsource.rebuild import rebuild

    settings.EVENTSOURCE = {
        **settings.EVENTSOURCE,
        "MAX_RETRIES": 0,
        "ERROR_POLICY": "dead_letter",
    }
    store = EventStore()
    task = uuid4()
    store.append(task, [TaskCreated(aggregate_id=task, title="ok")])
    with caplog.at_level(logging.INFO, logger="django_eventsource"):
        rebuild(TaskBoard())
        store.append(task, [TaskRenamed(aggregate_id=task, title="boom")])
        with pytest.raises(ProjectionError):
            catch_up(TaskBoard(), checkpoint_store=InMemoryCheckpointStore())
        ProjectionRunner([TaskBoard()]).run_until_caught_up()
    [end] = [r.getMessage() for r in records(caplog, "django_eventsource.rebuild")][-1:]
    assert "Rebuild of task_board finished after 1 event in " in end
    [failed] = [
        r.getMessage()
        for r in records(caplog, "django_eventsource.runner")
        if r.levelno == logging.ERROR
    ]
    assert " after 1 attempt and the run stops before it: " in failed
    [letter] = [
        r.getMessage()
        for r in records(caplog, "django_eventsource.deadletters")
        if r.levelno == logging.ERROR
    ]
    assert " after 1 attempt: " in letter
    everything = " ".join(r.getMessage() for r in caplog.records)
    assert " 1 attempts" not in everything and " 1 events" not in everything
    other = uuid4()
    store.append(other, [TaskCreated(aggregate_id=other, title="one more")])
    out = StringIO()
    call_command("replay_projections", "task_board", stdout=out)
    assert "\n1 event handled.\n" in out.getvalue()


# A real worker, its records written by the JSON formatter the Monitoring how-to shows ------


def read_log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    # Only whole lines: the worker may be half-way through writing the last one.
    whole = path.read_text().rpartition("\n")[0]
    return [json.loads(line) for line in whole.splitlines() if line.strip()]


def worker(db_url: str, log: Path, *names: str, **env: str) -> subprocess.Popen[str]:
    return start_command(
        db_url,
        "replay_projections",
        *names,
        "--follow",
        EVENTSOURCE_TEST_LOG_FILE=str(log),
        EVENTSOURCE_HEARTBEAT_INTERVAL="0.3",
        **env,
    )


def stop(process: subprocess.Popen[str], expect: int = 0) -> None:
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == expect, err


def test_a_worker_run_emits_the_documented_records(child_db_url: str, tmp_path: Path) -> None:
    store = EventStore()
    task_history(store, tasks=6, renames=1, seed=40)
    bad = uuid4()
    store.append(bad, [TaskCreated(aggregate_id=bad, title="ok")])
    [poison] = store.append(bad, [TaskRenamed(aggregate_id=bad, title="boom")])
    first_log, second_log = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    first: subprocess.Popen[str] | None = worker(
        child_db_url, first_log, "task_board", "tenant_stats"
    )
    second: subprocess.Popen[str] | None = None
    try:
        assert wait_for(
            lambda: any(r["message"].startswith("task_board failed") for r in read_log(first_log))
        ), read_log(first_log)
        assert wait_for(lambda: control.get_state("tenant_stats").position == poison.position)
        second = worker(child_db_url, second_log, "tenant_stats")
        assert wait_for(lambda: any("standby" in r["message"] for r in read_log(second_log)))
        stop(first, expect=1)  # task_board failed: the worker says so with its exit code
        first = None
        assert wait_for(lambda: any("Took over" in r["message"] for r in read_log(second_log)))
        stop(second)
        second = None
    finally:
        for process in (first, second):
            if process is not None:
                process.kill()
                process.communicate(timeout=60)
    records = read_log(first_log)

    [started] = [r for r in records if r["message"].startswith("Runner following")]
    assert started["name"] == "django_eventsource.runner" and started["levelname"] == "INFO"
    assert started["projections"] == ["task_board", "tenant_stats"] and started["follow"]
    locks = [r for r in records if r["message"].startswith("Took the ")]
    assert {r["projection"] for r in locks} == {"task_board", "tenant_stats"}
    assert all(r["name"].startswith("django_eventsource.backends.") for r in locks)

    batches = [r for r in records if r["message"].startswith("Applied a batch")]
    assert batches and all(r["levelname"] == "DEBUG" for r in batches)
    for record in batches:
        assert {"projection", "tenant", "from_position", "to_position", "count", "applied"} <= set(
            record
        )
        assert record["duration"] >= 0
        # count: the events the batch passed (to its committed position), not those it read
        # past a failing event; applied: those a handler applied.
        passed = Event.objects.filter(
            position__gt=record["from_position"], position__lte=record["to_position"]
        ).count()
        assert record["count"] == passed and 0 <= record["applied"] <= passed, record
        assert f"{record['applied']} applied" in record["message"], record
    [stopped_at] = [r for r in batches if r["projection"] == "task_board"][-1:]
    assert stopped_at["to_position"] < poison.position
    stats = [r for r in batches if r["projection"] == "tenant_stats"]
    assert sum(r["count"] for r in stats) == Event.objects.count()
    assert [r["from_position"] for r in stats[1:]] == [r["to_position"] for r in stats[:-1]]

    retries = [r for r in records if r["message"].startswith("Retrying event")]
    assert [r["attempt"] for r in retries] == [1, 2, 3]
    [failed] = [r for r in records if r["levelname"] == "ERROR"]
    assert failed["message"].startswith("task_board failed on event")
    for record in [*retries, failed]:
        assert record["projection"] == "task_board"
        assert record["event_position"] == poison.position
        assert record["event_type"] == poison.event_type
        assert record["event_id"] == str(poison.event_id)
        assert record["stream"] == str(bad)
        assert record["stream_version"] == 2
        assert record["error_type"] == "ValueError"
    assert failed["attempts"] == 4

    assert any(
        r["message"] == "Received SIGTERM: stopping after the batch in hand" for r in records
    )
    [stopped] = [r for r in records if r["message"].startswith("Runner stopped")]
    assert stopped["applied"] >= Event.objects.count() and stopped["failed"] == ["task_board"]

    later = read_log(second_log)
    [standby] = [r for r in later if "standby" in r["message"]]
    assert standby["projection"] == "tenant_stats" and standby["holder"]
    [took_over] = [r for r in later if r["message"].startswith("Took over")]
    assert took_over["projection"] == "tenant_stats"


def test_a_worker_says_what_holds_its_events_back(
    child_db_url: str, tmp_path: Path, vendor: str
) -> None:
    """PostgreSQL: a WARNING naming the appending transaction that holds the worker's events
    back past MAX_HELD_SECONDS, then an INFO when they are released. SQLite serializes
    writers: nothing is ever held back, and the worker does not even ask."""
    from tests.concurrency.test_writers import start_hold, tell, wait

    store = EventStore()
    task_history(store, tasks=2, seed=41)
    log = tmp_path / "held.jsonl"
    follower = worker(child_db_url, log, "task_board", EVENTSOURCE_MAX_HELD_SECONDS="0.5")
    holder = None
    try:
        assert wait_for(lambda: control.get_state("task_board").position == store.head_position())
        holder, _ = start_hold(child_db_url, str(uuid4()))
        if vendor == "postgresql":
            task_history(store, tasks=1, renames=0, seed=42)
            assert wait_for(
                lambda: any("have been held back" in r["message"] for r in read_log(log))
            )
        else:
            time.sleep(2)
        tell(holder, "commit")
        wait(holder)
        holder = None
        assert wait_for(lambda: control.get_state("task_board").position == store.head_position())
        if vendor == "postgresql":
            assert wait_for(lambda: any("released" in r["message"] for r in read_log(log)))
    finally:
        if holder is not None:
            tell(holder, "commit")
            wait(holder)
        stop(follower)
    records = read_log(log)
    held = [r for r in records if r["message"].split(" have been held back")[1:]]
    if vendor != "postgresql":
        assert held == []
        return
    [first] = held  # repeated at most once a minute
    assert first["levelname"] == "WARNING" and first["projection"] == "task_board"
    assert first["held_events"] >= 1 and first["held_seconds"] > 0.5
    assert first["holder_pid"] and "pid" in first["message"]
    [released] = [r for r in records if "released" in r["message"]]
    assert released["levelname"] == "INFO" and released["projection"] == "task_board"
    # How long the events were held back: at least as long as when the warning said so.
    assert released["held_seconds"] >= first["held_seconds"]
    assert f"released after {released['held_seconds']:.0f}s" in released["message"]


def test_every_rebuild_ends_with_one_record_saying_how(
    caplog: pytest.LogCaptureFixture, vendor: str
) -> None:
    """Default, atomic and shadow rebuilds log their end in one place (rebuild._logged):
    finished or swapped in (INFO), failed (WARNING), aborted (WARNING, the error raised)."""
    from django_eventsource import NotSupportedOnBackend, RebuildAborted
    from django_eventsource.rebuild import rebuild
    from tests.helpers import drop_shadow_schemas

    store = EventStore()
    task_history(store, tasks=3, seed=41)
    count = len(store.read_all())

    def ends() -> list[tuple[int, str, dict[str, Any]]]:
        found = [
            (
                r.levelno,
                r.getMessage().split(" after ")[0].split(": ")[0],
                {k: getattr(r, k, None) for k in ("projection", "count", "swap_seconds")},
            )
            for r in records(caplog, "django_eventsource.rebuild")
            if hasattr(r, "count") or hasattr(r, "error")  # the end records
        ]
        caplog.clear()
        return found

    with caplog.at_level(logging.INFO, logger="django_eventsource"):
        rebuild(TaskBoard())
        assert ends() == [
            (
                logging.INFO,
                "Rebuild of task_board finished",
                {"projection": "task_board", "count": count, "swap_seconds": None},
            )
        ]
        if vendor == "postgresql":
            drop_shadow_schemas()
            try:
                rebuild(TaskBoard(), shadow=True)
            finally:
                drop_shadow_schemas()
            [(level, text, fields)] = ends()
            assert (level, text) == (logging.INFO, "Shadow rebuild of task_board swapped in")
            assert fields["count"] == count and fields["swap_seconds"] > 0
        else:
            with pytest.raises(NotSupportedOnBackend):
                rebuild(TaskBoard(), shadow=True)
            assert ends() == []  # refused before it started
        bad = uuid4()
        store.append(
            bad,
            [
                TaskCreated(aggregate_id=bad, title="a"),
                TaskRenamed(aggregate_id=bad, title="boom"),
            ],
        )
        with pytest.raises(RebuildAborted):
            rebuild(TaskBoard(), atomic=True)
        # The failure's record does not say "paused": the rollback undid its state.
        [failure] = [
            r.getMessage()
            for r in records(caplog, "django_eventsource.runner")
            if r.levelno == logging.ERROR
        ]
        assert "after 4 attempts and the run stops before it: the handler" in failure
        [(level, text, fields)] = ends()
        assert (level, text) == (logging.WARNING, "Rebuild of 'task_board' was rolled back")
        rebuild(TaskBoard())
        [failure] = [
            r.getMessage()
            for r in records(caplog, "django_eventsource.runner")
            if r.levelno == logging.ERROR
        ]
        assert "and is paused (its checkpoint stays before the event)" in failure
        [(level, text, fields)] = ends()
        assert (level, text, fields["count"]) == (
            logging.WARNING,
            "Rebuild of task_board failed",
            count + 1,
        )
        assert control.get_state("task_board").status == "failed"

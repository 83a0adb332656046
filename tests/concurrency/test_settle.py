"""A catch-up does not stop early while events are held back only for a moment.

On PostgreSQL the read horizon counts every transaction of the snapshot that ended while the
horizon was computed (the "ended since" term, needed for safety: see
``backends/postgresql/horizon.py``). On a busy cluster some transaction ends in that window
all the time, so one read can hold back events that are committed and have no appending
transaction in front of them. A catch-up used to take that empty read for "caught up" and
stop short of the head. It now re-reads with a short backoff while events are held and no
appending transaction is open (a bounded wait), and reports any events still held
(``CatchUpResult.held``) instead of hiding them; a real hold (a transaction that appended
and has not committed) returns at once.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from io import StringIO
from uuid import uuid4

import pytest
from django.core.management import call_command
from django.db import connection, connections, transaction

from django_eventsource import EventStore, catch_up
from tests.helpers import ROOT, child_env
from tests.testapp.events import TaskCreated
from tests.testapp.models import TenantStats
from tests.testapp.projections import TenantStatsProjection

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

WAIT = 30.0


def _other_database_url() -> str:
    """The server's maintenance database: another database than the test's."""
    s = connection.settings_dict
    password = f":{s['PASSWORD']}" if s.get("PASSWORD") else ""
    return (
        f"postgresql://{s.get('USER') or 'postgres'}{password}@{s.get('HOST') or '127.0.0.1'}"
        f":{s.get('PORT') or 5432}/postgres"
    )


@pytest.fixture
def churn(vendor: str) -> Iterator[int]:
    """Two processes committing short transactions in another database (PostgreSQL); none
    on SQLite, where readers have no horizon."""
    if vendor != "postgresql":
        yield 0
        return
    env = child_env("", CHURN_URL=_other_database_url())
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.concurrency.churn_worker"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        for process in processes:
            assert process.stdout is not None
            assert process.stdout.readline().strip() == "started", process.stderr
        yield len(processes)
    finally:
        for process in processes:
            process.kill()
            process.communicate()


def created(tenant: str = "acme") -> tuple[object, list[TaskCreated]]:
    task = uuid4()
    return task, [TaskCreated(aggregate_id=task, tenant_id=tenant, title="t")]


def test_catch_up_right_after_each_commit_reaches_the_head(churn: int) -> None:
    """Append, then catch up at once, many times, while another database churns: every
    catch-up reaches the event just committed. (Before: about one catch-up in a hundred
    stopped one event short, reporting nothing held.)"""
    store = EventStore()
    rounds = 200 if churn else 50
    for n in range(rounds):
        [stored] = store.append(*created())
        result = catch_up(TenantStatsProjection())
        assert (result.position, result.held) == (stored.position, 0), f"round {n}"
    assert TenantStats.objects.get(tenant_id="acme").tasks == rounds


def test_a_real_hold_is_reported_not_waited_for(vendor: str) -> None:
    """A transaction that appended and has not committed holds the events after it: the
    catch-up returns at once (no bounded wait: the holder is known), applies what it may,
    and reports the held events. Once the holder commits, the next catch-up applies all."""
    store = EventStore()
    opened, may_commit = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def holder() -> None:
        try:
            with transaction.atomic():
                store.append(*created())
                opened.set()
                assert may_commit.wait(WAIT)
        except BaseException as exc:  # noqa: BLE001 (reported by the test thread)
            errors.append(exc)
        finally:
            connections.close_all()

    thread = threading.Thread(target=holder, daemon=True)
    if vendor == "sqlite":
        # SQLite serializes writers: an open appending transaction blocks the next append,
        # so nothing is ever held back; the catch-up reports 0.
        [stored] = store.append(*created())
        result = catch_up(TenantStatsProjection())
        assert (result.position, result.held) == (stored.position, 0)
        return
    thread.start()
    try:
        assert opened.wait(WAIT)
        [later] = store.append(*created())  # committed, but behind the open transaction
        result = catch_up(TenantStatsProjection())
        assert (result.events_applied, result.held) == (0, 1)
        out = StringIO()
        call_command("replay_projections", "tenant_stats", stdout=out)
        assert "1 committed event(s) are still held back by a transaction" in out.getvalue()
    finally:
        may_commit.set()
        thread.join(WAIT)
    assert not errors
    result = catch_up(TenantStatsProjection())
    assert (result.events_applied, result.held) == (2, 0)
    assert result.position in (later.position, later.position - 1)
    assert TenantStats.objects.get(tenant_id="acme").tasks == 2

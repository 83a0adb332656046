"""Helpers for tests: real processes against the test database, and async scenarios."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from django.db import connection, connections

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run``, then close the connections ``sync_to_async`` opened in its thread.

    Django opens one connection per thread; without this, the executor thread's connection
    is garbage-collected while still open and psycopg warns (an error under our filters).
    """

    async def main() -> T:
        try:
            return await coroutine
        finally:
            await sync_to_async(connections.close_all)()

    return asyncio.run(main())


def database_url() -> str:
    """The URL of the database the tests are using right now (the *test* database)."""
    s = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{s['NAME']}"
    user = s.get("USER") or "postgres"
    password = f":{s['PASSWORD']}" if s.get("PASSWORD") else ""
    host = s.get("HOST") or "127.0.0.1"
    port = s.get("PORT") or 5432
    return f"postgres://{user}{password}@{host}:{port}/{s['NAME']}"


def child_env(db_url: str, **extra: str) -> dict[str, str]:
    env = {**os.environ, "DATABASE_URL": db_url, "DJANGO_SETTINGS_MODULE": "tests.settings"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    env.update(extra)
    return env


def start_worker(db_url: str, module: str, *args: Any, **extra: str) -> subprocess.Popen[str]:
    """Start ``python -m <module> <args>`` as a real process on the test database."""
    return subprocess.Popen(
        [sys.executable, "-m", module, *map(str, args)],
        env=child_env(db_url, **extra),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def start_command(db_url: str, *args: str, **extra: str) -> subprocess.Popen[str]:
    """Start ``python -m django <args>`` as a real process on the test database."""
    return subprocess.Popen(
        [sys.executable, "-m", "django", *args],
        env=child_env(db_url, **extra),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def start_follower(db_url: str, *, handler_sleep: str, **extra: str) -> subprocess.Popen[str]:
    """A ``replay_projections task_board --follow`` worker with short heartbeat and poll
    (its stdout unbuffered: see `wait_until_following`)."""
    return start_command(
        db_url,
        *("replay_projections", "task_board", "--follow", "--batch-size", "5"),
        TESTAPP_HANDLER_SLEEP=handler_sleep,
        EVENTSOURCE_HEARTBEAT_INTERVAL="0.3",
        EVENTSOURCE_POLL_INTERVAL="0.1",
        PYTHONUNBUFFERED="1",
        **extra,
    )


def wait_until_following(process: subprocess.Popen[str]) -> None:
    """Wait until a ``replay_projections --follow`` worker (started with an unbuffered
    stdout, as `start_follower` does) printed its heading: from then on SIGTERM stops it
    cleanly (exit 0). Before, while Python and Django start (seconds, on a loaded
    machine), SIGTERM kills it (exit -15)."""
    assert process.stdout is not None
    line = process.stdout.readline()
    if "Following projections" not in line:
        process.kill()
        _out, err = process.communicate()
        raise AssertionError(f"the follower did not start: {line!r} {err}")


def wait_for(predicate: Callable[[], object], timeout: float = 60.0) -> bool:
    """Poll ``predicate`` until it is true (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def all_events(store: Any = None, tenant_id: str | None = None) -> list[Any]:
    """Every committed event in feed order, read once the horizon lets them all through.

    One ``read_all`` on a busy PostgreSQL cluster may hold committed events back for that
    read only (the horizon counts transactions that ended while it was computed), so a test
    that compares a read with what it committed re-reads until the read has them all (a
    time-out, not an assertion on timing).
    """
    from django_eventsource import EventStore
    from django_eventsource.models import Event
    from django_eventsource.status import horizon_holder

    store = store or EventStore()
    committed = Event.objects.all()
    if tenant_id is not None:
        committed = committed.filter(tenant_id=tenant_id)
    for _ in range(1200):
        events = list(store.read_all(tenant_id=tenant_id))
        if len(events) == committed.count():
            return events
        time.sleep(0.05)
    raise AssertionError(f"The ordering horizon held the events back: {horizon_holder()}")


def settled(store: Any = None) -> Any:
    """Wait until every committed event is readable, and return the store.

    On PostgreSQL, readers stop at the ordering horizon, which another test run sharing the
    server can hold back for a while. The library never skips past it, so a test that runs
    projections in-process waits for it first (a time-out, not an assertion on timing).
    """
    from django_eventsource import EventStore
    from django_eventsource.models import Event
    from django_eventsource.status import horizon_holder

    store = store or EventStore()
    for _ in range(1200):
        if len(store.read_all()) == Event.objects.count():
            return store
        time.sleep(0.05)
    raise AssertionError(f"The ordering horizon held the events back: {horizon_holder()}")


def drop_shadow_schemas() -> None:
    """Drop every shadow schema a shadow rebuild left (PostgreSQL): the test database's flush
    between tests empties the tables, not the schemas."""
    from django_eventsource.shadow import SCHEMA_PREFIX

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE %s", [SCHEMA_PREFIX + "%"]
        )
        for (schema,) in cursor.fetchall():
            cursor.execute(f'DROP SCHEMA "{schema}" CASCADE')

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


def start_follower(db_url: str, *, handler_sleep: str) -> subprocess.Popen[str]:
    """A ``replay_projections task_board --follow`` worker with short heartbeat and poll."""
    return start_command(
        db_url,
        *("replay_projections", "task_board", "--follow", "--batch-size", "5"),
        TESTAPP_HANDLER_SLEEP=handler_sleep,
        EVENTSOURCE_HEARTBEAT_INTERVAL="0.3",
        EVENTSOURCE_POLL_INTERVAL="0.1",
    )


def wait_for(predicate: Callable[[], object], timeout: float = 60.0) -> bool:
    """Poll ``predicate`` until it is true (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False

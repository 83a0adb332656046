"""The PL/pgSQL functions of migration 0004 (append and horizon): their search_path is
pinned, and the post_migrate guard creates them where tables were made without migrations.
On SQLite there are no functions: the guard does nothing there."""

from __future__ import annotations

from collections.abc import Iterator
from uuid import uuid4

import pytest
from django.db import connection

from django_eventsource import EventStore
from django_eventsource.backends.postgresql.backend import (
    APPEND_FUNCTION,
    HORIZON_FUNCTION,
    LOCKOUT_TABLE,
    PROBE_TABLE,
    ensure_append_function,
)
from django_eventsource.constants import EVENT_TABLE
from tests.testapp.events import Counted

pytestmark = pytest.mark.django_db(transaction=True)

ON_POSTGRES = connection.vendor == "postgresql"
PG_ONLY = "PL/pgSQL functions exist only on PostgreSQL; test_sqlite_needs_no_function is the twin"


def query(sql: str, params: list | None = None) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params or [])
        return cursor.fetchall()


def execute(sql: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute(sql)


@pytest.fixture
def shadow_schema() -> Iterator[None]:
    """A user-writable schema first on the path, with its own event table."""
    execute("DROP SCHEMA IF EXISTS es_shadow CASCADE; CREATE SCHEMA es_shadow")
    execute(f"CREATE TABLE es_shadow.{EVENT_TABLE} (LIKE public.{EVENT_TABLE} INCLUDING ALL)")
    execute("SET search_path = es_shadow, public")
    try:
        yield
    finally:
        execute("RESET search_path")
        execute("DROP SCHEMA es_shadow CASCADE")


@pytest.mark.postgres
@pytest.mark.skipif(not ON_POSTGRES, reason=PG_ONLY)
def test_the_functions_pin_their_search_path(shadow_schema: None) -> None:
    for signature in (APPEND_FUNCTION, HORIZON_FUNCTION):
        [(config,)] = query(
            "SELECT proconfig FROM pg_proc WHERE oid = to_regprocedure(%s)", [signature]
        )
        assert any(c.startswith("search_path=") for c in config or []), signature
    stream = uuid4()
    [stored] = EventStore().append(stream, [Counted(aggregate_id=stream)])
    # The append wrote the app's table, not the shadow one earlier on the caller's path.
    assert query(f"SELECT count(*) FROM es_shadow.{EVENT_TABLE}") == [(0,)]
    assert query(f"SELECT position FROM public.{EVENT_TABLE}") == [(stored.position,)]
    # And the horizon reads the app's table too (the shadow one holds a hiding stamp).
    execute(
        f"INSERT INTO es_shadow.{EVENT_TABLE} SELECT * FROM public.{EVENT_TABLE}; "
        f"UPDATE es_shadow.{EVENT_TABLE} SET stamp = stamp + 1000000000"
    )
    [(horizon,)] = query("SELECT public.django_eventsource_horizon_v1(pg_current_snapshot())")
    assert horizon is not None


def missing() -> list[bool]:
    [row] = query(
        "SELECT to_regprocedure(%s) IS NULL, to_regprocedure(%s) IS NULL, "
        "to_regclass(%s) IS NULL, to_regclass(%s) IS NULL",
        [APPEND_FUNCTION, HORIZON_FUNCTION, PROBE_TABLE, LOCKOUT_TABLE],
    )
    return list(row)


@pytest.mark.postgres
@pytest.mark.skipif(not ON_POSTGRES, reason=PG_ONLY)
def test_post_migrate_creates_the_functions_where_tables_exist_without_them() -> None:
    try:
        execute(
            f"DROP FUNCTION {APPEND_FUNCTION}; DROP FUNCTION {HORIZON_FUNCTION}; "
            f"DROP TABLE {PROBE_TABLE}; DROP TABLE {LOCKOUT_TABLE}"
        )
        assert missing() == [True, True, True, True]
        ensure_append_function(sender=None, using="default")
        assert missing() == [False, False, False, False]
        # The fence has its row: a lock-out bumps it, an append under one snapshot probes it.
        assert query(f"SELECT id, generation FROM {LOCKOUT_TABLE}") == [(1, 0)]
    finally:
        ensure_append_function(sender=None, using="default")
    stream = uuid4()
    store = EventStore()
    [stored] = store.append(stream, [Counted(aggregate_id=stream)])
    assert [e.position for e in store.read_all()] == [stored.position]


def test_sqlite_needs_no_function(vendor: str) -> None:
    if vendor != "sqlite":
        assert missing() == [False, False, False, False]
        return
    ensure_append_function(sender=None, using="default")  # nothing to create, no error
    for table in (PROBE_TABLE, LOCKOUT_TABLE):
        assert not query("SELECT name FROM sqlite_master WHERE name = %s", [table])

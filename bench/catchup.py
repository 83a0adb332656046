"""Catch-up and rebuild throughput and peak memory of a projection, against raw psycopg 3.

Run from the repository root (PostgreSQL must be reachable; the bench database is dropped and
recreated, the library's migrations and the bench app's table are created in it)::

    .venv/bin/python bench/catchup.py

Options: ``--database-url`` (default
``postgres://postgres@127.0.0.1:5432/eventsource_bench_catchup``), ``--sizes 20000,1000000``
(events per size; 10 events per aggregate, ``--events-per-aggregate``), ``--repeat 3`` (best
of N runs, for sizes up to ``--repeat-limit`` events; larger sizes run once),
``--interleave`` (store the aggregates' events round-robin instead of one stream after the
other), ``--no-sqlite`` (skip the library's SQLite figures) and ``--profile`` (cProfile of
one library catch-up of the first size, printed after the tables).

The workload: ``size / 10`` aggregates with 10 ``ItemChanged`` events each, and the
projection ``bench.catchup_app.projections.BenchItems``, which upserts one ``BenchItem`` row
per aggregate (``self.row(...)``, rows keyed by stream, like ``TaskBoard`` in the tests).

Loading: the events are written straight into ``django_eventsource_event`` with one ``COPY``
(PostgreSQL; ``stamp`` is the loading transaction's id, as one big append would give them)
or one ``executemany`` (SQLite), not through 100,000 ``EventStore.append`` calls, which would
take minutes. The rows carry what ``EventStore.append`` writes (payload JSON, versions 1..10,
``schema_version``, timestamps), and before the load the bench appends one aggregate through
``EventStore.append`` and checks that its columns match what the fast path writes. Every
event is decoded by the projection in each phase, and every phase's result is checked (row
count, versions, totals), so an event that did not decode would fail the run.

Phases, each in a fresh ``spawn`` process so that its peak memory (``VmHWM`` from
``/proc/self/status``, or ``ru_maxrss``) is its own; the time is measured inside the process,
after Django is set up and connected:

* catch-up: ``ProjectionRunner([BenchItems()]).run_until_caught_up()`` from checkpoint 0 on an
  empty read model (default batch size), as ``manage.py replay_projections`` does.
* rebuild: ``django_eventsource.rebuild.rebuild(BenchItems())`` right after the catch-up: it
  deletes the rows, resets the checkpoint and replays every event.
* raw baseline (PostgreSQL only): psycopg 3 reads the same events in pages of 500 by
  ``position`` (the page is read before its transaction writes) and, per page, one transaction
  that upserts one row per event (``executemany``, which psycopg pipelines)::

      INSERT INTO raw_items AS t (...) VALUES (...)
      ON CONFLICT (item_id) DO UPDATE SET label = excluded.label,
          total = t.total + excluded.total, changes = t.changes + 1, last_event_... = ...
      WHERE excluded.last_event_version > t.last_event_version

  and saves its checkpoint in ``raw_checkpoint`` in the same transaction.

The bench runs with ``DEBUG=False``. No timing is asserted anywhere; the verdicts printed at
the end are informational.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import multiprocessing
import os
import platform
import resource
import sqlite3
import sys
import tempfile
import time
import traceback
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # ``python bench/catchup.py``: make ``bench.catchup_app`` importable (also in children).
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg
from psycopg import sql

from bench.report import print_rows, profile_text

DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/eventsource_bench_catchup"
LIB_TABLE = "django_eventsource_event"
ITEM_TABLE = "catchup_app_benchitem"
RAW_TABLE = "raw_items"
RAW_PAGE = 500
SQLITE_ALIAS = "sqlite"
PROJECTION = "bench_items"
EVENT_TYPE = "BenchItemChanged"

#: Targets on PostgreSQL (issue 4): catch-up rate, ratio to raw, 1M rebuild time and memory.
TARGET_RATE = 20_000
TARGET_RATIO = 1.0
TARGET_REBUILD_SECONDS = 90.0
TARGET_REBUILD_EVENTS = 1_000_000
TARGET_MEMORY_MB = 300.0

RAW_DDL = f"""
CREATE TABLE {RAW_TABLE} (
    id bigserial PRIMARY KEY,
    item_id uuid NOT NULL UNIQUE,
    label varchar(100) NOT NULL,
    total bigint NOT NULL,
    changes integer NOT NULL,
    last_event_id uuid,
    last_event_version integer,
    last_event_position bigint
);
CREATE INDEX ON {RAW_TABLE} (last_event_position);
CREATE TABLE raw_checkpoint (name text PRIMARY KEY, position bigint NOT NULL);
"""
RAW_READ = (
    f"SELECT position, event_id, aggregate_id, aggregate_version, payload FROM {LIB_TABLE} "
    "WHERE position > %s ORDER BY position LIMIT %s"
)
RAW_UPSERT = (
    f"INSERT INTO {RAW_TABLE} AS t (item_id, label, total, changes, last_event_id, "
    "last_event_version, last_event_position) VALUES (%s, %s, %s, 1, %s, %s, %s) "
    "ON CONFLICT (item_id) DO UPDATE SET label = excluded.label, "
    "total = t.total + excluded.total, changes = t.changes + 1, "
    "last_event_id = excluded.last_event_id, last_event_version = excluded.last_event_version, "
    "last_event_position = excluded.last_event_position "
    "WHERE excluded.last_event_version > t.last_event_version"
)
RAW_CHECKPOINT = (
    "INSERT INTO raw_checkpoint (name, position) VALUES ('raw', %s) "
    "ON CONFLICT (name) DO UPDATE SET position = excluded.position"
)


# Configuration ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """Everything a phase process needs (picklable for the ``spawn`` start method)."""

    database_url: str
    sqlite_path: str | None

    def pg_settings(self) -> dict[str, Any]:
        import environ

        db: dict[str, Any] = environ.Env.db_url_config(self.database_url)
        if not db["ENGINE"].endswith("postgresql"):
            raise SystemExit(f"--database-url must be a PostgreSQL URL, got {db['ENGINE']}")
        return db

    def pg_connect_kwargs(self, dbname: str | None = None) -> dict[str, Any]:
        db = self.pg_settings()
        kwargs: dict[str, Any] = {"dbname": dbname or db["NAME"]}
        for key, name in (("HOST", "host"), ("PORT", "port"), ("USER", "user")):
            if db.get(key):
                kwargs[name] = str(db[key])
        if db.get("PASSWORD"):
            kwargs["password"] = db["PASSWORD"]
        return kwargs


def configure_django(config: Config, *, sqlite_default: bool = False) -> None:
    """Django with PostgreSQL as ``default`` and SQLite as ``sqlite``; or, for a SQLite
    phase process, SQLite as ``default`` (projection state and locks live in the default
    database unless the projection says otherwise)."""
    import django
    from django.conf import settings

    if settings.configured:
        return
    sqlite = {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": config.sqlite_path,
        # As in tests/settings.py: wait for the lock, take it at BEGIN.
        "OPTIONS": {"timeout": 30, "transaction_mode": "IMMEDIATE"},
    }
    databases: dict[str, Any]
    if sqlite_default:
        databases = {"default": sqlite}
    else:
        databases = {"default": config.pg_settings()}
        if config.sqlite_path:
            databases[SQLITE_ALIAS] = sqlite
    settings.configure(
        DEBUG=False,
        SECRET_KEY="django-eventsource-bench",
        USE_TZ=True,
        TIME_ZONE="UTC",
        INSTALLED_APPS=["django_eventsource", "bench.catchup_app"],
        DATABASES=databases,
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        EVENTSOURCE={"AUTODISCOVER_MODULE": None},
    )
    django.setup()


def recreate_database(config: Config) -> None:
    name = config.pg_settings()["NAME"]
    with psycopg.connect(**config.pg_connect_kwargs("postgres"), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def prepare_schema(config: Config) -> None:
    from django.core.management import call_command

    call_command("migrate", database="default", run_syncdb=True, verbosity=0)
    with psycopg.connect(**config.pg_connect_kwargs(), autocommit=True) as conn:
        conn.execute(RAW_DDL)
    if config.sqlite_path:
        call_command("migrate", database=SQLITE_ALIAS, run_syncdb=True, verbosity=0)


# Loading events ---------------------------------------------------------------------------


def event_rows(aggregates: int, per_aggregate: int, interleave: bool) -> Any:
    """(event_id, aggregate_id, version, payload json) in storage order."""
    ids = [uuid.uuid4() for _ in range(aggregates)]
    if interleave:
        order = ((a, v) for v in range(1, per_aggregate + 1) for a in range(aggregates))
    else:
        order = ((a, v) for a in range(aggregates) for v in range(1, per_aggregate + 1))
    for a, v in order:
        payload = json.dumps({"label": f"item-{v}", "n": v}, separators=(",", ":"))
        yield uuid.uuid4(), ids[a], v, payload


def check_fast_path(config: Config, alias: str) -> None:
    """Append one aggregate through ``EventStore.append`` and compare its stored columns
    with what the fast load writes; then remove it (outside the ORM's append-only guard)."""
    from django.db import connections

    from bench.catchup_app.projections import ItemChanged
    from django_eventsource import EventStore

    aggregate_id = uuid.uuid4()
    store = EventStore(using=alias, inline_projections=False)
    store.append(
        aggregate_id,
        [ItemChanged(aggregate_id=aggregate_id, label="item-1", n=1)],
        expected_version=0,
    )
    with connections[alias].cursor() as cursor:
        cursor.execute(
            f"SELECT event_type, schema_version, tenant_id, aggregate_type, aggregate_version, "
            f"payload, metadata, correlation_id, causation_id FROM {LIB_TABLE}"
        )
        rows = cursor.fetchall()
        cursor.execute(f"DELETE FROM {LIB_TABLE}")
        if alias == SQLITE_ALIAS:
            cursor.execute("DELETE FROM sqlite_sequence WHERE name = %s", [LIB_TABLE])
        else:
            cursor.execute(f"ALTER SEQUENCE {LIB_TABLE}_position_seq RESTART WITH 1")
    payload, metadata = rows[0][5], rows[0][6]
    if isinstance(payload, str):
        payload, metadata = json.loads(payload), json.loads(metadata)
    got = (*rows[0][:5], payload, metadata, *rows[0][7:])
    expected = (EVENT_TYPE, 1, "", "BenchItem", 1, {"label": "item-1", "n": 1}, {}, None, None)
    if len(rows) != 1 or got != expected:
        raise AssertionError(f"EventStore.append wrote {rows}, the fast path writes {expected}")


def load_postgresql(config: Config, aggregates: int, per_aggregate: int, interleave: bool) -> None:
    """One COPY into the event table; ``stamp`` is the loading transaction's id."""
    now = datetime.now(UTC)
    with psycopg.connect(**config.pg_connect_kwargs()) as conn:
        with conn.cursor() as cursor:
            cursor.execute(f"TRUNCATE {LIB_TABLE} RESTART IDENTITY")
            row = cursor.execute("SELECT pg_current_xact_id()::text::bigint").fetchone()
            stamp = row[0] if row else 0
            columns = (
                "stamp, event_id, event_type, schema_version, tenant_id, aggregate_id, "
                "aggregate_type, aggregate_version, payload, metadata, occurred_at, recorded_at"
            )
            with cursor.copy(f"COPY {LIB_TABLE} ({columns}) FROM STDIN") as copy:
                for event_id, aggregate_id, version, payload in event_rows(
                    aggregates, per_aggregate, interleave
                ):
                    copy.write_row(
                        (
                            stamp,
                            event_id,
                            EVENT_TYPE,
                            1,
                            "",
                            aggregate_id,
                            "BenchItem",
                            version,
                            payload,
                            "{}",
                            now,
                            now,
                        )
                    )
        conn.commit()
    with psycopg.connect(**config.pg_connect_kwargs(), autocommit=True) as conn:
        conn.execute(f"VACUUM ANALYZE {LIB_TABLE}")


def load_sqlite(path: str, aggregates: int, per_aggregate: int, interleave: bool) -> None:
    now = datetime.now(UTC).replace(tzinfo=None).isoformat(sep=" ")
    conn = sqlite3.connect(path)
    try:
        conn.execute(f"DELETE FROM {LIB_TABLE}")
        conn.execute("DELETE FROM sqlite_sequence WHERE name = ?", [LIB_TABLE])
        conn.executemany(
            f"INSERT INTO {LIB_TABLE} (stamp, event_id, event_type, schema_version, tenant_id, "
            "aggregate_id, aggregate_type, aggregate_version, payload, metadata, occurred_at, "
            "recorded_at) VALUES (0, ?, ?, 1, '', ?, 'BenchItem', ?, ?, '{}', ?, ?)",
            (
                (event_id.hex, EVENT_TYPE, aggregate_id.hex, version, payload, now, now)
                for event_id, aggregate_id, version, payload in event_rows(
                    aggregates, per_aggregate, interleave
                )
            ),
        )
        conn.commit()
        conn.execute("ANALYZE")
    finally:
        conn.close()


# The measured phases (each in its own process) ---------------------------------------------


def _memory_kb(key: str) -> int:
    """``VmHWM`` (peak) or ``VmRSS`` (now) of this process, in kB."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux


def _phase_process(config: Config, phase: str, alias: str, profile: bool, results: Any) -> None:
    """Run one phase and report (seconds, events, rss before, peak rss, profile text)."""
    try:
        configure_django(config, sqlite_default=alias == SQLITE_ALIAS)
        alias = "default"
        from django.db import connections

        from bench.catchup_app.projections import BenchItems
        from django_eventsource import EventStore
        from django_eventsource.rebuild import rebuild
        from django_eventsource.runner import ProjectionRunner

        raw_conn = None
        if phase == "raw":
            raw_conn = psycopg.connect(**config.pg_connect_kwargs(), autocommit=True)
        else:
            connections[alias].ensure_connection()
        store = EventStore(using=alias)
        projection = BenchItems()

        def run() -> int:
            if phase == "catch-up":
                runner = ProjectionRunner([projection], event_store=store)
                return runner.run_until_caught_up().events_applied
            if phase == "rebuild":
                return rebuild(projection, event_store=store).events_applied
            assert raw_conn is not None
            return raw_catch_up(raw_conn)

        before = _memory_kb("VmRSS")
        profiler = cProfile.Profile() if profile else None
        cpu = time.process_time()
        start = time.perf_counter()
        events = profiler.runcall(run) if profiler else run()
        seconds = time.perf_counter() - start
        cpu = time.process_time() - cpu
        peak = _memory_kb("VmHWM")
        text = ""
        if profiler is not None:
            text = profile_text(profiler, f"library {phase} ({alias})", 30)
        if raw_conn is not None:
            raw_conn.close()
        connections.close_all()
        results.put(("ok", seconds, events, before, peak, cpu, text))
    except BaseException:
        results.put(("error", traceback.format_exc(), 0, 0, 0, 0.0, ""))
        raise


def raw_catch_up(conn: psycopg.Connection[Any]) -> int:
    """The baseline: pages of 500 by position, one transaction of per-event upserts each."""
    position = 0
    count = 0
    with conn.cursor() as cursor:
        while True:
            cursor.execute(RAW_READ, (position, RAW_PAGE))
            rows = cursor.fetchall()
            if not rows:
                return count
            params = [
                (aggregate_id, payload["label"], payload["n"], event_id, version, pos)
                for pos, event_id, aggregate_id, version, payload in rows
            ]
            position = rows[-1][0]
            with conn.transaction():
                cursor.executemany(RAW_UPSERT, params)
                cursor.execute(RAW_CHECKPOINT, (position,))
            count += len(rows)


def run_phase(config: Config, phase: str, alias: str, profile: bool = False) -> Result:
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    process = ctx.Process(target=_phase_process, args=(config, phase, alias, profile, results))
    process.start()
    status, seconds, events, before, peak, cpu, text = results.get(timeout=3600)
    process.join()
    if status != "ok":
        raise RuntimeError(f"phase {phase} ({alias}) failed:\n{seconds}")
    return Result(seconds, events, before, peak, cpu, text)


@dataclass
class Result:
    seconds: float
    events: int
    rss_before_kb: int
    peak_kb: int
    #: CPU seconds of the phase's process (the client side; the database's CPU excluded).
    cpu_seconds: float
    profile: str = ""

    @property
    def rate(self) -> float:
        return self.events / self.seconds

    @property
    def cpu_us(self) -> float:
        return self.cpu_seconds / self.events * 1e6


# Bookkeeping ------------------------------------------------------------------------------


class Admin:
    """Resets and checks between phases (never timed)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.pg = psycopg.connect(**config.pg_connect_kwargs(), autocommit=True)

    def reset(self, alias: str) -> None:
        """Empty the read models and forget the checkpoints (the next catch-up starts at 0)."""
        if alias == SQLITE_ALIAS:
            assert self.config.sqlite_path
            conn = sqlite3.connect(self.config.sqlite_path)
            conn.execute(f"DELETE FROM {ITEM_TABLE}")
            conn.execute("DELETE FROM django_eventsource_projectionstate")
            conn.commit()
            conn.close()
            return
        self.pg.execute(f"TRUNCATE {ITEM_TABLE}, {RAW_TABLE}, raw_checkpoint")
        self.pg.execute("DELETE FROM django_eventsource_projectionstate")
        self.pg.execute("CHECKPOINT")

    def check(self, alias: str, table: str, aggregates: int, per_aggregate: int) -> None:
        """One row per aggregate, every event applied once, in order."""
        query = (
            f"SELECT COUNT(*), SUM(changes), SUM(total), MIN(last_event_version), "
            f"MAX(last_event_version), MIN(label), MAX(label) FROM {table}"
        )
        if alias == SQLITE_ALIAS:
            assert self.config.sqlite_path
            conn = sqlite3.connect(self.config.sqlite_path)
            row = conn.execute(query).fetchone()
            conn.close()
        else:
            row = self.pg.execute(query).fetchone()
        label = f"item-{per_aggregate}"
        total = aggregates * per_aggregate * (per_aggregate + 1) // 2
        expected = (
            aggregates,
            aggregates * per_aggregate,
            total,
            per_aggregate,
            per_aggregate,
            label,
            label,
        )
        got = (
            None
            if row is None
            else tuple(int(v) if k < 5 and v is not None else v for k, v in enumerate(row))
        )
        if got != expected:
            raise AssertionError(f"{table} ({alias}): expected {expected}, got {row}")


@dataclass
class SizeResults:
    events: int
    catch_up: list[Result] = field(default_factory=list)
    rebuild: list[Result] = field(default_factory=list)
    raw: list[Result] = field(default_factory=list)
    sqlite_catch_up: list[Result] = field(default_factory=list)
    sqlite_rebuild: list[Result] = field(default_factory=list)
    load_seconds: float = 0.0


def best(results: list[Result]) -> Result | None:
    return max(results, key=lambda r: r.rate) if results else None


def fmt_rate(result: Result | None) -> str:
    return f"{result.rate:,.0f}" if result else "-"


def fmt_mb(result: Result | None) -> str:
    if result is None:
        return "-"
    growth = (result.peak_kb - result.rss_before_kb) / 1024
    return f"{result.peak_kb / 1024:,.0f} MB (+{growth:,.0f})"


def fmt_seconds(result: Result | None) -> str:
    return f"{result.seconds:,.1f} s" if result else "-"


# Output -----------------------------------------------------------------------------------


def print_environment(admin: Admin, args: argparse.Namespace) -> None:
    import django
    import pydantic

    settings_rows = admin.pg.execute(
        "SELECT name, setting FROM pg_settings WHERE name IN "
        "('synchronous_commit', 'fsync', 'shared_buffers') ORDER BY name"
    ).fetchall()
    server = admin.pg.execute("SHOW server_version").fetchone()
    from django_eventsource.conf import get_settings

    print(
        f"Python {platform.python_version()}, Django {django.get_version()}, "
        f"psycopg {psycopg.__version__} ({psycopg.pq.__impl__}), pydantic {pydantic.VERSION}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}"
    )
    print(
        f"PostgreSQL {server[0] if server else '?'} "
        f"({', '.join(f'{n}={s}' for n, s in settings_rows)})"
    )
    print(
        f"Sizes: {', '.join(f'{s:,}' for s in args.sizes)} events, "
        f"{args.events_per_aggregate} per aggregate, "
        f"{'interleaved round-robin' if args.interleave else 'one stream after the other'}; "
        f"library batch size {get_settings().batch_size} (default), raw pages of {RAW_PAGE}"
    )
    print(
        f"Best of {args.repeat} runs for sizes up to {args.repeat_limit:,} events, one run "
        "above; each phase in a fresh process; memory = peak RSS (VmHWM) and its growth "
        "during the phase"
    )
    print()


def print_tables(sizes: list[SizeResults], with_sqlite: bool) -> None:
    headers = [
        "events",
        "catch-up ev/s",
        "raw ev/s",
        "lib/raw",
        "catch-up peak",
        "rebuild ev/s",
        "rebuild time",
        "rebuild peak",
        "raw peak",
    ]
    rows = []
    for size in sizes:
        catch_up, raw, rebuilt = best(size.catch_up), best(size.raw), best(size.rebuild)
        ratio = catch_up.rate / raw.rate if catch_up and raw else None
        rows.append(
            [
                f"{size.events:,}",
                fmt_rate(catch_up),
                fmt_rate(raw),
                f"{ratio:.2f}x" if ratio else "-",
                fmt_mb(catch_up),
                fmt_rate(rebuilt),
                fmt_seconds(rebuilt),
                fmt_mb(rebuilt),
                fmt_mb(raw),
            ]
        )
    print("PostgreSQL")
    print_rows(headers, rows)
    if with_sqlite:
        print("\nSQLite (library only)")
        rows = []
        for size in sizes:
            catch_up, rebuilt = best(size.sqlite_catch_up), best(size.sqlite_rebuild)
            rows.append(
                [
                    f"{size.events:,}",
                    fmt_rate(catch_up),
                    fmt_mb(catch_up),
                    fmt_rate(rebuilt),
                    fmt_seconds(rebuilt),
                    fmt_mb(rebuilt),
                ]
            )
        print_rows(
            [
                "events",
                "catch-up ev/s",
                "catch-up peak",
                "rebuild ev/s",
                "rebuild time",
                "rebuild peak",
            ],
            rows,
        )
    print()
    for size in sizes:
        catch_up, raw, rebuilt = best(size.catch_up), best(size.raw), best(size.rebuild)
        if catch_up:
            verdict = "met" if catch_up.rate >= TARGET_RATE else "NOT met"
            print(
                f"Target catch-up >= {TARGET_RATE:,} events/s ({size.events:,} events): "
                f"{verdict} ({catch_up.rate:,.0f})"
            )
        if catch_up and raw:
            ratio = catch_up.rate / raw.rate
            verdict = "met" if ratio >= TARGET_RATIO else "NOT met"
            print(
                f"Target catch-up >= {TARGET_RATIO:.1f}x raw ({size.events:,} events): "
                f"{verdict} ({ratio:.2f}x)"
            )
        if rebuilt and size.events >= TARGET_REBUILD_EVENTS:
            verdict = "met" if rebuilt.seconds < TARGET_REBUILD_SECONDS else "NOT met"
            print(
                f"Target rebuild of {size.events:,} events < {TARGET_REBUILD_SECONDS:.0f} s: "
                f"{verdict} ({rebuilt.seconds:.1f} s)"
            )
            peak = max(r.peak_kb for r in (*size.rebuild, *size.catch_up)) / 1024
            verdict = "met" if peak < TARGET_MEMORY_MB else "NOT met"
            print(
                f"Target peak memory < {TARGET_MEMORY_MB:.0f} MB ({size.events:,} events, "
                f"catch-up and rebuild): {verdict} ({peak:.0f} MB)"
            )
    print("\nClient-side CPU per event, lowest of the runs (the phase's process; the database's")
    print("own CPU excluded; steadier than events/s on a busy machine):")
    cpu_rows = []
    for size in sizes:
        row = [f"{size.events:,}"]
        for name in ("catch_up", "raw", "rebuild", "sqlite_catch_up", "sqlite_rebuild"):
            runs = getattr(size, name)
            row.append(f"{min(r.cpu_us for r in runs):.1f} us" if runs else "-")
        cpu_rows.append(row)
    print_rows(
        ["events", "catch-up", "raw", "rebuild", "SQLite catch-up", "SQLite rebuild"], cpu_rows
    )
    print("\nAll runs (events/s):")
    for size in sizes:
        for name in ("catch_up", "raw", "rebuild", "sqlite_catch_up", "sqlite_rebuild"):
            runs: list[Result] = getattr(size, name)
            if runs:
                rates = ", ".join(f"{r.rate:,.0f}" for r in runs)
                print(f"  {size.events:,} / {name.replace('_', '-')}: {rates}")
        print(f"  {size.events:,} / load (untimed phases' setup): {size.load_seconds:.1f} s")


# Main -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--database-url", default=DEFAULT_URL, help=f"default: {DEFAULT_URL}")
    parser.add_argument(
        "--sizes",
        default="20000,1000000",
        type=lambda s: [int(x) for x in s.split(",") if x],
        help="comma-separated event counts (default 20000,1000000)",
    )
    parser.add_argument("--events-per-aggregate", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3, help="runs per phase (best is kept)")
    parser.add_argument(
        "--repeat-limit",
        type=int,
        default=100_000,
        help="sizes above this many events run once (default 100000)",
    )
    parser.add_argument(
        "--interleave", action="store_true", help="store the streams' events round-robin"
    )
    parser.add_argument("--no-sqlite", action="store_true", help="skip the SQLite figures")
    parser.add_argument(
        "--profile", action="store_true", help="cProfile one library catch-up (first size)"
    )
    args = parser.parse_args(argv)
    if min(args.events_per_aggregate, args.repeat, *args.sizes) < 1:
        parser.error("--sizes, --events-per-aggregate and --repeat must be >= 1")
    for size in args.sizes:
        if size % args.events_per_aggregate:
            parser.error(f"size {size} is not a multiple of --events-per-aggregate")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tmpdir = tempfile.TemporaryDirectory(prefix="eventsource-bench-catchup-")
    sqlite_path = None if args.no_sqlite else str(Path(tmpdir.name) / "bench.sqlite3")
    config = Config(args.database_url, sqlite_path)
    recreate_database(config)
    configure_django(config)
    prepare_schema(config)
    check_fast_path(config, "default")
    if sqlite_path:
        check_fast_path(config, SQLITE_ALIAS)
    from django.db import connections

    connections.close_all()
    admin = Admin(config)
    print_environment(admin, args)
    per = args.events_per_aggregate
    all_sizes: list[SizeResults] = []
    profiles: list[str] = []
    for index, events in enumerate(args.sizes):
        aggregates = events // per
        size = SizeResults(events)
        all_sizes.append(size)
        print(f"{events:,} events: loading ...", flush=True)
        start = time.perf_counter()
        load_postgresql(config, aggregates, per, args.interleave)
        if sqlite_path:
            load_sqlite(sqlite_path, aggregates, per, args.interleave)
        size.load_seconds = time.perf_counter() - start
        repeat = args.repeat if events <= args.repeat_limit else 1
        for run in range(repeat):
            print(f"{events:,} events: run {run + 1}/{repeat} ...", flush=True)
            # Alternate which side goes first so that drift (autovacuum, caches) cancels out.
            sides = ("library", "raw") if run % 2 == 0 else ("raw", "library")
            for side in sides:
                admin.reset("default")
                if side == "raw":
                    size.raw.append(run_phase(config, "raw", "default"))
                    admin.check("default", RAW_TABLE, aggregates, per)
                    continue
                size.catch_up.append(run_phase(config, "catch-up", "default"))
                admin.check("default", ITEM_TABLE, aggregates, per)
                size.rebuild.append(run_phase(config, "rebuild", "default"))
                admin.check("default", ITEM_TABLE, aggregates, per)
            if sqlite_path:
                admin.reset(SQLITE_ALIAS)
                size.sqlite_catch_up.append(run_phase(config, "catch-up", SQLITE_ALIAS))
                admin.check(SQLITE_ALIAS, ITEM_TABLE, aggregates, per)
                size.sqlite_rebuild.append(run_phase(config, "rebuild", SQLITE_ALIAS))
                admin.check(SQLITE_ALIAS, ITEM_TABLE, aggregates, per)
        if args.profile and index == 0:
            admin.reset("default")
            profiles.append(run_phase(config, "catch-up", "default", profile=True).profile)
            admin.check("default", ITEM_TABLE, aggregates, per)

    print()
    print_tables(all_sizes, with_sqlite=bool(sqlite_path))
    for text in profiles:
        print(text)
    admin.pg.close()
    tmpdir.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())

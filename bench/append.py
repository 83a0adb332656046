"""Append and read_all throughput of the event store against a raw psycopg 3 baseline.

Run from the repository root (PostgreSQL must be reachable; the bench database is dropped and
recreated, the library's migrations are applied to it)::

    .venv/bin/python bench/append.py

Options: ``--database-url`` (default ``postgres://postgres@127.0.0.1:5432/eventsource_bench``),
``--aggregates 2000``, ``--events 10``, ``--writers 4``, ``--repeat 3`` (best of N runs),
``--sqlite`` (also the library's figures on SQLite, in a temporary file),
``--server-side-binding`` (library connection with Django's OPTIONS
``server_side_binding=True, prepare_threshold=5`` instead of Django's defaults),
``--no-analyze`` (skip the ANALYZE before the reads) and ``--profile`` (cProfile of the
library's append and read paths, printed after the table).

Phases, each from an empty table (TRUNCATE ... RESTART IDENTITY, then CHECKPOINT); the two
sides alternate which goes first from one run to the next:

* append, 1 writer: ``aggregates`` appends of ``events`` new events (``expected_version=0``).
  Library: ``EventStore.append``, the pydantic events built inside the timed loop. Raw: the
  parameter rows (uuid4 ids, ``Jsonb`` payload) built inside the timed loop, then one
  multi-row ``INSERT ... VALUES`` per aggregate in autocommit mode (its own transaction, as
  the library's single-statement append is outside ``transaction.atomic``), the fastest of
  the simple approaches (psycopg caches and, after 5 runs, prepares it).
* append, N writers: the same work split over ``writers`` processes (``spawn``), which connect
  first and then start together at a barrier; events/s is all events over (last end - first
  start).
* read_all: every event read back in pages of 1,000, ``READS_PER_RUN`` times per run, after an
  untimed ANALYZE of both tables. Library: ``read_all(from_position=..., limit=1000)``
  resuming from ``last_position``; typed events are *not* decoded (decoding is lazy). Raw:
  keyset pagination ``WHERE position > %s ORDER BY position LIMIT 1000``, jsonb parsed as
  psycopg does by default.
* read_all + decode: the same, also touching ``.event`` (pydantic validation) on each event;
  compared with the same raw reads (the raw side has nothing to decode).

The client-side CPU per event (``time.process_time`` of this process) is printed for the
in-process phases, to tell Python overhead from database time on a noisy machine.
No timing is asserted anywhere; the verdicts printed at the end are informational.
"""

from __future__ import annotations

import argparse
import cProfile
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # ``python bench/append.py``: make ``bench.report`` importable (also in children).
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from bench.report import print_rows, profile_text
from django_eventsource import DomainEvent, EventStore, register_event

DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/eventsource_bench"
PAGE = 1000
LIB_TABLE = "django_eventsource_event"
RAW_TABLE = "raw_events"
EVENT_TYPE = "BenchEvent"
#: Issue 19's targets, as ratios within one run: the library's append against the raw
#: multi-row INSERT (alone and inside ``atomic()``), its read against the raw read, and its
#: read + decode against its own undecoded read.
TARGET_APPEND = 0.6
TARGET_READ = 0.8
TARGET_DECODE = 0.6
#: Reads are cheap and noisy: each run reads everything this many times per side.
READS_PER_RUN = 3
SQLITE_ALIAS = "sqlite"

RAW_DDL = f"""
CREATE TABLE {RAW_TABLE} (
    position bigserial PRIMARY KEY,
    event_id uuid NOT NULL,
    aggregate_id uuid NOT NULL,
    version int NOT NULL,
    event_type text NOT NULL,
    payload jsonb NOT NULL,
    UNIQUE (aggregate_id, version)
)
"""
RAW_READ = (
    f"SELECT position, event_id, aggregate_id, version, event_type, payload FROM {RAW_TABLE} "
    "WHERE position > %s ORDER BY position LIMIT %s"
)


@register_event
class BenchEvent(DomainEvent):
    event_type: str = EVENT_TYPE
    aggregate_type: str = "Bench"
    n: int


# Configuration ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """Everything a writer process needs (picklable for the ``spawn`` start method)."""

    database_url: str
    sqlite_path: str | None
    server_side_binding: bool
    events: int

    def pg_settings(self) -> dict[str, Any]:
        import environ

        db: dict[str, Any] = environ.Env.db_url_config(self.database_url)
        if not db["ENGINE"].endswith("postgresql"):
            raise SystemExit(f"--database-url must be a PostgreSQL URL, got {db['ENGINE']}")
        if self.server_side_binding:
            db.setdefault("OPTIONS", {}).update(
                {"server_side_binding": True, "prepare_threshold": 5}
            )
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


def configure_django(config: Config) -> None:
    import django
    from django.conf import settings

    if settings.configured:
        return
    databases: dict[str, Any] = {"default": config.pg_settings()}
    if config.sqlite_path:
        databases[SQLITE_ALIAS] = {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": config.sqlite_path,
            # As in tests/settings.py: wait for the lock, take it at BEGIN.
            "OPTIONS": {"timeout": 30, "transaction_mode": "IMMEDIATE"},
        }
    settings.configure(
        DEBUG=False,
        SECRET_KEY="django-eventsource-bench",
        USE_TZ=True,
        TIME_ZONE="UTC",
        INSTALLED_APPS=["django_eventsource"],
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

    call_command("migrate", database="default", verbosity=0)
    with psycopg.connect(**config.pg_connect_kwargs(), autocommit=True) as conn:
        conn.execute(RAW_DDL)
    if config.sqlite_path:
        call_command("migrate", database=SQLITE_ALIAS, verbosity=0)


# The measured work ------------------------------------------------------------------------


def library_append(alias: str, aggregates: int, events: int, atomic: bool = False) -> None:
    """``aggregates`` appends of ``events`` new events each; events are built in the loop.

    With ``atomic``, each append runs inside its own ``transaction.atomic()`` block, as in a
    view under ``ATOMIC_REQUESTS`` (BEGIN and COMMIT round trips around the statement).
    """
    from django.db import transaction

    store = EventStore(using=alias)
    append = store.append
    for _ in range(aggregates):
        aggregate_id = uuid.uuid4()
        events_ = [BenchEvent(aggregate_id=aggregate_id, n=i) for i in range(events)]
        if atomic:
            with transaction.atomic(using=alias):
                append(aggregate_id, events_, expected_version=0)
        else:
            append(aggregate_id, events_, expected_version=0)


def raw_insert_sql(events: int) -> str:
    row = "(%s, %s, %s, %s, %s)"
    return (
        f"INSERT INTO {RAW_TABLE} (event_id, aggregate_id, version, event_type, payload) "
        f"VALUES {', '.join([row] * events)}"
    )


def raw_append(
    conn: psycopg.Connection[Any], aggregates: int, events: int, explicit: bool = False
) -> None:
    """The baseline: one transaction per aggregate, one multi-row INSERT of its rows.

    ``conn`` is in autocommit mode, so the single INSERT is its own transaction, as the
    library's append is when nothing else must share its transaction (no enclosing
    ``atomic``, inline projection or hook). With ``explicit``, ``conn.transaction()`` sends
    BEGIN and COMMIT around it (two more round trips), as the library does inside
    ``transaction.atomic``. psycopg prepares the statement after 5 executions.
    """
    query = raw_insert_sql(events)
    uuid4 = uuid.uuid4
    with conn.cursor() as cursor:
        for _ in range(aggregates):
            aggregate_id = uuid4()
            params: list[Any] = []
            for i in range(events):
                params += (uuid4(), aggregate_id, i + 1, EVENT_TYPE, Jsonb({"n": i}))
            if explicit:
                with conn.transaction():
                    cursor.execute(query, params)
            else:
                cursor.execute(query, params)


def library_read(alias: str, decode: bool) -> int:
    """Page through every event with ``read_all(limit=1000)``; returns the number read."""
    store = EventStore(using=alias)
    position = 0
    count = 0
    while True:
        page = store.read_all(from_position=position, limit=PAGE)
        if decode:
            for stored in page.events:
                stored.event  # noqa: B018  (decodes the typed event)
        count += len(page.events)
        position = page.last_position
        if not page.limited:
            return count


def raw_read(conn: psycopg.Connection[Any]) -> int:
    position = 0
    count = 0
    with conn.cursor() as cursor:
        while True:
            cursor.execute(RAW_READ, (position, PAGE))
            rows = cursor.fetchall()
            count += len(rows)
            if len(rows) < PAGE:
                return count
            position = rows[-1][0]


@dataclass
class Runs:
    """The measurements of one side of one phase: events/s and client CPU per event."""

    rates: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)
    server_us: list[float] = field(default_factory=list)

    def measure(
        self, function: Callable[[], Any], events: int, backend_pid: int | None = None
    ) -> Any:
        """Run ``function`` once, recording its wall-clock rate and this process's CPU.

        With ``backend_pid``, also the CPU time of that PostgreSQL backend process (when the
        server runs on this machine and its ``/proc`` entry is readable).
        """
        server = backend_cpu(backend_pid)
        cpu = time.process_time()
        start = time.perf_counter()
        result = function()
        seconds = time.perf_counter() - start
        self.rates.append(events / seconds)
        self.cpu_us.append((time.process_time() - cpu) / events * 1e6)
        after = backend_cpu(backend_pid)
        if server is not None and after is not None:
            self.server_us.append((after - server) / events * 1e6)
        return result

    @property
    def best(self) -> float | None:
        return max(self.rates) if self.rates else None


def backend_cpu(pid: int | None) -> float | None:
    """Seconds of CPU a local PostgreSQL backend has used (None when it cannot be read)."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


def library_backend_pid(alias: str) -> int:
    from django.db import connections

    connection = connections[alias]
    connection.ensure_connection()
    return int(connection.connection.info.backend_pid)


# Concurrent writers -----------------------------------------------------------------------


def _writer_process(
    config: Config, kind: str, alias: str, aggregates: int, barrier: Any, results: Any
) -> None:
    """One writer process: connect, wait for the others, append, report (start, end)."""
    try:
        conn: psycopg.Connection[Any] | None = None
        if kind == "library":
            configure_django(config)
            from django.db import connections

            connections[alias].ensure_connection()
        else:
            conn = psycopg.connect(**config.pg_connect_kwargs(), autocommit=True)
        barrier.wait(timeout=120)
        start = time.perf_counter()  # CLOCK_MONOTONIC: comparable across processes
        if conn is None:
            library_append(alias, aggregates, config.events)
        else:
            raw_append(conn, aggregates, config.events)
            conn.close()
        results.put(("ok", start, time.perf_counter()))
    except BaseException:
        results.put(("error", traceback.format_exc(), 0.0))
        barrier.abort()
        raise


def concurrent_append(
    config: Config, kind: str, alias: str, aggregates: int, writers: int
) -> float:
    """Seconds from the first writer's start to the last writer's end."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(writers)
    results = ctx.Queue()
    shares = [
        aggregates // writers + (1 if w < aggregates % writers else 0) for w in range(writers)
    ]
    processes = [
        ctx.Process(target=_writer_process, args=(config, kind, alias, share, barrier, results))
        for share in shares
    ]
    for process in processes:
        process.start()
    reports = [results.get(timeout=600) for _ in processes]
    for process in processes:
        process.join()
    errors = [r[1] for r in reports if r[0] == "error"]
    if errors:
        raise RuntimeError("a writer process failed:\n" + "\n".join(errors))
    return max(r[2] for r in reports) - min(r[1] for r in reports)


# Bookkeeping ------------------------------------------------------------------------------


class Admin:
    """Truncation, statistics and checks between phases (never timed)."""

    def __init__(self, config: Config, aggregates: int, events: int) -> None:
        self.pg = psycopg.connect(**config.pg_connect_kwargs(), autocommit=True)
        self.aggregates = aggregates
        self.events = events

    def reset(self, table: str) -> None:
        self.pg.execute(f"TRUNCATE {table} RESTART IDENTITY")
        self.pg.execute("CHECKPOINT")

    def wait_visible(self, timeout: float = 60.0) -> None:
        """Wait (untimed) until readers can see every appended event.

        A transaction that is still running anywhere in the cluster (another client's, on a
        shared machine) holds the library's read horizon back; reading before it ends would
        return fewer events than were appended.
        """
        query = (
            f"SELECT COUNT(*) FROM {LIB_TABLE} "
            "WHERE stamp < pg_snapshot_xmin(pg_current_snapshot())::text::bigint"
        )
        deadline = time.monotonic() + timeout
        while True:
            row = self.pg.execute(query).fetchone()
            if row is not None and row[0] >= self.aggregates * self.events:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"only {row} events became visible in {timeout}s")
            time.sleep(0.05)

    def analyze(self, table: str) -> None:
        self.pg.execute(f"ANALYZE {table}")

    def reset_sqlite(self) -> None:
        from django.db import connections

        with connections[SQLITE_ALIAS].cursor() as cursor:
            cursor.execute(f"DELETE FROM {LIB_TABLE}")
            cursor.execute("DELETE FROM sqlite_sequence WHERE name = %s", [LIB_TABLE])

    def check(self, alias: str | None, table: str) -> None:
        """Every aggregate got versions 1..events: the appends really happened."""
        version = "aggregate_version" if table == LIB_TABLE else "version"
        query = (
            f"SELECT COUNT(*), COUNT(DISTINCT aggregate_id), MIN({version}), MAX({version}) "
            f"FROM {table}"
        )
        if alias is None:
            row = self.pg.execute(query).fetchone()
        else:
            from django.db import connections

            with connections[alias].cursor() as cursor:
                cursor.execute(query)
                row = cursor.fetchone()
        expected = (self.aggregates * self.events, self.aggregates, 1, self.events)
        if row is None or tuple(row) != expected:
            raise AssertionError(
                f"{table}: expected (rows, aggregates, versions) {expected}, {row}"
            )


@dataclass
class Phase:
    name: str
    target: float | None = None
    #: Whether the phase runs in this process (so that its client CPU is meaningful).
    in_process: bool = True
    #: The phase whose *library* figure the target compares with (None: this phase's raw).
    baseline: Phase | None = None
    library: Runs = field(default_factory=Runs)
    raw: Runs = field(default_factory=Runs)
    sqlite: Runs = field(default_factory=Runs)

    @property
    def ratio(self) -> float | None:
        library, raw = self.library.best, self.raw.best
        return library / raw if library and raw else None

    @property
    def target_ratio(self) -> float | None:
        """The ratio the target is about: against raw, or against the baseline's library."""
        if self.baseline is None:
            return self.ratio
        library, base = self.library.best, self.baseline.library.best
        return library / base if library and base else None

    @property
    def paired_ratios(self) -> list[float]:
        """The target's ratio within each pair of measurements taken together: the library
        and raw sides of one run, or one undecoded read and the decode pass right after it.
        On a busy machine their median is steadier than the ratio of two best runs, which
        may come from different moments."""
        library = self.library.rates
        base = self.raw.rates if self.baseline is None else self.baseline.library.rates
        return [a / b for a, b in zip(library, base, strict=False) if b]

    @property
    def target_text(self) -> str:
        against = "raw" if self.baseline is None else f"library {self.baseline.name}"
        return f">= {self.target:.1f}x {against}" if self.target else "-"


def fmt_rate(value: float | None) -> str:
    return f"{value:,.0f}" if value else "-"


def print_environment(config: Config, admin: Admin, args: argparse.Namespace) -> None:
    import django
    import pydantic

    settings_rows = admin.pg.execute(
        "SELECT name, setting FROM pg_settings WHERE name IN "
        "('synchronous_commit', 'fsync', 'shared_buffers', 'wal_level') ORDER BY name"
    ).fetchall()
    server = admin.pg.execute("SHOW server_version").fetchone()
    binding = (
        "server-side binding, prepare_threshold=5"
        if config.server_side_binding
        else "Django defaults (client-side binding, no prepared statements)"
    )
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
        f"{args.aggregates:,} aggregates x {args.events} events = "
        f"{args.aggregates * args.events:,} events per phase; {args.writers} concurrent "
        f"writers; best of {args.repeat} runs ({READS_PER_RUN} reads per run)"
    )
    print(f"Library connection: {binding}")
    print(
        "Raw baseline: psycopg 3 defaults, one multi-row INSERT (autocommit) per "
        "aggregate; keyset reads by position"
    )
    print(
        "Event construction (pydantic models / raw parameter rows) is inside the timed "
        "append loops on both sides."
    )
    if not args.no_analyze:
        print("Both tables are ANALYZEd (untimed) after the writes, before the read phases.")
    print()


def print_table(phases: list[Phase], with_sqlite: bool) -> None:
    headers = ["phase", "library ev/s", "raw ev/s", "lib/raw", "target", "ratio"]
    if with_sqlite:
        headers.append("SQLite lib ev/s")
    rows = []
    for phase in phases:
        ratio = phase.ratio
        row = [
            phase.name,
            fmt_rate(phase.library.best),
            fmt_rate(phase.raw.best),
            f"{ratio:.2f}x" if ratio is not None else "-",
            phase.target_text,
            f"{phase.target_ratio:.2f}x" if phase.target and phase.target_ratio else "-",
        ]
        if with_sqlite:
            row.append(fmt_rate(phase.sqlite.best))
        rows.append(row)
    print_rows(headers, rows)
    print()
    for phase in phases:
        ratio = phase.target_ratio
        pairs = phase.paired_ratios
        if phase.target is not None and ratio is not None and pairs:
            # The verdict goes by the median of the paired ratios: a best run of one side
            # and a best run of the other may come from quiet and busy moments.
            median = statistics.median(pairs)
            verdict = "met" if median >= phase.target else "NOT met"
            print(
                f"Target {phase.name} {phase.target_text}: {verdict} (median of "
                f"{len(pairs)} paired ratios {median:.2f}x; best / best {ratio:.2f}x)"
            )

    print(
        "\nCPU per event, best run: this process (client), and the PostgreSQL backend that "
        "served it (server; '-' when /proc is not readable):"
    )
    cpu_rows = []

    def best(values: list[float]) -> str:
        return f"{min(values):.1f} us" if values else "-"

    for phase in phases:
        if phase.in_process:
            cpu_rows.append(
                [
                    phase.name,
                    best(phase.library.cpu_us),
                    best(phase.raw.cpu_us),
                    best(phase.library.server_us),
                    best(phase.raw.server_us),
                ]
            )
    print_rows(["phase", "library client", "raw client", "library server", "raw server"], cpu_rows)

    print("\nAll runs (events/s):")
    for phase in phases:
        for side in ("library", "raw", "sqlite"):
            runs: Runs = getattr(phase, side)
            if runs.rates:
                formatted = ", ".join(f"{r:,.0f}" for r in runs.rates)
                median = statistics.median(runs.rates)
                print(f"  {phase.name} / {side}: {formatted} (median {median:,.0f})")


# Main -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--database-url", default=DEFAULT_URL, help=f"default: {DEFAULT_URL}")
    parser.add_argument("--aggregates", type=int, default=2000)
    parser.add_argument("--events", type=int, default=10, help="events per aggregate")
    parser.add_argument("--writers", type=int, default=4, help="concurrent writer processes")
    parser.add_argument("--repeat", type=int, default=3, help="runs per phase (best is kept)")
    parser.add_argument("--sqlite", action="store_true", help="also library figures on SQLite")
    parser.add_argument(
        "--server-side-binding",
        action="store_true",
        help="library connection with server_side_binding=True, prepare_threshold=5",
    )
    parser.add_argument(
        "--no-analyze",
        action="store_true",
        help="do not ANALYZE the tables before the read phases (plans then depend on autovacuum)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="cProfile the library append and read paths"
    )
    parser.add_argument("--profile-limit", type=int, default=25)
    args = parser.parse_args(argv)
    if min(args.aggregates, args.events, args.writers, args.repeat) < 1:
        parser.error("--aggregates, --events, --writers and --repeat must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tmpdir = tempfile.TemporaryDirectory(prefix="eventsource-bench-")
    sqlite_path = str(Path(tmpdir.name) / "bench.sqlite3") if args.sqlite else None
    config = Config(args.database_url, sqlite_path, args.server_side_binding, args.events)
    recreate_database(config)
    configure_django(config)
    prepare_schema(config)
    admin = Admin(config, args.aggregates, args.events)
    raw_conn = psycopg.connect(**config.pg_connect_kwargs(), autocommit=True)
    print_environment(config, admin, args)
    lib_pid = library_backend_pid("default")
    raw_pid = raw_conn.info.backend_pid

    total = args.aggregates * args.events
    single = Phase("append, 1 writer", TARGET_APPEND)
    in_atomic = Phase("append in atomic(), 1 writer", TARGET_APPEND)
    multi = Phase(f"append, {args.writers} writers", in_process=False)
    read = Phase("read_all, pages of 1000", TARGET_READ)
    decode = Phase("read_all + .event decode", TARGET_DECODE, baseline=read)
    phases = [single, in_atomic, multi, read, decode]

    def check_count(count: int) -> None:
        if count != total:
            raise AssertionError(f"read {count} events, expected {total}")

    def run_library() -> None:
        admin.reset(LIB_TABLE)
        in_atomic.library.measure(
            lambda: library_append("default", args.aggregates, args.events, atomic=True),
            total,
            lib_pid,
        )
        admin.check("default", LIB_TABLE)
        admin.reset(LIB_TABLE)
        single.library.measure(
            lambda: library_append("default", args.aggregates, args.events), total, lib_pid
        )
        admin.check("default", LIB_TABLE)
        admin.wait_visible()
        if not args.no_analyze:
            admin.analyze(LIB_TABLE)
        for _ in range(READS_PER_RUN):
            check_count(
                read.library.measure(lambda: library_read("default", False), total, lib_pid)
            )
            check_count(
                decode.library.measure(lambda: library_read("default", True), total, lib_pid)
            )

    def run_raw() -> None:
        admin.reset(RAW_TABLE)
        in_atomic.raw.measure(
            lambda: raw_append(raw_conn, args.aggregates, args.events, explicit=True),
            total,
            raw_pid,
        )
        admin.check(None, RAW_TABLE)
        admin.reset(RAW_TABLE)
        single.raw.measure(
            lambda: raw_append(raw_conn, args.aggregates, args.events), total, raw_pid
        )
        admin.check(None, RAW_TABLE)
        if not args.no_analyze:
            admin.analyze(RAW_TABLE)
        for _ in range(READS_PER_RUN):
            check_count(read.raw.measure(lambda: raw_read(raw_conn), total, raw_pid))
        # The raw side has no typed events: "+ decode" is compared with the same raw reads.
        decode.raw = read.raw

    for run in range(args.repeat):
        print(f"run {run + 1}/{args.repeat}: 1 writer, then read_all ...", flush=True)
        # Alternate which side goes first so that drift (autovacuum, caches) cancels out.
        for side in (run_library, run_raw) if run % 2 == 0 else (run_raw, run_library):
            side()

    for run in range(args.repeat):
        print(f"run {run + 1}/{args.repeat}: {args.writers} writer processes ...", flush=True)
        for kind in ("library", "raw") if run % 2 == 0 else ("raw", "library"):
            table = LIB_TABLE if kind == "library" else RAW_TABLE
            admin.reset(table)
            seconds = concurrent_append(config, kind, "default", args.aggregates, args.writers)
            getattr(multi, kind).rates.append(total / seconds)
            admin.check("default" if kind == "library" else None, table)

    if sqlite_path:
        for run in range(args.repeat):
            print(f"run {run + 1}/{args.repeat}: SQLite ...", flush=True)
            admin.reset_sqlite()
            single.sqlite.measure(
                lambda: library_append(SQLITE_ALIAS, args.aggregates, args.events), total
            )
            admin.check(SQLITE_ALIAS, LIB_TABLE)
            for _ in range(READS_PER_RUN):
                check_count(read.sqlite.measure(lambda: library_read(SQLITE_ALIAS, False), total))
                check_count(decode.sqlite.measure(lambda: library_read(SQLITE_ALIAS, True), total))
            admin.reset_sqlite()
            seconds = concurrent_append(
                config, "library", SQLITE_ALIAS, args.aggregates, args.writers
            )
            multi.sqlite.rates.append(total / seconds)
            admin.check(SQLITE_ALIAS, LIB_TABLE)

    print()
    print_table(phases, with_sqlite=bool(sqlite_path))

    if args.profile:
        admin.reset(LIB_TABLE)
        profile = cProfile.Profile()
        profile.runcall(library_append, "default", args.aggregates, args.events)
        print(profile_text(profile, "library append, 1 writer (PostgreSQL)", args.profile_limit))
        admin.wait_visible()
        if not args.no_analyze:
            admin.analyze(LIB_TABLE)
        for flag in (False, True):
            profile = cProfile.Profile()
            profile.runcall(library_read, "default", flag)
            title = "library read_all" + (" + .event decode" if flag else "")
            print(profile_text(profile, title, args.profile_limit))

    raw_conn.close()
    admin.pg.close()
    from django.db import connections

    connections.close_all()
    tmpdir.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A shadow rebuild (``rebuild(projection, shadow=True)``) of a large projection on PostgreSQL:
total time against a raw psycopg replay, the swap's duration against a raw rename swap, peak
memory, and another projection's commit-to-apply latency while the build runs.

Run from the repository root (``bash scripts/bench shadow``, or ``python bench/shadow.py``;
the bench database is dropped and recreated)::

    python bench/shadow.py --sizes 1000000

Options: ``--database-url`` (default
``postgres://postgres@127.0.0.1:5432/eventsource_bench_shadow``), ``--sizes`` (events, 10 per
aggregate; default 1,000,000), ``--ping-interval`` (seconds between pings, 0.05).

Per size:

1. The events are loaded with one ``COPY`` (``bench/catchup.py``'s loader: ``size / 10``
   aggregates with 10 ``ItemChanged`` events each), and ``bench_items`` (one row per
   aggregate) is caught up, untimed: the live table the rebuild replaces.
2. **raw replay**: psycopg 3 reads the same events in pages of 500 and upserts one row per
   event per page in one transaction (``bench/catchup.py``'s baseline), in a fresh process.
3. **shadow rebuild**: ``rebuild(BenchItems(), shadow=True)`` in a fresh process: the build
   in a shadow schema, then the swap. Its time, its swap's time (``RunResult.swap_seconds``,
   the swap transaction), and its peak RSS (``VmHWM``). The rows are checked afterwards.
4. **raw swap**: the same table shape swapped by hand in psycopg: ``CREATE TABLE … (LIKE …
   INCLUDING ALL EXCLUDING DEFAULTS)`` (its serial column would keep the old sequence) filled with ``INSERT … SELECT``, then one transaction that drops the
   live table and renames the new one (indexes are not renamed back): the floor for a swap.
5. **latency**: during the whole bench a process appends a ping (its own stream) every
   ``--ping-interval`` seconds and notes when each append returned (committed); another
   process follows ``bench_pings`` (caught up first) with a ``ProjectionRunner`` (as a
   worker does), whose
   handler stamps each ping's row with the time it applied it. Commit-to-apply latency is
   reported for the pings sent before the rebuild (idle) and during it.

No timing is asserted anywhere; the numbers are informational, and the machine's load
average is printed with them.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg

from bench import catchup
from bench.report import print_rows

DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/eventsource_bench_shadow"
PING_TABLE = "catchup_app_benchping"
PER_AGGREGATE = 10


def _config(url: str) -> catchup.Config:
    return catchup.Config(database_url=url, sqlite_path=None)


# Processes ---------------------------------------------------------------------------------


def _shadow_process(config: catchup.Config, results: Any) -> None:
    try:
        catchup.configure_django(config)
        from django.db import connections

        from bench.catchup_app.projections import BenchItems
        from django_eventsource import EventStore
        from django_eventsource.rebuild import rebuild

        connections["default"].ensure_connection()
        before = catchup._memory_kb("VmRSS")
        start = time.perf_counter()
        result = rebuild(BenchItems(), event_store=EventStore(), shadow=True)
        seconds = time.perf_counter() - start
        peak = catchup._memory_kb("VmHWM")
        connections.close_all()
        results.put(("ok", seconds, result.events_applied, result.swap_seconds, before, peak))
    except BaseException:
        results.put(("error", traceback.format_exc(), 0, 0.0, 0, 0))
        raise


def _pinger(config: catchup.Config, interval: float, stop: Any, out: Any) -> None:
    catchup.configure_django(config)
    from bench.catchup_app.projections import Pinged
    from django_eventsource import EventStore

    store = EventStore(inline_projections=False)
    sent: list[tuple[str, float]] = []
    while not stop.is_set():
        ping = uuid.uuid4()
        store.append(ping, [Pinged(aggregate_id=ping)], expected_version=0)
        sent.append((str(ping), time.time()))
        stop.wait(interval)
    out.put(sent)


def _ping_follower(config: catchup.Config, stop: Any) -> None:
    catchup.configure_django(config)
    from bench.catchup_app.projections import BenchPings
    from django_eventsource.runner import ProjectionRunner

    runner = ProjectionRunner([BenchPings()], poll_interval=0.05, should_stop=stop.is_set)
    runner.follow()


# The bench ---------------------------------------------------------------------------------


def raw_swap(config: catchup.Config) -> float:
    """Build a copy of the raw table by hand, then time the transaction that swaps it in."""
    with psycopg.connect(**config.pg_connect_kwargs(), autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS raw_items_new")
        conn.execute(
            f"CREATE TABLE raw_items_new (LIKE {catchup.RAW_TABLE} INCLUDING ALL EXCLUDING DEFAULTS)"
        )
        conn.execute(f"INSERT INTO raw_items_new SELECT * FROM {catchup.RAW_TABLE}")
        start = time.perf_counter()
        with conn.transaction():
            conn.execute(f"DROP TABLE {catchup.RAW_TABLE}")
            conn.execute(f"ALTER TABLE raw_items_new RENAME TO {catchup.RAW_TABLE}")
        return time.perf_counter() - start


def wait_for_pings(admin: catchup.Admin, done: Any, timeout: float = 600.0) -> int:
    """Wait until ``done(number of pings applied)``; returns that number."""
    deadline = time.monotonic() + timeout
    while True:
        row = admin.pg.execute(f"SELECT count(*) FROM {PING_TABLE}").fetchone()
        count = int(row[0]) if row else 0
        if done(count) or time.monotonic() > deadline:
            return count
        time.sleep(0.1)


def latencies(config: catchup.Config, sent: list[tuple[str, float]]) -> dict[str, float]:
    with psycopg.connect(**config.pg_connect_kwargs()) as conn:
        applied = dict(conn.execute(f"SELECT ping_id::text, applied_at FROM {PING_TABLE}"))
    return {ping: applied[ping] - at for ping, at in sent if ping in applied}


def summary(values: list[float]) -> list[str]:
    if not values:
        return ["0", "-", "-", "-"]
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    return [
        str(len(values)),
        f"{statistics.median(ordered) * 1000:,.0f} ms",
        f"{p95 * 1000:,.0f} ms",
        f"{ordered[-1] * 1000:,.0f} ms",
    ]


def run_size(config: catchup.Config, size: int, interval: float) -> None:
    aggregates = size // PER_AGGREGATE
    catchup.recreate_database(config)
    catchup.configure_django(config)
    catchup.prepare_schema(config)
    catchup.check_fast_path(config, "default")
    started = time.perf_counter()
    catchup.load_postgresql(config, aggregates, PER_AGGREGATE, interleave=False)
    load = time.perf_counter() - started
    admin = catchup.Admin(config)
    catchup.run_phase(config, "catch-up", "default")  # the live table, untimed
    admin.check("default", catchup.ITEM_TABLE, aggregates, PER_AGGREGATE)
    raw = catchup.run_phase(config, "raw", "default")
    admin.check("default", catchup.RAW_TABLE, aggregates, PER_AGGREGATE)

    # The other projection starts caught up (it has nothing to apply in the items' events).
    from django.db import connections

    from bench.catchup_app.projections import BenchPings
    from django_eventsource.runner import ProjectionRunner

    ProjectionRunner([BenchPings()]).run_until_caught_up()
    connections.close_all()
    ctx = multiprocessing.get_context("spawn")
    stop_pings, stop_follower, pings = ctx.Event(), ctx.Event(), ctx.Queue()
    follower = ctx.Process(target=_ping_follower, args=(config, stop_follower))
    pinger = ctx.Process(target=_pinger, args=(config, interval, stop_pings, pings))
    follower.start()
    pinger.start()
    wait_for_pings(admin, lambda n: n >= 40)  # idle latency first
    build_started = time.time()
    results = ctx.Queue()
    shadow = ctx.Process(target=_shadow_process, args=(config, results))
    shadow.start()
    status, seconds, events, swap_seconds, before, peak = results.get(timeout=7200)
    shadow.join()
    build_ended = time.time()
    stop_pings.set()
    sent = pings.get(timeout=120)
    pinger.join()
    wait_for_pings(admin, lambda n: n >= len(sent))
    stop_follower.set()
    follower.join()
    if status != "ok":
        raise RuntimeError(f"the shadow rebuild failed:\n{seconds}")
    admin.check("default", catchup.ITEM_TABLE, aggregates, PER_AGGREGATE)
    swap_floor = raw_swap(config)
    lat = latencies(config, sent)
    idle = [lat[p] for p, at in sent if p in lat and at < build_started]
    during = [lat[p] for p, at in sent if p in lat and build_started <= at <= build_ended]
    missing = [p for p, _ in sent if p not in lat]

    print(f"\n{size:,} events ({aggregates:,} aggregates; COPY load {load:.1f} s)")
    print_rows(
        ["phase", "time", "events/s", "vs raw replay", "peak RSS"],
        [
            ["raw replay (psycopg)", f"{raw.seconds:,.1f} s", f"{raw.rate:,.0f}", "1.00", "-"],
            [
                "shadow rebuild (build + swap)",
                f"{seconds:,.1f} s",
                f"{events / seconds:,.0f}",
                f"{seconds / raw.seconds:.2f}x the time",
                f"{peak / 1024:,.0f} MB (+{(peak - before) / 1024:,.0f})",
            ],
        ],
    )
    print()
    print_rows(
        ["swap", "duration"],
        [
            [
                "shadow rebuild's swap transaction",
                f"{(swap_seconds or 0) * 1000:,.1f} ms",
            ],
            ["raw psycopg DROP + RENAME (floor)", f"{swap_floor * 1000:,.1f} ms"],
        ],
    )
    print()
    print_rows(
        ["bench_pings commit-to-apply", "pings", "median", "p95", "max"],
        [
            ["idle (before the rebuild)", *summary(idle)],
            ["during the shadow rebuild", *summary(during)],
        ],
    )
    if missing:
        print(f"{len(missing)} pings never applied (expected 0)")
    print(
        json.dumps(
            {
                "events": size,
                "raw_seconds": raw.seconds,
                "shadow_seconds": seconds,
                "swap_seconds": swap_seconds,
                "raw_swap_seconds": swap_floor,
                "peak_mb": peak / 1024,
                "latency_idle_median": statistics.median(idle) if idle else None,
                "latency_during_median": statistics.median(during) if during else None,
                "latency_during_max": max(during) if during else None,
                "load_average": os.getloadavg()[0],
            }
        )
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=os.environ.get("BENCH_SHADOW_URL", DEFAULT_URL))
    parser.add_argument(
        "--sizes",
        type=lambda text: [int(s.replace("_", "")) for s in text.split(",")],
        default=[1_000_000],
    )
    parser.add_argument("--ping-interval", type=float, default=0.05)
    args = parser.parse_args(argv)
    config = _config(args.database_url)
    print(
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; each phase in a fresh "
        "process; the library's default batch size"
    )
    for size in args.sizes:
        run_size(config, size, args.ping_interval)
    return 0


if __name__ == "__main__":
    sys.exit(main())

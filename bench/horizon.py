"""The writer-scoped read horizon against the cluster-wide one, in the same run.

Run from the repository root (PostgreSQL must be reachable; the bench database is dropped and
recreated, the library's migrations are applied)::

    .venv/bin/python bench/horizon.py        # or: bash scripts/bench horizon

Options: ``--database-url`` (default
``postgres://postgres@127.0.0.1:5432/eventsource_bench_horizon``), ``--seconds 10.5`` (how
long each latency phase appends), ``--interval 0.05`` (seconds between appends),
``--read-events 20000`` and ``--repeat 15`` (read_all throughput: N passes per rule).

1. Commit-to-apply latency of a follow worker. A real ``ProjectionRunner.follow()`` runs in
   its own process (LISTEN/NOTIFY wake-ups, ``poll_interval`` 0.1 s) with a projection whose
   handler records when it applies each event. The bench process appends one event every
   ``--interval`` seconds (each append its own transaction) and records when each commit
   returned. Meanwhile a *foreign* process, connected to another database of the same
   server (``postgres``), holds a transaction id for 3 s out of every 3.5 s and never touches
   the event table. Latency = applied - committed, per event: p50, p95, max. The phase runs
   once with the cluster-wide horizon (``pg_snapshot_xmin``, the rule before migration 0004,
   patched into the worker's backend) and once with the writer-scoped one.
2. ``read_all`` throughput with nothing blocking: ``--read-events`` events read in pages of
   500, ``--repeat`` pairs of passes (one per rule, back to back, in alternating order); the
   verdict uses the median of the pairs' ratios, the best pass per rule is printed too; and,
   for information,
   the writer-scoped rule while a foreign transaction is open (the horizon function then
   reads pg_locks once per page).

Targets (issue 13): p95 under 100 ms with the foreign transaction (writer-scoped rule), and
``read_all`` at least 0.95x the cluster-wide rule. Nothing is asserted; the verdicts are
printed. The machine is shared: the load average before and after is printed with them.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import queue
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg
from psycopg import sql

from bench.report import print_rows

DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/eventsource_bench_horizon"
FOREIGN_HOLD = 3.0
FOREIGN_REST = 0.5
PAGE = 500
TARGET_P95_MS = 100.0
TARGET_READ_RATIO = 0.95
RULES = ("cluster", "writer")


def configure(url: str) -> None:
    import django
    import environ
    from django.conf import settings

    if settings.configured:
        return
    settings.configure(
        DEBUG=False,
        SECRET_KEY="django-eventsource-bench",
        USE_TZ=True,
        TIME_ZONE="UTC",
        INSTALLED_APPS=["django_eventsource"],
        DATABASES={"default": environ.Env.db_url_config(url)},
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        EVENTSOURCE={"AUTODISCOVER_MODULE": None},
    )
    django.setup()


def use_rule(rule: str) -> None:
    """Make this process's reads use ``rule`` (the backend is shared by every store)."""
    from django_eventsource.backends.postgresql import horizon
    from django_eventsource.backends.postgresql.backend import PostgreSQLBackend

    sql_text = horizon.CLUSTER_HORIZON_SQL if rule == "cluster" else horizon.HORIZON_SQL
    PostgreSQLBackend.horizon_sql = lambda self: sql_text  # type: ignore[method-assign]


def event_class() -> Any:
    from django_eventsource import DomainEvent, register_event

    @register_event
    class BenchTick(DomainEvent):
        event_type: str = "BenchTick"
        aggregate_type: str = "Bench"
        n: int = 0

    return BenchTick


# Processes -----------------------------------------------------------------------------------


def follow_worker(url: str, rule: str, applied: Any, ready: Any) -> None:
    """A real follow worker; its handler reports (position, when applied)."""
    import signal

    configure(url)
    use_rule(rule)
    tick = event_class()
    from django_eventsource import DeclarativeProjection, handles
    from django_eventsource.runner import ProjectionRunner

    class Ticks(DeclarativeProjection):
        name = f"bench_ticks_{rule}"

        @handles(tick)
        def on_tick(self, event: Any) -> None:
            applied.put((event.position, time.time()))

    runner = ProjectionRunner([Ticks()], poll_interval=0.1, install_signal_handlers=True)
    signal.signal(signal.SIGUSR1, lambda *_: runner.stop())
    ready.set()
    runner.follow()


def foreign_worker(url: str, stop: Any) -> None:
    """Another database of the server: an id held 3 s out of every 3.5 s."""
    other = url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(other) as conn:
        while not stop.is_set():
            conn.execute("SELECT pg_current_xact_id()")
            stop.wait(FOREIGN_HOLD)
            conn.commit()
            stop.wait(FOREIGN_REST)


# Phases --------------------------------------------------------------------------------------


def latency_phase(url: str, rule: str, seconds: float, interval: float) -> list[float]:
    from django_eventsource import EventStore

    tick = event_class()
    ctx = multiprocessing.get_context("spawn")
    applied, ready, stop = ctx.Queue(), ctx.Event(), ctx.Event()
    worker = ctx.Process(target=follow_worker, args=(url, rule, applied, ready))
    worker.start()
    assert ready.wait(60), "the follow worker did not start"
    time.sleep(1.0)  # listening, caught up
    foreign = ctx.Process(target=foreign_worker, args=(url, stop))
    foreign.start()
    time.sleep(0.2)
    store = EventStore()
    committed: dict[int, float] = {}
    started = time.monotonic()
    n = 0
    while time.monotonic() - started < seconds:
        stream = uuid.uuid4()
        [stored] = store.append(stream, [tick(aggregate_id=stream, n=n)])
        committed[stored.position] = time.time()
        n += 1
        time.sleep(interval)
    stop.set()
    foreign.join(30)
    got: dict[int, float] = {}
    deadline = time.monotonic() + 30
    while len(got) < len(committed) and time.monotonic() < deadline:
        try:
            position, when = applied.get(timeout=1)
        except queue.Empty:
            pass
        else:
            if position in committed:  # not an earlier phase's event
                got[position] = when
    os.kill(worker.pid, 10)  # SIGUSR1: stop after the batch in hand
    worker.join(30)
    if worker.is_alive():
        worker.terminate()
    missing = set(committed) - set(got)
    if missing:
        raise SystemExit(f"{rule}: {len(missing)} events never applied: {sorted(missing)[:5]}")
    return sorted(got[p] - committed[p] for p in committed)


def load_events(count: int) -> None:
    from django_eventsource import EventStore

    tick = event_class()
    store = EventStore()
    for start in range(0, count, 10):
        stream = uuid.uuid4()
        store.append(stream, [tick(aggregate_id=stream, n=start + i) for i in range(10)])


def read_pass() -> tuple[int, float]:
    from django_eventsource import EventStore

    store = EventStore()
    started = time.perf_counter()
    position, total = 0, 0
    while True:
        page = store.read_all(position, limit=PAGE)
        total += len(page)
        if not page.events:
            break
        position = page.last_position
    return total, time.perf_counter() - started


def read_phase(url: str, repeat: int) -> tuple[dict[str, float], float]:
    """Best rate per rule, and the median of the paired ratios writer / cluster (each pair
    runs back to back, in alternating order: robust against a neighbour's load)."""
    best: dict[str, float] = {}
    ratios: list[float] = []
    for n in range(repeat):
        rates: dict[str, float] = {}
        for rule in RULES if n % 2 == 0 else tuple(reversed(RULES)):
            use_rule(rule)
            events, seconds = read_pass()
            rates[rule] = events / seconds
            best[rule] = max(best.get(rule, 0.0), rates[rule])
        ratios.append(rates["writer"] / rates["cluster"])
    # The writer-scoped rule while a foreign transaction is open (for information).
    use_rule("writer")
    other = url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(other) as conn:
        conn.execute("SELECT pg_current_xact_id()")
        for _ in range(repeat):
            events, seconds = read_pass()
            best["writer, foreign open"] = max(
                best.get("writer, foreign open", 0.0), events / seconds
            )
        conn.rollback()
    return best, statistics.median(ratios)


def recreate(url: str) -> None:
    base, name = url.rsplit("/", 1)
    with psycopg.connect(base + "/postgres", autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def percentile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, max(0, round(q * len(values)) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=DEFAULT_URL)
    parser.add_argument("--seconds", type=float, default=10.5)
    parser.add_argument("--interval", type=float, default=0.05)
    parser.add_argument("--read-events", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=15)
    args, _unknown = parser.parse_known_args()  # scripts/bench passes shared options
    url = args.database_url
    load_before = os.getloadavg()
    recreate(url)
    configure(url)
    from django.core.management import call_command

    call_command("migrate", verbosity=0)

    print(
        f"Commit-to-apply latency of a follow worker, one append every {args.interval:g} s for "
        f"{args.seconds:g} s, while another database's transaction holds an id "
        f"{FOREIGN_HOLD:g} s out of every {FOREIGN_HOLD + FOREIGN_REST:g} s:"
    )
    latency: dict[str, list[float]] = {}
    for rule in RULES:
        latency[rule] = latency_phase(url, rule, args.seconds, args.interval)
    rows = [
        [
            "cluster-wide (pg_snapshot_xmin, before 0004)"
            if rule == "cluster"
            else "writer-scoped (0004)",
            str(len(values)),
            f"{statistics.median(values) * 1000:.0f}",
            f"{percentile(values, 0.95) * 1000:.0f}",
            f"{values[-1] * 1000:.0f}",
        ]
        for rule, values in latency.items()
    ]
    print_rows(["horizon", "events", "p50 ms", "p95 ms", "max ms"], rows)

    print(
        f"\nread_all throughput, {args.read_events} events in pages of {PAGE}, "
        f"best of {args.repeat} passes:"
    )
    load_events(args.read_events)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ANALYZE django_eventsource_event")  # as autovacuum would, soon
    rates, paired = read_phase(url, args.repeat)
    print_rows(
        ["horizon", "events/s", "vs cluster-wide"],
        [
            [rule, f"{rate:,.0f}", f"{rate / rates['cluster']:.2f}x"]
            for rule, rate in rates.items()
        ],
    )
    load_after = os.getloadavg()

    p95 = percentile(latency["writer"], 0.95) * 1000
    ratio = paired
    print()
    print(
        f"p95 commit-to-apply with the foreign transaction < {TARGET_P95_MS:.0f} ms: "
        f"{'met' if p95 < TARGET_P95_MS else 'NOT met'} ({p95:.0f} ms; cluster-wide rule "
        f"{percentile(latency['cluster'], 0.95) * 1000:.0f} ms)"
    )
    print(
        f"read_all with nothing blocking >= {TARGET_READ_RATIO}x the cluster-wide rule: "
        f"{'met' if ratio >= TARGET_READ_RATIO else 'NOT met'} ({ratio:.2f}x, the median of "
        f"{args.repeat} back-to-back pairs; best passes {rates['writer'] / rates['cluster']:.2f}x)"
    )
    print(
        "Load average (1, 5, 15 min) before: "
        + ", ".join(f"{v:.2f}" for v in load_before)
        + "; after: "
        + ", ".join(f"{v:.2f}" for v in load_after)
        + f" ({os.cpu_count()} CPUs; a shared machine makes these figures noisy)"
    )


if __name__ == "__main__":
    main()

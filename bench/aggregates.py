"""Aggregate load and save costs: replaying 1,000 events with and without a snapshot.

Run from the repository root::

    .venv/bin/python bench/aggregates.py              # PostgreSQL
    .venv/bin/python bench/aggregates.py --sqlite     # and SQLite, in a temporary file

``--database-url`` (default ``postgres://postgres@127.0.0.1:5432/eventsource_bench_aggregates``)
is **dropped and recreated** (a ``sqlite:///`` URL: the file is deleted) and migrated. Other
options: ``--events 1000`` (stream length of the load phases), ``--snapshot-every 100``,
``--loads 20`` (loads per run), ``--saves 300`` (saves per run of the save phases),
``--updates 200``, ``--repeat 3`` (runs per phase; best and median are printed).

Phases, per database:

* load, no snapshot: ``Repository(Cart).load(id)`` of a stream of ``--events`` events (every
  event read and decoded by pydantic, then applied).
* load, snapshot: the same stream through ``Repository(SnapshottedCart)``, whose snapshot is
  at the stream's last version (one snapshot row, one query for the events after it).
* save, new aggregate: ``--saves`` x (create a cart, record 10 events, ``save()``).
* update, no snapshots / with snapshots: ``--updates`` x ``update(id, add one item)`` on one
  growing stream (load, record 1 event, save with ``expected_version``); without snapshots
  each load replays the whole stream so far.

Everything runs in this process, one connection; the client CPU per operation is printed to
tell Python overhead from database time on a busy machine. Nothing is asserted about timings;
the states loaded are checked so that a phase that did nothing cannot look fast.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django_eventsource import DomainEvent, register_event
from django_eventsource.aggregates import AggregateRoot, Repository, applies

DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/eventsource_bench_aggregates"
SQLITE_ALIAS = "sqlite"
SKUS = 50
EVENTS_PER_SAVE = 10


@register_event
class BenchItemAdded(DomainEvent):
    event_type: str = "BenchItemAdded"
    aggregate_type: str = "BenchCart"
    sku: str
    quantity: int
    price_cents: int


class Cart(AggregateRoot):
    """A shopping cart: a few fields and a dict of up to 50 lines."""

    aggregate_type = "BenchCart"

    lines: dict[str, int] = {}  # noqa: RUF012  (copied per instance)
    items: int = 0
    total_cents: int = 0

    def add(self, n: int) -> None:
        self.record(BenchItemAdded, sku=f"sku-{n % SKUS}", quantity=1 + n % 3, price_cents=250)

    @applies(BenchItemAdded)
    def _added(self, event: BenchItemAdded) -> None:
        self.lines[event.sku] = self.lines.get(event.sku, 0) + event.quantity
        self.items += event.quantity
        self.total_cents += event.quantity * event.price_cents


class SnapshottedCart(Cart):
    snapshot_every = 100  # --snapshot-every overrides it


def expected_items(events: int) -> int:
    return sum(1 + n % 3 for n in range(events))


# Configuration ----------------------------------------------------------------------------


def configure_django(databases: dict[str, Any]) -> None:
    import django
    from django.conf import settings

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


def database_settings(url: str) -> dict[str, Any]:
    import environ

    db: dict[str, Any] = environ.Env.db_url_config(url)
    if db["ENGINE"].endswith("sqlite3"):
        # As in tests/settings.py: wait for the lock, take it at BEGIN.
        db.setdefault("OPTIONS", {}).update({"timeout": 30, "transaction_mode": "IMMEDIATE"})
    return db


def recreate(db: dict[str, Any]) -> None:
    """Drop and create the PostgreSQL database, or delete the SQLite file."""
    if db["ENGINE"].endswith("sqlite3"):
        Path(db["NAME"]).unlink(missing_ok=True)
        return
    import psycopg
    from psycopg import sql

    kwargs: dict[str, Any] = {"dbname": "postgres", "autocommit": True}
    for key, name in (
        ("HOST", "host"),
        ("PORT", "port"),
        ("USER", "user"),
        ("PASSWORD", "password"),
    ):
        if db.get(key):
            kwargs[name] = str(db[key])
    with psycopg.connect(**kwargs) as conn:
        name = sql.Identifier(db["NAME"])
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(name))


# Measurements -----------------------------------------------------------------------------


@dataclass
class Result:
    """Seconds per operation and client CPU per operation, one entry per run."""

    name: str
    unit: str
    seconds: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def measure(self, function: Callable[[], Any], operations: int) -> Any:
        cpu = time.process_time()
        start = time.perf_counter()
        value = function()
        self.seconds.append((time.perf_counter() - start) / operations)
        self.cpu.append((time.process_time() - cpu) / operations)
        return value


def run_database(alias: str, vendor: str, args: argparse.Namespace) -> list[Result]:
    from django_eventsource import EventStore

    store = EventStore(using=alias)
    plain = Repository(Cart, store)
    snapped = Repository(SnapshottedCart, store)

    # The 1,000-event stream (untimed): saved 10 events at a time, snapshots every N.
    cart = SnapshottedCart(uuid.uuid4())
    for n in range(args.events):
        cart.add(n)
        if len(cart.uncommitted_events) == EVENTS_PER_SAVE:
            snapped.save(cart)
    snapped.save(cart)
    record = snapped.snapshot_store.load("BenchCart", cart.id)
    if record is None or record.version != args.events:
        print(
            f"  note: the snapshot is at version {record.version if record else None}, "
            f"not {args.events}; the snapshot load replays the rest."
        )
    items = expected_items(args.events)

    load_plain = Result(f"load {args.events:,} events, no snapshot", "load")
    load_snap = Result(f"load {args.events:,} events, snapshot", "load")
    save_new = Result(f"save new aggregate ({EVENTS_PER_SAVE} events)", "save")
    update_plain = Result(
        f"update (load + 1 event + save), no snapshots, {args.updates}", "update"
    )
    update_snap = Result(
        f"update (load + 1 event + save), snapshot every {SnapshottedCart.snapshot_every}",
        "update",
    )

    def loads(repo: Repository[Any]) -> None:
        for _ in range(args.loads):
            loaded = repo.load(cart.id)
            if (loaded.version, loaded.items) != (args.events, items):
                raise AssertionError(f"loaded {loaded!r} with {loaded.items} items")

    def saves() -> None:
        for _ in range(args.saves):
            new = Cart(uuid.uuid4())
            for n in range(EVENTS_PER_SAVE):
                new.add(n)
            plain.save(new)

    def updates(repo: Repository[Any]) -> uuid.UUID:
        first = repo.aggregate_class(uuid.uuid4())
        first.add(0)
        repo.save(first)
        for n in range(1, args.updates):
            repo.update(first.id, lambda c, n=n: c.add(n))
        final = repo.load(first.id)
        if (final.version, final.items) != (args.updates, expected_items(args.updates)):
            raise AssertionError(f"updated cart is {final!r}")
        return first.id

    for run in range(args.repeat):
        print(f"{vendor}: run {run + 1}/{args.repeat} ...", flush=True)
        # Alternate the order of the two loads so that cache warm-up favours neither.
        pair = [(load_plain, plain), (load_snap, snapped)]
        for result, repo in pair if run % 2 == 0 else pair[::-1]:
            result.measure(lambda repo=repo: loads(repo), args.loads)
        save_new.measure(saves, args.saves)
        update_plain.measure(lambda: updates(plain), args.updates)
        update_snap.measure(lambda: updates(snapped), args.updates)
    return [load_plain, load_snap, save_new, update_plain, update_snap]


# Output -----------------------------------------------------------------------------------


def fmt_time(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms" if seconds >= 1e-3 else f"{seconds * 1e6:.0f} us"


def print_results(vendor: str, results: list[Result]) -> None:
    headers = ["phase", "best", "median", "ops/s (best)", "client CPU/op"]
    rows = [
        [
            r.name,
            fmt_time(min(r.seconds)),
            fmt_time(statistics.median(r.seconds)),
            f"{1 / min(r.seconds):,.0f} {r.unit}s/s",
            fmt_time(min(r.cpu)),
        ]
        for r in results
    ]
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]
    print(f"\n{vendor}:")
    for row in [headers, ["-" * w for w in widths], *rows]:
        print(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    plain, snap = results[0], results[1]
    print(
        f"snapshot speed-up on load: {min(plain.seconds) / min(snap.seconds):.1f}x "
        f"(best), {statistics.median(plain.seconds) / statistics.median(snap.seconds):.1f}x "
        "(median)"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--database-url", default=DEFAULT_URL, help=f"dropped and recreated; default {DEFAULT_URL}"
    )
    parser.add_argument(
        "--sqlite", action="store_true", help="also run on SQLite (temporary file)"
    )
    parser.add_argument("--events", type=int, default=1000, help="events in the loaded stream")
    parser.add_argument("--snapshot-every", type=int, default=100)
    parser.add_argument("--loads", type=int, default=20, help="loads per run")
    parser.add_argument("--saves", type=int, default=300, help="new aggregates saved per run")
    parser.add_argument("--updates", type=int, default=200, help="updates per run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per phase")
    args = parser.parse_args(argv)
    numbers = (args.events, args.snapshot_every, args.loads, args.saves, args.updates, args.repeat)
    if min(numbers) < 1:
        parser.error("every count must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    SnapshottedCart.snapshot_every = args.snapshot_every
    tmpdir = tempfile.TemporaryDirectory(prefix="eventsource-bench-")
    databases = {"default": database_settings(args.database_url)}
    if args.sqlite:
        databases[SQLITE_ALIAS] = database_settings(
            f"sqlite:///{Path(tmpdir.name) / 'bench.sqlite3'}"
        )
    recreate(databases["default"])
    configure_django(databases)

    import django
    import pydantic
    from django.core.management import call_command
    from django.db import connections

    print(
        f"Python {platform.python_version()}, Django {django.get_version()}, pydantic "
        f"{pydantic.VERSION}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}"
    )
    print(
        f"stream of {args.events:,} events (saved {EVENTS_PER_SAVE} per save), snapshot every "
        f"{args.snapshot_every}; {args.loads} loads, {args.saves} saves, {args.updates} updates "
        f"per run; {args.repeat} runs"
    )
    all_results = []
    for alias in databases:
        call_command("migrate", database=alias, verbosity=0)
        vendor = connections[alias].vendor
        all_results.append((vendor, run_database(alias, vendor, args)))
    for vendor, results in all_results:
        print_results(vendor, results)
    connections.close_all()
    tmpdir.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())

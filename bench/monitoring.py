"""What monitoring costs on the hot paths: the append and the runner's batch.

Run from the repository root against the test settings' database (``DATABASE_URL``, SQLite by
default; the tables are created by ``migrate`` in a scratch database)::

    .venv/bin/python bench/monitoring.py [--appends 3000] [--rounds 5]
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/eventsource_bench_observe \
        .venv/bin/python bench/monitoring.py

It prints, per path, the client CPU time (``time.process_time``, so the database's own time
and the machine's other load count less) with the metrics and the loggers' checks switched
off and on, alternating A and B rounds; and the cost of the added calls alone, timed in a
tight loop. No verdict is asserted: it reports.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--appends", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection
    from django.test.utils import setup_databases, teardown_databases

    old = setup_databases(verbosity=0, interactive=False)
    try:
        call_command("migrate", verbosity=0)
        run(args.appends, args.rounds, connection.vendor)
    finally:
        teardown_databases(old, verbosity=0)


def run(appends: int, rounds: int, vendor: str) -> None:
    from uuid import uuid4

    from django_eventsource import EventStore, metrics
    from django_eventsource.runner import ProjectionRunner
    from tests.testapp.events import TaskCreated
    from tests.testapp.projections import TaskBoard

    store = EventStore(inline_projections=False)
    instruments = metrics._instruments()
    assert instruments is not None, "install prometheus_client to measure it"
    logging.getLogger("django_eventsource").setLevel(logging.INFO)

    def switch(on: bool) -> None:
        metrics._state["instruments"] = instruments if on else None

    def append_round() -> float:
        events = [TaskCreated(aggregate_id=uuid4(), title="t") for _ in range(appends)]
        start = time.process_time()
        for event in events:
            store.append(event.aggregate_id, [event], expected_version=0)
        return (time.process_time() - start) / appends * 1e6

    def batch_round() -> float:
        runner = ProjectionRunner([TaskBoard()], event_store=store, batch_size=500)
        start = time.process_time()
        result = runner.run_until_caught_up()
        return (time.process_time() - start) / max(result.events_applied, 1) * 1e6

    figures: dict[tuple[str, bool], list[float]] = {}
    for n in range(rounds):
        for on in (n % 2 == 0, n % 2 == 1):  # alternate which goes first
            switch(on)
            figures.setdefault(("append", on), []).append(append_round())
            figures.setdefault(("catch-up", on), []).append(batch_round())
    switch(True)
    print(f"{vendor}: client CPU per event, median of {rounds} rounds (us)")
    for path in ("append", "catch-up"):
        off, on = (statistics.median(figures[(path, flag)]) for flag in (False, True))
        print(f"  {path:9s} off {off:8.1f}   on {on:8.1f}   difference {on - off:+6.1f}")

    loops = 200_000
    log = logging.getLogger("django_eventsource.store")
    seconds = timeit.timeit(
        lambda: (
            metrics.record_appended("default", None, 1),
            log.isEnabledFor(logging.DEBUG),
        ),
        number=loops,
    )
    print(f"  the append's added calls alone: {seconds / loops * 1e6:.2f} us per append")
    seconds = timeit.timeit(
        lambda: metrics.record_batch("task_board", None, applied=500, seconds=0.1),
        number=loops,
    )
    print(f"  the runner's added calls alone: {seconds / loops * 1e6:.2f} us per batch")


if __name__ == "__main__":
    main()

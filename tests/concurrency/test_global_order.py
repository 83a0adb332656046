"""The global order under real concurrency: real processes, real transactions.

A reader that resumes with ``read_all(from_position=<last position seen>)`` while several
writer processes append (multi-event appends, transactions that write something else first,
slow commits, rollbacks, version conflicts on shared streams) must end up with exactly the
committed events: none skipped, none twice, and each stream's versions in order.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from uuid import uuid4

import pytest

from django_eventsource import EventStore
from django_eventsource.models import Event
from tests.helpers import start_worker

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def read_concurrently(store: EventStore, writers: list, page: int) -> list[tuple]:
    """Follow the store until every writer has exited and a final read is empty."""
    seen: list[tuple] = []
    position = 0
    while True:
        done = all(w.poll() is not None for w in writers)
        result = store.read_all(from_position=position, limit=page)
        seen += [(e.position, e.aggregate_id, e.aggregate_version) for e in result]
        position = result.last_position
        if done and not result.events:
            return seen
        if not result.events:
            time.sleep(0.001)


@pytest.mark.parametrize("page", [1, 7, 100])
def test_resuming_reader_never_skips_or_repeats(child_db_url: str, vendor: str, page: int) -> None:
    shared = [str(uuid4()) for _ in range(3)]
    writers_count, appends = (4, 40) if vendor == "postgresql" else (3, 15)
    writers = [
        start_worker(
            child_db_url, "tests.concurrency.ordering_worker", n, appends, 1000 * page + n, *shared
        )
        for n in range(writers_count)
    ]
    seen = read_concurrently(EventStore(), writers, page)
    stats = []
    for w in writers:
        out, err = w.communicate(timeout=120)
        assert w.returncode == 0, err
        stats.append(json.loads(out.strip().splitlines()[-1]))

    committed = list(
        Event.objects.order_by("position").values_list(
            "position", "aggregate_id", "aggregate_version"
        )
    )
    positions = [p for p, _, _ in seen]
    assert len(positions) == len(set(positions)), "an event was delivered twice"
    missing = sorted(set(committed) - set(seen))
    assert not missing, f"{len(missing)} committed events were skipped, e.g. {missing[:5]}"
    assert sorted(seen) == committed

    versions = defaultdict(list)
    for _, stream, version in seen:
        versions[stream].append(version)
    for stream, got in versions.items():
        assert got == list(range(1, len(got) + 1)), f"stream {stream} delivered out of order"

    # The scenarios this test is about really happened.
    assert sum(s["committed"] for s in stats) > 0
    assert sum(s["rolled_back"] for s in stats) > 0
    assert sum(s["early_xid"] for s in stats) > 0
    assert sum(s["shared"] for s in stats) > 0

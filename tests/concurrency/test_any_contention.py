"""``ExpectedVersion.ANY`` never fails from contention alone (issue 12): 8 processes append
100 events each to ONE stream at once; all 800 succeed, at versions 1..800 without a gap."""

from __future__ import annotations

import json
from pathlib import Path
from uuid import uuid4

import pytest

from django_eventsource import EventStore
from tests.helpers import start_worker

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

WRITERS = 8
APPENDS = 100


def test_any_appends_from_many_processes_all_succeed(child_db_url: str, tmp_path: Path) -> None:
    stream = uuid4()
    go = tmp_path / "go"
    workers = [
        start_worker(child_db_url, "tests.concurrency.any_worker", stream, n, APPENDS, go)
        for n in range(WRITERS)
    ]
    try:
        for worker in workers:
            assert worker.stdout is not None
            line = worker.stdout.readline()
            assert line.strip() == "ready", worker.communicate(timeout=30)[1]
        go.touch()
        results = []
        for worker in workers:
            out, err = worker.communicate(timeout=300)
            assert worker.returncode == 0, err
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    assert [r["errors"] for r in results] == [[]] * WRITERS
    assert sum(r["ok"] for r in results) == WRITERS * APPENDS
    stream_events = EventStore().read_stream(stream).events
    assert [e.aggregate_version for e in stream_events] == list(range(1, WRITERS * APPENDS + 1))
    written = sorted((e.event.writer, e.event.seq) for e in stream_events)  # type: ignore[attr-defined]
    assert written == [(w, s) for w in range(WRITERS) for s in range(APPENDS)]

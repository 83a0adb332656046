"""A process that appends to one stream with ``ExpectedVersion.ANY``: ``python -m
tests.concurrency.any_worker <stream id> <writer> <appends> <go file>``.

It connects, prints ``ready``, waits until ``<go file>`` exists (so that every writer starts
at once), appends ``<appends>`` single ``Counted`` events and prints one JSON line:
``{"ok": <successes>, "errors": [<exception class and message>, ...]}``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from uuid import UUID


def main(stream: str, writer: str, appends: str, go_file: str) -> None:
    import django

    django.setup()
    from django.db import connection

    from django_eventsource import EventStore, ExpectedVersion
    from tests.testapp.events import Counted

    store = EventStore()
    connection.ensure_connection()
    print("ready", flush=True)
    go = Path(go_file)
    deadline = time.monotonic() + 60
    while not go.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{go} never appeared")
        time.sleep(0.001)
    aggregate = UUID(stream)
    ok, errors = 0, []
    for seq in range(int(appends)):
        event = Counted(aggregate_id=aggregate, writer=int(writer), seq=seq)
        try:
            store.append(aggregate, [event], expected_version=ExpectedVersion.ANY)
            ok += 1
        except Exception as exc:  # noqa: BLE001 - reported to the test, which fails on it
            errors.append(f"{type(exc).__name__}: {exc}")
    print(json.dumps({"ok": ok, "errors": errors}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])

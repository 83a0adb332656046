"""A writer process for the inline-row tests: ``python -m tests.concurrency.inline_rows_writer``.

``race GO TENANTS WRITER``: races other writers to create new inline rows. ``until STOP
SEED TENANT…``: appends one TaskCreated per transaction to a random tenant (half of the
transactions take their id early, by writing a Note first) until the STOP file exists (at
most five minutes).

``race``: the go file (every writer waits until it exists, so that they start together),
the number of tenants, and the writer's id. Each writer registers ``InlineTenantTotal`` and
appends one TaskCreated for tenant ``n0``, then ``n1``, … in the same order as every other
writer, each in a transaction that stays open a few milliseconds after the append, so each
tenant's ``TenantStats`` row is new and several appends try to create it at once. Prints a
JSON summary.
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path
from uuid import uuid4


def main(argv: list[str]) -> None:
    import django

    django.setup()
    from django.db import transaction

    from django_eventsource import EventStore
    from tests.concurrency.inline_rows import register
    from tests.testapp.events import TaskCreated

    register()
    if argv[0] == "until":
        until(Path(argv[1]), int(argv[2]), argv[3:])
        return
    go, tenants, writer = Path(argv[1]), int(argv[2]), int(argv[3])
    store = EventStore()
    deadline = time.monotonic() + 120
    while not go.exists():
        if time.monotonic() > deadline:
            raise SystemExit("the go file never appeared")
        time.sleep(0.01)
    for n in range(tenants):
        task = uuid4()
        with transaction.atomic():
            store.append(
                task, [TaskCreated(aggregate_id=task, tenant_id=f"n{n}", title=f"{writer}")]
            )
            time.sleep(0.005)  # the new row stays uncommitted a while: others arrive meanwhile
    print(json.dumps({"writer": writer, "appended": tenants}))


def until(stop: Path, seed: int, tenants: list[str]) -> None:
    from django.db import transaction

    from django_eventsource import EventStore
    from tests.testapp.events import TaskCreated
    from tests.testapp.models import Note

    rng = random.Random(seed)
    store = EventStore()
    appended = 0
    deadline = time.monotonic() + 300  # a test that died never touches STOP
    while not stop.exists() and time.monotonic() < deadline:
        task = uuid4()
        with transaction.atomic():
            if rng.random() < 0.5:
                Note.objects.create(text=f"{seed}-{appended}")
                time.sleep(rng.uniform(0, 0.005))
            tenant = rng.choice(tenants)
            store.append(task, [TaskCreated(aggregate_id=task, tenant_id=tenant, title="u")])
        appended += 1
        time.sleep(rng.uniform(0.01, 0.03))  # a busy application, not a tight loop
    print(json.dumps({"appended": appended}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])

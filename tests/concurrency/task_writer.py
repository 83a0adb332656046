"""A writer of task events for the read-side tests: ``python -m tests.concurrency.task_writer``.

Arguments: writer id, number of transactions, random seed, then the tenants to write to.
Each transaction, at random: first writes a Note (so it takes its transaction id early) and
sleeps; creates a task or continues one of its own (renames, completes), with one to three
events in one append; sleeps before committing; or rolls back. Tenants are shared by all
writers, so per-tenant rows are fed by many concurrent streams. Prints a JSON summary.
"""

from __future__ import annotations

import json
import random
import sys
import time
from uuid import UUID, uuid4


class Rollback(Exception):
    pass


def main(argv: list[str]) -> None:
    import django

    django.setup()
    from django.db import transaction

    from django_eventsource import DomainEvent, EventStore
    from tests.testapp.events import TaskCompleted, TaskCreated, TaskRenamed
    from tests.testapp.models import Note

    writer, transactions, seed = int(argv[0]), int(argv[1]), int(argv[2])
    tenants = argv[3:] or [""]
    rng = random.Random(seed)
    store = EventStore()
    #: This writer's open tasks: (tenant, task id) -> version.
    tasks: dict[tuple[str, UUID], int] = {}
    stats = {"committed": 0, "rolled_back": 0, "early_xid": 0, "multi_event": 0, "events": 0}
    for seq in range(transactions):
        pending: dict[tuple[str, UUID], int] = {}
        try:
            with transaction.atomic():
                if rng.random() < 0.5:
                    Note.objects.create(text=f"{writer}-{seq}")
                    stats["early_xid"] += 1
                    time.sleep(rng.uniform(0, 0.01))
                if tasks and rng.random() < 0.5:
                    (tenant, task), version = rng.choice(sorted(tasks.items()))
                    events: list[DomainEvent] = [
                        TaskRenamed(aggregate_id=task, tenant_id=tenant, title=f"{writer}-{seq}")
                        for _ in range(rng.randint(0, 2))
                    ]
                    finish = rng.random() < 0.4 or not events
                    if finish:
                        events.append(TaskCompleted(aggregate_id=task, tenant_id=tenant))
                else:
                    tenant, task, version, finish = rng.choice(tenants), uuid4(), 0, False
                    events = [TaskCreated(aggregate_id=task, tenant_id=tenant, title="new")]
                    if rng.random() < 0.3:
                        events.append(
                            TaskRenamed(aggregate_id=task, tenant_id=tenant, title="renamed")
                        )
                store.append(task, events, expected_version=version)
                pending[(tenant, task)] = -1 if finish else version + len(events)
                time.sleep(rng.uniform(0, 0.01))
                if rng.random() < 0.1:
                    raise Rollback
        except Rollback:
            stats["rolled_back"] += 1
            continue
        for key, version in pending.items():
            if version < 0:
                tasks.pop(key, None)
            else:
                tasks[key] = version
        stats["committed"] += 1
        stats["events"] += len(events)
        stats["multi_event"] += len(events) > 1
    print(json.dumps(stats))


if __name__ == "__main__":
    main(sys.argv[1:])

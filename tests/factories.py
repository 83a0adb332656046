"""Event histories for tests, appended through the public store API."""

from __future__ import annotations

import random
from uuid import UUID, uuid4

from django_eventsource import BaseEventStore
from tests.testapp.events import TaskCompleted, TaskCreated, TaskRenamed


def task_history(
    store: BaseEventStore,
    *,
    tasks: int = 10,
    renames: int = 3,
    tenants: tuple[str | None, ...] = (None,),
    seed: int = 0,
) -> list[UUID]:
    """Append a created / renamed x N / completed history for ``tasks`` tasks, interleaved."""
    rng = random.Random(seed)
    pending: list[tuple[UUID, str | None, list]] = []
    for n in range(tasks):
        task, tenant = uuid4(), tenants[n % len(tenants)]
        events = [TaskCreated(aggregate_id=task, title=f"task {n}", tenant_id=tenant)]
        events += [
            TaskRenamed(aggregate_id=task, title=f"task {n} v{r}", tenant_id=tenant)
            for r in range(rng.randint(0, renames))
        ]
        if rng.random() < 0.7:
            events.append(TaskCompleted(aggregate_id=task, tenant_id=tenant))
        pending.append((task, tenant, events))
    ids = [task for task, _, _ in pending]
    while pending:
        index = rng.randrange(len(pending))
        task, tenant, events = pending[index]
        take = rng.randint(1, 2)
        store.append(task, events[:take])
        del events[:take]
        if not events:
            pending.pop(index)
    return ids

"""Event factories and histories for tests, appended through the public store API."""

from __future__ import annotations

import random
from uuid import UUID

import factory

from django_eventsource import BaseEventStore, DomainEvent
from django_eventsource.testing import DomainEventFactory, given_events, stream
from tests.testapp.events import TaskCompleted, TaskCreated, TaskRenamed


class TaskCreatedFactory(DomainEventFactory):
    class Meta:
        model = TaskCreated

    title = factory.Sequence(lambda n: f"task {n}")


class TaskRenamedFactory(DomainEventFactory):
    class Meta:
        model = TaskRenamed

    title = factory.Sequence(lambda n: f"renamed {n}")


class TaskCompletedFactory(DomainEventFactory):
    class Meta:
        model = TaskCompleted


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
    pending: list[list[DomainEvent]] = []
    for n in range(tasks):
        events = [TaskCreatedFactory.build(title=f"task {n}")]
        events += [
            TaskRenamedFactory.build(title=f"task {n} v{r}")
            for r in range(rng.randint(0, renames))
        ]
        if rng.random() < 0.7:
            events.append(TaskCompletedFactory.build())
        pending.append(stream(*events, tenant_id=tenants[n % len(tenants)]))
    ids = [events[0].aggregate_id for events in pending]
    while pending:  # interleave the tasks, one or two events at a time
        index = rng.randrange(len(pending))
        events = pending[index]
        take = rng.randint(1, 2)
        given_events(store, *events[:take])
        del events[:take]
        if not events:
            pending.pop(index)
    return ids

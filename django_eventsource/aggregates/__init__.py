"""Aggregates: state rebuilt from one stream's events, saved with optimistic concurrency.

An [`AggregateRoot`][django_eventsource.AggregateRoot] is the write side of one stream. Its *command* methods check the
rules and [`record`][django_eventsource.aggregates.AggregateRoot.record] new events; its *applier* methods, marked with
[`applies`][django_eventsource.applies], change the state from an event and nothing else. Loading replays the stream
through the appliers; recording applies the new event at once, so a command sees its own
effect.

A [`Repository`][django_eventsource.Repository] loads and saves one aggregate class through an event store. ``save()``
appends the recorded events with ``expected_version`` = the version the aggregate was loaded
at, so a concurrent save of the same aggregate raises
[`ConcurrencyError`][django_eventsource.ConcurrencyError] and writes nothing; ``update()`` retries a
command on a fresh load when that happens.

Snapshots are optional per aggregate class (``snapshot_every = N``). They are an optimisation
only, never a source of truth: a snapshot of another ``snapshot_version``, one that does not
validate, or one whose version the stream does not hold is ignored, the aggregate is rebuilt
from its events, and the next save writes a fresh one.

Why ``@applies(EventType)`` and not ``apply_<EventType>`` naming: the decorator is the same
mechanism as the projections' [`handles`][django_eventsource.handles] (one idiom to learn); it
takes the event *class*, so renaming a class or its ``event_type`` cannot silently orphan a
handler (a name-based method would simply never be called again); the handler table is built
and checked once, at class creation (two appliers for one type fail at import); and
[`AggregateRoot.handled_types`][django_eventsource.aggregates.AggregateRoot.handled_types] lists it for documentation and tests.
"""

from __future__ import annotations

from django_eventsource.aggregates.repository import Repository
from django_eventsource.aggregates.root import AggregateRoot, applies
from django_eventsource.aggregates.snapshots import (
    DatabaseSnapshotStore,
    InMemorySnapshotStore,
    SnapshotRecord,
    SnapshotStore,
)

__all__ = [
    "AggregateRoot",
    "DatabaseSnapshotStore",
    "InMemorySnapshotStore",
    "Repository",
    "SnapshotRecord",
    "SnapshotStore",
    "applies",
]

"""The caller's own events carry what the store gave them: position and version.

The tutorial checks ``hasattr(event, 'position')`` on the event it appended; that works with
the very object passed to ``append``, only once it is stored, on both stores.
"""

from __future__ import annotations

from uuid import uuid4

import pytest

from django_eventsource import BaseEventStore, ConcurrencyError, ExpectedVersion, StoredEvent
from tests.testapp.events import TaskCompleted, TaskCreated, TaskRenamed

pytestmark = pytest.mark.django_db(transaction=True)


class HookFailed(Exception):
    pass


def failing_hook(store: BaseEventStore, stored: list[StoredEvent]) -> None:
    # The events were stamped inside the append; the failure rolls it back.
    assert all(s.event.position == s.position for s in stored)
    raise HookFailed


def test_appended_events_carry_their_position_and_version(any_store: BaseEventStore) -> None:
    task = uuid4()
    events = [TaskCreated(aggregate_id=task, title="A"), TaskRenamed(aggregate_id=task, title="B")]
    assert not any(hasattr(e, "position") for e in events)
    assert [e.aggregate_version for e in events] == [0, 0]

    stored = any_store.append(task, events, expected_version=ExpectedVersion.NO_STREAM)

    assert [e.position for e in events] == [s.position for s in stored]
    assert [e.aggregate_version for e in events] == [1, 2]
    assert [s.event for s in stored] == events
    assert all(s.event is e for s, e in zip(stored, events, strict=True))
    # What the caller holds equals what a reader gets back.
    assert [s.event for s in any_store.read_stream(task)] == events
    assert [s.event for s in any_store.read_all() if s.aggregate_id == task] == events


#: Every field of a StoredEvent (its ``==`` compares position and event id alone).
FIELDS = (
    "position",
    "event_id",
    "event_type",
    "schema_version",
    "tenant_id",
    "aggregate_id",
    "aggregate_type",
    "aggregate_version",
    "payload",
    "metadata",
    "correlation_id",
    "causation_id",
    "occurred_at",
    "recorded_at",
)


@pytest.mark.parametrize("explicit", [False, True], ids=["versions assigned", "versions given"])
def test_the_stored_events_an_append_returns_are_the_ones_read_back(
    any_store: BaseEventStore, explicit: bool
) -> None:
    # The returned StoredEvents are built from the caller's events and the statement's rows,
    # not read back: every field must still be what a reader gets.
    task = uuid4()
    any_store.append(task, [TaskCreated(aggregate_id=task, title="A", tenant_id="acme")])
    common = {"tenant_id": "acme", "correlation_id": uuid4(), "causation_id": uuid4()}
    events = [
        TaskRenamed(
            aggregate_id=task,
            title=f"T{i}",
            metadata={"user": "ann", "i": i},
            aggregate_version=2 + i if explicit else 0,
            **common,
        )
        for i in range(3)
    ]

    stored = any_store.append(task, events, expected_version=1)
    read = any_store.read_stream(task, tenant_id="acme", from_version=1).events

    assert [s.aggregate_version for s in stored] == [2, 3, 4]
    for field in FIELDS:
        assert [getattr(s, field) for s in stored] == [getattr(r, field) for r in read], field
    assert [s.event for s in stored] == [r.event for r in read] == events


def test_an_event_appended_to_an_existing_stream_gets_the_next_version(
    any_store: BaseEventStore,
) -> None:
    task = uuid4()
    any_store.append(task, [TaskCreated(aggregate_id=task, title="A")])
    done = TaskCompleted(aggregate_id=task)
    [stored] = any_store.append(task, [done])  # ExpectedVersion.ANY
    assert (done.aggregate_version, done.position) == (2, stored.position)


def test_the_tutorials_event_with_its_version_gets_its_position(
    any_store: BaseEventStore,
) -> None:
    event = TaskCreated(aggregate_id=uuid4(), title="Task 1", aggregate_version=1)
    assert not hasattr(event, "position")
    [stored] = any_store.append(event.aggregate_id, [event], expected_version=0)
    assert hasattr(event, "position")
    assert (event.position, event.aggregate_version) == (stored.position, 1)


def test_a_refused_append_leaves_the_events_unstamped(any_store: BaseEventStore) -> None:
    task = uuid4()
    any_store.append(task, [TaskCreated(aggregate_id=task, title="A")])
    late = TaskRenamed(aggregate_id=task, title="B")
    with pytest.raises(ConcurrencyError):
        any_store.append(task, [late], expected_version=0)
    assert not hasattr(late, "position")
    assert late.aggregate_version == 0


def test_an_append_rolled_back_by_a_hook_leaves_the_events_unstamped(
    any_store: BaseEventStore,
) -> None:
    task = uuid4()
    events = [TaskCreated(aggregate_id=task, title="A"), TaskRenamed(aggregate_id=task, title="B")]
    any_store.after_append.append(failing_hook)
    with pytest.raises(HookFailed):
        any_store.append(task, events)
    assert not any(hasattr(e, "position") for e in events)
    assert [e.aggregate_version for e in events] == [0, 0]
    assert any_store.stream_version(task) == 0

    # The same objects can be appended once the cause is gone.
    any_store.after_append.remove(failing_hook)
    stored = any_store.append(task, events)
    assert [(e.position, e.aggregate_version) for e in events] == [
        (s.position, s.aggregate_version) for s in stored
    ]


def test_an_exact_repeat_gives_the_events_the_stored_positions(any_store: BaseEventStore) -> None:
    task = uuid4()
    first = [TaskCreated(aggregate_id=task, title="A"), TaskRenamed(aggregate_id=task, title="B")]
    stored = any_store.append(task, first, expected_version=0)
    # The same events again (a client retrying after a lost reply), as new, unstored objects.
    again = [e.model_copy(update={"aggregate_version": 0}) for e in first]
    for event in again:
        event._position = None
    assert not any(hasattr(e, "position") for e in again)
    assert any_store.append(task, again, expected_version=0) == stored
    assert [(e.position, e.aggregate_version) for e in again] == [
        (s.position, s.aggregate_version) for s in stored
    ]

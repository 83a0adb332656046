"""The event-store contract, run against both InMemoryEventStore and EventStore."""

from __future__ import annotations

from uuid import uuid4

import pytest

from django_eventsource import (
    BaseEventStore,
    ConcurrencyError,
    ExpectedVersion,
    PositionNotFound,
    UnknownEventType,
)
from django_eventsource.events import DomainEvent
from tests.helpers import run_async
from tests.testapp.events import TaskCompleted, TaskCreated, TaskRenamed

pytestmark = pytest.mark.django_db(transaction=True)


def created(aggregate_id=None, title="Task", **kwargs):
    return TaskCreated(aggregate_id=aggregate_id or uuid4(), title=title, **kwargs)


def test_append_assigns_versions_and_positions(any_store: BaseEventStore) -> None:
    task = uuid4()
    stored = any_store.append(
        task,
        [created(task), TaskRenamed(aggregate_id=task, title="B")],
        expected_version=ExpectedVersion.NO_STREAM,
    )
    assert [s.aggregate_version for s in stored] == [1, 2]
    assert [s.event.aggregate_version for s in stored] == [1, 2]
    assert stored[0].position < stored[1].position
    assert [s.event.position for s in stored] == [s.position for s in stored]
    assert any_store.stream_version(task) == 2
    assert any_store.head_position() == stored[1].position


def test_tutorial_style_event_with_explicit_version(any_store: BaseEventStore) -> None:
    event = TaskCreated(aggregate_id=uuid4(), title="Task 1", aggregate_version=1)
    [stored] = any_store.append(event.aggregate_id, [event], expected_version=0)
    assert stored.aggregate_version == 1
    assert stored.event == event
    assert stored.event.title == "Task 1"


def test_wrong_expected_version_raises_and_writes_nothing(any_store: BaseEventStore) -> None:
    task = uuid4()
    any_store.append(task, [created(task)], expected_version=0)
    head = any_store.head_position()
    with pytest.raises(ConcurrencyError) as info:
        any_store.append(task, [TaskRenamed(aggregate_id=task, title="x")], expected_version=0)
    assert info.value.expected_version == 0
    assert info.value.actual_version == 1
    assert info.value.aggregate_id == task
    assert "version 1" in str(info.value)
    with pytest.raises(ConcurrencyError):
        any_store.append(task, [TaskRenamed(aggregate_id=task, title="x")], expected_version=5)
    assert any_store.head_position() == head
    assert any_store.stream_version(task) == 1


def test_no_stream_and_stream_exists(any_store: BaseEventStore) -> None:
    task = uuid4()
    with pytest.raises(ConcurrencyError) as info:
        any_store.append(task, [created(task)], expected_version=ExpectedVersion.STREAM_EXISTS)
    assert info.value.actual_version == 0
    any_store.append(task, [created(task)], expected_version=ExpectedVersion.NO_STREAM)
    with pytest.raises(ConcurrencyError):
        any_store.append(task, [created(task)], expected_version=ExpectedVersion.NO_STREAM)
    stored = any_store.append(
        task, [TaskCompleted(aggregate_id=task)], expected_version=ExpectedVersion.STREAM_EXISTS
    )
    assert stored[0].aggregate_version == 2


def test_any_version_appends_after_the_current_version(any_store: BaseEventStore) -> None:
    task = uuid4()
    any_store.append(task, [created(task)])
    stored = any_store.append(task, [TaskCompleted(aggregate_id=task)])
    assert stored[0].aggregate_version == 2


def test_multi_event_append_is_atomic(any_store: BaseEventStore) -> None:
    task = uuid4()
    any_store.append(task, [created(task)], expected_version=0)
    head = any_store.head_position()
    with pytest.raises(ConcurrencyError):
        any_store.append(
            task,
            [TaskRenamed(aggregate_id=task, title="a"), TaskCompleted(aggregate_id=task)],
            expected_version=0,
        )
    assert any_store.head_position() == head
    assert [e.aggregate_version for e in any_store.read_stream(task)] == [1]


def test_bad_input_is_rejected_before_writing(any_store: BaseEventStore) -> None:
    task = uuid4()
    with pytest.raises(ValueError, match="one append writes one stream"):
        any_store.append(task, [created(uuid4())])
    with pytest.raises(TypeError, match="list of events"):
        any_store.append(task, created(task))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not a DomainEvent"):
        any_store.append(task, [{"title": "x"}])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="expected_version"):
        any_store.append(task, [created(task)], expected_version=-7)
    with pytest.raises(ValueError, match="share one tenant_id"):
        any_store.append(task, [created(task, tenant_id="a"), created(task, tenant_id="b")])
    with pytest.raises(ValueError, match="implies"):
        any_store.append(task, [created(task, aggregate_version=3)], expected_version=0)
    assert any_store.head_position() == 0


def test_unregistered_event_type_is_refused(any_store: BaseEventStore) -> None:
    class NotRegistered(DomainEvent):
        pass

    task = uuid4()
    with pytest.raises(UnknownEventType, match="NotRegistered"):
        any_store.append(task, [NotRegistered(aggregate_id=task)])
    assert any_store.head_position() == 0


def test_empty_append_is_a_no_op(any_store: BaseEventStore) -> None:
    assert any_store.append(uuid4(), []) == []
    assert any_store.head_position() == 0


def test_read_stream(any_store: BaseEventStore) -> None:
    a, b = uuid4(), uuid4()
    any_store.append(a, [created(a, "a1")])
    any_store.append(b, [created(b, "b1")])
    any_store.append(a, [TaskRenamed(aggregate_id=a, title="a2"), TaskCompleted(aggregate_id=a)])
    stream = any_store.read_stream(a)
    assert [e.aggregate_version for e in stream] == [1, 2, 3]
    assert [type(e.event) for e in stream] == [TaskCreated, TaskRenamed, TaskCompleted]
    assert [e.aggregate_version for e in any_store.read_stream(a, from_version=1)] == [2, 3]
    assert [e.aggregate_version for e in any_store.read_stream(a, limit=2)] == [1, 2]
    assert len(any_store.read_stream(uuid4())) == 0


def test_read_all_is_strictly_after_from_position(any_store: BaseEventStore) -> None:
    ids = [uuid4() for _ in range(5)]
    for task in ids:
        any_store.append(task, [created(task)])
    everything = any_store.read_all()
    assert [e.aggregate_id for e in everything] == ids
    positions = [e.position for e in everything]
    assert positions == sorted(positions)
    assert any_store.read_all(from_position=0).events == everything.events
    rest = any_store.read_all(from_position=positions[1])
    assert [e.position for e in rest] == positions[2:]
    assert rest.last_position == positions[-1]
    assert len(any_store.read_all(from_position=positions[-1])) == 0
    assert any_store.read_all(from_position=positions[-1]).last_position == positions[-1]


def test_read_all_in_pages(any_store: BaseEventStore) -> None:
    for _ in range(7):
        task = uuid4()
        any_store.append(task, [created(task)])
    seen, position = [], 0
    while True:
        page = any_store.read_all(from_position=position, limit=3)
        seen += [e.position for e in page]
        position = page.last_position
        if not page.limited:
            break
    assert seen == [e.position for e in any_store.read_all()]
    assert len(seen) == 7


def test_read_all_filters(any_store: BaseEventStore) -> None:
    a, b = uuid4(), uuid4()
    any_store.append(
        a, [created(a, tenant_id="acme"), TaskCompleted(aggregate_id=a, tenant_id="acme")]
    )
    any_store.append(b, [created(b, tenant_id="globex")])
    assert [e.event_type for e in any_store.read_all(event_types=[TaskCompleted])] == [
        "TaskCompleted"
    ]
    assert len(any_store.read_all(event_types=["TaskCreated"])) == 2
    assert len(any_store.read_all(event_types=[])) == 0
    acme = any_store.read_all(tenant_id="acme")
    assert {e.tenant_id for e in acme} == {"acme"}
    assert len(acme) == 2


def test_tenants_have_separate_streams(any_store: BaseEventStore) -> None:
    task = uuid4()
    any_store.append(task, [created(task, tenant_id="acme")], expected_version=0)
    any_store.append(task, [created(task, tenant_id="globex")], expected_version=0)
    assert any_store.stream_version(task, tenant_id="acme") == 1
    assert any_store.stream_version(task, tenant_id="globex") == 1
    assert any_store.stream_version(task) == 0
    [event] = any_store.read_stream(task, tenant_id="acme")
    assert event.tenant_id == "acme"
    assert event.event.tenant_id == "acme"


def test_unknown_position_raises(any_store: BaseEventStore) -> None:
    task = uuid4()
    any_store.append(task, [created(task)])
    with pytest.raises(PositionNotFound):
        any_store.read_all(from_position=10_000)


def test_round_trip_keeps_the_envelope(any_store: BaseEventStore) -> None:
    task, corr, cause = uuid4(), uuid4(), uuid4()
    event = TaskCreated(
        aggregate_id=task,
        title="ünïcode ✓ <b>",
        tenant_id="acme",
        correlation_id=corr,
        causation_id=cause,
        metadata={"user": 7, "ip": "127.0.0.1"},
    )
    any_store.append(task, [event])
    [stored] = any_store.read_all()
    got = stored.event
    assert got.model_dump(exclude={"aggregate_version"}) == event.model_dump(
        exclude={"aggregate_version"}
    )
    assert stored.metadata == {"user": 7, "ip": "127.0.0.1"}
    assert stored.payload == {"title": "ünïcode ✓ <b>"}
    assert stored.recorded_at.tzinfo is not None


def test_async_twins(any_store: BaseEventStore) -> None:
    async def scenario() -> tuple[int, int, int, int]:
        task = uuid4()
        stored = await any_store.aappend(task, [created(task)], expected_version=0)
        everything = await any_store.aread_all()
        stream = await any_store.aread_stream(task)
        return (
            len(everything),
            len(stream),
            await any_store.astream_version(task),
            await any_store.ahead_position() - stored[0].position,
        )

    assert run_async(scenario()) == (1, 1, 1, 0)

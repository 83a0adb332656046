"""The checkpointed-projection tutorial, translated line by line to django-eventsource.

How the tutorial's names map to ours:

* ``@register_event class TaskCreated(DomainEvent)``: the test app registers exactly this
  class (same ``event_type``, ``aggregate_type`` and ``title`` fields) in
  ``tests/testapp/events.py``; it is reused here, since registering a second class under the
  name ``"TaskCreated"`` is refused.
* ``DeclarativeProjection``, ``@handles``, ``InMemoryEventStore``, ``InMemoryCheckpointStore``:
  the same names, from ``django_eventsource``. ``EventStore`` and
  ``DatabaseCheckpointStore`` are their database-backed twins.
* ``await store.append(...)`` / ``await projection.handle(...)`` /
  ``await checkpoint_store.save(...)`` / ``await checkpoint_store.load(...)``: our sync API
  is ``append`` / ``handle`` / ``save`` / ``load``, and the async twins are ``aappend`` /
  ``ahandle`` / ``asave`` / ``aload``.
* ``hasattr(event, 'position')``: ``DomainEvent.position`` raises ``AttributeError`` until the
  store has given the event a position, so the test works as written.
* ``async def _truncate_read_models(self)``: our hook is a plain method with an optional
  ``tenant_id`` (rebuilds also await an ``async def`` one); it is a plain method here.

The tutorial as written, with ``django_eventsource.aio``, runs in test_tutorial_verbatim.py.
* The tutorial's projection sets no ``name``, so it is not registered with the runner.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID, uuid4

import pytest
from asgiref.sync import sync_to_async

from django_eventsource import (
    BaseEventStore,
    CheckpointStore,
    DatabaseCheckpointStore,
    DeclarativeProjection,
    EventStore,
    InMemoryCheckpointStore,
    InMemoryEventStore,
    handles,
    projection_registry,
)
from tests.helpers import run_async as run
from tests.helpers import settled
from tests.testapp.events import TaskCreated

# On PostgreSQL read_all() only returns committed events (its ordering horizon excludes
# transactions still in progress, the test's own included): commit for real.
pytestmark = pytest.mark.django_db(transaction=True)


class CheckpointedProjection(DeclarativeProjection):
    def __init__(self, checkpoint_store: CheckpointStore, projection_id: str = "main") -> None:
        super().__init__()
        self.checkpoint_store = checkpoint_store
        self.projection_id = projection_id
        self.tasks: dict[UUID, str] = {}

    @handles(TaskCreated)
    def _on_created(self, event: TaskCreated) -> None:
        self.tasks[event.aggregate_id] = event.title
        if hasattr(event, "position"):
            self.checkpoint_store.save(self.projection_id, event.position)

    def _truncate_read_models(self, tenant_id: str | None = None) -> None:
        self.tasks.clear()

    def resume(self, event_store: BaseEventStore) -> int:
        """Apply every event after the saved checkpoint; returns how many were handled."""
        position = self.checkpoint_store.load(self.projection_id)
        handled = 0
        for stored in event_store.read_all(from_position=position):
            handled += self.handle(stored)
        return handled


class AsyncCheckpointedProjection(DeclarativeProjection):
    def __init__(self, checkpoint_store: CheckpointStore, projection_id: str = "main") -> None:
        super().__init__()
        self.checkpoint_store = checkpoint_store
        self.projection_id = projection_id
        self.tasks: dict[UUID, str] = {}

    @handles(TaskCreated)
    async def _on_created(self, event: TaskCreated) -> None:
        self.tasks[event.aggregate_id] = event.title
        if hasattr(event, "position"):
            await self.checkpoint_store.asave(self.projection_id, event.position)

    def _truncate_read_models(self, tenant_id: str | None = None) -> None:
        self.tasks.clear()

    async def resume(self, event_store: BaseEventStore) -> int:
        position = await self.checkpoint_store.aload(self.projection_id)
        handled = 0
        for stored in await event_store.aread_all(from_position=position):
            handled += await self.ahandle(stored)
        return handled


def main(store: BaseEventStore, checkpoint_store: CheckpointStore) -> CheckpointedProjection:
    projection = CheckpointedProjection(checkpoint_store)
    for i in range(5):
        event = TaskCreated(aggregate_id=uuid4(), title=f"Task {i + 1}", aggregate_version=1)
        store.append(event.aggregate_id, [event], expected_version=0)
        projection.handle(event)
    position = checkpoint_store.load("main")
    print(f"Checkpoint: {position}")
    print(f"Tasks processed: {len(projection.tasks)}")
    return projection


async def amain(
    store: BaseEventStore, checkpoint_store: CheckpointStore
) -> AsyncCheckpointedProjection:
    projection = AsyncCheckpointedProjection(checkpoint_store)
    for i in range(5):
        event = TaskCreated(aggregate_id=uuid4(), title=f"Task {i + 1}", aggregate_version=1)
        await store.aappend(event.aggregate_id, [event], expected_version=0)
        await projection.ahandle(event)
    position = await checkpoint_store.aload("main")
    print(f"Checkpoint: {position}")
    print(f"Tasks processed: {len(projection.tasks)}")
    return projection


STORES = {
    "memory": (InMemoryEventStore, InMemoryCheckpointStore),
    "database": (EventStore, DatabaseCheckpointStore),
}


@pytest.fixture(params=list(STORES))
def stores(request: pytest.FixtureRequest) -> tuple[BaseEventStore, CheckpointStore]:
    event_store, checkpoint_store = STORES[request.param]
    return event_store(), checkpoint_store()


def printed(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().out.splitlines()


def test_the_tutorial_projection_is_not_registered() -> None:
    assert CheckpointedProjection not in projection_registry
    assert CheckpointedProjection.handled_types() == {"TaskCreated"}
    assert AsyncCheckpointedProjection.handled_types() == {"TaskCreated"}


def test_in_memory_tutorial_prints_checkpoint_5(capsys: pytest.CaptureFixture[str]) -> None:
    store, checkpoint_store = InMemoryEventStore(), InMemoryCheckpointStore()
    projection = main(store, checkpoint_store)
    assert printed(capsys) == ["Checkpoint: 5", "Tasks processed: 5"]
    assert sorted(projection.tasks.values()) == [f"Task {i}" for i in range(1, 6)]


def test_tutorial(
    stores: tuple[BaseEventStore, CheckpointStore], capsys: pytest.CaptureFixture[str]
) -> None:
    store, checkpoint_store = stores
    projection = main(store, checkpoint_store)
    last = store.head_position()
    assert printed(capsys) == [f"Checkpoint: {last}", "Tasks processed: 5"]
    settled()
    assert [e.position for e in store.read_all()][-1] == last
    assert len(store.read_all()) >= 5
    assert set(projection.tasks.values()) == {f"Task {i}" for i in range(1, 6)}


def test_async_tutorial(
    stores: tuple[BaseEventStore, CheckpointStore], capsys: pytest.CaptureFixture[str]
) -> None:
    store, checkpoint_store = stores
    projection = run(amain(store, checkpoint_store))
    last = store.head_position()
    assert printed(capsys) == [f"Checkpoint: {last}", "Tasks processed: 5"]
    assert checkpoint_store.load("main") == last
    assert set(projection.tasks.values()) == {f"Task {i}" for i in range(1, 6)}


def test_an_unstored_event_saves_no_checkpoint(
    stores: tuple[BaseEventStore, CheckpointStore],
) -> None:
    _store, checkpoint_store = stores
    projection = CheckpointedProjection(checkpoint_store)
    event = TaskCreated(aggregate_id=uuid4(), title="draft")
    assert projection.handle(event) is True
    assert projection.tasks == {event.aggregate_id: "draft"}
    assert checkpoint_store.load("main") is None


def test_an_appended_event_knows_its_position(
    stores: tuple[BaseEventStore, CheckpointStore],
) -> None:
    store, _ = stores
    event = TaskCreated(aggregate_id=uuid4(), title="Task 1", aggregate_version=1)
    assert not hasattr(event, "position")
    [stored] = store.append(event.aggregate_id, [event], expected_version=0)
    assert stored.event.position == stored.position
    assert event.position == stored.position


def test_a_restarted_projection_resumes_from_its_checkpoint(
    stores: tuple[BaseEventStore, CheckpointStore], capsys: pytest.CaptureFixture[str]
) -> None:
    store, checkpoint_store = stores
    main(store, checkpoint_store)
    checkpoint = checkpoint_store.load("main")
    assert printed(capsys)[0] == f"Checkpoint: {checkpoint}"

    # Three more tasks are appended while the projection is down.
    later: dict[Any, str] = {}
    for i in range(6, 9):
        event = TaskCreated(aggregate_id=uuid4(), title=f"Task {i}", aggregate_version=1)
        store.append(event.aggregate_id, [event], expected_version=0)
        later[event.aggregate_id] = event.title

    settled()
    restarted = CheckpointedProjection(checkpoint_store)
    assert restarted.resume(store) == 3  # only what came after the checkpoint
    assert restarted.tasks == later
    assert checkpoint_store.load("main") == store.head_position()
    assert restarted.resume(store) == 0  # nothing new: nothing handled twice


def test_a_projection_without_a_checkpoint_resumes_from_the_start() -> None:
    store, checkpoint_store = InMemoryEventStore(), InMemoryCheckpointStore()
    for i in range(3):
        event = TaskCreated(aggregate_id=uuid4(), title=f"Task {i}", aggregate_version=1)
        store.append(event.aggregate_id, [event], expected_version=0)
    projection = CheckpointedProjection(checkpoint_store)
    assert projection.resume(store) == 3
    assert checkpoint_store.load("main") == 3
    projection._truncate_read_models()
    assert projection.tasks == {}


def test_async_resume(stores: tuple[BaseEventStore, CheckpointStore]) -> None:
    store, checkpoint_store = stores

    async def scenario() -> tuple[int, int, dict[Any, str]]:
        await amain(store, checkpoint_store)
        later = {}
        for i in range(6, 8):
            event = TaskCreated(aggregate_id=uuid4(), title=f"Task {i}", aggregate_version=1)
            await store.aappend(event.aggregate_id, [event], expected_version=0)
            later[event.aggregate_id] = event.title
        await sync_to_async(settled)()
        restarted = AsyncCheckpointedProjection(checkpoint_store)
        handled = await restarted.resume(store)
        assert restarted.tasks == later
        return handled, await restarted.resume(store), later

    handled, again, _later = run(scenario())
    assert (handled, again) == (2, 0)
    assert checkpoint_store.load("main") == store.head_position()

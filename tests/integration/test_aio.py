"""django_eventsource.aio: the tutorial's awaitable face of the same objects.

The tutorial itself runs verbatim in tests/test_tutorial_verbatim.py; these tests pin what a
user mixing both faces meets: one event registry and one projection registry, the runner and
rebuilds running aio projections, the sync API refusing aio stores, signatures that follow
the sync face, and a handler's awaited database calls inside the projection's transaction.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar
from uuid import UUID, uuid4

import pytest
from asgiref.sync import sync_to_async
from django.db import connections

import django_eventsource as sync
from django_eventsource import (
    DeadLetter,
    ProjectionError,
    ProjectionState,
    aio,
    apply_batch,
    catch_up,
    control,
    handles,
    projection_registry,
)
from django_eventsource.rebuild import rebuild
from django_eventsource.runner import ProjectionRunner
from tests.helpers import run_async, settled
from tests.testapp.events import TaskCreated, TaskRenamed
from tests.testapp.models import TaskSummary

pytestmark = pytest.mark.django_db(transaction=True)

STORES = {
    "memory": (aio.InMemoryEventStore, aio.InMemoryCheckpointStore),
    "database": (aio.EventStore, aio.DatabaseCheckpointStore),
}


@pytest.fixture(params=list(STORES))
def stores(request: pytest.FixtureRequest) -> tuple[Any, Any]:
    event_store, checkpoint_store = STORES[request.param]
    return event_store(), checkpoint_store()


def created(title: str = "Task") -> TaskCreated:
    return TaskCreated(aggregate_id=uuid4(), title=title)


# One set of objects ------------------------------------------------------------------------


def test_the_tutorials_names_are_the_packages_objects() -> None:
    assert aio.DomainEvent is sync.DomainEvent
    assert aio.register_event is sync.register_event
    assert aio.handles is sync.handles
    assert aio.ExpectedVersion is sync.ExpectedVersion
    assert issubclass(aio.DeclarativeProjection, sync.DeclarativeProjection)
    assert sorted(aio.__all__) == aio.__all__


def test_aio_stores_wrap_sync_stores_and_are_not_sync_stores() -> None:
    pairs = [
        (aio.InMemoryEventStore(), sync.InMemoryEventStore),
        (aio.EventStore(), sync.EventStore),
        (aio.InMemoryCheckpointStore(), sync.InMemoryCheckpointStore),
        (aio.DatabaseCheckpointStore(), sync.DatabaseCheckpointStore),
    ]
    for store, sync_class in pairs:
        assert type(store.sync) is sync_class
        # The sync API would get coroutines where it expects results.
        assert not isinstance(store, sync.BaseEventStore | sync_class)
        assert not isinstance(store, sync.CheckpointStore)
    assert aio.EventStore("default").using == "default"
    assert aio.DatabaseCheckpointStore("default").using == "default"


AWAITABLE = {
    aio.InMemoryEventStore: [
        "append",
        "read_all",
        "read_stream",
        "head_position",
        "stream_version",
    ],
    aio.EventStore: ["append", "read_all", "read_stream", "head_position", "stream_version"],
    aio.InMemoryCheckpointStore: ["save", "load"],
    aio.DatabaseCheckpointStore: ["save", "load"],
    aio.DeclarativeProjection: ["handle", "ahandle", "_truncate_read_models"],
}
SYNC_TWIN = {
    aio.InMemoryEventStore: sync.InMemoryEventStore,
    aio.EventStore: sync.EventStore,
    aio.InMemoryCheckpointStore: sync.InMemoryCheckpointStore,
    aio.DatabaseCheckpointStore: sync.DatabaseCheckpointStore,
    aio.DeclarativeProjection: sync.DeclarativeProjection,
}


@pytest.mark.parametrize("cls", list(AWAITABLE), ids=lambda c: c.__name__)
def test_methods_are_awaitable_with_the_sync_faces_parameters(cls: type) -> None:
    twin = SYNC_TWIN[cls]
    for name in AWAITABLE[cls]:
        method = getattr(cls, name)
        assert inspect.iscoroutinefunction(method), name
        # Same parameters, defaults and return type as the sync method it stands for.
        sync_name = "handle" if name == "ahandle" else name
        expected = inspect.signature(getattr(twin, sync_name))
        assert inspect.signature(method) == expected, name


def test_a_named_aio_projection_joins_the_projection_registry() -> None:
    class Named(aio.DeclarativeProjection):
        name = "aio_named_test"

        @aio.handles(TaskCreated)
        async def created(self, event: TaskCreated) -> None:
            pass

    try:
        assert projection_registry.get("aio_named_test") is Named
        assert isinstance(Named(), sync.Projection)
        assert Named.handled_types() == {"TaskCreated"}
    finally:
        projection_registry.unregister("aio_named_test")


# The awaitable face at work ---------------------------------------------------------------


class Titles(aio.DeclarativeProjection):
    """The tutorial's shape: in-memory state and a checkpoint saved from the handler."""

    def __init__(self, checkpoints: Any, fail_on: str = "") -> None:
        super().__init__()
        self.checkpoints = checkpoints
        self.fail_on = fail_on
        self.titles: dict[UUID, str] = {}
        self.in_transaction: list[bool] = []

    @aio.handles(TaskCreated)
    async def created(self, event: TaskCreated) -> None:
        self.titles[event.aggregate_id] = event.title
        await self.checkpoints.save("titles", event.position)
        # The checkpoint just saved is visible to the handler (same connection) ...
        assert await self.checkpoints.load("titles") == event.position
        # ... because it runs inside the projection's transaction.
        self.in_transaction.append(
            await sync_to_async(lambda: connections["default"].in_atomic_block)()
        )
        if event.title == self.fail_on:
            raise RuntimeError("handler failed after saving its checkpoint")

    async def _truncate_read_models(self) -> None:  # the tutorial's signature
        self.titles.clear()


def test_append_read_and_handle_are_awaitable(stores: tuple[Any, Any]) -> None:
    store, checkpoints = stores

    async def scenario() -> None:
        projection = Titles(checkpoints)
        events = [created(f"Task {i}") for i in range(3)]
        for event in events:
            assert not hasattr(event, "position")
            [stored] = await store.append(event.aggregate_id, [event], expected_version=0)
            assert event.position == stored.position
            assert await projection.handle(event) is True
        assert await projection.handle(TaskRenamed(aggregate_id=uuid4(), title="x")) is False
        assert await checkpoints.load("titles") == events[-1].position
        await sync_to_async(settled)()  # PostgreSQL: see the helper
        page = await store.read_all(from_position=events[0].position)
        assert [s.event for s in page.events] == events[1:]
        stream = await store.read_stream(events[0].aggregate_id)
        assert [s.event for s in stream] == events[:1]
        assert await store.head_position() == events[-1].position
        assert await store.stream_version(events[0].aggregate_id) == 1
        assert list(projection.titles.values()) == ["Task 0", "Task 1", "Task 2"]
        await projection._truncate_read_models()
        assert projection.titles == {}

    run_async(scenario())


def test_reading_from_a_checkpoint_that_names_no_event_raises(stores: tuple[Any, Any]) -> None:
    """The tutorial's first snippet saves a made-up ``position=150``: resuming from it on a
    store with fewer events raises PositionNotFound on both stores (as docs/tutorial.md
    says), never an empty page that would hide the events after it."""
    store, checkpoints = stores

    async def scenario() -> None:
        await checkpoints.save("projection-1", position=150)
        assert await checkpoints.load("projection-1") == 150
        event = created()
        await store.append(event.aggregate_id, [event], expected_version=0)
        await sync_to_async(settled)()
        with pytest.raises(sync.PositionNotFound, match="150"):
            await store.read_all(from_position=await checkpoints.load("projection-1"))
        page = await store.read_all(from_position=0)
        assert [s.event for s in page.events] == [event]

    run_async(scenario())


def test_a_handlers_awaited_checkpoint_save_is_part_of_the_projections_transaction(
    vendor: str,
) -> None:
    store, checkpoints = aio.EventStore(), aio.DatabaseCheckpointStore()

    async def scenario() -> tuple[int | None, int | None, Titles]:
        projection = Titles(checkpoints, fail_on="boom")
        good, bad = created("good"), created("boom")
        for event in (good, bad):
            await store.append(event.aggregate_id, [event])
        await projection.handle(good)
        committed = await checkpoints.load("titles")
        with pytest.raises(ProjectionError, match="handler failed after saving"):
            await projection.handle(bad)
        return committed, await checkpoints.load("titles"), projection

    committed, after_failure, projection = run_async(scenario())
    good_position = committed
    assert good_position is not None
    # The failing handler had saved its own position; the rollback took it back.
    assert after_failure == good_position
    assert ProjectionState.objects.get(name="titles").position == good_position
    assert projection.in_transaction == [True, True]


# Mixing faces: runner, rebuild, dead letters --------------------------------------------


class AsyncBoard(aio.DeclarativeProjection):
    """An aio projection with rows: the runner and rebuilds run it like any other."""

    models = (TaskSummary,)
    row_keys: ClassVar = {TaskSummary: "task_id"}

    @aio.handles(TaskCreated)
    async def created(self, event: TaskCreated) -> None:
        row = await sync_to_async(self.row)(TaskSummary, event, task_id=event.aggregate_id)
        if row is not None:
            row.title = event.title

    @aio.handles(TaskRenamed)
    async def renamed(self, event: TaskRenamed) -> None:
        self.row(TaskSummary, event, task_id=event.aggregate_id)  # the mistake


def test_an_async_handler_gets_its_rows_through_sync_to_async(stores: tuple[Any, Any]) -> None:
    store, _ = stores
    event = created("by handle()")

    async def scenario() -> None:
        await store.append(event.aggregate_id, [event])
        assert await AsyncBoard().handle(event) is True
        with pytest.raises(ProjectionError, match=r"await sync_to_async\(self\.row\)"):
            await AsyncBoard().handle(TaskRenamed(aggregate_id=event.aggregate_id, title="x"))

    run_async(scenario())
    row = TaskSummary.objects.get(task_id=event.aggregate_id)
    assert (row.title, row.last_event_version) == ("by handle()", 1)


def test_catch_up_runs_an_aio_projection() -> None:
    store = sync.EventStore()
    events = [created(f"t{i}") for i in range(3)]
    for event in events:
        store.append(event.aggregate_id, [event])
    settled()
    result = catch_up(AsyncBoard(), event_store=store)
    assert result.events_applied == 3
    assert dict(TaskSummary.objects.values_list("task_id", "title")) == {
        e.aggregate_id: e.title for e in events
    }


def test_rebuild_awaits_the_aio_default_truncate() -> None:
    store = sync.EventStore()
    event = created("original")
    store.append(event.aggregate_id, [event])
    settled()
    rebuild(AsyncBoard(), event_store=store)
    TaskSummary.objects.filter(task_id=event.aggregate_id).update(title="stale")
    # The row still holds the event (its checkpoint): only a truncate makes the replay redo it.
    rebuild(AsyncBoard(), event_store=store, restart=True)
    assert TaskSummary.objects.get(task_id=event.aggregate_id).title == "original"


class SyncFaceTitles(sync.DeclarativeProjection):
    """The Django-style face with the tutorial's async hooks: rebuilds await them too."""

    def __init__(self) -> None:
        super().__init__()
        self.titles: dict[UUID, str] = {}

    @handles(TaskCreated)
    async def created(self, event: TaskCreated) -> None:
        self.titles[event.aggregate_id] = event.title

    async def _truncate_read_models(self) -> None:  # type: ignore[override]
        self.titles.clear()


@pytest.mark.parametrize("atomic", [False, True], ids=["batches", "atomic"])
@pytest.mark.parametrize("face", ["aio", "sync"])
def test_rebuild_awaits_the_tutorials_async_truncate(face: str, atomic: bool) -> None:
    store = sync.EventStore()
    event = created("kept")
    store.append(event.aggregate_id, [event])
    projection = Titles(aio.DatabaseCheckpointStore()) if face == "aio" else SyncFaceTitles()
    projection.titles[uuid4()] = "left over from an earlier run"
    settled()
    rebuild(projection, event_store=store, atomic=atomic)
    assert projection.titles == {event.aggregate_id: "kept"}


@pytest.fixture
def flaky() -> Any:
    """A registered aio projection that fails until told otherwise (registered for one test:
    a ``name`` set at import would stay in the registry for the whole session)."""

    class Flaky(aio.DeclarativeProjection):
        applied: ClassVar[list[str]] = []
        fail = True

        @aio.handles(TaskCreated)
        async def created(self, event: TaskCreated) -> None:
            if Flaky.fail:
                raise RuntimeError("not yet")
            Flaky.applied.append(event.title)

    Flaky.name = "aio_flaky_test"
    projection_registry.register(Flaky)
    yield Flaky
    projection_registry.unregister("aio_flaky_test")


def test_a_dead_letter_of_an_aio_projection_is_really_retried(flaky: Any, settings) -> None:
    settings.EVENTSOURCE = {
        **settings.EVENTSOURCE,
        "ERROR_POLICY": "dead_letter",
        "MAX_RETRIES": 0,
    }
    store = sync.EventStore()
    event = created("poison until fixed")
    store.append(event.aggregate_id, [event])
    settled()
    catch_up_result = ProjectionRunner([flaky()]).run_until_caught_up()
    assert not catch_up_result.failed
    [letter] = DeadLetter.objects.all()
    assert not control.retry_dead_letter(letter)  # still failing: not resolved
    flaky.fail = False
    assert control.retry_dead_letter(letter)
    assert flaky.applied == ["poison until fixed"]
    letter.refresh_from_db()
    assert letter.resolved_at is not None


def test_the_sync_api_refuses_aio_stores() -> None:
    store = sync.EventStore()
    event = created()
    [stored] = store.append(event.aggregate_id, [event])
    checkpoints = aio.DatabaseCheckpointStore()
    with pytest.raises(TypeError, match=r"asyncio store .*pass its \.sync"):
        apply_batch(AsyncBoard(), [stored], checkpoints)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="event_store is an asyncio store"):
        catch_up(AsyncBoard(), event_store=aio.EventStore())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="checkpoint_store is an asyncio store"):
        catch_up(AsyncBoard(), checkpoint_store=checkpoints)  # type: ignore[arg-type]
    assert not TaskSummary.objects.exists()
    assert not ProjectionState.objects.exists()
    # Their .sync stores are what the sync API takes.
    assert apply_batch(AsyncBoard(), [stored], checkpoints.sync) == 1
    assert checkpoints.sync.load("AsyncBoard") == stored.position

"""The checkpoint-store contract, run against InMemoryCheckpointStore and
DatabaseCheckpointStore; and measure_lag."""

from __future__ import annotations

import inspect
from contextlib import suppress
from datetime import timedelta
from typing import Any
from uuid import uuid4

import pytest
from django.db import transaction

from django_eventsource import (
    BaseEventStore,
    CheckpointStore,
    DatabaseCheckpointStore,
    EventStore,
    InMemoryCheckpointStore,
    InMemoryEventStore,
    Lag,
    measure_lag,
)
from django_eventsource.models import ProjectionState
from tests.helpers import run_async as run
from tests.testapp.events import TaskCompleted, TaskCreated

pytestmark = pytest.mark.django_db


@pytest.fixture(params=["memory", "database"])
def checkpoints(request: pytest.FixtureRequest) -> CheckpointStore:
    if request.param == "memory":
        return InMemoryCheckpointStore()
    return DatabaseCheckpointStore()


def test_each_store_has_the_protocols_methods_and_signatures(checkpoints: CheckpointStore) -> None:
    """The stores share a base that supplies every method (the async twins, and sync ones
    that raise), so isinstance() would pass for an empty store: compare the signatures, and
    require save and load of the store's own."""
    for name in ("save", "load", "asave", "aload"):
        ours = inspect.signature(getattr(type(checkpoints), name))
        assert ours == inspect.signature(getattr(CheckpointStore, name)), name
    for name in ("save", "load"):
        assert name in vars(type(checkpoints)), f"{type(checkpoints).__name__}.{name}"


def test_load_is_none_before_any_save(checkpoints: CheckpointStore) -> None:
    assert checkpoints.load("never_saved") is None
    assert checkpoints.load("never_saved", tenant_id="acme") is None


def test_save_and_load_round_trip(checkpoints: CheckpointStore) -> None:
    checkpoints.save("board", 5)
    assert checkpoints.load("board") == 5
    checkpoints.save("board", 12)
    assert checkpoints.load("board") == 12
    checkpoints.save("board", 0)
    assert checkpoints.load("board") == 0
    assert checkpoints.load("other") is None


def test_large_positions_round_trip(checkpoints: CheckpointStore) -> None:
    checkpoints.save("board", 2**62)
    assert checkpoints.load("board") == 2**62


def test_tenants_are_separate(checkpoints: CheckpointStore) -> None:
    checkpoints.save("board", 3, tenant_id="acme")
    checkpoints.save("board", 9, tenant_id="globex")
    assert checkpoints.load("board", tenant_id="acme") == 3
    assert checkpoints.load("board", tenant_id="globex") == 9
    assert checkpoints.load("board") is None
    checkpoints.save("board", 1)
    assert checkpoints.load("board") == 1
    assert checkpoints.load("board", tenant_id="acme") == 3
    assert checkpoints.load("board", tenant_id="") == 1  # "" is "no tenant", as in the store


@pytest.mark.parametrize(
    ("position", "error", "message"),
    [
        (-1, ValueError, "must be between 0 and 2\\*\\*63 - 1, not -1"),
        (2**63, ValueError, "must be between 0 and 2\\*\\*63 - 1"),
        (1.5, TypeError, "must be an int position, not float"),
        ("3", TypeError, "must be an int position, not str"),
        (None, TypeError, "must be an int position, not NoneType"),
        (True, TypeError, "must be an int position, not bool"),
    ],
)
def test_a_bad_position_is_refused(
    checkpoints: CheckpointStore, position: Any, error: type[Exception], message: str
) -> None:
    checkpoints.save("board", 4)
    with pytest.raises(error, match=f"A checkpoint position {message}") as info:
        checkpoints.save("board", position)
    assert type(info.value) is error
    assert checkpoints.load("board") == 4


@pytest.mark.django_db(transaction=True)
def test_async_twins(checkpoints: CheckpointStore) -> None:
    async def scenario() -> tuple[int | None, int | None, int | None, int | None]:
        before = await checkpoints.aload("board")
        await checkpoints.asave("board", 7)
        await checkpoints.asave("board", 2, tenant_id="acme")
        return (
            before,
            await checkpoints.aload("board"),
            await checkpoints.aload("board", tenant_id="acme"),
            await checkpoints.aload("board", tenant_id="globex"),
        )

    assert run(scenario()) == (None, 7, 2, None)
    assert checkpoints.load("board") == 7  # visible to the sync API too


@pytest.mark.django_db(transaction=True)
def test_async_save_refuses_a_negative_position(checkpoints: CheckpointStore) -> None:
    with pytest.raises(ValueError, match="must be between 0 and"):
        run(checkpoints.asave("board", -3))
    assert checkpoints.load("board") is None


def test_in_memory_delete() -> None:
    checkpoints = InMemoryCheckpointStore()
    checkpoints.save("board", 4)
    checkpoints.save("board", 6, tenant_id="acme")
    checkpoints.delete("board")
    assert checkpoints.load("board") is None
    assert checkpoints.load("board", tenant_id="acme") == 6
    checkpoints.delete("never_saved")  # no error


# DatabaseCheckpointStore ------------------------------------------------------------------


def test_database_store_keeps_one_row_per_projection_and_tenant() -> None:
    checkpoints = DatabaseCheckpointStore()
    checkpoints.save("board", 1)
    checkpoints.save("board", 2)
    checkpoints.save("board", 3, tenant_id="acme")
    rows = ProjectionState.objects.filter(name="board").order_by("tenant_id")
    assert [(r.tenant_id, r.position) for r in rows] == [("", 2), ("acme", 3)]
    assert all(r.last_progress_at is not None for r in rows)


def test_database_store_delete_resets_to_never_saved() -> None:
    checkpoints = DatabaseCheckpointStore()
    checkpoints.save("board", 8)
    checkpoints.delete("board")
    assert checkpoints.load("board") is None
    assert ProjectionState.objects.filter(name="board").exists()
    checkpoints.save("board", 9)
    assert checkpoints.load("board") == 9


def test_database_save_joins_the_callers_transaction() -> None:
    checkpoints = DatabaseCheckpointStore()
    checkpoints.save("board", 4, tenant_id="acme")

    class Abort(Exception):
        pass

    with suppress(Abort), transaction.atomic():
        checkpoints.save("board", 10)
        checkpoints.save("board", 11, tenant_id="acme")
        seen_inside = checkpoints.load("board")
        raise Abort

    assert seen_inside == 10
    assert checkpoints.load("board") is None
    assert checkpoints.load("board", tenant_id="acme") == 4
    assert not ProjectionState.objects.filter(name="board", tenant_id="").exists()


def test_database_store_uses_the_configured_alias(settings: Any) -> None:
    assert DatabaseCheckpointStore().using == "default"
    assert DatabaseCheckpointStore("other").using == "other"
    settings.EVENTSOURCE = {"DATABASE_ALIAS": "events"}
    assert DatabaseCheckpointStore().using == "events"


# measure_lag ------------------------------------------------------------------------------


# On PostgreSQL read_all() only returns committed events (its ordering horizon excludes
# transactions still in progress, the test's own included): these tests commit for real.
committed = pytest.mark.django_db(transaction=True)


@pytest.fixture(params=["memory", "database"])
def stores(request: pytest.FixtureRequest) -> tuple[BaseEventStore, CheckpointStore]:
    if request.param == "memory":
        return InMemoryEventStore(), InMemoryCheckpointStore()
    return EventStore(), DatabaseCheckpointStore()


def append_tasks(store: BaseEventStore, count: int, tenant_id: str | None = None) -> list[Any]:
    stored = []
    for n in range(count):
        task = uuid4()
        stored += store.append(
            task, [TaskCreated(aggregate_id=task, title=f"t{n}", tenant_id=tenant_id)]
        )
    return stored


@committed
def test_lag_of_a_projection_that_never_ran(
    stores: tuple[BaseEventStore, CheckpointStore],
) -> None:
    events, checkpoints = stores
    stored = append_tasks(events, 3)
    now = stored[0].recorded_at + timedelta(seconds=30)
    lag = measure_lag("board", checkpoints, events, now=now)
    head = events.head_position()
    # Counted, not head - checkpoint (SQLite does not reuse positions of earlier tests).
    assert lag == Lag("board", None, 0, head, 3, 30.0)
    assert not lag.caught_up


@committed
def test_lag_in_events_and_seconds(stores: tuple[BaseEventStore, CheckpointStore]) -> None:
    events, checkpoints = stores
    stored = append_tasks(events, 4)
    checkpoints.save("board", stored[1].position)
    now = stored[2].recorded_at + timedelta(seconds=12.5)
    lag = measure_lag("board", checkpoints, events, now=now)
    assert lag.projection == "board"
    assert lag.position == stored[1].position
    assert lag.head == stored[3].position
    assert lag.events == 2
    assert (lag.behind_events, lag.held_events, lag.held_seconds) == (2, 0, 0.0)
    assert lag.seconds == pytest.approx(12.5)
    assert not lag.caught_up


@committed
def test_lag_when_caught_up(stores: tuple[BaseEventStore, CheckpointStore]) -> None:
    events, checkpoints = stores
    stored = append_tasks(events, 2)
    checkpoints.save("board", stored[-1].position)
    lag = measure_lag("board", checkpoints, events)
    assert lag.events == 0
    assert lag.seconds == 0.0
    assert lag.caught_up


@committed
def test_lag_seconds_are_never_negative(stores: tuple[BaseEventStore, CheckpointStore]) -> None:
    events, checkpoints = stores
    stored = append_tasks(events, 1)
    lag = measure_lag("board", checkpoints, events, now=stored[0].recorded_at - timedelta(1))
    assert lag.seconds == 0.0
    assert lag.events >= 1


@committed
def test_lag_per_tenant(stores: tuple[BaseEventStore, CheckpointStore]) -> None:
    events, checkpoints = stores
    acme = append_tasks(events, 2, tenant_id="acme")
    task = acme[0].aggregate_id
    [late] = events.append(task, [TaskCompleted(aggregate_id=task, tenant_id="acme")])
    globex = append_tasks(events, 2, tenant_id="globex")
    head = events.head_position()
    assert head > late.position

    # Acme has applied all its events; only other tenants' events follow its checkpoint.
    checkpoints.save("board", late.position, tenant_id="acme")
    caught_up = measure_lag("board", checkpoints, events, tenant_id="acme")
    assert (caught_up.tenant_id, caught_up.position, caught_up.head) == (
        "acme",
        late.position,
        head,
    )
    assert (caught_up.events, caught_up.seconds, caught_up.caught_up) == (0, 0.0, True)

    # Globex's checkpoint is before its first event: behind by the age of that event.
    checkpoints.save("board", late.position, tenant_id="globex")
    behind = measure_lag(
        "board",
        checkpoints,
        events,
        tenant_id="globex",
        now=globex[0].recorded_at + timedelta(seconds=5),
    )
    assert (behind.tenant_id, behind.position, behind.head) == ("globex", late.position, head)
    assert behind.events == 2
    assert behind.seconds == pytest.approx(5.0)
    assert not behind.caught_up
    # The projection without a tenant is a separate checkpoint: it never ran.
    assert measure_lag("board", checkpoints, events).position == 0

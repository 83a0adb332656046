"""Stored events are append-only: the ORM refuses every write, and nothing changes."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import pytest

from django_eventsource import AppendOnlyError, EventStore
from django_eventsource.models import Event
from tests.helpers import run_async as run
from tests.testapp.events import TaskCreated, TaskRenamed

pytestmark = pytest.mark.django_db


def snapshot() -> list[tuple[Any, ...]]:
    return list(
        Event.objects.order_by("position").values_list(
            "position", "event_id", "event_type", "aggregate_version", "payload", "tenant_id"
        )
    )


@pytest.fixture
def stored(store: EventStore) -> Event:
    task = uuid4()
    store.append(
        task,
        [TaskCreated(aggregate_id=task, title="A"), TaskRenamed(aggregate_id=task, title="B")],
    )
    return Event.objects.get(aggregate_id=task, aggregate_version=1)


def new_event() -> Event:
    return Event(
        event_id=uuid4(),
        event_type="TaskCreated",
        aggregate_id=uuid4(),
        aggregate_version=1,
        payload={"title": "forged"},
        occurred_at=datetime.now(UTC),
        recorded_at=datetime.now(UTC),
    )


def assert_refused(write: Callable[[], object], what: str) -> None:
    before = snapshot()
    with pytest.raises(AppendOnlyError, match="append-only") as info:
        write()
    assert what in str(info.value)
    assert snapshot() == before


def test_save_is_refused(stored: Event) -> None:
    stored.payload = {"title": "changed"}
    assert_refused(stored.save, "Event.save()")
    assert_refused(lambda: stored.save(update_fields=["payload"]), "Event.save()")
    stored.refresh_from_db()
    assert stored.payload == {"title": "A"}


def test_saving_a_new_event_is_refused(stored: Event) -> None:
    assert_refused(new_event().save, "Event.save()")
    assert_refused(
        lambda: Event.objects.create(
            event_id=uuid4(),
            event_type="TaskCreated",
            aggregate_id=uuid4(),
            aggregate_version=1,
            occurred_at=datetime.now(UTC),
            recorded_at=datetime.now(UTC),
        ),
        "Event.save()",
    )


def test_delete_is_refused(stored: Event) -> None:
    assert_refused(stored.delete, "Event.delete()")
    assert Event.objects.filter(pk=stored.pk).exists()


def test_queryset_update_is_refused(stored: Event) -> None:
    assert_refused(lambda: Event.objects.update(event_type="Hacked"), "QuerySet.update()")
    assert_refused(
        lambda: Event.objects.filter(pk=stored.pk).update(payload={}), "QuerySet.update()"
    )
    assert_refused(
        lambda: Event.objects.filter(pk=stored.pk).values("pk").update(payload={}),
        "QuerySet.update()",
    )


def test_queryset_delete_is_refused(stored: Event) -> None:
    assert_refused(lambda: Event.objects.all().delete(), "QuerySet.delete()")
    assert_refused(lambda: Event.objects.filter(pk=stored.pk).delete(), "QuerySet.delete()")


def test_bulk_writes_are_refused(stored: Event) -> None:
    assert_refused(lambda: Event.objects.bulk_create([new_event()]), "bulk_create()")
    stored.event_type = "Hacked"
    assert_refused(lambda: Event.objects.bulk_update([stored], ["event_type"]), "bulk_update()")
    assert_refused(lambda: Event.objects.get_or_create(event_id=uuid4()), "get_or_create()")
    assert_refused(
        lambda: Event.objects.update_or_create(pk=stored.pk),
        "update_or_create()",
    )


@pytest.mark.django_db(transaction=True)
def test_async_writes_are_refused(stored: Event) -> None:
    before = snapshot()

    async def attempt(write: Callable[[], Any]) -> str:
        try:
            await write()
        except AppendOnlyError as exc:
            return str(exc)
        return "not refused"

    async def scenario() -> list[str]:
        return [
            await attempt(stored.asave),
            await attempt(stored.adelete),
            await attempt(lambda: Event.objects.aupdate(event_type="Hacked")),
            await attempt(lambda: Event.objects.filter(pk=stored.pk).adelete()),
            await attempt(lambda: Event.objects.abulk_create([new_event()])),
        ]

    results = run(scenario())
    assert all("append-only" in r for r in results), results
    assert snapshot() == before


def test_the_store_still_appends(store: EventStore, stored: Event) -> None:
    before = Event.objects.count()
    store.append(stored.aggregate_id, [TaskRenamed(aggregate_id=stored.aggregate_id, title="C")])
    assert Event.objects.count() == before + 1
    assert Event.objects.filter(aggregate_id=stored.aggregate_id).count() == 3

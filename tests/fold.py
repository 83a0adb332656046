"""Reference folds: what the test projections must contain, computed from scratch."""

from __future__ import annotations

from typing import Any

from django_eventsource import BaseEventStore


def _feed(store: BaseEventStore, tenant_id: str | None = None) -> list[Any]:
    """Every committed event in feed order (an ORM store: re-read until the horizon lets
    them all through, see ``helpers.all_events``)."""
    from django_eventsource import EventStore
    from tests.helpers import all_events

    if isinstance(store, EventStore):
        return all_events(store, tenant_id)
    return list(store.read_all(tenant_id=tenant_id))


def fold_task_board(store: BaseEventStore, tenant_id: str | None = None) -> dict[Any, dict]:
    rows: dict[Any, dict] = {}
    for stored in _feed(store, tenant_id):
        key = (stored.tenant_id or "", stored.aggregate_id)
        event = stored.event
        if stored.event_type == "TaskCreated":
            rows[key] = {"title": event.title, "done": False, "renames": 0, "events_applied": 1}
        elif stored.event_type == "TaskRenamed":
            rows[key].update(title=event.title, renames=rows[key]["renames"] + 1)
            rows[key]["events_applied"] += 1
        elif stored.event_type == "TaskCompleted":
            rows[key].update(done=True, events_applied=rows[key]["events_applied"] + 1)
        else:
            continue
        rows[key]["last_event_version"] = stored.aggregate_version
        rows[key]["last_event_position"] = stored.position
        rows[key]["last_event_id"] = stored.event_id
    return rows


def task_board_rows(tenant_id: str | None = None) -> dict[Any, dict]:
    from tests.testapp.models import TaskSummary

    queryset = TaskSummary.objects.all()
    if tenant_id is not None:
        queryset = queryset.filter(tenant_id=tenant_id)
    return {
        (row.tenant_id, row.task_id): {
            "title": row.title,
            "done": row.done,
            "renames": row.renames,
            "events_applied": row.events_applied,
            "last_event_version": row.last_event_version,
            "last_event_position": row.last_event_position,
            "last_event_id": row.last_event_id,
        }
        for row in queryset
    }


def fold_tenant_stats(store: BaseEventStore) -> dict[str, dict]:
    """TenantStats per tenant, from every committed event in feed order."""
    rows: dict[str, dict] = {}
    for stored in _feed(store):
        if stored.event_type not in ("TaskCreated", "TaskCompleted"):
            continue
        row = rows.setdefault(stored.tenant_id or "", {"tasks": 0, "completed": 0})
        row["tasks" if stored.event_type == "TaskCreated" else "completed"] += 1
        row["last_event_position"] = stored.position  # the last one in feed order
        row["last_event_id"] = stored.event_id
    return rows


def tenant_stats_rows() -> dict[str, dict]:
    from tests.testapp.models import TenantStats

    return {
        row.tenant_id: {
            "tasks": row.tasks,
            "completed": row.completed,
            "last_event_position": row.last_event_position,
            "last_event_id": row.last_event_id,
        }
        for row in TenantStats.objects.all()
    }

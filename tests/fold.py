"""Reference folds: what the test projections must contain, computed from scratch."""

from __future__ import annotations

from typing import Any

from django_eventsource import BaseEventStore


def fold_task_board(store: BaseEventStore, tenant_id: str | None = None) -> dict[Any, dict]:
    rows: dict[Any, dict] = {}
    for stored in store.read_all(tenant_id=tenant_id):
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

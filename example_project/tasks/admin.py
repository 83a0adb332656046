"""The admin: the read models, read-only (they are written by projections only)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from django_eventsource.models import Event, ProjectionState
from tasks.models import TaskCard, TenantBoard


class ReadModelAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Read models are derived data: change them by appending events, never by hand."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(TaskCard)
class TaskCardAdmin(ReadModelAdmin):
    list_display = (
        "title",
        "tenant_id",
        "assignee",
        "status",
        "times_reopened",
        "last_event_version",
        "last_event_position",
        "updated_at",
    )
    list_filter = ("tenant_id", "status")
    search_fields = ("title", "assignee", "=task_id")


@admin.register(TenantBoard)
class TenantBoardAdmin(ReadModelAdmin):
    list_display = (
        "tenant_id",
        "created",
        "assignments",
        "completed",
        "reopened",
        "open",
        "last_event_position",
        "last_activity_at",
    )


# The event store's own tables, read-only, unless django_eventsource ships its own admin.


class EventAdmin(ReadModelAdmin):
    list_display = (
        "position",
        "event_type",
        "tenant_id",
        "aggregate_id",
        "aggregate_version",
        "occurred_at",
    )
    list_filter = ("event_type", "tenant_id")
    search_fields = ("=aggregate_id", "=event_id")
    show_full_result_count = False


class ProjectionStateAdmin(ReadModelAdmin):
    list_display = ("name", "tenant_id", "status", "position", "heartbeat_at", "updated_at")


for model, model_admin in ((Event, EventAdmin), (ProjectionState, ProjectionStateAdmin)):
    if not admin.site.is_registered(model):
        admin.site.register(model, model_admin)

"""An inline projection into rows fed by many streams (see ``inline_rows_writer``)."""

from __future__ import annotations

from typing import Any

from django_eventsource import DeclarativeProjection, handles, projection_registry
from tests.testapp.events import TaskCreated
from tests.testapp.models import TenantStats


class InlineTenantTotal(DeclarativeProjection):
    """Inline, one TenantStats row per tenant (checkpointed by position). Registered only
    by ``register()`` (its name is set after the class statement)."""

    inline = True
    models = (TenantStats,)

    @handles(TaskCreated)
    def created(self, event: TaskCreated) -> None:
        if row := self.row(TenantStats, event, tenant_id=event.tenant_id or ""):
            row.tasks += 1


InlineTenantTotal.name = "inline_tenant_total"


def register() -> dict[str, Any]:
    """Register the projection; returns the registry's previous classes (for ``restore``)."""
    previous = dict(projection_registry._classes)
    projection_registry.register(InlineTenantTotal)
    return previous


def restore(previous: dict[str, Any]) -> None:
    projection_registry._classes.clear()
    projection_registry._classes.update(previous)

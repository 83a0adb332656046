"""The Django admin: projections, a lag dashboard, a read-only event browser, dead letters.

Split by kind, as Django's own admin is: ``base`` (the read-only base class and formatting
helpers), ``actions`` (the operations on a projection), ``projections`` (the projection list,
lag dashboard and detail page), ``events`` (the event browser), ``dead_letters`` and
``charts`` (lag over time).

Everything here formats what the library reports and calls the library to change it:
statuses and lag come from [`projection_statuses`][django_eventsource.status.projection_statuses],
the actions call [`control`][django_eventsource.control] and
[`rebuild`][django_eventsource.rebuild.rebuild]. Facts (events, dead letters, projection
state) are never added, edited or deleted here.

Each class is importable from here and subclassable; unregister one and register your own::

    from django.contrib import admin
    from django_eventsource.admin import EventAdmin
    from django_eventsource.models import Event

    admin.site.unregister(Event)

    @admin.register(Event)
    class MyEventAdmin(EventAdmin):
        list_per_page = 20
"""

from __future__ import annotations

from django.contrib import admin

from django_eventsource.admin.actions import ProjectionAction
from django_eventsource.admin.base import ReadOnlyModelAdmin
from django_eventsource.admin.charts import lag_charts
from django_eventsource.admin.dead_letters import DeadLetterAdmin
from django_eventsource.admin.events import (
    EventAdmin,
    EventChangeList,
    LookAheadPaginator,
    distinct_values,
)
from django_eventsource.admin.projections import ProjectionStateAdmin
from django_eventsource.models import DeadLetter, Event, ProjectionState
from django_eventsource.status import ReadModelStatistics, read_model_statistics

__all__ = [
    "DeadLetterAdmin",
    "EventAdmin",
    "EventChangeList",
    "LookAheadPaginator",
    "ProjectionAction",
    "ProjectionStateAdmin",
    "ReadModelStatistics",
    "ReadOnlyModelAdmin",
    "distinct_values",
    "lag_charts",
    "read_model_statistics",
]

admin.site.register(ProjectionState, ProjectionStateAdmin)
admin.site.register(Event, EventAdmin)
admin.site.register(DeadLetter, DeadLetterAdmin)

"""The read-only event browser, built for millions of events: no full count, filters from
index probes, search by exact id or position."""

from __future__ import annotations

from typing import Any, ClassVar
from uuid import UUID

from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.core.paginator import Paginator
from django.db import connections
from django.db.models import Field, Model, Q, QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.functional import cached_property
from django.utils.html import format_html
from django.utils.safestring import SafeString

from django_eventsource.admin.base import ReadOnlyModelAdmin, pretty_json, tenant_label
from django_eventsource.events import event_registry
from django_eventsource.models import Event

#: The highest page number the event browser looks ahead from (50 events a page: 50 billion).
MAX_PAGE = 10**9

__all__ = [
    "AggregateTypeFilter",
    "EventAdmin",
    "EventChangeList",
    "EventTypeFilter",
    "LookAheadPaginator",
    "TenantFilter",
    "distinct_values",
]


def distinct_values(
    model: type[Model], column: str, *, using: str = "default", limit: int = 200
) -> list[str]:
    """The distinct values of an indexed column, by a loose index scan.

    A recursive query jumps from one value to the next (``MIN(col) WHERE col > previous``),
    one index probe per value: cheap on millions of rows, where ``SELECT DISTINCT`` (what
    Django's ``AllValuesFieldListFilter`` does) reads them all. The column must lead an index.
    """
    quote = connections[using].ops.quote_name
    table = quote(model._meta.db_table)
    field = model._meta.get_field(column)
    assert isinstance(field, Field)
    col = quote(field.column or column)
    sql = (
        f"WITH RECURSIVE distinct_values(value) AS ("
        f"SELECT MIN({col}) FROM {table} "
        f"UNION ALL SELECT (SELECT MIN({col}) FROM {table} WHERE {col} > distinct_values.value) "
        f"FROM distinct_values WHERE distinct_values.value IS NOT NULL"
        f") SELECT value FROM distinct_values WHERE value IS NOT NULL LIMIT %s"
    )
    with connections[using].cursor() as cursor:
        cursor.execute(sql, [limit])
        return [value for (value,) in cursor.fetchall()]


class _IndexedValuesFilter(admin.SimpleListFilter):
    """A filter whose choices come from a loose index scan, not ``SELECT DISTINCT``."""

    column: ClassVar[str]

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        using = model_admin.get_queryset(request).db
        return [(v, v or "(none)") for v in distinct_values(Event, self.column, using=using)]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        return queryset if value is None else queryset.filter(**{self.column: value})


class EventTypeFilter(_IndexedValuesFilter):
    title = "event type"
    parameter_name = "event_type"
    column = "event_type"


class TenantFilter(_IndexedValuesFilter):
    title = "tenant"
    parameter_name = "tenant_id"
    column = "tenant_id"


class AggregateTypeFilter(admin.SimpleListFilter):
    """Aggregate types as the registered event classes declare them (no query: the column
    has no index, and a ``SELECT DISTINCT`` over millions of events is not a filter)."""

    title = "aggregate type"
    parameter_name = "aggregate_type"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        types = set()
        for name in event_registry:
            field = event_registry.get(name).model_fields.get("aggregate_type")
            if field is not None and isinstance(field.default, str) and field.default:
                types.add(field.default)
        return [(t, t) for t in sorted(types)]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        return queryset if value is None else queryset.filter(aggregate_type=value)


class LookAheadPaginator(Paginator):  # type: ignore[type-arg]
    """A paginator that never counts the whole table.

    It counts at most up to ``lookahead`` pages past the requested one (``COUNT(*)`` over a
    ``LIMIT`` subquery), which is enough to draw the page links around it. ``is_exact``
    tells whether that count is the real total.
    """

    def __init__(
        self,
        object_list: Any,
        per_page: int,
        *args: Any,
        page: int = 1,
        lookahead: int = 2,
        **kwargs: Any,
    ) -> None:
        super().__init__(object_list, per_page, *args, **kwargs)
        self.limit = (max(page, 1) + lookahead) * int(per_page)

    @cached_property
    def count(self) -> int:
        rows: Any = self.object_list
        return int(rows[: self.limit + 1].count())

    @property
    def is_exact(self) -> bool:
        return self.count <= self.limit


class EventChangeList(ChangeList):
    """Never "show all" on a count that is only a lower bound (it would load every event)."""

    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        if not getattr(self.paginator, "is_exact", True):
            self.can_show_all = False
            if self.show_all:
                self.show_all = False
                self.result_list = self.paginator.page(self.page_num).object_list


class EventAdmin(ReadOnlyModelAdmin[Event]):
    """The read-only event browser, built for millions of events.

    * no full count (``show_full_result_count = False`` and `LookAheadPaginator`);
    * newest first by primary key; columns are not sortable (sorting by an unindexed
      column would sort the whole table);
    * filters whose choices come from index probes or the event registry;
    * search by exact event id, aggregate id (UUIDs) or ``#position``, each an index lookup.
    """

    list_display = (
        "position",
        "event_type",
        "aggregate_type",
        "stream",
        "version",
        "tenant",
        "recorded_at",
    )
    list_display_links = ("position",)
    list_filter = (EventTypeFilter, AggregateTypeFilter, TenantFilter)
    search_fields = ("=event_id", "=aggregate_id")
    search_help_text = "An event id or an aggregate id (the whole UUID), or #position."
    ordering = ("-position",)
    sortable_by = ()
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    list_per_page = 50
    list_max_show_all = 200
    actions = None
    fields = (
        "position",
        "event_id",
        "event_type",
        "schema_version",
        "aggregate_type",
        "stream",
        "aggregate_version",
        "tenant",
        "occurred_at",
        "recorded_at",
        "correlation_id",
        "causation_id",
        "stamp",
        "payload_json",
        "metadata_json",
    )
    readonly_fields = fields
    #: Tenants are expanded into ``tenant_id IN (...)`` for an aggregate-id search (so it
    #: uses the ``(tenant_id, aggregate_id, aggregate_version)`` index) up to this many.
    max_search_tenants = 1000

    def get_paginator(
        self,
        request: HttpRequest,
        queryset: Any,
        per_page: int,
        orphans: int = 0,
        allow_empty_first_page: bool = True,
    ) -> LookAheadPaginator:
        try:
            page = int(request.GET.get("p", 1))
        except ValueError:
            page = 1
        # Past the last page Django answers "invalid page"; a page number beyond any table
        # would only make the look-ahead count overflow the database's integers.
        page = min(max(page, 1), MAX_PAGE)
        return LookAheadPaginator(queryset, per_page, orphans, allow_empty_first_page, page=page)

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return EventChangeList

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Event], search_term: str
    ) -> tuple[QuerySet[Event], bool]:
        term = search_term.strip()
        if not term:
            return queryset, False
        if term.lstrip("#").isdigit():
            return queryset.filter(position=int(term.lstrip("#"))), False
        try:
            value = UUID(term)
        except ValueError:
            self.message_user(
                request,
                "Search for a whole event id or aggregate id (a UUID), or #position.",
                messages.WARNING,
            )
            return queryset.none(), False
        tenants = distinct_values(
            Event, "tenant_id", using=queryset.db, limit=self.max_search_tenants + 1
        )
        stream = Q(aggregate_id=value)
        if len(tenants) <= self.max_search_tenants:
            stream &= Q(tenant_id__in=tenants)
        return queryset.filter(Q(event_id=value) | stream), False

    @admin.display(description="aggregate id")
    def stream(self, event: Event) -> SafeString:
        url = reverse(f"{self.admin_site.name}:django_eventsource_event_changelist")
        return format_html(
            '<a href="{}?q={}" title="All events of this stream">{}</a>',
            url,
            event.aggregate_id,
            event.aggregate_id,
        )

    @admin.display(description="version")
    def version(self, event: Event) -> int:
        return event.aggregate_version

    @admin.display(description="tenant")
    def tenant(self, event: Event) -> str:
        return tenant_label(event.tenant_id)

    @admin.display(description="payload")
    def payload_json(self, event: Event) -> SafeString:
        return pretty_json(event.payload)

    @admin.display(description="metadata")
    def metadata_json(self, event: Event) -> SafeString:
        return pretty_json(event.metadata)

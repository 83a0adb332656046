"""What every page of the admin shares: the read-only base class, the permissions of the
projection actions, and small formatting helpers (durations, statuses, errors, JSON)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db.models import Model, QuerySet
from django.http import HttpRequest, HttpResponse
from django.utils.html import format_html
from django.utils.safestring import SafeString

__all__ = [
    "STATUS_PERMISSIONS",
    "ReadOnlyModelAdmin",
    "duration",
    "error_summary",
    "pretty_json",
    "status_badge",
    "storable",
    "tenant_label",
]

M = TypeVar("M", bound=Model)

STATUS_PERMISSIONS = {
    "pause": "django_eventsource.pause_projection",
    "retry": "django_eventsource.retry_projection",
    "rebuild": "django_eventsource.rebuild_projection",
}


#: The longest name or tenant id a row can hold (the columns' ``max_length``).
MAX_KEY_LENGTH = 255
#: What the field filters of a change list read from the query string, after the field.
FILTER_SUFFIXES = frozenset({"", "exact", "isnull", "isempty", "gte", "lt"})


def storable(value: str) -> bool:
    """Whether a name or tenant id from a request can be in the database at all: never
    longer than the columns, never a NUL (PostgreSQL refuses it in any query)."""
    return len(value) <= MAX_KEY_LENGTH and "\x00" not in value


def tenant_label(tenant_id: str) -> str:
    """A tenant as the pages show it (an em dash for none)."""
    return tenant_id or "—"


def duration(seconds: float | None) -> str:
    """A short human duration: ``4 s``, ``3 min``, ``2.5 h``, ``3.1 d``."""
    if seconds is None:
        return "never"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 36 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


if TYPE_CHECKING:
    _ModelAdmin = admin.ModelAdmin
else:

    class _ModelAdmin(admin.ModelAdmin, Generic[M]):
        """``ModelAdmin`` is generic only in django-stubs; this makes ``[M]`` work at runtime."""


class ReadOnlyModelAdmin(_ModelAdmin[M]):
    """An admin for facts: viewing only, and actions that call the library.

    An action the user may not run is answered with 403, instead of Django's silent
    "No action selected", so that a missing permission is visible.
    """

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: M | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: M | None = None) -> bool:
        return False

    def lookup_allowed(self, lookup: str, value: str, request: HttpRequest | None = None) -> bool:
        """Only the change list's own filters, with values a column can hold.

        Django allows any lookup on the model's fields from the query string
        (``?payload__regex=…``): full scans, and expensive patterns, for anyone who may view
        the list. Anything else is answered with 400.
        """
        if not storable(value):
            return False
        field, _, suffix = lookup.partition("__")
        return suffix in FILTER_SUFFIXES and field in self._filter_parameters(request)

    def _filter_parameters(self, request: HttpRequest | None) -> set[str]:
        """The query-string names of the change list's filters (a field filter's field, or a
        ``SimpleListFilter``'s ``parameter_name``)."""
        names: set[str] = set()
        for item in self.list_filter:
            spec = item[0] if isinstance(item, (tuple, list)) else item
            if isinstance(spec, str):
                names.add(spec)
            elif isinstance(spec, type) and issubclass(spec, admin.SimpleListFilter):
                names.add(str(spec.parameter_name))
        return names

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[M], search_term: str
    ) -> tuple[QuerySet[M], bool]:
        if "\x00" in search_term:  # no row can hold it, and PostgreSQL refuses the query
            return queryset.none(), False
        return super().get_search_results(request, queryset, search_term)

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        if request.method == "POST" and "action" in request.POST:
            known = {a if isinstance(a, str) else a.__name__ for a in self.actions or ()}
            allowed = self.get_actions(request)
            for name in request.POST.getlist("action"):
                if name in known and name not in allowed:
                    raise PermissionDenied
        return super().changelist_view(request, extra_context)

    def _has_perm(self, request: HttpRequest, kind: str) -> bool:
        return request.user.has_perm(STATUS_PERMISSIONS[kind])

    def has_pause_permission(self, request: HttpRequest) -> bool:
        """``pause_projection``: pause and resume."""
        return self._has_perm(request, "pause")

    def has_retry_permission(self, request: HttpRequest) -> bool:
        """``retry_projection``: retry a failed event, dead-letter it, retry a dead letter."""
        return self._has_perm(request, "retry")

    def has_rebuild_permission(self, request: HttpRequest) -> bool:
        """``rebuild_projection``: delete a projection's rows and replay every event."""
        return self._has_perm(request, "rebuild")


def status_badge(status: str) -> SafeString:
    """A projection status as a coloured badge."""
    return format_html('<span class="es-status es-status-{}">{}</span>', status, status)


def error_summary(
    error: str, position: int | None, event_type: str, event_url: str | None
) -> SafeString | str:
    """The error's first line (escaped), and a link to the event that caused it."""
    first = error.split("\n\n", 1)[0].strip()
    if len(first) > 160:
        first = first[:159] + "…"
    if position is None:
        return format_html('<span class="es-error">{}</span>', first) if first else ""
    label = f"event #{position}" + (f" ({event_type})" if event_type else "")
    return format_html(
        '<span class="es-error">{}</span> <a class="es-event-link" href="{}">{}</a>',
        first,
        event_url or "#",
        label,
    )


def pretty_json(value: Any) -> SafeString:
    """Indented JSON in a ``<pre>``, escaped (payloads are user data)."""
    text = json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)
    return format_html('<pre class="es-json">{}</pre>', text)

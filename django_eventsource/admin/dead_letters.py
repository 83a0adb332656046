"""Dead letters: the events projections set aside, and the action that retries them."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from django_eventsource import control
from django_eventsource.admin.base import ReadOnlyModelAdmin, tenant_label
from django_eventsource.exceptions import EventSourceError
from django_eventsource.models import DeadLetter

__all__ = ["DeadLetterAdmin"]


class DeadLetterAdmin(ReadOnlyModelAdmin[DeadLetter]):
    """Events projections set aside, and those parked behind them; the retry action
    retries each selected letter's stream in order."""

    list_display = (
        "projection",
        "tenant",
        "event",
        "event_type",
        "stream",
        "waits_behind",
        "short_error",
        "attempts",
        "created_at",
        "resolved_at",
        "resolution",
    )
    list_filter = (
        "projection",
        "tenant_id",  # the runner's tenant scope (the projection pages link by it)
        ("resolved_at", admin.EmptyFieldListFilter),
        "resolution",
        "event_type",
    )
    search_fields = ("=event_id", "=aggregate_id")
    actions = ("retry_selected",)
    fields = (
        "projection",
        "tenant",
        "event",
        "event_id",
        "event_type",
        "stream",
        "waits_behind",
        "error",
        "traceback_text",
        "attempts",
        "created_at",
        "resolved_at",
        "resolution",
    )
    readonly_fields = fields

    @admin.display(description="tenant", ordering="tenant_id")
    def tenant(self, letter: DeadLetter) -> str:
        return tenant_label(letter.tenant_id)

    @admin.display(description="event", ordering="event_position")
    def event(self, letter: DeadLetter) -> SafeString:
        url = reverse(
            f"{self.admin_site.name}:django_eventsource_event_change",
            args=[letter.event_position],
        )
        return format_html('<a href="{}">#{}</a>', url, letter.event_position)

    @admin.display(description="stream", ordering="aggregate_id")
    def stream(self, letter: DeadLetter) -> str:
        if letter.aggregate_id is None:
            return "-"
        tenant = f"{letter.stream_tenant_id}/" if letter.stream_tenant_id else ""
        return f"{tenant}{letter.aggregate_id} v{letter.aggregate_version}"

    @admin.display(description="waits behind", ordering="parked_behind")
    def waits_behind(self, letter: DeadLetter) -> SafeString | str:
        if letter.parked_behind is None:
            return "-"
        url = reverse(
            f"{self.admin_site.name}:django_eventsource_event_change",
            args=[letter.parked_behind],
        )
        return format_html('<a href="{}">#{}</a>', url, letter.parked_behind)

    @admin.display(description="error")
    def short_error(self, letter: DeadLetter) -> SafeString:
        first = letter.error.split("\n", 1)[0]
        short = first if len(first) <= 240 else first[:239] + "…"
        return format_html('<span class="es-error" title="{}">{}</span>', first, short)

    @admin.display(description="traceback")
    def traceback_text(self, letter: DeadLetter) -> SafeString:
        return format_html('<pre class="es-json">{}</pre>', letter.traceback)

    @admin.action(description="Retry the selected dead letters", permissions=["retry"])
    def retry_selected(self, request: HttpRequest, queryset: QuerySet[DeadLetter]) -> None:
        # Oldest first; retrying a letter retries its whole stream in order, so a later
        # letter of a stream already retried here is found resolved and skipped.
        for letter in queryset.filter(resolved_at=None).order_by("event_position"):
            try:
                outcome = control.retry_dead_letter(letter)
            except (EventSourceError, KeyError) as exc:
                self.message_user(
                    request,
                    f"{letter}: {exc.args[0] if exc.args else exc}",
                    messages.ERROR,
                )
                continue
            if outcome.already_resolved:
                continue
            level = messages.SUCCESS if outcome else messages.ERROR
            self.message_user(request, f"{letter}: {outcome.message}", level)

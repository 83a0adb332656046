"""The projections' admin: one row per projection and tenant with its lag, the lag
dashboard, a detail page per projection, and the actions that operate them."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any, ClassVar

from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied
from django.db import connections
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.http import url_has_allowed_host_and_scheme, urlencode
from django.utils.safestring import SafeString
from django.views.decorators.http import require_POST

from django_eventsource import control
from django_eventsource.admin.actions import (
    PROJECTION_ACTIONS,
    ProjectionAction,
    projection_label,
)
from django_eventsource.admin.base import (
    ReadOnlyModelAdmin,
    duration,
    error_summary,
    status_badge,
    tenant_label,
)
from django_eventsource.admin.charts import lag_charts
from django_eventsource.conf import database_alias
from django_eventsource.exceptions import EventSourceError, RebuildRefused
from django_eventsource.models import ProjectionState, ProjectionStatus
from django_eventsource.projections import projection_registry
from django_eventsource.rebuild import plan_rebuild
from django_eventsource.status import (
    HorizonHolder,
    ProjectionStatusRow,
    horizon_holders,
    projection_statuses,
    read_model_statistics,
)
from django_eventsource.store import EventStore
from django_eventsource.validation import check_projection_name

__all__ = ["ProjectionChangeList", "ProjectionStateAdmin", "linkable"]


def linkable(name: str) -> bool:
    """Whether a projection name can be a segment of the pages' URLs (registered names always
    can; a state row written around the library may hold a ``/``)."""
    try:
        check_projection_name(name)
    except (TypeError, ValueError):
        return False
    return True


#: Statuses of events that no state row shows (the list's banner).
UNSERVED = frozenset({ProjectionStatus.UNASSIGNED, ProjectionStatus.UNBUILT})


class ProjectionChangeList(ChangeList):
    """Attaches each row's [`ProjectionStatusRow`][django_eventsource.status.ProjectionStatusRow]
    (head, lag, heartbeat age), measured once for the page's rows, not once per column."""

    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        names = sorted({state.name for state in self.result_list})
        if not names:
            return
        keys = [(state.name, state.tenant_id) for state in self.result_list]
        found = {
            (row.projection, row.tenant_id): row
            for row in projection_statuses(names, keys=keys)  # this page's rows only
        }
        for state in self.result_list:
            state._status_row = found.get((state.name, state.tenant_id))


class ProjectionStateAdmin(ReadOnlyModelAdmin[ProjectionState]):
    """One row per projection and tenant, with its lag, and the actions that operate it.

    Extra pages (``get_urls``): the lag dashboard (``lag/``), a per-projection detail page
    (``projection/<name>/?tenant=``) and a POST-only endpoint per action
    (``projection/<name>/<action>/``).
    """

    list_display = (
        "projection",
        "tenant",
        "status_badge",
        "checkpoint",
        "head",
        "lag_events",
        "lag_time",
        "heartbeat",
        "dead_letters",
        "error",
    )
    list_display_links = None
    list_filter = ("status", "name")
    search_fields = ("name", "tenant_id")
    actions = (
        "pause_selected",
        "resume_selected",
        "retry_selected",
        "dead_letter_selected",
        "rebuild_selected",
        "rebuild_shadow_selected",
    )
    lag_template = "admin/django_eventsource/lag.html"
    detail_template = "admin/django_eventsource/projection_detail.html"
    confirm_template = "admin/django_eventsource/confirm_action.html"
    #: The chart windows the dashboard offers, in hours.
    lag_windows: ClassVar[Sequence[int]] = (1, 6, 24, 168)
    projection_actions: ClassVar[dict[str, ProjectionAction]] = PROJECTION_ACTIONS

    # URLs ---------------------------------------------------------------------------------

    def get_urls(self) -> list[URLPattern]:
        info = self.opts.app_label, self.opts.model_name
        wrap = self.admin_site.admin_view
        return [
            path("lag/", wrap(self.lag_view), name="{}_{}_lag".format(*info)),
            path(
                "projection/<str:name>/",
                wrap(self.detail_view),
                name="{}_{}_detail".format(*info),
            ),
            path(
                "projection/<str:name>/<str:action>/",
                wrap(require_POST(self.action_view)),
                name="{}_{}_action".format(*info),
            ),
            *super().get_urls(),
        ]

    def _url(self, view: str, *args: Any, tenant: str | None = None) -> str:
        url = reverse(
            f"{self.admin_site.name}:{self.opts.app_label}_{self.opts.model_name}_{view}",
            args=args,
        )
        return f"{url}?{urlencode({'tenant': tenant})}" if tenant else url

    def detail_url(self, name: str, tenant_id: str = "") -> str:
        return self._url("detail", name, tenant=tenant_id)

    def event_url(self, position: int | None) -> str | None:
        if position is None:
            return None
        return reverse(f"{self.admin_site.name}:django_eventsource_event_change", args=[position])

    # Columns ------------------------------------------------------------------------------

    def _status(self, state: ProjectionState) -> ProjectionStatusRow | None:
        row: ProjectionStatusRow | None = getattr(state, "_status_row", None)
        if row is None:
            found = [
                r for r in projection_statuses([state.name]) if r.tenant_id == state.tenant_id
            ]
            row = found[0] if found else None
            state._status_row = row  # type: ignore[attr-defined]
        return row

    @admin.display(description="projection", ordering="name")
    def projection(self, state: ProjectionState) -> SafeString:
        if not linkable(state.name):  # a row written around the library: shown, not linked
            return format_html("{}", state.name)
        return format_html(
            '<a href="{}">{}</a>', self.detail_url(state.name, state.tenant_id), state.name
        )

    @admin.display(description="tenant", ordering="tenant_id")
    def tenant(self, state: ProjectionState) -> str:
        return tenant_label(state.tenant_id)

    @admin.display(description="status", ordering="status")
    def status_badge(self, state: ProjectionState) -> SafeString:
        row = self._status(state)
        badge = status_badge(row.status if row else state.status)
        if row is not None and row.shadow_failed_position is not None:
            return format_html(
                '{} <small class="es-error" title="{}">shadow rebuild failed at #{}; the '
                "live tables serve</small>",
                badge,
                row.shadow_error,
                row.shadow_failed_position,
            )
        if row is not None and row.shadow_position is not None:
            return format_html(
                "{} <small>shadow rebuild at #{}</small>", badge, row.shadow_position
            )
        return badge

    @admin.display(description="checkpoint", ordering="position")
    def checkpoint(self, state: ProjectionState) -> int:
        return state.position or 0

    @admin.display(description="head")
    def head(self, state: ProjectionState) -> int | str:
        row = self._status(state)
        return row.head if row else "—"

    @admin.display(description="lag (events)")
    def lag_events(self, state: ProjectionState) -> int | str:
        row = self._status(state)
        return row.lag_events if row else "—"

    @admin.display(description="lag (time)")
    def lag_time(self, state: ProjectionState) -> str:
        row = self._status(state)
        return duration(row.lag_seconds) if row else "—"

    @admin.display(description="heartbeat", ordering="heartbeat_at")
    def heartbeat(self, state: ProjectionState) -> str:
        row = self._status(state)
        age = row.heartbeat_age if row else None
        return "never" if age is None else f"{duration(age)} ago"

    @admin.display(description="dead letters")
    def dead_letters(self, state: ProjectionState) -> SafeString | str:
        row = self._status(state)
        count = row.dead_letters if row else 0
        return self.dead_letters_link(state.name, state.tenant_id, count)

    def dead_letters_link(self, name: str, tenant: str, count: int) -> SafeString | str:
        """The count of unresolved dead letters, linked to their list ("-" when none)."""
        if not count:
            return "-"
        url = reverse(f"{self.admin_site.name}:django_eventsource_deadletter_changelist")
        query = urlencode(
            {"projection__exact": name, "tenant_id__exact": tenant, "resolved_at__isempty": "1"}
        )
        return format_html('<a class="es-dead-letters" href="{}?{}">{}</a>', url, query, count)

    @admin.display(description="last error")
    def error(self, state: ProjectionState) -> SafeString | str:
        return error_summary(
            state.last_error,
            state.failed_event_position,
            state.failed_event_type,
            self.event_url(state.failed_event_position),
        )

    # Actions on the change list -----------------------------------------------------------

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return ProjectionChangeList

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        """The list of state rows, and above it the events that no row shows: tenants no
        runner serves (``unassigned``), inline projections never built (``unbuilt``)."""
        if request.method == "GET" and self.has_view_permission(request):
            unserved = [
                self._row_context(request, row)
                for row in projection_statuses()
                if row.status in UNSERVED
            ]
            extra_context = {**(extra_context or {}), "unserved": unserved}
        return super().changelist_view(request, extra_context)

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        """The detail page replaces the model form (the state is not edited by hand)."""
        state = self.get_object(request, object_id)
        if state is None or not self.has_view_permission(request, state):
            return super().change_view(request, object_id, form_url, extra_context)
        return HttpResponseRedirect(self.detail_url(state.name, state.tenant_id))

    def _run_on_selected(
        self, request: HttpRequest, queryset: QuerySet[ProjectionState], action: str
    ) -> HttpResponse | None:
        spec = self.projection_actions[action]
        states = list(queryset)
        if spec.destructive and request.POST.get("confirm") != "yes":
            return self.render_confirmation(
                request,
                spec,
                [(s.name, s.tenant_id) for s in states],
                form_url=request.get_full_path(),
                hidden=[
                    ("action", action + "_selected"),
                    *[("_selected_action", str(s.pk)) for s in states],
                ],
                cancel_url=request.get_full_path(),
            )
        for state in states:
            self._run(request, spec, state.name, state.tenant_id)
        return None

    @admin.action(description="Pause the selected projections", permissions=["pause"])
    def pause_selected(
        self, request: HttpRequest, queryset: QuerySet[ProjectionState]
    ) -> HttpResponse | None:
        return self._run_on_selected(request, queryset, "pause")

    @admin.action(description="Resume the selected projections", permissions=["pause"])
    def resume_selected(
        self, request: HttpRequest, queryset: QuerySet[ProjectionState]
    ) -> HttpResponse | None:
        return self._run_on_selected(request, queryset, "resume")

    @admin.action(description="Retry the failed event", permissions=["retry"])
    def retry_selected(
        self, request: HttpRequest, queryset: QuerySet[ProjectionState]
    ) -> HttpResponse | None:
        return self._run_on_selected(request, queryset, "retry")

    @admin.action(description="Dead-letter the failed event…", permissions=["retry"])
    def dead_letter_selected(
        self, request: HttpRequest, queryset: QuerySet[ProjectionState]
    ) -> HttpResponse | None:
        return self._run_on_selected(request, queryset, "dead_letter")

    @admin.action(description="Rebuild the selected projections…", permissions=["rebuild"])
    def rebuild_selected(
        self, request: HttpRequest, queryset: QuerySet[ProjectionState]
    ) -> HttpResponse | None:
        return self._run_on_selected(request, queryset, "rebuild")

    @admin.action(
        description="Rebuild the selected projections without downtime (PostgreSQL)…",
        permissions=["rebuild"],
    )
    def rebuild_shadow_selected(
        self, request: HttpRequest, queryset: QuerySet[ProjectionState]
    ) -> HttpResponse | None:
        return self._run_on_selected(request, queryset, "rebuild_shadow")

    def get_actions(self, request: HttpRequest, action_location: Any = None) -> dict[str, Any]:
        # ``action_location``: Django 6.1 passes it (and warns about overrides without it);
        # earlier versions call this with the request only.
        if action_location is None:
            actions = super().get_actions(request)
        else:
            actions = super().get_actions(request, action_location=action_location)  # type: ignore[call-arg]
        if connections[database_alias()].vendor != "postgresql":
            actions.pop("rebuild_shadow_selected", None)  # SQLite refuses a shadow rebuild
        return actions

    def _run(self, request: HttpRequest, spec: ProjectionAction, name: str, tenant: str) -> bool:
        try:
            message = spec.run(name, tenant or None)
        except (EventSourceError, KeyError) as exc:
            self.message_user(request, str(exc.args[0] if exc.args else exc), messages.ERROR)
            return False
        self.message_user(request, message, messages.SUCCESS)
        return True

    def _row_actions(
        self, request: HttpRequest, row: ProjectionStatusRow
    ) -> list[ProjectionAction]:
        """`allowed_actions` for a row: no Pause for an inline projection outside its rebuild
        (`control.pausable`), and Resume for one stored paused by an earlier version (it is
        reported inline: appends apply it), to clear that pause."""
        specs = [
            spec
            for spec in self.allowed_actions(request, row.status)
            if spec.name != "pause"
            or control.pausable(row.projection, row.stored_status, row.suspended_rebuild)
        ]
        if row.stored_status == ProjectionStatus.PAUSED and row.status != ProjectionStatus.PAUSED:
            specs += [
                spec
                for spec in self.allowed_actions(request, ProjectionStatus.PAUSED)
                if spec.name == "resume" and spec not in specs
            ]
        return specs

    def allowed_actions(self, request: HttpRequest, status: str) -> list[ProjectionAction]:
        """The actions this user may run on a projection in ``status``."""
        return [
            spec
            for spec in self.projection_actions.values()
            if spec.applies_to(status, connections[database_alias()].vendor)
            and getattr(self, f"has_{spec.permission}_permission")(request)
        ]

    # Extra pages --------------------------------------------------------------------------

    def render_confirmation(
        self,
        request: HttpRequest,
        spec: ProjectionAction,
        targets: list[tuple[str, str]],
        *,
        form_url: str,
        hidden: list[tuple[str, str]],
        cancel_url: str,
    ) -> TemplateResponse:
        items = []
        for name, tenant in targets:
            item: dict[str, Any] = {
                "name": name,
                "tenant": tenant,
                "label": projection_label(name, tenant),
            }
            if spec.name == "rebuild" and name in projection_registry:
                try:
                    item["plan"] = plan_rebuild(
                        projection_registry.get(name)(), tenant_id=tenant or None
                    )
                except RebuildRefused as exc:
                    item["refused"] = str(exc)
            state = control.find_state(name, tenant or None)
            if spec.name == "dead_letter" and state is not None:
                item["failed_position"] = state.failed_event_position
                item["failed_type"] = state.failed_event_type
                item["failed_url"] = self.event_url(state.failed_event_position)
                item["error"] = state.last_error.split("\n\n", 1)[0]
            items.append(item)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"{spec.label}: are you sure?",
            "action": spec,
            "items": items,
            "refused": any("refused" in item for item in items),
            "form_url": form_url,
            "hidden": hidden,
            "cancel_url": cancel_url,
        }
        return TemplateResponse(request, self.confirm_template, context)

    def action_view(self, request: HttpRequest, name: str, action: str) -> HttpResponse:
        """POST only: run one action on one projection and tenant, then go back.

        The user needs the action's permission and the view permission (the confirmation
        page shows the error and the rebuild plan). The projection and tenant must exist:
        acting never creates a state row for a tenant that has neither one nor events.
        """
        if not self.has_view_permission(request):
            raise PermissionDenied
        spec = self.projection_actions.get(action)
        if spec is None:
            raise Http404(f"No projection action {action!r}.")
        if not getattr(self, f"has_{spec.permission}_permission")(request):
            raise PermissionDenied
        tenant = request.POST.get("tenant", "")
        if not self.projection_exists(name, tenant):
            raise Http404(f"No projection {name!r} for tenant {tenant!r}.")
        back = request.POST.get("next", "")
        if not url_has_allowed_host_and_scheme(
            back, allowed_hosts={request.get_host()}, require_https=request.is_secure()
        ):
            back = self.detail_url(name, tenant)
        if spec.destructive and request.POST.get("confirm") != "yes":
            return self.render_confirmation(
                request,
                spec,
                [(name, tenant)],
                form_url=request.path,
                hidden=[("tenant", tenant), ("next", back)],
                cancel_url=back,
            )
        self._run(request, spec, name, tenant)
        if back == self.detail_url(name, tenant) and not control.find_state(name, tenant):
            # A tenant with events but no state row of its own (a refused tenant rebuild;
            # a global runner serves it) has no detail page: go to the list.
            back = self._url("changelist")
        return HttpResponseRedirect(back)

    def projection_exists(self, name: str, tenant: str) -> bool:
        """Whether the pages know this projection and tenant
        ([`control.projection_known`][django_eventsource.control.projection_known], which
        the commands' ``--tenant`` asks too): it has a state row, or it is registered and
        the tenant is none or has events. Values no row can hold exist nowhere."""
        return control.projection_known(name, tenant)

    def _window(self, request: HttpRequest) -> int:
        try:
            hours = int(request.GET.get("hours", self.lag_windows[1]))
        except ValueError:
            hours = self.lag_windows[1]
        return hours if hours in self.lag_windows else self.lag_windows[1]

    def _row_context(self, request: HttpRequest, row: ProjectionStatusRow) -> dict[str, Any]:
        unassigned = row.status == ProjectionStatus.UNASSIGNED
        return {
            "row": row,
            "tenant": "(events without a tenant)"
            if unassigned and not row.tenant_id
            else tenant_label(row.tenant_id),
            "status": status_badge(row.status),
            "lag_time": duration(row.lag_seconds),
            "heartbeat": "never"
            if row.heartbeat_age is None
            else f"{duration(row.heartbeat_age)} ago",
            "detail_url": self.detail_url(row.projection, row.tenant_id)
            if linkable(row.projection)
            else None,
            "dead_letters": self.dead_letters_link(
                row.projection, row.tenant_id, row.dead_letters
            ),
            "error": error_summary(
                row.last_error,
                row.failed_event_position,
                "",
                self.event_url(row.failed_event_position),
            ),
            "actions": [
                {
                    "spec": spec,
                    "url": self._url("action", row.projection, spec.name),
                }
                for spec in self._row_actions(request, row)
                if linkable(row.projection)
            ],
        }

    def can_view_holder_query(self, request: HttpRequest) -> bool:
        """Whether the horizon box may show the holder's SQL (it can show other users'
        data): superusers only. Override to widen or narrow it."""
        return bool(getattr(request.user, "is_superuser", False))

    def _horizon(self, request: HttpRequest) -> list[HorizonHolder]:
        """The transactions that appended events and have not committed (they hold
        projections back); the query text only where `can_view_holder_query`."""
        return horizon_holders(EventStore().using, with_query=self.can_view_holder_query(request))

    def lag_view(self, request: HttpRequest) -> TemplateResponse:
        """Every projection's lag now, and charts of lag over time (LagSample)."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        hours = self._window(request)
        metric = "seconds" if request.GET.get("metric") == "seconds" else "events"
        rows = projection_statuses()
        charts = lag_charts(
            [(r.projection, r.tenant_id) for r in rows],
            since=timezone.now() - timedelta(hours=hours),
            metric=metric,
        )
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Projection lag",
            "rows": [
                {**self._row_context(request, row), "chart": chart}
                for row, chart in zip(rows, charts, strict=True)
            ],
            "horizon": self._horizon(request),
            "hours": hours,
            "windows": self.lag_windows,
            "metric": metric,
            "next": request.get_full_path(),
        }
        return TemplateResponse(request, self.lag_template, context)

    def detail_view(self, request: HttpRequest, name: str) -> TemplateResponse:
        """One projection and tenant: status, full error, read-model statistics, lag chart."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        tenant = request.GET.get("tenant", "")
        if not self.projection_exists(name, tenant):
            raise Http404(f"No projection {name!r} for tenant {tenant!r}.")
        state = (
            ProjectionState.objects.using(control.projection_database(name))
            .filter(name=name, tenant_id=tenant)
            .first()
        )
        found = [r for r in projection_statuses([name]) if r.tenant_id == tenant]
        if not found or (state is None and name not in projection_registry):
            raise Http404(f"No projection {name!r} for tenant {tenant!r}.")
        row = found[0]
        projection = projection_registry.get(name)() if name in projection_registry else None
        hours = self._window(request)
        metric = "seconds" if request.GET.get("metric") == "seconds" else "events"
        [chart] = lag_charts(
            [(name, tenant)], since=timezone.now() - timedelta(hours=hours), metric=metric
        )
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"Projection {projection_label(name, tenant)}",
            "projection": projection,
            "projection_class": f"{type(projection).__module__}.{type(projection).__qualname__}"
            if projection
            else "",
            "state": state,
            "item": self._row_context(request, row),
            "failed_url": self.event_url(state.failed_event_position) if state else None,
            "statistics": read_model_statistics(projection, tenant or None) if projection else [],
            "chart": chart,
            "hours": hours,
            "windows": self.lag_windows,
            "metric": metric,
            "horizon": self._horizon(request),
            "next": request.get_full_path(),
            "lag_url": self._url("lag"),
        }
        return TemplateResponse(request, self.detail_template, context)

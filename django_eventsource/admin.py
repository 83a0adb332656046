"""The Django admin: projections, a lag dashboard, a read-only event browser, dead letters.

Everything here formats what the library reports and calls the library to change it:
statuses and lag come from :func:`~django_eventsource.status.projection_statuses`, the
actions call :mod:`~django_eventsource.control` and :func:`~django_eventsource.rebuild.rebuild`.
Facts (events, dead letters, projection state) are never added, edited or deleted here.

Each class is importable and subclassable; unregister one and register your own::

    from django.contrib import admin
    from django_eventsource.admin import EventAdmin
    from django_eventsource.models import Event

    admin.site.unregister(Event)

    @admin.register(Event)
    class MyEventAdmin(EventAdmin):
        list_per_page = 20
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar
from uuid import UUID

from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db import connections
from django.db.models import Count, Field, Max, Min, Model, OuterRef, Q, QuerySet, Subquery
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.functional import cached_property
from django.utils.html import format_html
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.safestring import SafeString
from django.views.decorators.http import require_POST

from django_eventsource import control
from django_eventsource.events import event_registry
from django_eventsource.exceptions import EventSourceError
from django_eventsource.models import (
    CheckpointedModel,
    DeadLetter,
    Event,
    LagSample,
    ProjectionState,
)
from django_eventsource.projections import Projection, projection_registry
from django_eventsource.rebuild import plan_rebuild, rebuild
from django_eventsource.status import (
    HorizonHolder,
    ProjectionStatusRow,
    horizon_holder,
    projection_statuses,
)
from django_eventsource.store import EventStore

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

M = TypeVar("M", bound=Model)

STATUS_PERMISSIONS = {
    "pause": "django_eventsource.pause_projection",
    "retry": "django_eventsource.retry_projection",
    "rebuild": "django_eventsource.rebuild_projection",
}


def _tenant_label(tenant_id: str) -> str:
    return tenant_id or "—"


def _duration(seconds: float | None) -> str:
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


# Projection actions -------------------------------------------------------------------------


def _label(name: str, tenant_id: str | None) -> str:
    return f"{name} (tenant {tenant_id})" if tenant_id else name


def _pause(name: str, tenant_id: str | None) -> str:
    control.pause(name, tenant_id)
    return f"Paused {_label(name, tenant_id)}."


def _resume(name: str, tenant_id: str | None) -> str:
    control.resume(name, tenant_id)
    return f"Resumed {_label(name, tenant_id)}."


def _retry(name: str, tenant_id: str | None) -> str:
    state = control.get_state(name, tenant_id)
    if state.status != state.Status.FAILED:
        raise EventSourceError(f"Projection {name!r} has no failed event to retry.")
    control.retry(name, tenant_id)
    return (
        f"{_label(name, tenant_id)} will retry event #{state.failed_event_position} "
        "on the runner's next pass."
    )


def _dead_letter(name: str, tenant_id: str | None) -> str:
    letter = control.dead_letter_failed(name, tenant_id)
    return (
        f"Set event #{letter.event_position} aside as a dead letter; "
        f"{_label(name, tenant_id)} continues with the next event."
    )


def _rebuild(name: str, tenant_id: str | None) -> str:
    projection = projection_registry.get(name)()
    result = rebuild(projection, tenant_id=tenant_id)
    if result.failed:
        state = control.get_state(name, tenant_id)
        return (
            f"Rebuilt {_label(name, tenant_id)} up to event #{state.position}, then it failed "
            f"on event #{state.failed_event_position}; see its last error."
        )
    return f"Rebuilt {_label(name, tenant_id)}: replayed {result.events_applied} events."


@dataclass(frozen=True)
class ProjectionAction:
    """One operation on a projection and tenant, as the admin offers it."""

    name: str
    label: str
    #: ``pause``, ``retry`` or ``rebuild``: checked with ``has_<permission>_permission``.
    permission: str
    #: Destructive actions ask for confirmation first.
    destructive: bool
    run: Callable[[str, str | None], str]
    #: The statuses in which the action makes sense (None: any).
    statuses: frozenset[str] | None = None
    description: str = ""

    def applies_to(self, status: str) -> bool:
        return self.statuses is None or status in self.statuses


PROJECTION_ACTIONS: dict[str, ProjectionAction] = {
    action.name: action
    for action in (
        ProjectionAction(
            "pause",
            "Pause",
            "pause",
            destructive=False,
            run=_pause,
            # Not "inline": inline projections run inside each append and ignore a pause.
            statuses=frozenset({"idle", "running", "failed", "rebuilding"}),
        ),
        ProjectionAction(
            "resume",
            "Resume",
            "pause",
            destructive=False,
            run=_resume,
            statuses=frozenset({"paused"}),
        ),
        ProjectionAction(
            "retry",
            "Retry failed event",
            "retry",
            destructive=False,
            run=_retry,
            statuses=frozenset({"failed"}),
        ),
        ProjectionAction(
            "dead_letter",
            "Dead-letter failed event",
            "retry",
            destructive=True,
            run=_dead_letter,
            statuses=frozenset({"failed"}),
            description=(
                "The failed event is set aside as a dead letter and the checkpoint moves past "
                "it: the projection continues with the next event and never applies this one "
                "unless the dead letter is retried."
            ),
        ),
        ProjectionAction(
            "rebuild",
            "Rebuild",
            "rebuild",
            destructive=True,
            run=_rebuild,
            description=(
                "The projection's rows are deleted, its checkpoint goes back to 0 and every "
                "event is replayed now, in this request. Readers see the read model empty "
                "and filling up meanwhile. For a large store, prefer "
                "manage.py rebuild_projections."
            ),
        ),
    )
}


# Lag chart and read-model statistics --------------------------------------------------------


@dataclass(frozen=True)
class LagChart:
    """One projection's lag over time, scaled for an inline SVG."""

    projection: str
    tenant_id: str
    metric: str
    points: str
    samples: int
    maximum: float
    latest: float | None
    start: datetime
    end: datetime
    width: int
    height: int

    @property
    def area(self) -> str:
        """The polyline closed down to the x axis (a filled area under the line)."""
        if not self.points:
            return ""
        first, last = self.points.split(" ")[0], self.points.split(" ")[-1]
        return (
            f"{first.split(',')[0]},{self.height} {self.points} {last.split(',')[0]},{self.height}"
        )

    @property
    def last_point(self) -> tuple[str, str] | None:
        """The newest point, marked with a dot (a single sample draws no line)."""
        if not self.points:
            return None
        x, y = self.points.rsplit(" ", 1)[-1].split(",")
        return x, y

    @property
    def maximum_label(self) -> str:
        return _duration(self.maximum) if self.metric == "seconds" else f"{self.maximum:,.0f}"

    @property
    def latest_label(self) -> str:
        if self.latest is None:
            return "no samples"
        return _duration(self.latest) if self.metric == "seconds" else f"{self.latest:,.0f}"


CHART_WIDTH = 600
CHART_HEIGHT = 120
CHART_BUCKETS = 200


def lag_charts(
    series: Iterable[tuple[str, str]],
    *,
    since: datetime,
    until: datetime | None = None,
    metric: str = "events",
) -> list[LagChart]:
    """Lag charts from :class:`~django_eventsource.models.LagSample`, one per series.

    Each series is read with its own index range scan (``name, tenant_id, recorded_at``)
    and reduced to at most ``CHART_BUCKETS`` points, keeping the worst lag of each bucket.
    """
    until = until or timezone.now()
    field = "lag_seconds" if metric == "seconds" else "lag_events"
    span = max((until - since).total_seconds(), 1.0)
    charts = []
    for name, tenant in series:
        samples = (
            LagSample.objects.using(control._database(name))
            .filter(name=name, tenant_id=tenant, recorded_at__gte=since, recorded_at__lte=until)
            .order_by("recorded_at")
            .values_list("recorded_at", field)
        )
        buckets: dict[int, float] = {}
        count = 0
        latest: float | None = None
        for recorded_at, value in samples.iterator(chunk_size=2000):
            bucket = min(
                int((recorded_at - since).total_seconds() / span * CHART_BUCKETS),
                CHART_BUCKETS - 1,
            )
            buckets[bucket] = max(buckets.get(bucket, 0.0), float(value))
            latest = float(value)
            count += 1
        maximum = max(buckets.values(), default=0.0)
        scale = maximum or 1.0
        points = " ".join(
            f"{(b + 0.5) * CHART_WIDTH / CHART_BUCKETS:.1f},"
            f"{CHART_HEIGHT - v / scale * (CHART_HEIGHT - 4):.1f}"
            for b, v in sorted(buckets.items())
        )
        charts.append(
            LagChart(
                name,
                tenant,
                metric,
                points,
                count,
                maximum,
                latest,
                since,
                until,
                CHART_WIDTH,
                CHART_HEIGHT,
            )
        )
    return charts


@dataclass(frozen=True)
class ReadModelStatistics:
    """What a read model's embedded checkpoint columns say about it."""

    model: str
    table: str
    rows: int
    min_position: int | None
    max_position: int | None
    #: Rows whose last applied version is below their stream's latest handled event
    #: (None when it cannot be measured: rows fed by many streams, no row key, another
    #: database than the events).
    behind: int | None
    behind_note: str


def read_model_statistics(
    projection: Projection, tenant_id: str | None = None, *, event_store: EventStore | None = None
) -> list[ReadModelStatistics]:
    """Rows, min/max ``last_event_position`` and rows behind their stream, per read model."""
    store = event_store or EventStore()
    database = projection.database
    handled = sorted(projection.handled_types())
    statistics = []
    for model in projection.models:
        fields = {f.name for f in model._meta.concrete_fields}
        rows = model._default_manager.using(database).all()
        if tenant_id is not None and "tenant_id" in fields:
            rows = rows.filter(tenant_id=tenant_id)
        checkpointed = issubclass(model, CheckpointedModel)
        if checkpointed:
            totals = rows.aggregate(
                rows=Count("pk"),
                low=Min("last_event_position"),
                high=Max("last_event_position"),
            )
        else:
            totals = {**rows.aggregate(rows=Count("pk")), "low": None, "high": None}
        key = projection.row_keys.get(model)
        behind: int | None = None
        if not checkpointed:
            note = "not a CheckpointedModel"
        elif getattr(model, "checkpoint_by", "version") != "version":
            note = "fed by many streams (checkpointed by position)"
        elif not key:
            note = "no row key names the stream"
        elif database != store.using:
            note = "the events are in another database"
        elif not handled:
            note = "the projection handles no event type"
        else:
            head = Event.objects.using(database).filter(
                aggregate_id=OuterRef(key), event_type__in=handled
            )
            if "tenant_id" in fields:
                head = head.filter(tenant_id=OuterRef("tenant_id"))
            latest = head.order_by("-aggregate_version").values("aggregate_version")[:1]
            behind = rows.filter(last_event_version__lt=Subquery(latest)).count()
            note = "compared with each stream's latest event of a handled type"
        statistics.append(
            ReadModelStatistics(
                model=model._meta.label,
                table=model._meta.db_table,
                rows=totals["rows"],
                min_position=totals["low"],
                max_position=totals["high"],
                behind=behind,
                behind_note=note,
            )
        )
    return statistics


# Projections --------------------------------------------------------------------------------


class ProjectionChangeList(ChangeList):
    """Attaches each row's :class:`~django_eventsource.status.ProjectionStatusRow` (head,
    lag, heartbeat age), measured once for the page instead of once per column."""

    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        names = sorted({state.name for state in self.result_list})
        if not names:
            return
        found = {(row.projection, row.tenant_id): row for row in projection_statuses(names)}
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
        return f"{url}?tenant={tenant}" if tenant else url

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
        return format_html(
            '<a href="{}">{}</a>', self.detail_url(state.name, state.tenant_id), state.name
        )

    @admin.display(description="tenant", ordering="tenant_id")
    def tenant(self, state: ProjectionState) -> str:
        return _tenant_label(state.tenant_id)

    @admin.display(description="status", ordering="status")
    def status_badge(self, state: ProjectionState) -> SafeString:
        row = self._status(state)
        return status_badge(row.status if row else state.status)

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
        return _duration(row.lag_seconds) if row else "—"

    @admin.display(description="heartbeat", ordering="heartbeat_at")
    def heartbeat(self, state: ProjectionState) -> str:
        row = self._status(state)
        age = row.heartbeat_age if row else None
        return "never" if age is None else f"{_duration(age)} ago"

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

    def _run(self, request: HttpRequest, spec: ProjectionAction, name: str, tenant: str) -> bool:
        try:
            message = spec.run(name, tenant or None)
        except (EventSourceError, KeyError) as exc:
            self.message_user(request, str(exc.args[0] if exc.args else exc), messages.ERROR)
            return False
        self.message_user(request, message, messages.SUCCESS)
        return True

    def allowed_actions(self, request: HttpRequest, status: str) -> list[ProjectionAction]:
        """The actions this user may run on a projection in ``status``."""
        return [
            spec
            for spec in self.projection_actions.values()
            if spec.applies_to(status)
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
            item: dict[str, Any] = {"name": name, "tenant": tenant, "label": _label(name, tenant)}
            if spec.name == "rebuild" and name in projection_registry:
                item["plan"] = plan_rebuild(
                    projection_registry.get(name)(), tenant_id=tenant or None
                )
            if spec.name == "dead_letter":
                state = control.get_state(name, tenant or None)
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
            "form_url": form_url,
            "hidden": hidden,
            "cancel_url": cancel_url,
        }
        return TemplateResponse(request, self.confirm_template, context)

    def action_view(self, request: HttpRequest, name: str, action: str) -> HttpResponse:
        """POST only: run one action on one projection and tenant, then go back."""
        spec = self.projection_actions.get(action)
        if spec is None:
            raise Http404(f"No projection action {action!r}.")
        if not getattr(self, f"has_{spec.permission}_permission")(request):
            raise PermissionDenied
        tenant = request.POST.get("tenant", "")
        if name not in projection_registry and not (
            ProjectionState.objects.using(control._database(name))
            .filter(name=name, tenant_id=tenant)
            .exists()
        ):
            raise Http404(f"No projection {name!r}.")
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
        return HttpResponseRedirect(back)

    def _window(self, request: HttpRequest) -> int:
        try:
            hours = int(request.GET.get("hours", self.lag_windows[1]))
        except ValueError:
            hours = self.lag_windows[1]
        return hours if hours in self.lag_windows else self.lag_windows[1]

    def _row_context(self, request: HttpRequest, row: ProjectionStatusRow) -> dict[str, Any]:
        return {
            "row": row,
            "tenant": _tenant_label(row.tenant_id),
            "status": status_badge(row.status),
            "lag_time": _duration(row.lag_seconds),
            "heartbeat": "never"
            if row.heartbeat_age is None
            else f"{_duration(row.heartbeat_age)} ago",
            "detail_url": self.detail_url(row.projection, row.tenant_id),
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
                for spec in self.allowed_actions(request, row.status)
            ],
        }

    def _horizon(self) -> HorizonHolder | None:
        return horizon_holder(EventStore().using)

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
            "horizon": self._horizon(),
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
        state = (
            ProjectionState.objects.using(control._database(name))
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
            "title": f"Projection {_label(name, tenant)}",
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
            "horizon": self._horizon(),
            "next": request.get_full_path(),
            "lag_url": self._url("lag"),
        }
        return TemplateResponse(request, self.detail_template, context)


def status_badge(status: str) -> SafeString:
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


# Events -------------------------------------------------------------------------------------


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

    * no full count (``show_full_result_count = False`` and :class:`LookAheadPaginator`);
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
        return _tenant_label(event.tenant_id)

    @admin.display(description="payload")
    def payload_json(self, event: Event) -> SafeString:
        return pretty_json(event.payload)

    @admin.display(description="metadata")
    def metadata_json(self, event: Event) -> SafeString:
        return pretty_json(event.metadata)


def pretty_json(value: Any) -> SafeString:
    """Indented JSON in a ``<pre>``, escaped (payloads are user data)."""
    text = json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)
    return format_html('<pre class="es-json">{}</pre>', text)


# Dead letters -------------------------------------------------------------------------------


class DeadLetterAdmin(ReadOnlyModelAdmin[DeadLetter]):
    """Events projections set aside; the retry action applies one again."""

    list_display = (
        "projection",
        "tenant",
        "event",
        "event_type",
        "short_error",
        "attempts",
        "created_at",
        "resolved_at",
    )
    list_filter = ("projection", ("resolved_at", admin.EmptyFieldListFilter), "event_type")
    search_fields = ("=event_id",)
    actions = ("retry_selected",)
    fields = (
        "projection",
        "tenant",
        "event",
        "event_id",
        "event_type",
        "error",
        "traceback_text",
        "attempts",
        "created_at",
        "resolved_at",
    )
    readonly_fields = fields

    @admin.display(description="tenant", ordering="tenant_id")
    def tenant(self, letter: DeadLetter) -> str:
        return _tenant_label(letter.tenant_id)

    @admin.display(description="event", ordering="event_position")
    def event(self, letter: DeadLetter) -> SafeString:
        url = reverse(
            f"{self.admin_site.name}:django_eventsource_event_change",
            args=[letter.event_position],
        )
        return format_html('<a href="{}">#{}</a>', url, letter.event_position)

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
        for letter in queryset.filter(resolved_at=None):
            try:
                applied = control.retry_dead_letter(letter)
            except (EventSourceError, KeyError) as exc:
                self.message_user(
                    request,
                    f"{letter}: {exc.args[0] if exc.args else exc}",
                    messages.ERROR,
                )
                continue
            if applied:
                self.message_user(request, f"{letter}: applied and resolved.", messages.SUCCESS)
            else:
                self.message_user(
                    request, f"{letter}: failed again: {letter.error}", messages.ERROR
                )


admin.site.register(ProjectionState, ProjectionStateAdmin)
admin.site.register(Event, EventAdmin)
admin.site.register(DeadLetter, DeadLetterAdmin)

"""The operations the admin offers on a projection and tenant (pause, resume, retry,
dead-letter, rebuild): each calls the library and returns the message to show."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from django_eventsource import control
from django_eventsource.exceptions import EventSourceError
from django_eventsource.models import ProjectionStatus as Status
from django_eventsource.projections import projection_registry
from django_eventsource.rebuild import rebuild
from django_eventsource.text import plural

__all__ = ["PROJECTION_ACTIONS", "ProjectionAction", "projection_label"]


def projection_label(name: str, tenant_id: str | None) -> str:
    """A projection and tenant as messages name them."""
    return f"{name} (tenant {tenant_id})" if tenant_id else name


def _pause(name: str, tenant_id: str | None) -> str:
    control.pause(name, tenant_id)
    return f"Paused {projection_label(name, tenant_id)}."


def _rebuild_carries_on(name: str, tenant_id: str | None) -> str:
    """What a resumed projection's message adds when it went back to its rebuild ("" when
    it did not)."""
    if control.get_state(name, tenant_id).status != Status.REBUILDING:
        return ""
    again = name + (f" --tenant {tenant_id}" if tenant_id else "")
    return (
        " It was paused or failed in the middle of its rebuild, which carries on from its "
        f"checkpoint: run rebuild_projections {again} (a worker running it resumes it too)."
    )


def _resume(name: str, tenant_id: str | None) -> str:
    control.resume(name, tenant_id)
    return f"Resumed {projection_label(name, tenant_id)}." + _rebuild_carries_on(name, tenant_id)


def _retry(name: str, tenant_id: str | None) -> str:
    state = control.get_state(name, tenant_id)
    if state.status != Status.FAILED:
        raise EventSourceError(f"Projection {name!r} has no failed event to retry.")
    control.retry(name, tenant_id)
    return (
        f"{projection_label(name, tenant_id)} will retry event #{state.failed_event_position} "
        "on the runner's next pass." + _rebuild_carries_on(name, tenant_id)
    )


def _dead_letter(name: str, tenant_id: str | None) -> str:
    letter = control.dead_letter_failed(name, tenant_id)
    return (
        f"Set event #{letter.event_position} aside as a dead letter; "
        f"{projection_label(name, tenant_id)} continues with the next event."
        + _rebuild_carries_on(name, tenant_id)
    )


def _still_paused(name: str, tenant_id: str | None) -> str:
    """What a rebuild's message adds when the projection was paused, and still is ("" when
    it is not)."""
    if control.get_state(name, tenant_id).status != Status.PAUSED:
        return ""
    return " It is still paused: resume it to let runners apply new events."


def _rebuild(name: str, tenant_id: str | None) -> str:
    projection = projection_registry.get(name)()
    result = rebuild(projection, tenant_id=tenant_id)
    if result.lost:  # another runner took it over mid-run (it said "Rebuilt")
        state = control.get_state(name, tenant_id)
        raise EventSourceError(
            f"The rebuild of {projection_label(name, tenant_id)} lost its lock to "
            f"{state.owner or 'another runner'} at event #{state.position or 0}; that runner "
            "continues the replay."
        )
    if result.failed:
        state = control.get_state(name, tenant_id)
        return (
            f"Rebuilt {projection_label(name, tenant_id)} up to event #{state.position}, then it failed "
            f"on event #{state.failed_event_position}; see its last error. Once the handler is "
            "fixed, retry the event: the rebuild carries on from there."
        )
    return (
        f"Rebuilt {projection_label(name, tenant_id)}: replayed "
        f"{plural(result.events_applied, 'event')}." + _still_paused(name, tenant_id)
    )


def _rebuild_shadow(name: str, tenant_id: str | None) -> str:
    projection = projection_registry.get(name)()
    result = rebuild(projection, tenant_id=tenant_id, shadow=True)
    if result.swap_seconds is None:
        return (
            f"Stopped the shadow build of {projection_label(name, tenant_id)} before its swap; "
            "run it again to resume it."
        )
    return (
        f"Rebuilt {projection_label(name, tenant_id)} without downtime: replayed "
        f"{plural(result.events_applied, 'event')} into shadow tables and swapped them in "
        f"({result.swap_seconds * 1000:.0f} ms)." + _still_paused(name, tenant_id)
    )


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
    #: The database vendors it works on (None: any).
    vendors: frozenset[str] | None = None

    def applies_to(self, status: str, vendor: str | None = None) -> bool:
        return (self.statuses is None or status in self.statuses) and (
            self.vendors is None or vendor is None or vendor in self.vendors
        )


PROJECTION_ACTIONS: dict[str, ProjectionAction] = {
    action.name: action
    for action in (
        ProjectionAction(
            "pause",
            "Pause",
            "pause",
            destructive=False,
            run=_pause,
            # Not "inline" nor "unbuilt": inline projections run inside each append and
            # cannot be paused, but for their rebuild (control.pausable; the admin's rows
            # offer it accordingly).
            # "stale": the runner died while running; pausing keeps a new one off it.
            # "interrupted": a rebuild no runner works on (stored rebuilding).
            statuses=frozenset(
                {
                    Status.IDLE,
                    Status.RUNNING,
                    Status.STALE,
                    Status.INTERRUPTED,
                    Status.FAILED,
                    Status.REBUILDING,
                }
            ),
        ),
        ProjectionAction(
            "resume",
            "Resume",
            "pause",
            destructive=False,
            run=_resume,
            statuses=frozenset({Status.PAUSED}),
        ),
        ProjectionAction(
            "retry",
            "Retry failed event",
            "retry",
            destructive=False,
            run=_retry,
            statuses=frozenset({Status.FAILED}),
        ),
        ProjectionAction(
            "dead_letter",
            "Dead-letter failed event",
            "retry",
            destructive=True,
            run=_dead_letter,
            statuses=frozenset({Status.FAILED}),
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
                "and filling up meanwhile. A paused projection stays paused. For a large "
                "store, prefer manage.py rebuild_projections."
            ),
        ),
        ProjectionAction(
            "rebuild_shadow",
            "Rebuild without downtime",
            "rebuild",
            destructive=True,
            run=_rebuild_shadow,
            vendors=frozenset({"postgresql"}),
            description=(
                "Every event is replayed into shadow tables now, in this request, while "
                "readers keep seeing the current rows and the projection keeps being "
                "applied; then one short transaction swaps the new tables in. Needs twice "
                "the disk of the tables meanwhile. A paused projection stays paused. For a "
                "large store, prefer manage.py rebuild_projections --shadow."
            ),
        ),
    )
}

"""Operating projections: pause, resume, retry, skip, dead letters.

These are the library calls behind the management commands and the admin actions. Each
takes a projection name (and tenant) and changes its ``ProjectionState`` in one transaction.
"""

from __future__ import annotations

import traceback as tb
from typing import TYPE_CHECKING

from django.db import transaction
from django.utils import timezone

from django_eventsource.exceptions import EventSourceError, ProjectionError

if TYPE_CHECKING:
    from django_eventsource.models import DeadLetter, ProjectionState
    from django_eventsource.store import BaseEventStore

__all__ = [
    "dead_letter_failed",
    "get_state",
    "pause",
    "record_failure",
    "resume",
    "retry",
    "retry_dead_letter",
]

NO_TENANT = ""


def _database(name: str) -> str:
    from django_eventsource.projections import projection_registry

    if name in projection_registry:
        return projection_registry.get(name)().database
    from django_eventsource.conf import get_settings

    return get_settings().database_alias


def get_state(name: str, tenant_id: str | None = None, *, lock: bool = False) -> ProjectionState:
    """The projection's state row (created on first use)."""
    from django_eventsource.models import ProjectionState

    states = ProjectionState.objects.using(_database(name))
    if lock:
        states = states.select_for_update()
    state, _ = states.get_or_create(name=name, tenant_id=tenant_id or NO_TENANT)
    return state


def pause(name: str, tenant_id: str | None = None) -> ProjectionState:
    """Stop runners from applying events to this projection until :func:`resume`."""
    with transaction.atomic(using=_database(name)):
        state = get_state(name, tenant_id, lock=True)
        state.status = state.Status.PAUSED
        state.save(update_fields=["status", "updated_at"])
    return state


def resume(name: str, tenant_id: str | None = None) -> ProjectionState:
    """Let runners continue. A failed projection retries its failed event first."""
    with transaction.atomic(using=_database(name)):
        state = get_state(name, tenant_id, lock=True)
        state.status = state.Status.IDLE
        state.attempts = 0
        state.save(update_fields=["status", "attempts", "updated_at"])
    return state


#: Retrying a failed projection is resuming it: its checkpoint is still before the event.
retry = resume


def record_failure(
    name: str, tenant_id: str | None, error: ProjectionError, *, attempts: int
) -> ProjectionState:
    """Mark the projection failed on ``error``'s event (checkpoint stays before it)."""
    with transaction.atomic(using=_database(name)):
        state = get_state(name, tenant_id, lock=True)
        state.status = state.Status.FAILED
        state.last_error = _describe(error)
        state.failed_event_position = error.position
        state.failed_event_id = error.event_id
        state.failed_event_type = error.event_type
        state.attempts = attempts
        state.save()
    return state


def _describe(error: ProjectionError) -> str:
    cause = error.cause
    trace = "".join(tb.format_exception(type(cause), cause, cause.__traceback__))
    return f"{error}\n\n{trace}"


def dead_letter_failed(name: str, tenant_id: str | None = None) -> DeadLetter:
    """Set the failed event aside as a dead letter and move the checkpoint past it.

    Use this when the event can never be applied (the projection resumes with the next one).
    """
    from django_eventsource.models import DeadLetter

    using = _database(name)
    with transaction.atomic(using=using):
        state = get_state(name, tenant_id, lock=True)
        if (
            state.status != state.Status.FAILED
            or state.failed_event_position is None
            or state.failed_event_id is None
        ):
            raise EventSourceError(f"Projection {name!r} has no failed event to dead-letter.")
        letter, _ = DeadLetter.objects.using(using).update_or_create(
            projection=name,
            tenant_id=tenant_id or NO_TENANT,
            event_position=state.failed_event_position,
            defaults={
                "event_id": state.failed_event_id,
                "event_type": state.failed_event_type,
                "error": state.last_error.split("\n\n", 1)[0],
                "traceback": state.last_error,
                "attempts": state.attempts,
            },
        )
        state.position = max(state.position or 0, state.failed_event_position)
        state.status = state.Status.IDLE
        state.attempts = 0
        state.last_error = ""
        state.failed_event_position = None
        state.failed_event_id = None
        state.failed_event_type = ""
        state.save()
    return letter


def retry_dead_letter(letter: DeadLetter, event_store: BaseEventStore | None = None) -> bool:
    """Apply a dead-lettered event again; on success it is marked resolved.

    The rows' embedded checkpoints decide: a row that already moved past the event skips it.
    Returns whether it was applied without error.
    """
    from django_eventsource.projections import projection_registry
    from django_eventsource.store import EventStore

    store = event_store or EventStore()
    projection = projection_registry.get(letter.projection)()
    projection.event_store = store
    stored = store.event_at(letter.event_position)
    if stored is None:
        raise EventSourceError(f"Event #{letter.event_position} is not in the store.")
    try:
        projection.handle(stored)
    except ProjectionError as exc:
        letter.error = str(exc)
        letter.attempts += 1
        letter.save(update_fields=["error", "attempts"])
        return False
    letter.resolved_at = timezone.now()
    letter.save(update_fields=["resolved_at"])
    return True

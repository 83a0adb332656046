"""Operating projections: pause, resume, retry, skip, dead letters.

These are the library calls behind the management commands and the admin actions. Each
takes a projection name (and tenant) and changes its ``ProjectionState`` in one transaction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from django_eventsource.conf import database_alias
from django_eventsource.constants import NO_TENANT
from django_eventsource.exceptions import (
    EventSourceError,
    InlineNotPausable,
    ProjectionError,
    UnknownTenant,
)
from django_eventsource.projections import projection_registry
from django_eventsource.store import EventStore
from django_eventsource.transactions import write_transaction
from django_eventsource.validation import (
    check_projection_name,
    check_read_tenant,
    check_run_tenant,
)

if TYPE_CHECKING:
    from django_eventsource.deadletters import RetryOutcome
    from django_eventsource.models import DeadLetter, ProjectionState
    from django_eventsource.store import BaseEventStore

# Models are imported inside the functions that use them, so that importing this module (the
# runner does) never needs the app registry.
__all__ = [
    "check_tenant",
    "dead_letter_failed",
    "find_state",
    "get_state",
    "known_tenants",
    "pausable",
    "pause",
    "projection_database",
    "projection_known",
    "record_failure",
    "resume",
    "retry",
    "retry_dead_letter",
]


def projection_database(name: str) -> str:
    """The database alias of a projection's state and read models (registered or not)."""
    if name in projection_registry:
        return projection_registry.get(name)().database
    return database_alias()


def find_state(name: str, tenant_id: str | None = None) -> ProjectionState | None:
    """The projection's state row, or None when it has none: reading creates nothing."""
    from django_eventsource.models import ProjectionState

    return (
        ProjectionState.objects.using(projection_database(name))
        .filter(name=name, tenant_id=tenant_id or NO_TENANT)
        .first()
    )


def projection_known(
    name: str, tenant_id: str | None = None, *, event_store: BaseEventStore | None = None
) -> bool:
    """Whether projection ``name`` and tenant are known: it has a state row for the tenant,
    or it is registered and the tenant is none (None or ``""``) or carried by a committed
    event.

    The admin's pages and actions and the commands' ``--tenant`` decide with this one
    function, so that a typo never creates a state row (which would then show in
    ``projection_status`` and the admin forever). An event counts as soon as it is
    committed, also while PostgreSQL's ordering horizon still holds it back from readers:
    a new tenant's first append makes it known. A value no row can hold (too long, a NUL)
    is known nowhere.
    """
    from django_eventsource.models import Event, ProjectionState

    try:
        check_read_tenant(name, "name")
        check_read_tenant(tenant_id)
    except (TypeError, ValueError):
        return False
    tenant = tenant_id or NO_TENANT
    states = ProjectionState.objects.using(projection_database(name))
    if states.filter(name=name, tenant_id=tenant).exists():
        return True
    if name not in projection_registry:
        return False
    if not tenant:
        return True
    store = event_store or EventStore()
    if isinstance(store, EventStore):
        # The table, not read_all(): committed events count even while held back.
        return Event.objects.using(store.using).filter(tenant_id=tenant).exists()
    return bool(store.read_all(limit=1, tenant_id=tenant).events)


def known_tenants(
    name: str,
    near: str | None = None,
    *,
    event_store: BaseEventStore | None = None,
    limit: int = 6,
) -> list[str]:
    """A few tenants projection ``name`` knows (see `projection_known`), sorted: those of its
    state rows and those of the events nearest to ``near`` in sort order (the first ones
    without ``near``). One index probe per tenant read from the event table, so it stays
    cheap with millions of events and thousands of tenants."""
    from django_eventsource.models import Event, ProjectionState

    store = event_store or EventStore()
    try:
        check_read_tenant(near)
    except (TypeError, ValueError):
        near = None  # a value no query may carry (a NUL): list from the start
    found = set(
        ProjectionState.objects.using(projection_database(name))
        .filter(name=name)
        .exclude(tenant_id=NO_TENANT)
        .values_list("tenant_id", flat=True)
    )
    if isinstance(store, EventStore):
        events = Event.objects.using(store.using).exclude(tenant_id=NO_TENANT)
        walks = [("tenant_id__gt", "tenant_id"), ("tenant_id__lt", "-tenant_id")]
        if near is None:
            walks = walks[:1]
        for lookup, order in walks:
            current = near or NO_TENANT
            for _ in range(limit):
                following = (
                    events.filter(**{lookup: current})
                    .order_by(order)
                    .values_list("tenant_id", flat=True)
                    .first()
                )
                if following is None:
                    break
                found.add(following)
                current = following
    else:
        found.update(e.tenant_id for e in store.read_all() if e.tenant_id)
    if near is None:
        return sorted(found)[:limit]
    ranked = sorted(found)
    below = [t for t in ranked if t < near][-(limit // 2) :]
    above = [t for t in ranked if t > near][: limit - len(below)]
    return below + above


def check_tenant(
    name: str, tenant_id: str | None, *, event_store: BaseEventStore | None = None
) -> None:
    """Refuse a run or rebuild of projection ``name`` limited to a tenant it does not know
    (`projection_known`): [`UnknownTenant`][django_eventsource.UnknownTenant], naming a few
    known tenants, before anything is written. ``None`` (every tenant) always passes;
    ``""`` is refused (``ValueError``, see
    [`check_run_tenant`][django_eventsource.validation.check_run_tenant])."""
    check_run_tenant(tenant_id)
    if tenant_id is None or projection_known(name, tenant_id, event_store=event_store):
        return
    raise UnknownTenant(name, tenant_id, known_tenants(name, tenant_id, event_store=event_store))


def _require_known(name: str, tenant_id: str | None) -> None:
    """An operator's action on a projection or tenant nobody knows is a typo: refuse it
    before a state row is created for it (the row would show everywhere, forever)."""
    check_projection_name(name)  # ValueError for a name no projection can have
    if projection_known(name, tenant_id):
        return
    if not projection_known(name):
        projection_registry.get(name)  # KeyError naming the known projections
    check_run_tenant(tenant_id)  # ValueError/TypeError for what no tenant id can be
    assert tenant_id is not None  # projection_known(name, None) was True
    raise UnknownTenant(name, tenant_id, known_tenants(name, tenant_id))


def get_state(name: str, tenant_id: str | None = None, *, lock: bool = False) -> ProjectionState:
    """The projection's state row (created on first use; ``ValueError`` for a name no
    projection can have, such as one with a ``/``)."""
    from django_eventsource.models import ProjectionState

    check_projection_name(name)
    states = ProjectionState.objects.using(projection_database(name))
    if lock:
        states = states.select_for_update()
    state, _ = states.get_or_create(name=name, tenant_id=tenant_id or NO_TENANT)
    return state


def pausable(name: str, stored_status: str, suspended_rebuild: bool = False) -> bool:
    """Whether projection ``name``, stored in ``stored_status``, can be paused as far as
    its kind goes: an inline projection only while it is being rebuilt (the pause suspends
    the rebuild), since appends apply it whatever its status; any other always."""
    from django_eventsource.models import ProjectionStatus

    if name not in projection_registry or not projection_registry.get(name).inline:
        return True
    return stored_status == ProjectionStatus.REBUILDING or suspended_rebuild


def pause(name: str, tenant_id: str | None = None) -> ProjectionState:
    """Stop runners from applying events to this projection until
    [`resume`][django_eventsource.control.resume]; see `django_eventsource.state`.

    Raises [`IllegalTransition`][django_eventsource.IllegalTransition] when it is already
    paused; [`InlineNotPausable`][django_eventsource.InlineNotPausable] for an inline
    projection that is not being rebuilt (appends apply it inside their transactions: it
    cannot be paused, see `pausable`); and, before anything is written, ``KeyError`` for an
    unknown projection or [`UnknownTenant`][django_eventsource.UnknownTenant] for a tenant
    it does not know (`projection_known`)."""
    from django_eventsource import state  # it imports models
    from django_eventsource.models import ProjectionState, ProjectionStatus

    _require_known(name, tenant_id)
    using = projection_database(name)
    with write_transaction(using):
        if name in projection_registry and projection_registry.get(name).inline:
            # Locked: a rebuild that ends meanwhile cannot leave it paused outside one.
            current = (
                ProjectionState.objects.using(using)
                .select_for_update()
                .filter(name=name, tenant_id=tenant_id or NO_TENANT)
                .first()
            )
            stored = current.status if current else ProjectionStatus.IDLE
            suspended = current.suspended_rebuild if current else False
            if not pausable(name, stored, suspended):
                raise InlineNotPausable(name, tenant_id, str(stored))
        state.pause(name, tenant_id, using)
    return get_state(name, tenant_id)


def resume(name: str, tenant_id: str | None = None) -> ProjectionState:
    """Let runners continue a paused projection. A failed projection retries its failed
    event first (its checkpoint is still just before it). It also clears the pause that
    earlier versions let an operator store for an inline projection (which appends ignored).

    Raises [`IllegalTransition`][django_eventsource.IllegalTransition] when it is neither
    paused nor failed, and ``KeyError`` or [`UnknownTenant`][django_eventsource.UnknownTenant]
    as [`pause`][django_eventsource.control.pause] does."""
    from django_eventsource import state  # it imports models

    _require_known(name, tenant_id)
    state.resume(name, tenant_id, projection_database(name))
    return get_state(name, tenant_id)


#: Retrying a failed projection is resuming it: its checkpoint is still before the event.
retry = resume


def record_failure(
    name: str, tenant_id: str | None, error: ProjectionError, *, attempts: int
) -> ProjectionState:
    """Mark a running (or rebuilding) projection failed on ``error``'s event (checkpoint
    stays before it). Raises [`IllegalTransition`][django_eventsource.IllegalTransition]
    from any other status."""
    from django_eventsource import state  # it imports models

    state.fail(name, tenant_id, projection_database(name), error, attempts=attempts, strict=True)
    return get_state(name, tenant_id)


def dead_letter_failed(name: str, tenant_id: str | None = None) -> DeadLetter:
    """Set the failed event aside as a dead letter and move the checkpoint past it.

    Use this when the event cannot be applied now: the projection resumes with the next
    event, and the failed event's stream waits behind its dead letter (see
    `django_eventsource.deadletters`) until the letter is retried or the projection rebuilt.
    """
    from django_eventsource import state as transitions  # it imports models
    from django_eventsource.models import DeadLetter

    using = projection_database(name)
    with write_transaction(using):
        state = get_state(name, tenant_id, lock=True)
        if (
            state.status != state.Status.FAILED
            or state.failed_event_position is None
            or state.failed_event_id is None
        ):
            raise EventSourceError(f"Projection {name!r} has no failed event to dead-letter.")
        event = EventStore().event_at(state.failed_event_position)
        stream = {}
        if event is not None:
            stream = {
                "stream_tenant_id": event.tenant_id or NO_TENANT,
                "aggregate_id": event.aggregate_id,
                "aggregate_version": event.aggregate_version,
            }
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
                "parked_behind": None,
                **stream,
            },
        )
        # The failed event is the next one in the feed after the checkpoint, so it becomes
        # the checkpoint (positions are not feed order: never max() them).
        transitions.set_aside(name, tenant_id, using, position=state.failed_event_position)
    return letter


def retry_dead_letter(
    letter: DeadLetter, event_store: BaseEventStore | None = None
) -> RetryOutcome:
    """Retry a dead letter's stream in order; see
    [`deadletters.retry`][django_eventsource.deadletters.retry].

    The outcome is true when ``letter`` was applied (and resolved); its `message` says what
    was applied, and what was not and why.
    """
    from django_eventsource import deadletters  # it imports models

    return deadletters.retry(letter, event_store)

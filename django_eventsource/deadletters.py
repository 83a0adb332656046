"""Dead letters: events a projection set aside, and the streams parked behind them.

It imports models: modules that the package's `__init__` loads import it inside functions.

The rules (the runner, catch-up, retries and rebuilds all follow them):

* **A stream waits behind its dead letter.** When an event cannot be applied (its handler
  fails, its payload no longer decodes, ...) and the projection's policy is
  ``"dead_letter"``, the event is recorded as a [`DeadLetter`][django_eventsource.DeadLetter]
  and the projection moves on. Its stream (tenant and aggregate) is then *parked* in that
  projection: each later event of the stream that the projection handles is recorded as a
  dead letter too (``parked_behind`` names the failed event) instead of being applied, so
  that no row sees version N+1 without version N. Every other stream goes on.
* **A retry applies the stream in order, whichever letter it starts from.** Retrying any
  letter of a parked stream applies the failed event and then the parked ones in stream
  order, each with the same rows and checkpoints as the runner would, and resolves each
  one applied. If one fails again, it becomes the stream's failed event and the rest stay
  parked behind it.
* **A retry never reports what it did not apply.** An event its rows already hold (rows
  keyed by one stream cannot pass a version without applying it) is resolved as such, and
  said so, not counted as applied. A row fed by many streams
  (``checkpoint_by = "position"``) may have moved past the event in feed order meanwhile;
  the event would then be applied out of order, so nothing is applied and the retry says
  so ([`EventAlreadyPassed`][django_eventsource.EventAlreadyPassed]): rebuild the
  projection instead.
* **A rebuild resolves the projection's dead letters**: it replays every event in order, and
  events that still fail are dead-lettered again.
"""

from __future__ import annotations

import logging
import traceback as tb
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from uuid import UUID

from django.db import connections
from django.utils import timezone

from django_eventsource.constants import NO_TENANT
from django_eventsource.exceptions import EventAlreadyPassed, EventSourceError, ProjectionError
from django_eventsource.logs import event_fields, tenant_text
from django_eventsource.models import DeadLetter, ProjectionState
from django_eventsource.projections import projection_registry, refused_write
from django_eventsource.rows import RowSet
from django_eventsource.store import BaseEventStore, EventStore
from django_eventsource.text import plural, printable
from django_eventsource.transactions import write_transaction

if TYPE_CHECKING:
    from django.db.models import QuerySet

    from django_eventsource.checkpoints import CheckpointStore
    from django_eventsource.projections import Projection
    from django_eventsource.stored import StoredEvent

__all__ = ["RetryOutcome", "dead_letter", "park", "resolve_all", "retry"]

logger = logging.getLogger(__name__)

#: A stream as dead letters name it: (the event's tenant, its aggregate id).
Stream = tuple[str, UUID]


def _letters(label: str, tenant_id: str | None, using: str) -> QuerySet[DeadLetter]:
    """The projection's unresolved letters."""
    return DeadLetter.objects.using(using).filter(
        projection=label, tenant_id=tenant_id or NO_TENANT, resolved_at=None
    )


def parked_streams(label: str, tenant_id: str | None, using: str) -> dict[Stream, tuple[int, int]]:
    """The projection's parked streams, each with the version and position of the event it
    waits behind (its earliest unresolved letter).

    Every batch asks (usually to hear "none"), so this is one plain statement on the
    partial index of unresolved letters, without the ORM's query building (which cost a
    microsecond per event of a 500-event batch).
    """
    connection = connections[using]
    with connection.cursor() as cursor:
        cursor.execute(
            _PARKED_SQL.get(connection.vendor) or _parked_sql(connection),
            [
                label,
                tenant_id or NO_TENANT,
            ],
        )
        rows = cursor.fetchall()
    parked: dict[Stream, tuple[int, int]] = {}
    for tenant, aggregate, version, position in rows:
        key: Stream = (tenant, aggregate if isinstance(aggregate, UUID) else UUID(aggregate))
        order = (version or 0, position)
        if key not in parked or order < parked[key]:
            parked[key] = order
    return parked


_PARKED_SQL: dict[str, str] = {}


def _parked_sql(connection: Any) -> str:
    quote = connection.ops.quote_name
    meta = DeadLetter._meta
    column = {f.name: quote(f.column) for f in meta.concrete_fields}
    sql = (
        f"SELECT {column['stream_tenant_id']}, {column['aggregate_id']}, "
        f"{column['aggregate_version']}, {column['event_position']} "
        f"FROM {quote(meta.db_table)} WHERE {column['projection']} = %s "
        f"AND {column['tenant_id']} = %s AND {column['resolved_at']} IS NULL "
        f"AND {column['aggregate_id']} IS NOT NULL"
    )
    _PARKED_SQL[connection.vendor] = sql
    return sql


def park(
    projection: Projection, events: Sequence[StoredEvent], tenant_id: str | None
) -> Sequence[StoredEvent]:
    """The events to apply now: those of parked streams are recorded as parked dead letters
    (inside the caller's transaction) and left out.

    Call it after the batch's transaction has locked the projection's state row (the
    checkpoint save does), so that a concurrent retry cannot unpark a stream between this
    read and the commit.
    """
    if not events:
        return events
    parked = parked_streams(projection.label, tenant_id, projection.database)
    if not parked:
        return events
    handled = projection.handled_types()
    keep: list[StoredEvent] = []
    waiting: list[DeadLetter] = []
    for event in events:
        first = parked.get((event.tenant_id or NO_TENANT, event.aggregate_id))
        if first is None or event.event_type not in handled or event.aggregate_version < first[0]:
            keep.append(event)  # (a replay meets the stream's earlier events: rows skip them)
            continue
        behind = first[1]
        if behind == event.position:
            continue  # the failed event itself, read again (a replay): it stays a letter
        waiting.append(
            DeadLetter(
                projection=projection.label,
                tenant_id=tenant_id or NO_TENANT,
                event_position=event.position,
                event_id=event.event_id,
                event_type=event.event_type,
                stream_tenant_id=event.tenant_id or NO_TENANT,
                aggregate_id=event.aggregate_id,
                aggregate_version=event.aggregate_version,
                parked_behind=behind,
                error=(
                    f"Parked: its stream waits behind dead letter #{behind}. Retry that one "
                    "(or this one): the stream's events are applied in order."
                ),
                attempts=0,
            )
        )
    if waiting:
        # A replay from an older checkpoint meets events that are letters already: keep them.
        DeadLetter.objects.using(projection.database).bulk_create(waiting, ignore_conflicts=True)
        logger.warning(
            "Parked %d events of %s%s behind their streams' dead letters",
            len(waiting),
            printable(projection.label),
            tenant_text(tenant_id),
            extra={
                "projection": projection.label,
                "tenant": tenant_id,
                "count": len(waiting),
                "first_position": waiting[0].event_position,
                "last_position": waiting[-1].event_position,
            },
        )
    return keep


def dead_letter(
    projection: Projection,
    event: StoredEvent,
    error: ProjectionError,
    *,
    attempts: int,
    tenant_id: str | None,
    checkpoint_store: CheckpointStore,
) -> DeadLetter:
    """Set ``event`` aside and move the checkpoint past it, in one transaction; its stream is
    parked from now on."""
    cause = error.cause
    with write_transaction(projection.database):
        checkpoint_store.save(projection.label, event.position, tenant_id=tenant_id)
        letter, _ = DeadLetter.objects.using(projection.database).update_or_create(
            projection=projection.label,
            tenant_id=tenant_id or NO_TENANT,
            event_position=event.position,
            defaults={
                "event_id": event.event_id,
                "event_type": event.event_type,
                "stream_tenant_id": event.tenant_id or NO_TENANT,
                "aggregate_id": event.aggregate_id,
                "aggregate_version": event.aggregate_version,
                "parked_behind": None,
                "error": str(error),
                "traceback": "".join(tb.format_exception(type(cause), cause, cause.__traceback__)),
                "attempts": attempts,
            },
        )
    logger.error(
        "Dead-lettered event #%d (%s, stream %s version %d) of %s%s after %s: %s",
        event.position,
        printable(event.event_type),
        event.aggregate_id,
        event.aggregate_version,
        printable(projection.label),
        tenant_text(tenant_id),
        plural(attempts, "attempt"),
        printable(error.cause),
        extra={
            "projection": projection.label,
            "tenant": tenant_id,
            **event_fields(event),
            "attempts": attempts,
            "error": str(error.cause),
            "error_type": type(error.cause).__name__,
        },
    )
    return letter


def resolve_all(label: str, tenant_id: str | None, using: str, resolution: str = "rebuilt") -> int:
    """Mark every unresolved letter of the projection (and tenant scope) resolved."""
    return _letters(label, tenant_id, using).update(
        resolved_at=timezone.now(), resolution=resolution
    )


@dataclass
class RetryOutcome:
    """What a retry did. True when the retried letter was applied (with every letter of its
    stream before it)."""

    letter: DeadLetter
    #: The letters applied and resolved, in stream order.
    applied: list[DeadLetter] = field(default_factory=list)
    #: Letters resolved without applying anything, because their rows already held the
    #: event (rows keyed by one stream), with those rows.
    held: list[tuple[DeadLetter, list[str]]] = field(default_factory=list)
    #: The letter that failed again (it is now the one its stream waits behind).
    failed: DeadLetter | None = None
    #: Why nothing more was applied: the error, or why the event cannot be applied in order.
    reason: str = ""
    #: The letter was resolved already (nothing done).
    already_resolved: bool = False

    def __bool__(self) -> bool:
        return self.letter.resolved_at is not None and not self.already_resolved

    @property
    def message(self) -> str:
        """One line for an operator: what was applied, and what was not and why."""
        done = ", ".join(f"#{letter.event_position}" for letter in self.applied)
        if self.already_resolved:
            return f"{self.letter} was already resolved; nothing to do."
        parts = [f"Applied and resolved {done}." if done else "Nothing was applied."]
        for letter, rows in self.held:
            parts.append(
                f"Event #{letter.event_position} was already in the read model "
                f"({'; '.join(rows)} held it): resolved without applying it again."
            )
        if self.reason:
            parts.append(self.reason)
        return " ".join(parts)


def retry(letter: DeadLetter, event_store: BaseEventStore | None = None) -> RetryOutcome:
    """Retry ``letter``'s stream: apply its unresolved letters in stream order (the failed
    event first, then those parked behind it), resolving each one applied, until one fails
    or cannot be applied in order.

    The projection's state row is locked meanwhile, so a runner's batch waits, and then finds
    the stream unparked, instead of parking or applying its events in between.
    """
    store = event_store or EventStore()
    projection = projection_registry.get(letter.projection)()
    projection.event_store = store
    using = projection.database
    outcome = RetryOutcome(letter)
    with write_transaction(using):
        ProjectionState.objects.using(using).select_for_update().get_or_create(
            name=letter.projection, tenant_id=letter.tenant_id
        )
        current = DeadLetter.objects.using(using).get(pk=letter.pk)
        if current.resolved_at is not None:
            outcome.letter = current
            outcome.already_resolved = True
            return outcome
        chain = [current]
        if current.aggregate_id is not None:
            chain = list(
                _letters(current.projection, current.tenant_id, using)
                .filter(
                    stream_tenant_id=current.stream_tenant_id, aggregate_id=current.aggregate_id
                )
                .order_by("aggregate_version", "event_position")
            )
        for index, item in enumerate(chain):
            stored = store.event_at(item.event_position)
            if stored is None:
                raise EventSourceError(f"Event #{item.event_position} is not in the event store.")
            rows = RowSet(projection, tenant_id=item.tenant_id or None, strict=True)
            try:
                with write_transaction(using):
                    rows.prefetch([stored])
                    projection.apply(stored, rows)
                    try:
                        written = rows.flush()
                    except Exception as exc:
                        # A row the database refuses: the event failed to apply again.
                        refused = refused_write(projection, rows, [stored], exc)
                        if refused is None:
                            raise
                        raise refused from exc
            except ProjectionError as exc:
                if isinstance(exc.cause, EventAlreadyPassed):
                    outcome.reason = f"Event #{item.event_position} was not applied: {exc.cause}"
                    break
                cause = exc.cause
                item.error = str(exc)
                item.traceback = "".join(
                    tb.format_exception(type(cause), cause, cause.__traceback__)
                )
                item.attempts += 1
                item.parked_behind = None
                item.save(update_fields=["error", "traceback", "attempts", "parked_behind"])
                DeadLetter.objects.using(using).filter(
                    pk__in=[later.pk for later in chain[index + 1 :]]
                ).update(parked_behind=item.event_position)
                outcome.failed = item
                outcome.reason = f"Event #{item.event_position} failed again: {exc}"
                break
            item.resolved_at = timezone.now()
            if rows.already_held and not written:
                item.resolution = DeadLetter.Resolution.HELD
                outcome.held.append((item, rows.already_held))
            else:
                item.resolution = DeadLetter.Resolution.APPLIED
                outcome.applied.append(item)
            item.save(update_fields=["resolved_at", "resolution"])
        outcome.letter = next((item for item in chain if item.pk == letter.pk), current)
    letter.resolved_at = outcome.letter.resolved_at
    letter.resolution = outcome.letter.resolution
    letter.error, letter.attempts = outcome.letter.error, outcome.letter.attempts
    logger.log(
        logging.WARNING if outcome.failed is not None else logging.INFO,
        "Retried dead letter #%d of %s%s: %s",
        letter.event_position,
        printable(letter.projection),
        tenant_text(letter.tenant_id),
        printable(outcome.message),
        extra={
            "projection": letter.projection,
            "tenant": letter.tenant_id or None,
            "event_position": letter.event_position,
            "applied": [item.event_position for item in outcome.applied],
            "failed": None if outcome.failed is None else outcome.failed.event_position,
        },
    )
    return outcome

"""The exceptions django-eventsource raises.

Every error the library raises on purpose derives from
[`EventSourceError`][django_eventsource.EventSourceError], so that
callers can catch the whole family at once, and each carries the facts needed to act on it
as attributes (not only in its message).
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Any
from uuid import UUID

from django.db import OperationalError

from django_eventsource.constants import ExpectedVersion

if TYPE_CHECKING:
    from pydantic import ValidationError

__all__ = [
    "AggregateNotFound",
    "AppendOnlyError",
    "AppendTimeout",
    "ConcurrencyError",
    "DatabaseBusy",
    "DuplicateEventId",
    "EventAlreadyPassed",
    "EventGapError",
    "EventSourceError",
    "HorizonNotSettled",
    "IllegalTransition",
    "InlineNotPausable",
    "InvalidAppend",
    "InvalidEventPayload",
    "IsolationNotSupported",
    "NotSupportedOnBackend",
    "PositionNotFound",
    "ProjectionError",
    "ProjectionLocked",
    "ProjectionSkipped",
    "RebuildAborted",
    "RebuildRefused",
    "StaleSnapshot",
    "UnknownEventType",
    "UnknownTenant",
    "ValueTooLong",
    "WrongExpectedVersion",
]


class EventSourceError(Exception):
    """Base class of every error raised by django-eventsource."""


class ConcurrencyError(EventSourceError):
    """An append's ``expected_version`` did not match the stream's actual version.

    Nothing was written. Reload the aggregate (or re-read the stream) and try again.
    """

    def __init__(
        self,
        aggregate_id: UUID,
        expected_version: int,
        actual_version: int,
        tenant_id: str | None = None,
    ) -> None:
        self.aggregate_id = aggregate_id
        self.expected_version = expected_version
        self.actual_version = actual_version
        self.tenant_id = tenant_id
        tenant = f" (tenant {tenant_id!r})" if tenant_id else ""
        super().__init__(
            f"Stream {aggregate_id}{tenant} is at version {actual_version}, but the append "
            f"expected version {_describe_expected(expected_version)}. Nothing was written; "
            "reload the stream and retry."
        )


#: The name EventStoreDB and others use for the same error.
WrongExpectedVersion = ConcurrencyError


class AppendTimeout(ConcurrencyError):
    """An ``ExpectedVersion.ANY`` append kept losing the race for the stream's next version.

    Such an append retries (with backoff) whenever another writer takes the version it was
    about to use; this is raised only when that went on for ``timeout`` seconds, or when the
    append can never see the other writers' versions (inside a ``REPEATABLE READ`` or
    ``SERIALIZABLE`` transaction). Nothing was written.
    """

    def __init__(
        self,
        aggregate_id: UUID,
        actual_version: int,
        tenant_id: str | None = None,
        *,
        attempts: int,
        timeout: float,
    ) -> None:
        super().__init__(aggregate_id, -1, actual_version, tenant_id)
        self.attempts = attempts
        self.timeout = timeout
        tenant = f" (tenant {tenant_id!r})" if tenant_id else ""
        self.args = (
            (
                f"Gave up appending to stream {aggregate_id}{tenant} with ExpectedVersion.ANY "
                f"after {attempts} attempt{'' if attempts == 1 else 's'} in {timeout:g} s: "
                "other writers kept taking the "
                f"next version (now {actual_version}), or this transaction cannot see their "
                "commits (REPEATABLE READ or SERIALIZABLE). Nothing was written."
            ),
        )


class DuplicateEventId(EventSourceError):
    """An appended event's ``event_id`` is already stored, and the append is not a repeat.

    Re-appending exactly the same events (same ids and content, same stream, at the same
    versions) is idempotent and returns the stored events; anything else that reuses a
    stored id is refused with this error. Nothing was written. Give new events new ids.
    """

    def __init__(
        self,
        event_id: UUID,
        *,
        position: int,
        aggregate_id: UUID,
        aggregate_version: int,
        tenant_id: str | None = None,
        reason: str = "",
    ) -> None:
        self.event_id = event_id
        self.position = position
        self.aggregate_id = aggregate_id
        self.aggregate_version = aggregate_version
        self.tenant_id = tenant_id
        self.reason = reason
        tenant = f" (tenant {tenant_id!r})" if tenant_id else ""
        why = f" {reason}" if reason else ""
        super().__init__(
            f"Event id {event_id} is already stored at position {position}, as version "
            f"{aggregate_version} of stream {aggregate_id}{tenant}.{why} Nothing was written; "
            "give each new event a new event_id (re-appending the very same events to the "
            "same stream at the same versions is allowed and returns the stored ones)."
        )


class InvalidAppend(EventSourceError, ValueError):
    """An append was refused before anything was written: a value cannot be stored, or would
    not read back equal.

    ``field`` names the offending value (``"expected_version"``, ``"events[0].tenant_id"``,
    ``"events[2].payload.amount"``, ``"events[1].metadata.tags[3]"``), ``rule`` says what
    is wrong with it. The same inputs are refused on every backend, so what works in
    development on SQLite also works on PostgreSQL.
    """

    def __init__(self, field: str, rule: str) -> None:
        self.field = field
        self.rule = rule
        super().__init__(f"{field}: {rule}. Nothing was written.")


def _describe_expected(expected: int) -> str:
    names = {
        ExpectedVersion.ANY: "ANY",
        ExpectedVersion.NO_STREAM: "0 (NO_STREAM)",
        ExpectedVersion.STREAM_EXISTS: "STREAM_EXISTS",
    }
    return names.get(expected, str(expected))


class AggregateNotFound(EventSourceError, LookupError):
    """``Repository.load()`` was given an id whose stream does not exist (for this tenant)."""

    def __init__(
        self,
        aggregate_type: str,
        aggregate_id: UUID,
        tenant_id: str | None = None,
        *,
        hint: str = "",
    ) -> None:
        self.aggregate_type = aggregate_type
        self.aggregate_id = aggregate_id
        self.tenant_id = tenant_id
        tenant = f" in tenant {tenant_id!r}" if tenant_id else ""
        super().__init__(
            f"No {aggregate_type} {aggregate_id}{tenant}: "
            + (hint or "its stream has no events. Create it and save() it first.")
        )


class UnknownEventType(EventSourceError, LookupError):
    """A stored event's type has no class registered with ``@register_event``."""

    def __init__(self, event_type: str, *, position: int | None = None) -> None:
        self.event_type = event_type
        self.position = position
        where = f" (stored at position {position})" if position is not None else ""
        super().__init__(
            f"Unknown event type {event_type!r}{where}. Register its class with "
            "@register_event, and make sure the module defining it is imported."
        )


class UnknownTenant(EventSourceError, LookupError):
    """A run or rebuild was asked for a tenant the projection does not know: no committed
    event carries it and the projection has no state row for it (a typo, most likely).
    Nothing was run or written; see
    [`control.projection_known`][django_eventsource.control.projection_known].

    ``known`` holds a few known tenants, those nearest to it in sort order."""

    def __init__(self, projection: str, tenant_id: str, known: list[str]) -> None:
        self.projection = projection
        self.tenant_id = tenant_id
        self.known = known
        shown = tenant_id if len(tenant_id) <= 80 else tenant_id[:80] + "…"
        close = difflib.get_close_matches(tenant_id, known, n=1)
        super().__init__(
            f"Unknown tenant {shown!r} for projection {projection!r}: no event carries it "
            "and the projection has no state for it."
            + (f" Did you mean {close[0]!r}?" if close else "")
            + (
                f" Known tenants (the nearest in sort order): {', '.join(map(repr, known))}."
                if known
                else " No event carries a tenant id yet."
            )
            + " Nothing was changed."
        )


class InvalidEventPayload(EventSourceError, ValueError):
    """An event's payload does not validate against its class (or cannot be upcast).

    ``errors`` holds pydantic's error list; ``fields`` the names of the offending fields.
    """

    def __init__(
        self,
        event_type: str,
        message: str,
        *,
        position: int | None = None,
        schema_version: int | None = None,
        errors: list[dict[str, Any]] | None = None,
    ) -> None:
        self.event_type = event_type
        self.position = position
        self.schema_version = schema_version
        self.errors = errors or []
        self.fields = [".".join(str(p) for p in e.get("loc", ())) for e in self.errors]
        where = f" at position {position}" if position is not None else ""
        version = f" (schema version {schema_version})" if schema_version is not None else ""
        super().__init__(f"Invalid payload for event {event_type!r}{version}{where}: {message}")

    @classmethod
    def from_validation_error(
        cls,
        event_type: str,
        error: ValidationError,
        *,
        position: int | None = None,
        schema_version: int | None = None,
    ) -> InvalidEventPayload:
        """Wrap pydantic's error, naming each offending field and what is wrong with it."""
        details = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in error.errors()
        )
        return cls(
            event_type,
            details,
            position=position,
            schema_version=schema_version,
            errors=[dict(e) for e in error.errors(include_url=False)],
        )


class DatabaseBusy(EventSourceError, OperationalError):
    """Another connection held the database's write lock for longer than this one waits for
    it (SQLite's ``OPTIONS["timeout"]``, PostgreSQL's ``lock_timeout``). The statement was
    rolled back: nothing of it was written.

    It is transient: retry later, raise the timeout, and keep the transactions that write
    short (SQLite has one write lock for the whole database). It is also Django's
    ``OperationalError`` (what was raised before), so code that catches that still does.
    ``using`` names the database alias, ``setting`` the timeout to raise and ``timeout`` its
    value in seconds (None where unknown), ``doing`` what was refused, ``error`` the
    database's own words (``database is locked``).
    """

    def __init__(
        self,
        using: str,
        *,
        doing: str,
        setting: str,
        timeout: float | None = None,
        error: str = "",
        hint: str = "",
    ) -> None:
        self.using = using
        self.doing = doing
        self.setting = setting
        self.timeout = timeout
        self.error = error
        waited = f" ({setting} = {timeout:g} s)" if timeout is not None else f" ({setting})"
        said = f" ({error})" if error else ""
        super().__init__(
            f"Database {using!r} is busy{said}: another connection held its write lock for longer "
            f"than this one waits for it{waited}, so {doing} was rolled back and nothing of "
            f"it was written. Retry it; if it keeps happening, raise {setting} and keep the "
            "transactions that write short." + (f" {hint}" if hint else "")
        )


class AppendOnlyError(EventSourceError):
    """Stored events are immutable: the ORM refuses to update or delete them."""


class NotSupportedOnBackend(EventSourceError):
    """The feature needs a database backend other than the one in use."""

    def __init__(self, feature: str, vendor: str, alternative: str = "") -> None:
        self.feature = feature
        self.vendor = vendor
        hint = f" {alternative}" if alternative else ""
        super().__init__(f"{feature} is not supported on the {vendor!r} backend.{hint}")


class PositionNotFound(EventSourceError, LookupError):
    """``read_all(from_position=...)`` was given a position the store never returned."""

    def __init__(self, position: int) -> None:
        self.position = position
        super().__init__(
            f"No stored event has position {position}. Resume from a position that the "
            "store returned (an event's .position or a saved checkpoint), or 0 to start over."
        )


class ProjectionError(EventSourceError):
    """A projection's handler failed on an event. Its writes were rolled back.

    The original exception is chained as ``__cause__`` (its traceback is kept).
    """

    def __init__(
        self,
        projection: str,
        *,
        event_id: UUID | None,
        event_type: str,
        position: int | None,
        cause: BaseException,
        tenant_id: str | None = None,
    ) -> None:
        self.projection = projection
        self.event_id = event_id
        self.event_type = event_type
        self.position = position
        self.tenant_id = tenant_id
        self.cause = cause
        where = f" at position {position}" if position is not None else ""
        which = f"{event_type} {event_id}" if event_id is not None else event_type
        super().__init__(
            f"Projection {projection!r} failed on event {which}{where}: "
            f"{type(cause).__name__}: {cause}"
        )


class ValueTooLong(EventSourceError, ValueError):
    """A projection set a read-model field to a string longer than the field's
    ``max_length``. PostgreSQL refuses such a value and SQLite would silently store it, so
    the library refuses it before writing, on both: what one database cannot store, the
    other must not either. Raised inside the
    [`ProjectionError`][django_eventsource.ProjectionError] of the event that set it."""

    def __init__(self, model: str, field: str, max_length: int, length: int) -> None:
        self.model = model
        self.field = field
        self.max_length = max_length
        self.length = length
        super().__init__(
            f"{model}.{field} would hold {length} characters, but its max_length is "
            f"{max_length}. Nothing was written. Shorten the value in the handler, or "
            "widen the field (a migration)."
        )


class EventGapError(EventSourceError):
    """A row keyed by one stream would skip versions it should have applied first."""

    def __init__(self, model: str, aggregate_id: UUID, held: int | None, incoming: int) -> None:
        self.model = model
        self.aggregate_id = aggregate_id
        self.held_version = held
        self.incoming_version = incoming
        super().__init__(
            f"{model} row for stream {aggregate_id} holds version {held or 0} but was given "
            f"version {incoming}: the events in between were never applied. Rebuild the "
            "projection, or replay from an earlier checkpoint."
        )


class EventAlreadyPassed(EventSourceError):
    """A dead-letter retry met a row that has already moved past the event in feed order.

    Applying the event now would apply it out of order (the row holds later events), so
    nothing was applied. A row fed by many streams cannot be re-folded from one stream:
    rebuild the projection, which replays every event in order.
    """

    def __init__(self, model: Any, lookup: dict[str, Any], position: int, held: int) -> None:
        self.model = model
        self.lookup = lookup
        self.position = position
        self.held_position = held
        where = ", ".join(f"{name}={value!r}" for name, value in sorted(lookup.items()))
        name = getattr(model, "__name__", str(model))
        super().__init__(
            f"The {name} row ({where}) already holds events that come after event "
            f"#{self.position} in the feed (its checkpoint is event #{held}): applying it "
            "now would apply it out of order, so nothing was applied. Rebuild the projection "
            "to include it (a rebuild replays every event in order and resolves its dead "
            "letters)."
        )


class StaleSnapshot(EventSourceError):
    """An append with inline projections ran in a transaction that reads under one snapshot
    (``REPEATABLE READ`` or ``SERIALIZABLE``, PostgreSQL), taken before a change the inline
    projections had to see: a rebuild of an inline projection started or handed over, or a
    concurrent transaction wrote a row the append was about to write. Applying them under
    that snapshot could lose an event or apply it twice, so the append raised this instead:
    nothing was written, and the transaction cannot go on (its ``atomic`` block is marked
    for rollback). Retry the whole transaction: a new one reads a new snapshot.
    """

    def __init__(
        self,
        aggregate_id: UUID,
        tenant_id: str | None,
        *,
        isolation: str,
        reason: str,
        projection: str | None = None,
    ) -> None:
        self.aggregate_id = aggregate_id
        self.tenant_id = tenant_id
        self.isolation = isolation
        self.reason = reason
        self.projection = projection
        tenant = f" (tenant {tenant_id!r})" if tenant_id else ""
        which = f"inline projection {projection!r}" if projection else "its inline projections"
        super().__init__(
            f"The append to stream {aggregate_id}{tenant} runs in a {isolation.upper()} "
            f"transaction whose snapshot is older than {reason}: applying {which} under it "
            "could lose or double-apply events. Nothing was written; roll the transaction "
            "back and retry it whole (a new transaction reads a new snapshot)."
        )


class IsolationNotSupported(EventSourceError):
    """An inline projection would create a read-model row, in a ``REPEATABLE READ`` or
    ``SERIALIZABLE`` transaction (PostgreSQL), whose lookup no unique constraint covers.

    Under such a snapshot a row that a concurrent append created after it is invisible, and
    only a unique constraint on the lookup's fields stops the append from creating a second
    one (a retry then reads a new snapshot). Without one the library cannot tell, so it
    refuses: nothing was written. Add a unique constraint on those fields, or append at
    ``READ COMMITTED``.
    """

    def __init__(self, model: Any, lookup: dict[str, Any], isolation: str) -> None:
        self.model = model
        self.lookup = lookup
        self.isolation = isolation
        name = getattr(model, "__name__", str(model))
        fields = ", ".join(sorted(lookup))
        super().__init__(
            f"Cannot create a {name} row ({fields}) in a {isolation.upper()} transaction: no "
            f"unique constraint of {name} covers those fields, so a row that a concurrent "
            "append created after this transaction's snapshot could be created twice. "
            "Nothing was written. Add a unique constraint on fields among those, or append "
            "at READ COMMITTED."
        )


class RebuildAborted(EventSourceError):
    """A rebuild could not finish, and the live projection is untouched: an atomic rebuild
    was rolled back, or (``shadow``) a shadow rebuild stopped before its swap (its shadow is
    kept, to resume; the reason says what to do)."""

    def __init__(self, projection: str, reason: str, *, shadow: bool = False) -> None:
        self.projection = projection
        self.reason = reason
        self.shadow = shadow
        if shadow:
            message = (
                f"Shadow rebuild of {projection!r} stopped before its swap: {reason}. The "
                "live tables still serve, unchanged; nothing was swapped."
            )
        else:
            message = (
                f"Rebuild of {projection!r} was rolled back: {reason}. Readers still see the "
                "previous rows and checkpoint; nothing was changed."
            )
        super().__init__(message)


class HorizonNotSettled(EventSourceError):
    """PostgreSQL's ordering horizon kept holding events back while no transaction could
    be appending (a rebuild's hand-over locks appends out), for longer than the bound: the
    run stopped rather than declare it had caught up without them."""

    def __init__(self, held: int, seconds: float) -> None:
        self.held = held
        self.seconds = seconds
        super().__init__(
            f"{held} event(s) stayed invisible to readers for {seconds:g}s although no "
            "transaction could be appending events. Nothing was marked caught up; run it "
            "again, and report it if it persists."
        )


class RebuildRefused(EventSourceError, ValueError):
    """A rebuild was refused before it changed anything: it could not do what was asked."""

    def __init__(self, projection: str, reason: str) -> None:
        self.projection = projection
        self.reason = reason
        super().__init__(f"Rebuild of {projection!r} refused: {reason}. Nothing was changed.")


class IllegalTransition(EventSourceError):
    """A projection's status cannot change that way from where it is (see
    `django_eventsource.state`); nothing was changed."""

    def __init__(
        self,
        projection: str,
        tenant_id: str | None,
        transition: str,
        current: str,
        allowed: list[str],
    ) -> None:
        self.projection = projection
        self.tenant_id = tenant_id
        self.transition = transition
        self.current = current
        self.allowed = allowed
        tenant = f" (tenant {tenant_id!r})" if tenant_id else ""
        super().__init__(
            f"Cannot {transition.replace('_', ' ')} projection {projection!r}{tenant}: it is "
            f"{current}, and only a projection that is {' or '.join(allowed)} can be. "
            "Nothing was changed."
        )


class InlineNotPausable(IllegalTransition):
    """An inline projection cannot be paused: every append applies it inside its own
    transaction, and a pause would have to make appends skip it, its rows silently falling
    behind. Only its rebuild can be paused (which suspends the rebuild: appends leave their
    events to it). Nothing was changed."""

    def __init__(self, projection: str, tenant_id: str | None, current: str) -> None:
        self.projection = projection
        self.tenant_id = tenant_id
        self.transition = "pause"
        self.current = current
        self.allowed = ["rebuilding"]
        tenant = f" (tenant {tenant_id!r})" if tenant_id else ""
        EventSourceError.__init__(
            self,
            f"Cannot pause projection {projection!r}{tenant}: it is inline, applied inside "
            "every append's own transaction, so pausing it would mean appends skip it and "
            "its rows silently fall behind. Nothing was changed. To redo its rows, rebuild "
            f"it (rebuild_projections {projection}; a rebuild in progress can be paused). To "
            "be able to stop it, make it asynchronous (inline = False) and run it with "
            "replay_projections.",
        )


class ProjectionLocked(EventSourceError):
    """Another runner holds the projection's lock."""

    def __init__(self, projection: str, holder: str = "") -> None:
        self.projection = projection
        self.holder = holder
        by = f" by {holder}" if holder else " by another runner"
        super().__init__(
            f"Projection {projection!r} is locked{by}. Stop that runner first, or wait for it."
        )


class ProjectionSkipped(EventSourceError):
    """The projection is paused or failed, so runners skip it until an operator resumes it
    (`control.resume`; for a failed one that retries its event) or, for a failed one,
    dead-letters the event (`control.dead_letter_failed`)."""

    def __init__(
        self, projection: str, tenant_id: str | None, status: str, last_error: str = ""
    ) -> None:
        self.projection = projection
        self.tenant_id = tenant_id
        self.status = status
        self.last_error = last_error
        tenant = f" (tenant {tenant_id!r})" if tenant_id else ""
        error = last_error.split("\n\n", 1)[0]
        super().__init__(
            f"Projection {projection!r}{tenant} is {status}, so it was not run"
            + (f" (last error: {error})" if error else "")
            + ". Resume it first (control.resume, or the admin)"
            + (
                ", which retries its failed event, or dead-letter the event."
                if status == "failed"  # ProjectionStatus.FAILED (this module is a leaf)
                else "."
            )
        )

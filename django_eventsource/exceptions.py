"""The exceptions django-eventsource raises.

Every error the library raises on purpose derives from :class:`EventSourceError`, so that
callers can catch the whole family at once, and each carries the facts needed to act on it
as attributes (not only in its message).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from uuid import UUID

if TYPE_CHECKING:
    from pydantic import ValidationError

__all__ = [
    "AggregateNotFound",
    "AppendOnlyError",
    "ConcurrencyError",
    "EventGapError",
    "EventSourceError",
    "InvalidEventPayload",
    "NotSupportedOnBackend",
    "PositionNotFound",
    "ProjectionError",
    "ProjectionLocked",
    "RebuildAborted",
    "UnknownEventType",
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


def _describe_expected(expected: int) -> str:
    from django_eventsource.store import ExpectedVersion

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
        super().__init__(
            f"Projection {projection!r} failed on event {event_type} {event_id}{where}: "
            f"{type(cause).__name__}: {cause}"
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


class RebuildAborted(EventSourceError):
    """An atomic rebuild could not finish and was rolled back; the old rows are untouched."""

    def __init__(self, projection: str, reason: str) -> None:
        self.projection = projection
        self.reason = reason
        super().__init__(
            f"Rebuild of {projection!r} was rolled back: {reason}. Readers still see the "
            "previous rows and checkpoint; nothing was changed."
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

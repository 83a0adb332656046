"""What reads and appends return: [`StoredEvent`][django_eventsource.StoredEvent] (an event with
its global position)
and [`ReadResult`][django_eventsource.ReadResult] (a page of them)."""

from __future__ import annotations

import json
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import ValidationError

from django_eventsource.events import (
    ENVELOPE_FIELDS,
    DomainEvent,
    EventRegistry,
    _new,
    _set_dict,
    _set_extra,
    _set_fields_set,
    _set_private,
    event_registry,
)

__all__ = ["ReadResult", "StoredEvent"]

_Ref = weakref.ref


def _stamp(event: DomainEvent, *, position: int, version: int) -> DomainEvent:
    """Give the caller's own event what the store assigned: its position and stream version.

    So ``event.position`` (and ``hasattr(event, "position")``) works on the very object
    that was appended, and it equals the event read back. Events are frozen for their users;
    the store fills in these two facts once, when the append succeeds (`_Stamps` takes them
    back if it fails).
    """
    event.__dict__["aggregate_version"] = version
    event.__pydantic_private__["_position"] = position  # type: ignore[index]
    return event


class _Stamps:
    """What the caller's events carried before an append, put back when the append fails:
    an event that was not stored never claims a position."""

    def __init__(self, events: Sequence[DomainEvent]) -> None:
        self._saved = [
            (e, e.__dict__["aggregate_version"], e.__pydantic_private__["_position"])  # type: ignore[index]
            for e in events
        ]

    def restore(self) -> None:
        for event, version, position in self._saved:
            event.__dict__["aggregate_version"] = version
            event.__pydantic_private__["_position"] = position  # type: ignore[index]


def _wrap_appended(
    events: Sequence[DomainEvent],
    payloads: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    tenant_id: str | None,
    recorded_at: datetime,
    registry: EventRegistry,
) -> list[StoredEvent]:
    """The stored events of a successful append, wrapping the caller's own events (not
    copies), which are stamped with their positions and versions (see `_stamp`).

    ``rows`` are the statement's ``(position, version, ...)``, one per event in position
    order. Checked and built in one pass with the slots filled directly: a keyword
    constructor per event cost the bench's appends 1.4 us of client CPU per event more.
    """
    if len(rows) != len(events):
        raise AssertionError("stored versions do not match the batch")  # pragma: no cover
    first = rows[0][1]
    new = _new
    stored: list[StoredEvent] = []
    append = stored.append
    for offset, (event, payload, row) in enumerate(zip(events, payloads, rows, strict=True)):
        position, version = row[0], row[1]
        values = event.__dict__
        given = values["aggregate_version"]
        if version != first + offset or (given and given != version):
            raise AssertionError("stored versions do not match the batch")  # pragma: no cover
        record = new(StoredEvent)
        record.position = position
        record.event_id = values["event_id"]
        record.event_type = values["event_type"]
        record.schema_version = values["schema_version"]
        record.tenant_id = tenant_id
        record.aggregate_id = values["aggregate_id"]
        record.aggregate_type = values["aggregate_type"]
        record.aggregate_version = version
        record._payload = payload
        record._metadata = values["metadata"]
        record.correlation_id = values["correlation_id"]
        record.causation_id = values["causation_id"]
        record.occurred_at = values["occurred_at"]
        record.recorded_at = recorded_at
        record._registry = registry
        # _stamp, inline.
        values["aggregate_version"] = version
        event.__pydantic_private__["_position"] = position  # type: ignore[index]
        record._event = event
        append(record)
    return stored


class StoredEvent:
    """An event as stored: its global ``position`` plus the typed ``event``.

    The typed event is decoded lazily (on first access of ``.event``), so that readers that
    only route by ``event_type`` or copy rows pay no validation cost. A stored event that was
    read does not keep its decoded event alive: ``.event`` returns the same object for as long
    as anything else holds it, and decodes it again (an equal, immutable event) after it was
    dropped. A page of read events thus holds no second copy of each event, and the decoded
    events die young, as most readers use each one once; on CPython the cyclic garbage
    collector otherwise spent more time than the decoding itself on pages kept alive. The
    events returned by an append are the caller's own objects, kept as they are.
    """

    __slots__ = (
        "_event",
        "_metadata",
        "_payload",
        "_registry",
        "aggregate_id",
        "aggregate_type",
        "aggregate_version",
        "causation_id",
        "correlation_id",
        "event_id",
        "event_type",
        "occurred_at",
        "position",
        "recorded_at",
        "schema_version",
        "tenant_id",
    )

    position: int
    event_id: UUID
    event_type: str
    schema_version: int
    tenant_id: str | None
    aggregate_id: UUID
    aggregate_type: str
    aggregate_version: int
    correlation_id: UUID | None
    causation_id: UUID | None
    occurred_at: datetime
    recorded_at: datetime
    #: The caller's own event (appended, or given), a weak reference to the event decoded
    #: last (read), or None.
    _event: DomainEvent | weakref.ReferenceType[DomainEvent] | None

    def __init__(
        self,
        *,
        position: int,
        event_id: UUID,
        event_type: str,
        schema_version: int,
        tenant_id: str | None,
        aggregate_id: UUID,
        aggregate_type: str,
        aggregate_version: int,
        payload: dict[str, Any] | str,
        metadata: dict[str, Any] | str,
        correlation_id: UUID | None,
        causation_id: UUID | None,
        occurred_at: datetime,
        recorded_at: datetime,
        event: DomainEvent | None = None,
        registry: EventRegistry | None = None,
    ) -> None:
        self.position = position
        self.event_id = event_id
        self.event_type = event_type
        self.schema_version = schema_version
        self.tenant_id = tenant_id or None
        self.aggregate_id = aggregate_id
        self.aggregate_type = aggregate_type
        self.aggregate_version = aggregate_version
        self._payload = payload
        self._metadata = metadata
        self.correlation_id = correlation_id
        self.causation_id = causation_id
        self.occurred_at = occurred_at
        self.recorded_at = recorded_at
        self._event = event
        self._registry = registry or event_registry

    @classmethod
    def from_event(
        cls, event: DomainEvent, *, position: int, recorded_at: datetime
    ) -> StoredEvent:
        """Wrap an event that was just appended (its version already assigned)."""
        _stamp(event, position=position, version=event.aggregate_version)
        return cls(
            position=position,
            event_id=event.event_id,
            event_type=event.event_type,
            schema_version=event.schema_version,
            tenant_id=event.tenant_id,
            aggregate_id=event.aggregate_id,
            aggregate_type=event.aggregate_type,
            aggregate_version=event.aggregate_version,
            payload=event.payload(),
            metadata=event.metadata,
            correlation_id=event.correlation_id,
            causation_id=event.causation_id,
            occurred_at=event.occurred_at,
            recorded_at=recorded_at,
            event=event,
        )

    @property
    def payload(self) -> dict[str, Any]:
        """The payload as stored (before upcasting)."""
        if isinstance(self._payload, str):
            self._payload = json.loads(self._payload)
        return self._payload  # type: ignore[return-value]

    @property
    def metadata(self) -> dict[str, Any]:
        """The event's metadata (user, request id, ...)."""
        if isinstance(self._metadata, str):
            self._metadata = {} if self._metadata == "{}" else json.loads(self._metadata)
        return self._metadata

    @property
    def event(self) -> DomainEvent:
        """The typed event (upcast to its class's current schema version).

        Decoded on first access, and again if the object from the last access is gone (see
        the class's docstring); upcasters may therefore run more than once per stored event.
        Keep the result in a variable to use it more than once.

        Raises [`UnknownEventType`][django_eventsource.UnknownEventType] or
        [`InvalidEventPayload`][django_eventsource.InvalidEventPayload] when it cannot be decoded.
        """
        cached = self._event
        if cached is not None:
            if type(cached) is not _Ref:
                return cached  # type: ignore[return-value]
            event = cached()
            if event is not None:
                return event
        raw = self._payload
        fast = self._registry._fast.get(self.event_type)
        if fast is not None and fast[1] == self.schema_version and type(raw) is str:
            # The common case, inlined: the payload validated alone straight from the JSON
            # text, the envelope as the store wrote it (see EventRegistry._decode, which the
            # other cases take, and which reports a payload that fails).
            cls, target, validator, count, shared = fast
            try:
                values, _, fields_set = validator.validate_json(raw)
            except ValidationError:
                values = None
            if values is not None:
                # The event's own metadata dict: parsed from the text (the stored event
                # parses its own copy if ``.metadata`` is read), or a copy.
                metadata: Any = self._metadata
                if type(metadata) is str:
                    metadata = {} if metadata == "{}" else json.loads(metadata)
                else:
                    metadata = dict(metadata) if metadata else {}
                # In the fields' order (DomainEvent's first), as model_validate builds it.
                fields = {
                    "event_id": self.event_id,
                    "event_type": self.event_type,
                    "schema_version": target,
                    "aggregate_id": self.aggregate_id,
                    "aggregate_type": self.aggregate_type,
                    "aggregate_version": self.aggregate_version,
                    "tenant_id": self.tenant_id,
                    "occurred_at": self.occurred_at,
                    "correlation_id": self.correlation_id,
                    "causation_id": self.causation_id,
                    "metadata": metadata,
                }
                fields.update(values)
                # What _instance does, inlined. A payload with every field gets the class's
                # shared set of field names (frozen classes: nothing adds to it).
                event = _new(cls)
                _set_dict(event, fields)
                if shared is not None and len(fields_set) == count:
                    _set_fields_set(event, shared)
                else:
                    fields_set.update(ENVELOPE_FIELDS)
                    _set_fields_set(event, fields_set)
                _set_extra(event, None)
                _set_private(event, {"_position": self.position})
                self._event = _Ref(event)
                return event
        # The JSON text as read (validated straight from it), or a fresh dict (the cached
        # ``payload`` stays as stored).
        event = self._registry._decode(
            self.event_type,
            self.schema_version,
            raw if isinstance(raw, str) else dict(raw),
            {
                "event_id": self.event_id,
                "aggregate_id": self.aggregate_id,
                "aggregate_type": self.aggregate_type,
                "aggregate_version": self.aggregate_version,
                "tenant_id": self.tenant_id,
                "occurred_at": self.occurred_at,
                "correlation_id": self.correlation_id,
                "causation_id": self.causation_id,
                "metadata": self.metadata,
            },
            self.position,
        )
        self._event = _Ref(event)
        return event

    def __repr__(self) -> str:
        return (
            f"<StoredEvent #{self.position} {self.event_type} "
            f"{self.aggregate_id} v{self.aggregate_version}>"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StoredEvent):
            return NotImplemented
        return (self.position, self.event_id) == (other.position, other.event_id)

    def __hash__(self) -> int:
        return hash((self.position, self.event_id))


@dataclass(frozen=True)
class ReadResult:
    """A page of stored events, in order. Iterable; ``len()`` is the number of events."""

    events: list[StoredEvent]
    #: The position the read started after (0 for the start of the store).
    from_position: int = 0
    #: For ``read_all``: whether the page was cut by ``limit`` (more may follow at once).
    limited: bool = False
    _extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def last_position(self) -> int:
        """Where to resume: the last event's position, or ``from_position`` if empty."""
        return self.events[-1].position if self.events else self.from_position

    def __iter__(self) -> Iterator[StoredEvent]:
        return iter(self.events)

    def __len__(self) -> int:
        return len(self.events)

"""Domain events: the pydantic schema base, the type registry and upcasting.

An event class is a pydantic v2 model that subclasses :class:`DomainEvent` and is registered
under its ``event_type`` with :func:`register_event`. The envelope fields (identity, stream,
tenant, timestamps, tracing ids, metadata) live in columns of their own; every other field is
the event's *payload* and is stored as JSON.

Schemas evolve: bump the class's ``schema_version`` and register an :func:`upcaster` that turns
a payload of the previous version into the new shape. Stored events are upcast on read, in
order, so old events always come back as instances of the current class.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, TypeVar
from uuid import UUID, uuid4

from django.core.exceptions import ImproperlyConfigured
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from django_eventsource.exceptions import InvalidEventPayload, UnknownEventType

__all__ = [
    "ENVELOPE_FIELDS",
    "DomainEvent",
    "EventRegistry",
    "Upcaster",
    "event_registry",
    "register_event",
    "upcaster",
]

E = TypeVar("E", bound="DomainEvent")
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
F = TypeVar("F", bound=Callable[..., Any])


def _utcnow() -> datetime:
    return datetime.now(UTC)


class DomainEvent(BaseModel):
    """Base class of every event: the envelope; subclasses add the payload fields.

    Written exactly as in the tutorial::

        @register_event
        class TaskCreated(DomainEvent):
            event_type: str = "TaskCreated"
            aggregate_type: str = "Task"
            title: str

    ``event_type`` defaults to the class name when a subclass does not set it.
    ``aggregate_version`` may be left at 0: the store assigns the stream version on append.
    Events are immutable; use ``model_copy(update=...)`` to derive a changed one.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_id: UUID = Field(default_factory=uuid4)
    event_type: str = ""
    schema_version: int = 1
    aggregate_id: UUID
    aggregate_type: str = ""
    aggregate_version: int = 0
    tenant_id: str | None = None
    occurred_at: datetime = Field(default_factory=_utcnow)
    correlation_id: UUID | None = None
    causation_id: UUID | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    _position: int | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _default_event_type(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("event_type"):
            return {**data, "event_type": cls.default_event_type()}
        return data

    @classmethod
    def default_event_type(cls) -> str:
        """The type name this class is stored under: its ``event_type`` default, or its name."""
        default = cls.model_fields["event_type"].default
        return default if isinstance(default, str) and default else cls.__name__

    @classmethod
    def current_schema_version(cls) -> int:
        """The ``schema_version`` new instances of this class are written with."""
        default = cls.model_fields["schema_version"].default
        return default if isinstance(default, int) else 1

    @property
    def position(self) -> int:
        """The global position the store gave this event.

        Raises ``AttributeError`` on an event that has not been stored (or read back), so the
        tutorial's ``hasattr(event, "position")`` test works as written.
        """
        if self._position is None:
            raise AttributeError(
                f"{type(self).__name__} {self.event_id} has no position: it has not been stored"
            )
        return self._position

    def payload(self) -> dict[str, Any]:
        """The JSON-ready payload: every field that is not part of the envelope."""
        return self.model_dump(mode="json", exclude=set(ENVELOPE_FIELDS))


#: The fields stored in columns of their own rather than in the JSON payload.
ENVELOPE_FIELDS: frozenset[str] = frozenset(DomainEvent.model_fields)


class EventRegistry:
    """Maps stored type names to event classes, and holds the upcasters per type.

    One process-wide instance, :data:`event_registry`, backs :func:`register_event`; build a
    separate registry only to isolate tests.
    """

    def __init__(self) -> None:
        self._classes: dict[str, type[DomainEvent]] = {}
        self._upcasters: dict[tuple[str, int], Upcaster] = {}
        #: event type -> (class, its current schema version); filled by reads, reset on
        #: registration.
        self._current: dict[str, tuple[type[DomainEvent], int]] = {}
        self._lock = threading.Lock()

    def register(self, cls: type[E]) -> type[E]:
        """Register ``cls`` under its event type. Re-registering the same class is a no-op."""
        if not (isinstance(cls, type) and issubclass(cls, DomainEvent)):
            raise TypeError(f"@register_event expects a DomainEvent subclass, got {cls!r}")
        name = cls.default_event_type()
        with self._lock:
            existing = self._classes.get(name)
            if existing is not None and _qualname(existing) != _qualname(cls):
                raise ImproperlyConfigured(
                    f"Event type {name!r} is already registered to {_qualname(existing)}; "
                    f"cannot register {_qualname(cls)} under the same name. Give one of them "
                    "another event_type."
                )
            self._classes[name] = cls
            self._current.pop(name, None)
        return cls

    def register_upcaster(self, event_type: str, from_version: int, function: Upcaster) -> None:
        """Register ``function`` to turn a ``from_version`` payload into ``from_version + 1``."""
        with self._lock:
            key = (event_type, from_version)
            if key in self._upcasters and self._upcasters[key] is not function:
                raise ImproperlyConfigured(
                    f"An upcaster for {event_type!r} from schema version {from_version} "
                    "is already registered."
                )
            self._upcasters[key] = function

    def get(self, event_type: str) -> type[DomainEvent]:
        """The class registered under ``event_type``; :class:`UnknownEventType` if none."""
        try:
            return self._classes[event_type]
        except KeyError:
            raise UnknownEventType(event_type) from None

    def __contains__(self, event_type: object) -> bool:
        return event_type in self._classes

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._classes))

    def upcast(
        self,
        event_type: str,
        schema_version: int,
        payload: dict[str, Any],
        *,
        position: int | None = None,
    ) -> dict[str, Any]:
        """Bring a stored payload up to the registered class's current schema version."""
        target = self.get(event_type).current_schema_version()
        if schema_version > target:
            raise InvalidEventPayload(
                event_type,
                f"it was stored with schema version {schema_version}, newer than the "
                f"class's {target}. Deploy the code that wrote it before reading it.",
                position=position,
                schema_version=schema_version,
            )
        version = schema_version
        while version < target:
            function = self._upcasters.get((event_type, version))
            if function is None:
                raise InvalidEventPayload(
                    event_type,
                    f"no upcaster from schema version {version} to {version + 1} is "
                    f"registered (the class is at version {target}). Register one with "
                    f"@upcaster({event_type!r}, from_version={version}).",
                    position=position,
                    schema_version=schema_version,
                )
            payload = function(dict(payload))
            version += 1
        return payload

    def load(
        self,
        event_type: str,
        schema_version: int,
        payload: dict[str, Any],
        envelope: dict[str, Any],
        *,
        position: int | None = None,
    ) -> DomainEvent:
        """Rebuild a typed event from its stored parts (upcasting the payload first)."""
        return self._decode(event_type, schema_version, dict(payload), envelope, position)

    def _decode(
        self,
        event_type: str,
        schema_version: int,
        data: dict[str, Any],
        envelope: dict[str, Any],
        position: int | None,
    ) -> DomainEvent:
        """:meth:`load` for a payload dict the caller gives away (it becomes the input)."""
        try:
            cls, target = self._current[event_type]
        except KeyError:
            try:
                cls = self.get(event_type)
            except UnknownEventType:
                raise UnknownEventType(event_type, position=position) from None
            target = cls.current_schema_version()
            self._current[event_type] = (cls, target)
        if schema_version != target:
            data = self.upcast(event_type, schema_version, data, position=position)
            data = dict(data)
        data.update(envelope)
        data["event_type"] = event_type
        data["schema_version"] = target
        try:
            event = cls.model_validate(data)
        except ValidationError as exc:
            raise InvalidEventPayload.from_validation_error(
                event_type, exc, position=position, schema_version=schema_version
            ) from exc
        # The private attribute's storage, set directly (pydantic's __setattr__ costs more
        # than a tenth of the whole decode).
        event.__pydantic_private__["_position"] = position  # type: ignore[index]
        return event


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


#: The process-wide registry behind :func:`register_event` and :func:`upcaster`.
event_registry = EventRegistry()


def mark_event_types(
    decorator: str, attribute: str, event_types: tuple[type[DomainEvent] | str, ...]
) -> Callable[[F], F]:
    """The body of ``@handles`` and ``@applies``: record type names on the decorated method."""
    if not event_types:
        raise TypeError(f"@{decorator}() needs at least one event type")
    names = []
    for event_type in event_types:
        if isinstance(event_type, str):
            names.append(event_type)
        elif isinstance(event_type, type) and issubclass(event_type, DomainEvent):
            names.append(event_type.default_event_type())
        else:
            raise TypeError(
                f"@{decorator}() takes DomainEvent classes or type names, not {event_type!r}"
            )

    def mark(function: F) -> F:
        existing = getattr(function, attribute, ())
        setattr(function, attribute, (*existing, *names))
        return function

    return mark


def marked_methods(cls: type, attribute: str, inherited: str, role: str) -> dict[str, str]:
    """Event type name -> method name: the bases' table (``inherited``) plus the methods the
    class itself marked (``attribute``, set by :func:`mark_event_types`). Two methods of one
    class for the same type are a mistake, reported at import time."""
    table: dict[str, str] = {}
    for base in reversed(cls.__mro__[1:]):
        table.update(getattr(base, inherited, {}))
    own: dict[str, str] = {}
    for name, value in cls.__dict__.items():
        for event_type in getattr(value, attribute, ()):
            if event_type in own:
                raise ImproperlyConfigured(
                    f"{cls.__qualname__} has two {role}s for {event_type!r}: "
                    f"{own[event_type]}() and {name}()."
                )
            own[event_type] = name
    table.update(own)
    return table


def register_event(cls: type[E]) -> type[E]:
    """Class decorator: make an event class known to the store under its ``event_type``."""
    return event_registry.register(cls)


def upcaster(event_type: str, *, from_version: int) -> Callable[[Upcaster], Upcaster]:
    """Decorator: register a function that upgrades a payload by one schema version.

    ::

        @upcaster("TaskCreated", from_version=1)
        def add_priority(payload: dict) -> dict:
            return {**payload, "priority": "normal"}
    """

    def decorator(function: Upcaster) -> Upcaster:
        event_registry.register_upcaster(event_type, from_version, function)
        return function

    return decorator

"""Domain events: the pydantic schema base, the type registry and upcasting.

An event class is a pydantic v2 model that subclasses
[`DomainEvent`][django_eventsource.DomainEvent] and is registered
under its ``event_type`` with [`register_event`][django_eventsource.register_event]. The envelope
fields (identity, stream,
tenant, timestamps, tracing ids, metadata) live in columns of their own; every other field is
the event's *payload* and is stored as JSON.

Schemas evolve: bump the class's ``schema_version`` and register an
[`upcaster`][django_eventsource.upcaster] that turns
a payload of the previous version into the new shape. Stored events are upcast on read, in
order, so old events always come back as instances of the current class.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, TypeVar
from uuid import UUID, uuid4

from django.core.exceptions import ImproperlyConfigured
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator
from pydantic_core import SchemaValidator

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
    ``aggregate_version`` may be left at 0: the store assigns the stream version on append,
    and a successful append sets it, and ``position``, on the very events it was given.
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
        # Left out, the field's own default is the type name already (the common case,
        # checked once per class): no copy of the input needed.
        if (
            isinstance(data, dict)
            and not data.get("event_type")
            and ("event_type" in data or not _names_itself(cls))
        ):
            return {**data, "event_type": cls.default_event_type()}
        return data

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        # pydantic wraps the private-attribute setup once more in every subclass, and each
        # new event runs every layer. Where the only private attribute is ``_position`` and
        # no class adds a post-init of its own, one layer that sets it does the same.
        if set(cls.__private_attributes__) == {"_position"} and _inits_privates_only(
            cls.model_post_init
        ):
            cls.model_post_init = _init_position  # type: ignore[method-assign, assignment]

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
        tutorial's ``hasattr(event, "position")`` test works as written, on the event it
        appended as on the events it reads.
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
_ENVELOPE_SET = set(ENVELOPE_FIELDS)


class EventRegistry:
    """Maps stored type names to event classes, and holds the upcasters per type.

    One process-wide instance, `event_registry`, backs
    [`register_event`][django_eventsource.register_event]; build a
    separate registry only to isolate tests.
    """

    def __init__(self) -> None:
        self._classes: dict[str, type[DomainEvent]] = {}
        self._upcasters: dict[tuple[str, int], Upcaster] = {}
        #: event type -> (class, its current schema version, its payload validator or None);
        #: filled by reads, reset on registration.
        self._current: dict[str, tuple[type[DomainEvent], int, SchemaValidator | None]] = {}
        #: The same for the types whose payload validator exists: what a stored event's
        #: fast decode needs (``StoredEvent.event``; see `_fast_entry`).
        self._fast: dict[str, _Fast] = {}
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
            self._fast.pop(name, None)
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
        """The class registered under ``event_type``;
        [`UnknownEventType`][django_eventsource.UnknownEventType] if none."""
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
        data: dict[str, Any] | str,
        envelope: dict[str, Any],
        position: int | None,
    ) -> DomainEvent:
        """[`load`][django_eventsource.EventRegistry.load] for a stored payload: JSON text, or a dict the caller gives away.

        The envelope comes from the store's own typed columns, so it is not validated again:
        only the payload is, by a validator of the payload fields alone, straight from the
        JSON text when no upcast is needed. Classes that could behave differently that way
        (model validators, their own ``model_post_init`` or private attributes, extra fields
        allowed) take pydantic's full ``model_validate``.
        """
        try:
            cls, target, payload_validator = self._current[event_type]
        except KeyError:
            try:
                cls = self.get(event_type)
            except UnknownEventType:
                raise UnknownEventType(event_type, position=position) from None
            target = cls.current_schema_version()
            payload_validator = _payload_validator(cls)
            self._current[event_type] = (cls, target, payload_validator)
            if payload_validator is not None:
                self._fast[event_type] = _fast_entry(cls, target, payload_validator)
        if schema_version != target:
            if isinstance(data, str):
                data = json.loads(data)
            data = dict(self.upcast(event_type, schema_version, data, position=position))  # type: ignore[arg-type]
        try:
            if payload_validator is None:
                if isinstance(data, str):
                    data = json.loads(data)
                data.update(envelope)  # type: ignore[union-attr]
                data["event_type"] = event_type  # type: ignore[index]
                data["schema_version"] = target  # type: ignore[index]
                event = cls.model_validate(data)
                # The private attribute's storage, set directly (pydantic's __setattr__ costs
                # more than a tenth of the whole decode).
                event.__pydantic_private__["_position"] = position  # type: ignore[index]
                return event
            if isinstance(data, str):
                values, _, fields_set = payload_validator.validate_json(data)
            else:
                values, _, fields_set = payload_validator.validate_python(data)
        except ValidationError as exc:
            raise InvalidEventPayload.from_validation_error(
                event_type, exc, position=position, schema_version=schema_version
            ) from exc
        except ValueError as exc:  # JSON that does not parse
            raise InvalidEventPayload(
                event_type, str(exc), position=position, schema_version=schema_version
            ) from exc
        metadata = envelope["metadata"]
        # In the fields' order (DomainEvent's first), as model_validate builds it.
        fields = {
            "event_id": envelope["event_id"],
            "event_type": event_type,
            "schema_version": target,
            "aggregate_id": envelope["aggregate_id"],
            "aggregate_type": envelope["aggregate_type"],
            "aggregate_version": envelope["aggregate_version"],
            "tenant_id": envelope["tenant_id"],
            "occurred_at": envelope["occurred_at"],
            "correlation_id": envelope["correlation_id"],
            "causation_id": envelope["causation_id"],
            "metadata": dict(metadata) if metadata else {},  # the event's own dict
        }
        fields.update(values)
        return _instance(cls, fields, fields_set, position)


#: What `StoredEvent.event` needs to decode a type's current schema version: the class, its
#: schema version, the payload validator, how many payload fields the class has, and the set
#: of all its field names that decoded events share when their payload has every field (None
#: for a class that is not frozen: pydantic adds to an instance's set on assignment).
_Fast = tuple[type[DomainEvent], int, SchemaValidator, int, "set[str] | None"]


def _fast_entry(cls: type[DomainEvent], target: int, validator: SchemaValidator) -> _Fast:
    count = sum(1 for name in cls.model_fields if name not in ENVELOPE_FIELDS)
    shared = set(cls.model_fields) if cls.model_config.get("frozen") else None
    return (cls, target, validator, count, shared)


def _instance(
    cls: type[DomainEvent], fields: dict[str, Any], fields_set: set[str], position: int | None
) -> DomainEvent:
    """What model_validate builds from ``fields`` (envelope first, in the fields' order),
    without its per-instance Python hooks; ``fields_set`` (the payload's) is taken over."""
    fields_set.update(_ENVELOPE_SET)
    event = _new(cls)
    _set_dict(event, fields)
    _set_fields_set(event, fields_set)
    _set_extra(event, None)
    _set_private(event, {"_position": position})
    return event


_new = object.__new__
_set = object.__setattr__
# The storage of BaseModel's slots, set directly: what object.__setattr__ does for these names,
# without looking the descriptor up on every call.
_set_dict = BaseModel.__dict__["__dict__"].__set__
_set_fields_set = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_set_extra = BaseModel.__dict__["__pydantic_extra__"].__set__
_set_private = BaseModel.__dict__["__pydantic_private__"].__set__


def _inits_privates_only(function: Any) -> bool:
    """Whether a class's ``model_post_init`` is pydantic's own private-attribute setup (which
    pydantic installs, wrapped once per subclass) or `_init_position`, not a user's."""
    try:
        from pydantic._internal._model_construction import init_private_attributes
    except ImportError:  # pragma: no cover - another pydantic: validate whole, to be safe
        return False

    while function is not None and hasattr(function, "__wrapped__"):
        function = function.__wrapped__
    return function is None or function is init_private_attributes or function is _init_position


def _init_position(self: DomainEvent, context: Any, /) -> None:
    """``model_post_init`` of event classes whose only private attribute is ``_position``:
    what pydantic's ``init_private_attributes`` does for them, in one step."""
    if getattr(self, "__pydantic_private__", None) is None:
        _set(self, "__pydantic_private__", {"_position": None})


#: Event classes whose ``event_type`` field default is a type name (not empty): an event
#: built without ``event_type`` gets that name from the field's default.
_self_named: dict[type, bool] = {}


def _names_itself(cls: type[DomainEvent]) -> bool:
    try:
        return _self_named[cls]
    except KeyError:
        default = cls.model_fields["event_type"].default
        named = isinstance(default, str) and bool(default)
        if len(_self_named) < 10_000:
            _self_named[cls] = named
        return named


def _payload_validator(cls: type[DomainEvent]) -> SchemaValidator | None:
    """A validator of ``cls``'s payload fields alone, or None when ``cls`` must be validated
    whole (anything that could make the result differ from ``model_validate``)."""
    decorators = cls.__pydantic_decorators__
    if set(decorators.model_validators) != {"_default_event_type"}:
        return None
    if set(cls.__private_attributes__) != {"_position"}:
        return None
    if cls.model_config.get("extra") not in (None, "forbid", "ignore"):
        return None
    for klass in cls.__mro__:
        if klass is DomainEvent:
            break
        if "__init__" in klass.__dict__ or not _inits_privates_only(
            klass.__dict__.get("model_post_init")
        ):
            return None
    schema: Any = cls.__pydantic_core_schema__
    definitions = None
    if schema.get("type") == "definitions":
        definitions, schema = schema.get("definitions"), schema.get("schema")
    if schema.get("type") != "model" or schema.get("custom_init") or schema.get("root_model"):
        return None
    before = schema.get("schema", {})
    fields = before.get("schema", {}) if before.get("type") == "function-before" else {}
    if fields.get("type") != "model-fields" or fields.get("computed_fields"):
        return None
    payload_fields = {k: v for k, v in fields["fields"].items() if k not in ENVELOPE_FIELDS}
    payload: Any = {**fields, "fields": payload_fields}
    if definitions is not None:
        payload = {"type": "definitions", "schema": payload, "definitions": definitions}
    try:
        return SchemaValidator(payload, schema.get("config"))
    except Exception:  # noqa: BLE001 - a schema shape we did not foresee: the full path
        return None


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


#: The process-wide registry behind `register_event` and `upcaster`.
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
    class itself marked (``attribute``, set by
    [`mark_event_types`][django_eventsource.events.mark_event_types]). Two methods of one
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

"""The append contract: what an event may contain, checked before any SQL.

Both stores (and so both databases) run
[`prepare_append`][django_eventsource.validation.prepare_append] first, so an event that one of
them accepts every one of them accepts, and reading it back always gives an equal event. What
PostgreSQL cannot store (``jsonb`` refuses NUL characters, lone surrogates, ``NaN``; columns
have lengths and integer ranges), SQLite is made to refuse too: a project that moves from
development on SQLite to production on PostgreSQL finds out on the first append, not in
production. Every refusal is an [`InvalidAppend`][django_eventsource.InvalidAppend] naming the
field
and the rule (or a ``TypeError`` for an argument of the wrong type).

The payload is serialized once here (the stores write this very text) and checked without
decoding it when the event class's payload schema is *closed*: every field typed with a
type that pydantic writes and reads back exactly (str, int, bool, float, Decimal, UUID,
datetime, enums, nested models, typed lists and dicts of those). For those the only ways to
break the round trip show in the JSON text itself or are refused by the serializer. Any other
class (``Any``, untyped ``dict``/``list``, unions, custom serializers or validators that
replace the value, an overridden ``payload()``) gets the full check: the text is decoded as
PostgreSQL would return it, validated into the class, and compared with the event.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final
from uuid import UUID

from django_eventsource.events import DomainEvent
from django_eventsource.exceptions import InvalidAppend
from django_eventsource.roundtrip import (
    MAX_DEPTH,
    MAX_INT_DIGITS,
    _check_text,
    _metadata_json,
    _payload_json,
    jsonb_loads,
)

if TYPE_CHECKING:
    from django_eventsource.events import EventRegistry

__all__ = [
    "MAX_DEPTH",
    "MAX_INT_DIGITS",
    "MAX_NAME_LENGTH",
    "MAX_POSITION",
    "MAX_VERSION",
    "Prepared",
    "check_position",
    "check_run_tenant",
    "jsonb_loads",
    "prepare_append",
]

#: The largest stream version and schema version (the columns are 32-bit integers).
MAX_VERSION: Final = 2**31 - 1
#: The largest position (a 64-bit ``bigint``).
MAX_POSITION: Final = 2**63 - 1
#: The longest ``tenant_id``, ``event_type`` and ``aggregate_type`` (``varchar(255)``).
MAX_NAME_LENGTH: Final = 255

_ANY: Final = -1
_STREAM_EXISTS: Final = -2
_UNSET: Final = object()


def check_position(value: object, name: str = "from_position") -> int:
    """``value`` as a position: an int from 0 (the start) to ``MAX_POSITION``.

    ``TypeError`` for anything that is not an int (``"3"``, ``3.0``, ``True``), ``ValueError``
    for a negative one or one past a ``bigint``: positions come from the store, never from text.
    """
    if type(value) is not int and (not isinstance(value, int) or isinstance(value, bool)):
        raise TypeError(f"{name} must be an int position, not {type(value).__name__} {value!r}")
    if not 0 <= value <= MAX_POSITION:
        raise ValueError(f"{name} must be between 0 and 2**63 - 1, not {value}")
    return int(value)


def check_read_tenant(value: object, name: str = "tenant_id") -> None:
    """A tenant a read filters on: None, or a str an event could carry.

    ``TypeError`` for a non-string; ``ValueError`` for a str no event can carry (over 255
    characters, a NUL character or a lone surrogate): PostgreSQL would refuse it with a raw
    ``DataError`` while SQLite and the in-memory store answered "no events".
    """
    if value is None or (type(value) is str and value in _good_names):
        return
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str or None, not {type(value).__name__} {value!r}")
    if len(value) > MAX_NAME_LENGTH:
        raise ValueError(
            f"{name} is {len(value)} characters long; no event can carry more than "
            f"{MAX_NAME_LENGTH}"
        )
    if "\x00" in value:
        raise ValueError(f"{name} contains a NUL character (\\u0000), which no event can carry")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"{name} contains a lone surrogate ({value[exc.start]!r}), which no event can carry"
        ) from None


def check_run_tenant(value: str | None, name: str = "tenant_id") -> str | None:
    """``value`` if a run or a rebuild can be limited to it: None (every tenant's events) or a
    tenant id an event can carry (see `check_read_tenant`).

    ``ValueError`` for ``""``: a state row and a checkpoint store "no tenant" as ``""``, while
    a read filtered on ``""`` returns the events *without* a tenant, so a run of tenant ``""``
    moved the checkpoint of every tenant's events past the events of the tenants it never
    read.
    """
    check_read_tenant(value, name)
    if value == "":
        raise ValueError(
            f"{name} '' is not a tenant id: give None for every tenant's events, or the id of "
            "one tenant"
        )
    return value


def check_read_aggregate(value: object) -> None:
    """The stream a read asks for: a UUID (``TypeError`` otherwise, as in ``append``)."""
    if not isinstance(value, UUID):
        raise TypeError(f"aggregate_id must be a UUID, not {type(value).__name__} {value!r}")


def check_read_event_types(names: list[str] | None) -> None:
    """The event types a read filters on: names an event could carry."""
    for name in names or ():
        if type(name) is not str or name not in _good_names:
            check_read_tenant(name, "event_types")


#: The longest projection name a state row holds (``ProjectionState.name``).
MAX_PROJECTION_NAME: Final = 200


def check_projection_name(value: object, name: str = "projection name") -> str:
    """``value`` if it can name a projection everywhere it appears: 1 to 200 characters, no
    ``/`` (it is a path segment of the admin's URLs) and no control characters.

    ``TypeError`` for a non-string, ``ValueError`` naming the rule otherwise.
    """
    if not isinstance(value, str):
        raise TypeError(f"A {name} must be a str, not {type(value).__name__}")
    if not 1 <= len(value) <= MAX_PROJECTION_NAME:
        raise ValueError(
            f"A {name} must be 1 to {MAX_PROJECTION_NAME} characters, not {len(value)}"
        )
    if "/" in value or any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in value):
        raise ValueError(f"A {name} may not contain '/' or control characters: {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class Prepared:
    """An append that passed the contract: the events, and their JSON as it will be stored."""

    aggregate_id: UUID
    tenant_id: str | None
    expected_version: int
    events: list[DomainEvent]
    payloads: list[str]
    metadata: list[str]


def prepare_append(
    aggregate_id: UUID,
    events: Sequence[DomainEvent],
    expected_version: int,
    registry: EventRegistry,
) -> Prepared:
    """Check an append against the contract and serialize its events; raise before any SQL."""
    if isinstance(events, DomainEvent):  # type: ignore[unreachable]
        raise TypeError("append() takes a list of events; wrap the single event in [ ].")
    if isinstance(events, (str, bytes, dict)) or not hasattr(events, "__iter__"):
        raise TypeError(f"append() takes a list of events, not {type(events).__name__}")
    events = list(events)
    if type(expected_version) is not int:
        if not isinstance(expected_version, int) or isinstance(expected_version, bool):
            raise TypeError(
                f"expected_version must be an int, not {type(expected_version).__name__}"
            )
        expected_version = int(expected_version)
    if expected_version < _STREAM_EXISTS:
        raise InvalidAppend(
            "expected_version",
            f"{expected_version} is invalid: use a version >= 0, ExpectedVersion.ANY or "
            "ExpectedVersion.STREAM_EXISTS",
        )
    if expected_version + len(events) > MAX_VERSION:
        raise InvalidAppend(
            "expected_version",
            f"{expected_version} plus {len(events)} event(s) is past the largest stream "
            f"version, {MAX_VERSION}",
        )
    if not isinstance(aggregate_id, UUID):
        raise TypeError(f"aggregate_id must be a UUID, not {type(aggregate_id).__name__}")
    payloads: list[str] = []
    metadata: list[str] = []
    known = _known_types
    tenant_id: Any = _UNSET
    for index, event in enumerate(events):
        if not isinstance(event, DomainEvent):
            raise TypeError(f"events[{index}] is a {type(event).__name__}, not a DomainEvent")
        values = event.__dict__
        # The common case in one expression of cheap checks; anything unusual takes the
        # thorough path, which names the field and the rule.
        try:
            current = known.get((type(event), values["event_type"], registry))
        except TypeError:  # an unhashable event_type, set by model_copy(update=...)
            current = None
        correlation, causation = values["correlation_id"], values["causation_id"]
        version, occurred_at = values["aggregate_version"], values["occurred_at"]
        if not (
            current is not None
            and values["schema_version"] == current
            and type(values["schema_version"]) is int
            and values["aggregate_type"] in _good_names
            and type(values["event_id"]) is UUID
            and (correlation is None or type(correlation) is UUID)
            and (causation is None or type(causation) is UUID)
            and type(version) is int
            and 0 <= version <= MAX_VERSION
            and type(occurred_at) is datetime
            and occurred_at.utcoffset() is not None
            and 1 < occurred_at.year < 9999
        ):
            _check_envelope(event, f"events[{index}]", registry)
        if values["aggregate_id"] != aggregate_id:
            raise InvalidAppend(
                f"events[{index}].aggregate_id",
                f"the event ({event.event_type}) belongs to aggregate {event.aggregate_id}, "
                f"not {aggregate_id}: one append writes one stream",
            )
        tenant = values["tenant_id"] or None
        if tenant_id is _UNSET:
            if tenant is not None:
                check_name(tenant, f"events[{index}].tenant_id", required=False)
            tenant_id = tenant
        elif tenant != tenant_id:
            raise InvalidAppend(
                "tenant_id",
                "all events of one append must share one tenant_id, got "
                f"{tenant_id!r} and {tenant!r}",
            )
        # Metadata first: the payload's full check validates the whole event, metadata too.
        meta = values["metadata"]
        metadata.append("{}" if type(meta) is dict and not meta else _metadata_json(meta, index))
        payloads.append(_payload_json(event, index))
    if len(events) > 1 and len({e.event_id for e in events}) < len(events):
        seen: dict[UUID, int] = {}
        for index, event in enumerate(events):
            if event.event_id in seen:
                raise InvalidAppend(
                    f"events[{index}].event_id",
                    f"{event.event_id} is also the id of events[{seen[event.event_id]}]: "
                    "every event needs its own id",
                )
            seen[event.event_id] = index
    explicit = [e.aggregate_version for e in events if e.aggregate_version]
    if explicit:
        if len(explicit) != len(events) or explicit != list(
            range(explicit[0], explicit[0] + len(events))
        ):
            raise InvalidAppend(
                "aggregate_version",
                "events that carry aggregate_version must all carry it, consecutively (got "
                f"{[e.aggregate_version for e in events]}); or leave it 0 to let the store "
                "assign versions",
            )
        implied = explicit[0] - 1
        if expected_version == _ANY:
            expected_version = implied
        elif expected_version != implied and expected_version >= 0:
            raise InvalidAppend(
                "expected_version",
                f"{expected_version}, but the first event carries aggregate_version="
                f"{explicit[0]} (which implies {implied})",
            )
    return Prepared(
        aggregate_id,
        None if tenant_id is _UNSET else tenant_id,
        expected_version,
        events,
        payloads,
        metadata,
    )


# The envelope --------------------------------------------------------------------------

_good_names: set[str] = set()
#: (class, event_type, registry) -> the class's current schema version, for classes that
#: are registered under that type in that registry (checked once per process).
_known_types: dict[tuple[type, str, Any], int] = {}


def check_name(value: object, field: str, *, required: bool) -> None:
    """A ``varchar(255)`` value: a str of at most 255 characters that PostgreSQL can store."""
    if type(value) is str and value in _good_names:  # names repeat: checked once each
        return
    if not isinstance(value, str):
        raise InvalidAppend(field, f"must be a str, not {type(value).__name__} {value!r}")
    if required and not value:
        raise InvalidAppend(field, "must not be empty")
    if len(value) > MAX_NAME_LENGTH:
        raise InvalidAppend(
            field, f"is {len(value)} characters long; at most {MAX_NAME_LENGTH} can be stored"
        )
    _check_text(value, field)
    if len(_good_names) < 10_000:
        _good_names.add(value)


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _check_envelope(event: DomainEvent, where: str, registry: EventRegistry) -> None:
    values = event.__dict__
    event_type = values["event_type"]
    check_name(event_type, f"{where}.event_type", required=True)
    cls = registry.get(event_type)  # UnknownEventType: never store what cannot be read
    if cls is not type(event) and _qualname(cls) != _qualname(type(event)):
        raise InvalidAppend(
            f"{where}.event_type",
            f"{event_type!r} is registered to {cls.__qualname__}, but the event is a "
            f"{type(event).__qualname__}: it would read back as a {cls.__qualname__}",
        )
    schema_version = values["schema_version"]
    current = cls.current_schema_version()
    if schema_version != current or type(schema_version) is not int:
        raise InvalidAppend(
            f"{where}.schema_version",
            f"{schema_version!r} is not {cls.__qualname__}'s current schema version, "
            f"{current}: new events are written in the current schema (older ones are "
            "upcast on read)",
        )
    check_name(values["aggregate_type"], f"{where}.aggregate_type", required=False)
    if len(_known_types) < 10_000:
        _known_types[(type(event), event_type, registry)] = current
    for name in ("event_id", "aggregate_id"):
        if not isinstance(values[name], UUID):
            raise InvalidAppend(
                f"{where}.{name}", f"must be a UUID, not {type(values[name]).__name__}"
            )
    for name in ("correlation_id", "causation_id"):
        if values[name] is not None and not isinstance(values[name], UUID):
            raise InvalidAppend(
                f"{where}.{name}", f"must be a UUID or None, not {type(values[name]).__name__}"
            )
    version = values["aggregate_version"]
    if type(version) is not int or not 0 <= version <= MAX_VERSION:
        raise InvalidAppend(
            f"{where}.aggregate_version",
            f"must be an int from 0 (assigned by the store) to {MAX_VERSION}, not {version!r}",
        )
    occurred_at = values["occurred_at"]
    if not isinstance(occurred_at, datetime):
        raise InvalidAppend(
            f"{where}.occurred_at", f"must be a datetime, not {type(occurred_at).__name__}"
        )
    if occurred_at.utcoffset() is None:
        raise InvalidAppend(
            f"{where}.occurred_at",
            f"{occurred_at.isoformat()} has no time zone; give an aware datetime (for "
            "example datetime.now(UTC)), or it would be read back as a different instant",
        )
    try:
        occurred_at.astimezone(UTC)
    except OverflowError:
        # The column holds the instant in UTC; read back, it must be a Python datetime again
        # (years 1 to 9999 in UTC). PostgreSQL would store 0001-01-01 05:00+14:00 as a date
        # BC, an event no read could ever decode; SQLite's adapter raises OverflowError.
        raise InvalidAppend(
            f"{where}.occurred_at",
            f"{occurred_at.isoformat()} is outside the years 1 to 9999 once converted to "
            "UTC, so it could not be read back",
        ) from None

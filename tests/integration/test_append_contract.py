"""The append contract (issue 12): what is accepted reads back equal; every refusal is typed,
names the field, writes nothing, and is the same on SQLite, PostgreSQL and in memory."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from enum import Enum
from typing import Any
from uuid import UUID, uuid4

import pytest
from pydantic import Field

from django_eventsource import (
    BaseEventStore,
    ConcurrencyError,
    DomainEvent,
    DuplicateEventId,
    EventStore,
    ExpectedVersion,
    InMemoryEventStore,
    InvalidAppend,
    UnknownEventType,
    register_event,
)
from django_eventsource.events import ENVELOPE_FIELDS

pytestmark = pytest.mark.django_db(transaction=True)

A = UUID("00000000-0000-4000-8000-00000000000a")


class Color(Enum):
    RED = "red"
    BLUE = "blue"


@register_event
class ContractTyped(DomainEvent):
    """Only exactly typed fields: the cheap check applies."""

    aggregate_type: str = "Contract"
    text: str = ""
    n: int = 0
    value: float = 0.0
    when: datetime | None = None
    amount: Decimal = Decimal(0)
    ref: UUID | None = None
    pair: tuple[int, int] = (0, 0)
    labels: dict[int, str] = Field(default_factory=dict)
    color: Color = Color.RED
    raw: bytes = b""


@register_event
class ContractScalars(DomainEvent):
    """Only plain scalar fields: serialized without pydantic's warnings="error" when every
    value has exactly its field's type."""

    aggregate_type: str = "Contract"
    text: str = ""
    n: int = 0
    flag: bool = False
    value: float | None = None


@register_event
class ContractFloats(DomainEvent):
    """Floats nested in a list: checked in full."""

    aggregate_type: str = "Contract"
    values: list[float] = Field(default_factory=list)


@register_event
class ContractLoose(DomainEvent):
    """Untyped fields: anything JSON can hold, and only that."""

    aggregate_type: str = "Contract"
    data: Any = None
    extra: dict = Field(default_factory=dict)  # type: ignore[type-arg]


def typed(**kwargs: Any) -> DomainEvent:
    return ContractTyped(aggregate_id=A, **kwargs)


def scalars(**kwargs: Any) -> DomainEvent:
    return ContractScalars(aggregate_id=A, **kwargs)


def loose(**kwargs: Any) -> DomainEvent:
    return ContractLoose(aggregate_id=A, **kwargs)


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def bypass(event: DomainEvent, **update: Any) -> DomainEvent:
    """``model_copy(update=...)`` skips validation: the store must catch what it lets in."""
    return event.model_copy(update=update)


def resent(event: DomainEvent) -> DomainEvent:
    """The event as a client sends it again: a new object, not stamped by the first append
    (the appended object itself carries its version, which validation checks first)."""
    copy = event.model_copy(update={"aggregate_version": 0})
    copy._position = None
    return copy


@dataclass
class Case:
    name: str
    events: Callable[[], list[DomainEvent]]
    error: type[Exception]
    field: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    aggregate_id: Any = A


REFUSED = [
    # Payload values that cannot be stored, or would not read back equal.
    Case("payload NaN", lambda: [typed(value=math.nan)], InvalidAppend, "payload.value"),
    Case("payload inf", lambda: [typed(value=math.inf)], InvalidAppend, "payload.value"),
    Case("payload -inf", lambda: [typed(value=-math.inf)], InvalidAppend, "payload.value"),
    Case("payload NUL", lambda: [typed(text="a\x00b")], InvalidAppend, "payload.text"),
    Case("payload surrogate", lambda: [typed(text="a\ud800")], InvalidAppend, "payload.text"),
    Case("payload huge int", lambda: [typed(n=10**5000)], InvalidAppend, "payload"),
    Case("payload bad bytes", lambda: [typed(raw=b"\xff")], InvalidAppend, "payload.raw"),
    Case(
        "nested NaN",
        lambda: [ContractFloats(aggregate_id=A, values=[1.0, math.nan])],
        InvalidAppend,
        "payload.values[1]",
    ),
    Case("Any non-str key", lambda: [loose(extra={1: "x"})], InvalidAppend, "payload.extra[1]"),
    Case("Any bytes", lambda: [loose(data=b"x")], InvalidAppend, "payload.data"),
    Case(
        "Any naive datetime",
        lambda: [loose(data=datetime(2024, 1, 1))],
        InvalidAppend,
        "payload.data",
    ),
    Case("Any tuple", lambda: [loose(data=(1, 2))], InvalidAppend, "payload.data"),
    Case("Any NaN", lambda: [loose(data={"x": math.nan})], InvalidAppend, "payload.data.x"),
    Case("Any NUL key", lambda: [loose(extra={"a\x00": 1})], InvalidAppend, "payload.extra"),
    Case("Any deep nesting", lambda: [loose(data=nested(150))], InvalidAppend, "payload"),
    Case("Any huge int", lambda: [loose(data=10**5000)], InvalidAppend, "payload"),
    Case("Any inexact float", lambda: [loose(data=1e23)], InvalidAppend, "payload.data"),
    # Metadata: JSON only.
    Case("metadata NUL", lambda: [typed(metadata={"k": "a\x00"})], InvalidAppend, "metadata.k"),
    Case("metadata NaN", lambda: [typed(metadata={"k": math.nan})], InvalidAppend, "metadata.k"),
    Case("metadata inf", lambda: [typed(metadata={"k": math.inf})], InvalidAppend, "metadata.k"),
    Case(
        "metadata surrogate key",
        lambda: [typed(metadata={"\udc00": 1})],
        InvalidAppend,
        "metadata key",
    ),
    Case(
        "metadata int key",
        lambda: [bypass(typed(), metadata={1: "x"})],
        InvalidAppend,
        "metadata[1]",
    ),
    Case("metadata bytes", lambda: [typed(metadata={"b": b"x"})], InvalidAppend, "metadata.b"),
    Case(
        "metadata naive datetime",
        lambda: [typed(metadata={"at": datetime(2024, 1, 1)})],
        InvalidAppend,
        "metadata.at",
    ),
    Case("metadata UUID", lambda: [typed(metadata={"u": uuid4()})], InvalidAppend, "metadata.u"),
    Case(
        "metadata deep", lambda: [typed(metadata={"d": nested(150)})], InvalidAppend, "metadata.d"
    ),
    Case(
        "metadata huge int", lambda: [typed(metadata={"n": 10**5000})], InvalidAppend, "metadata.n"
    ),
    Case("metadata 1e23", lambda: [typed(metadata={"f": 1e23})], InvalidAppend, "metadata.f"),
    Case(
        "metadata not a dict", lambda: [bypass(typed(), metadata=[1])], InvalidAppend, "metadata"
    ),
    # The envelope: column types and lengths.
    Case("tenant too long", lambda: [typed(tenant_id="t" * 256)], InvalidAppend, "tenant_id"),
    Case("tenant NUL", lambda: [typed(tenant_id="a\x00")], InvalidAppend, "tenant_id"),
    Case(
        "aggregate_type too long",
        lambda: [typed(aggregate_type="x" * 256)],
        InvalidAppend,
        "aggregate_type",
    ),
    Case(
        "naive occurred_at",
        lambda: [typed(occurred_at=datetime(2024, 1, 1))],
        InvalidAppend,
        "occurred_at",
    ),
    Case(
        "occurred_at before year 1 in UTC",
        lambda: [typed(occurred_at=datetime(1, 1, 1, 5, tzinfo=timezone(timedelta(hours=14))))],
        InvalidAppend,
        "occurred_at",
    ),
    Case(
        "occurred_at after 9999 in UTC",
        lambda: [
            typed(occurred_at=datetime(9999, 12, 31, 20, tzinfo=timezone(timedelta(hours=-14))))
        ],
        InvalidAppend,
        "occurred_at",
    ),
    Case(
        "version too large",
        lambda: [typed(aggregate_version=2**31)],
        InvalidAppend,
        "aggregate_version",
    ),
    Case(
        "expected_version too large",
        lambda: [typed()],
        InvalidAppend,
        "expected_version",
        {"expected_version": 2**31},
    ),
    Case(
        "expected_version invalid",
        lambda: [typed()],
        InvalidAppend,
        "expected_version",
        {"expected_version": -7},
    ),
    Case("id reused in one append", lambda: _twins(), InvalidAppend, "events[1].event_id"),
    # What model_copy(update=...) lets through.
    Case(
        "event_id not a UUID",
        lambda: [bypass(typed(), event_id='x","t":"Evil')],
        InvalidAppend,
        "event_id",
    ),
    Case(
        "correlation_id not a UUID",
        lambda: [bypass(typed(), correlation_id="x")],
        InvalidAppend,
        "correlation_id",
    ),
    Case("payload wrong type", lambda: [bypass(typed(), text=5)], InvalidAppend, "payload"),
    Case("scalar payload a str", lambda: [bypass(scalars(), n="5")], InvalidAppend, "payload"),
    Case("scalar payload an int", lambda: [bypass(scalars(), text=5)], InvalidAppend, "payload"),
    Case("scalar payload NaN", lambda: [scalars(value=math.nan)], InvalidAppend, "payload.value"),
    # None is serialized as null whatever the field's type, without a warning.
    Case("payload None for an int", lambda: [bypass(typed(), n=None)], InvalidAppend, "payload"),
    Case(
        "scalar None for a str", lambda: [bypass(scalars(), text=None)], InvalidAppend, "payload"
    ),
    Case(
        "nested None for a float",
        lambda: [bypass(ContractFloats(aggregate_id=A), values=[1.0, None])],
        InvalidAppend,
        "payload",
    ),
    Case(
        "schema_version not current",
        lambda: [bypass(typed(), schema_version=2)],
        InvalidAppend,
        "schema_version",
    ),
    Case(
        "schema_version a bool",
        lambda: [bypass(typed(), schema_version=True)],
        InvalidAppend,
        "schema_version",
    ),
    Case(
        "event_type of another class",
        lambda: [bypass(typed(), event_type="ContractLoose")],
        InvalidAppend,
        "event_type",
    ),
    Case(
        "event_type injected",
        lambda: [bypass(typed(), event_type='X","s":2')],
        UnknownEventType,
        'X","s":2',
    ),
    Case(
        "event_type too long",
        lambda: [bypass(typed(), event_type="E" * 256)],
        InvalidAppend,
        "event_type",
    ),
    # Arguments of the wrong type.
    Case("aggregate_id a str", lambda: [typed()], TypeError, "aggregate_id", aggregate_id=str(A)),
    Case(
        "expected_version a str",
        lambda: [typed()],
        TypeError,
        "expected_version",
        {"expected_version": "0"},
    ),
    Case(
        "expected_version a bool",
        lambda: [typed()],
        TypeError,
        "expected_version",
        {"expected_version": True},
    ),
]


def _twins() -> list[DomainEvent]:
    first = typed()
    return [first, typed(event_id=first.event_id)]


ACCEPTED = [
    ("unicode", lambda: typed(text="ünïcode ✓ 😀 <b> \\u0000 NaN Infinity")),
    ("big ints", lambda: typed(n=2**70, metadata={"n": -(2**100)})),
    ("floats", lambda: typed(value=1e23, metadata={"a": 1e16, "b": 1e-7, "c": -0.0})),
    ("naive datetime field", lambda: typed(when=datetime(2024, 1, 2, 3, 4, 5, 6))),
    (
        "typed values",
        lambda: typed(
            amount=Decimal("12.30"),
            ref=uuid4(),
            pair=(1, 2),
            labels={1: "a"},
            color=Color.BLUE,
            raw=b"bytes",
            when=datetime(2024, 1, 1, tzinfo=timezone(timedelta(hours=5))),
        ),
    ),
    ("scalars", lambda: scalars(text="t", n=-(2**70), flag=True, value=2.5)),
    ("scalars with None", lambda: scalars(value=None)),
    ("nested floats", lambda: ContractFloats(aggregate_id=A, values=[1.5, -2.0, 1e300])),
    ("Any JSON", lambda: loose(data={"a": [1, 2.5, None, True, "x"]}, extra={"k": {"n": 1}})),
    ("Any deep but allowed", lambda: loose(data=nested(90))),
    ("long tenant", lambda: typed(tenant_id="t" * 255)),
    (
        "aware occurred_at",
        lambda: typed(
            occurred_at=datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=timezone(timedelta(hours=-3)))
        ),
    ),
    (
        "occurred_at at year 1 in UTC",
        lambda: typed(occurred_at=datetime(1, 1, 1, 0, 0, 0, 1, tzinfo=UTC)),
    ),
    (
        "occurred_at at the end of 9999 in UTC",
        lambda: typed(
            occurred_at=datetime(
                10000 - 1, 12, 31, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=1))
            ).astimezone(UTC)
        ),
    ),
    ("metadata JSON", lambda: typed(metadata={"user": 7, "tags": ["a"], "deep": nested(50)})),
]


def count(store: BaseEventStore) -> int:
    if isinstance(store, EventStore):
        from django_eventsource.models import Event

        return Event.objects.count()
    return store.head_position()


@pytest.mark.parametrize("case", REFUSED, ids=[c.name for c in REFUSED])
def test_refused(any_store: BaseEventStore, case: Case) -> None:
    with pytest.raises(Exception) as info:  # the exact class is asserted below
        any_store.append(case.aggregate_id, case.events(), **case.kwargs)
    assert type(info.value) is case.error, info.value
    assert case.field in str(info.value)
    if isinstance(info.value, InvalidAppend):
        assert case.field.split("[")[0].split(" ")[0] in info.value.field
        assert "Nothing was written" in str(info.value)
    assert count(any_store) == 0


def fields(event: DomainEvent) -> dict[str, Any]:
    return {name: getattr(event, name) for name in type(event).model_fields}


@pytest.mark.parametrize(("name", "make"), ACCEPTED, ids=[n for n, _ in ACCEPTED])
def test_accepted_reads_back_equal(
    any_store: BaseEventStore, name: str, make: Callable[[], DomainEvent]
) -> None:
    event = make()
    any_store.append(A, [event], expected_version=0)
    reader = any_store if isinstance(any_store, InMemoryEventStore) else EventStore()
    # A fresh store decodes from the database. read_stream and event_at, not read_all: until
    # the writer-scoped horizon, another database's open transaction can hide new events
    # from read_all for a while (the global order is tested elsewhere).
    [stored] = reader.read_stream(A, tenant_id=event.tenant_id).events
    expected = fields(event) | {"aggregate_version": 1}
    assert fields(stored.event) == expected
    assert stored.metadata == event.metadata
    again = reader.event_at(stored.position)
    assert again is not None
    assert fields(again.event) == expected
    assert again.payload == stored.payload


def test_envelope_fields_are_all_covered() -> None:
    # A new envelope field must get a rule in validation._check_envelope (and a case above).
    assert set(ENVELOPE_FIELDS) == {
        "event_id",
        "event_type",
        "schema_version",
        "aggregate_id",
        "aggregate_type",
        "aggregate_version",
        "tenant_id",
        "occurred_at",
        "correlation_id",
        "causation_id",
        "metadata",
    }


# Duplicate event ids: an exact repeat is idempotent, anything else is refused --------------


def test_repeating_an_append_returns_the_stored_events(any_store: BaseEventStore) -> None:
    events = [typed(text="a"), typed(text="b")]
    first = any_store.append(A, events, expected_version=0)
    again = any_store.append(A, events, expected_version=0)
    assert [(s.position, s.aggregate_version) for s in again] == [
        (s.position, s.aggregate_version) for s in first
    ]
    assert [s.event_id for s in again] == [e.event_id for e in events]
    assert any_store.append(A, events) == again  # ANY: the same events, stored once
    assert any_store.stream_version(A) == 2
    assert count(any_store) == 2


@pytest.mark.parametrize(
    ("name", "second", "kwargs", "reason"),
    [
        (
            "other content",
            lambda e: [bypass(e[0], text="changed")],
            {"expected_version": 0},
            "other content",
        ),
        ("other stream", lambda e: [bypass(e[0], aggregate_id=uuid4())], {}, "another stream"),
        (
            "other expected version",
            lambda e: [resent(x) for x in e],
            {"expected_version": 1},
            "expects version 1",
        ),
        (
            "part of it",
            lambda e: [resent(e[0]), typed()],
            {"expected_version": 0},
            "not stored with it",
        ),
    ],
)
def test_reusing_an_id_otherwise_is_refused(
    any_store: BaseEventStore,
    name: str,
    second: Callable[[list[DomainEvent]], list[DomainEvent]],
    kwargs: dict[str, Any],
    reason: str,
) -> None:
    events = [typed(text="a")]
    [stored] = any_store.append(A, events, expected_version=0)
    batch = second(events)
    with pytest.raises(DuplicateEventId) as info:
        any_store.append(batch[0].aggregate_id, batch, **kwargs)
    assert info.value.event_id == events[0].event_id
    assert info.value.position == stored.position
    assert info.value.aggregate_version == 1
    assert reason in str(info.value)
    assert str(events[0].event_id) in str(info.value)
    assert count(any_store) == 1


# Empty appends check the expected version too --------------------------------------------


def test_an_empty_append_checks_the_expected_version(any_store: BaseEventStore) -> None:
    missing = uuid4()
    with pytest.raises(ConcurrencyError) as info:
        any_store.append(missing, [], expected_version=5)
    assert info.value.actual_version == 0
    with pytest.raises(ConcurrencyError):
        any_store.append(missing, [], expected_version=ExpectedVersion.STREAM_EXISTS)
    assert any_store.append(missing, [], expected_version=0) == []
    assert any_store.append(missing, []) == []
    any_store.append(A, [typed()])
    assert any_store.append(A, [], expected_version=1) == []
    with pytest.raises(ConcurrencyError):
        any_store.append(A, [], expected_version=0)


# Positions are ints ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("position", "error"),
    [("3", TypeError), (3.0, TypeError), (True, TypeError), (-1, ValueError), (2**63, ValueError)],
)
def test_positions_are_ints(any_store: BaseEventStore, position: Any, error: type) -> None:
    with pytest.raises(error, match="from_position") as info:
        any_store.read_all(position)
    assert type(info.value) is error
    with pytest.raises(error, match="position"):
        any_store.event_at(position)


READ_ARGUMENTS = [
    ("read_all tenant NUL", lambda s: s.read_all(0, tenant_id="a\x00"), ValueError, "tenant_id"),
    (
        "read_all tenant surrogate",
        lambda s: s.read_all(0, tenant_id="\ud800"),
        ValueError,
        "tenant_id",
    ),
    ("read_all tenant too long", lambda s: s.read_all(tenant_id="t" * 256), ValueError, "tenant"),
    ("read_all tenant an int", lambda s: s.read_all(tenant_id=5), TypeError, "tenant_id"),
    ("read_all types a str", lambda s: s.read_all(event_types="X"), TypeError, "event_types"),
    ("read_all type NUL", lambda s: s.read_all(event_types=["\x00"]), ValueError, "event_types"),
    ("read_all limit a str", lambda s: s.read_all(limit="5"), TypeError, "limit"),
    ("read_stream id a str", lambda s: s.read_stream(str(A)), TypeError, "aggregate_id"),
    ("read_stream id an int", lambda s: s.read_stream(5), TypeError, "aggregate_id"),
    (
        "read_stream tenant NUL",
        lambda s: s.read_stream(A, tenant_id="\x00"),
        ValueError,
        "tenant_id",
    ),
    ("stream_version id a str", lambda s: s.stream_version("abc"), TypeError, "aggregate_id"),
    (
        "stream_version tenant NUL",
        lambda s: s.stream_version(A, tenant_id="\x00"),
        ValueError,
        "tenant_id",
    ),
    (
        "pending_events tenant NUL",
        lambda s: s.pending_events(0, tenant_id="\x00"),
        ValueError,
        "tenant_id",
    ),
    (
        "pending_events_many tenant NUL",
        lambda s: s.pending_events_many([(0, "\x00")]),
        ValueError,
        "tenant_id",
    ),
    ("read_all type an int", lambda s: s.read_all(event_types=[5]), TypeError, "event_types"),
    ("pending_events a str", lambda s: s.pending_events("3"), TypeError, "from_position"),
    ("pending_events negative", lambda s: s.pending_events(-5), ValueError, "from_position"),
    ("pending_events 2**64", lambda s: s.pending_events(2**64), ValueError, "from_position"),
    (
        "pending_events_many a str",
        lambda s: s.pending_events_many([("3", None)]),
        TypeError,
        "position",
    ),
    ("feed_keys a str", lambda s: s.feed_keys(["3"]), TypeError, "position"),
    ("feed_keys negative", lambda s: s.feed_keys([-1]), ValueError, "position"),
]


@pytest.mark.parametrize(
    ("name", "call", "error", "word"), READ_ARGUMENTS, ids=[c[0] for c in READ_ARGUMENTS]
)
def test_read_arguments_are_checked_the_same_everywhere(
    any_store: BaseEventStore, name: str, call: Callable[[Any], Any], error: type, word: str
) -> None:
    """What no event can carry is refused before any SQL: PostgreSQL raised a raw DataError
    (NUL, a non-UUID stream id) where SQLite and the in-memory store answered "nothing" (or
    raised AttributeError), and a str of event types was read as its characters."""
    any_store.append(A, [typed()])
    with pytest.raises(error, match=word) as info:
        call(any_store)
    assert type(info.value) is error


@pytest.mark.parametrize("checkpoints", ["memory", "database"])
@pytest.mark.parametrize(
    ("name", "tenant"), [("p\x00", None), ("p", "t\x00"), ("p", "\udc00"), ("p", 7)]
)
def test_checkpoint_keys_are_checked_the_same_everywhere(
    checkpoints: str, name: str, tenant: Any
) -> None:
    from django_eventsource import DatabaseCheckpointStore, InMemoryCheckpointStore

    store = InMemoryCheckpointStore() if checkpoints == "memory" else DatabaseCheckpointStore()
    for call in (
        lambda: store.save(name, 1, tenant_id=tenant),
        lambda: store.load(name, tenant_id=tenant),
    ):
        with pytest.raises((TypeError, ValueError)) as info:
            call()
        assert type(info.value) in (TypeError, ValueError)
        assert "projection_id" in str(info.value) or "tenant_id" in str(info.value)


def test_a_version_race_and_other_integrity_errors_are_told_apart(vendor: str) -> None:
    """Only the stream-version constraint is a version conflict; the backends say which."""
    from django.db import IntegrityError, connection

    from django_eventsource.backends import backend_for

    backend = backend_for(connection)
    store = EventStore()
    store.append(A, [typed()], expected_version=0)
    from django_eventsource.models import Event

    stored = Event.objects.get()
    with pytest.raises(IntegrityError) as version_race, connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO django_eventsource_event (event_id, event_type, schema_version, "
            "tenant_id, aggregate_id, aggregate_type, aggregate_version, payload, metadata, "
            "occurred_at, recorded_at, stamp) SELECT %s, event_type, schema_version, tenant_id, "
            "aggregate_id, aggregate_type, aggregate_version, payload, metadata, occurred_at, "
            "recorded_at, stamp FROM django_eventsource_event",
            [uuid4().hex if vendor == "sqlite" else uuid4()],
        )
    assert backend.is_version_conflict(version_race.value)
    with pytest.raises(IntegrityError) as same_id, connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO django_eventsource_event (event_id, event_type, schema_version, "
            "tenant_id, aggregate_id, aggregate_type, aggregate_version, payload, metadata, "
            "occurred_at, recorded_at, stamp) SELECT event_id, event_type, schema_version, "
            "tenant_id, aggregate_id, aggregate_type, aggregate_version + 1, payload, metadata, "
            "occurred_at, recorded_at, stamp FROM django_eventsource_event",
        )
    assert not backend.is_version_conflict(same_id.value)
    assert stored.aggregate_version == 1


# ANY gives up with a clear error only when it truly cannot proceed -----------------------


def test_any_times_out_when_it_cannot_see_the_new_version(
    vendor: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a REPEATABLE READ transaction the stream's version is frozen at the snapshot: an
    ANY append that lost the race can never win, and says so instead of spinning forever."""
    import threading

    from django.db import connection, connections, transaction

    import django_eventsource.store as store_module
    from django_eventsource import AppendTimeout

    monkeypatch.setattr(store_module, "ANY_TIMEOUT", 0.5)
    store = EventStore()
    store.append(A, [typed()])

    def append_elsewhere() -> None:
        try:
            store.append(A, [typed()])
        finally:
            connections.close_all()

    with transaction.atomic():
        if vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        assert store.stream_version(A) == 1  # the snapshot is taken here
        if vendor == "postgresql":
            other = threading.Thread(target=append_elsewhere)
            other.start()
            other.join()
            with pytest.raises(AppendTimeout) as info:
                store.append(A, [typed()])
            assert info.value.aggregate_id == A
            assert info.value.attempts > 1
            assert "REPEATABLE READ" in str(info.value)
            assert isinstance(info.value, ConcurrencyError)
        else:
            # SQLite: this transaction holds the database's write lock once it writes, so no
            # other writer can take a version from under it: the append goes through.
            [stored] = store.append(A, [typed()])
            assert stored.aggregate_version == 2
    assert store.stream_version(A) == 2


def test_an_integrity_error_that_is_no_version_race_is_raised_as_it_is() -> None:
    """A unique constraint of a read model, hit by an inline hook, is not a ConcurrencyError:
    "reload and retry" would retry forever."""
    from django.db import IntegrityError

    def hook(store: BaseEventStore, stored: list[Any]) -> None:
        raise IntegrityError("UNIQUE constraint failed: board_card.slug")

    store = EventStore()
    store.after_append.append(hook)
    with pytest.raises(IntegrityError, match=r"board_card\.slug"):
        store.append(A, [typed()], expected_version=0)
    assert count(store) == 0

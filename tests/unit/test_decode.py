"""Decoding stored events (issue 19): the fast path (the payload validated alone, straight
from the stored JSON text; the envelope taken as the store wrote it) gives exactly what
pydantic's ``model_validate`` of the whole event gives, and classes it cannot be sure of take
``model_validate`` itself."""

from __future__ import annotations

import gc
import json
import weakref
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

import pytest
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from django_eventsource import DomainEvent, EventRegistry, InvalidEventPayload
from django_eventsource.events import _payload_validator
from django_eventsource.stored import StoredEvent


class Line(BaseModel):
    sku: str
    qty: int = 1


class Plain(DomainEvent):
    """Typed fields, defaults, a nested model, a validator on one field."""

    event_type: str = "Plain"
    title: str
    amount: Decimal = Decimal(0)
    when: datetime | None = None
    lines: list[Line] = Field(default_factory=list)
    tags: dict[str, int] = Field(default_factory=dict)
    anything: Any = None

    @field_validator("title")
    @classmethod
    def _strip(cls, value: str) -> str:
        return value.strip()


class Checked(DomainEvent):
    """A model validator: only ``model_validate`` runs it as written."""

    event_type: str = "Checked"
    low: int
    high: int

    @model_validator(mode="after")
    def _ordered(self) -> Checked:
        if self.low > self.high:
            raise ValueError("low > high")
        return self


class PostInit(DomainEvent):
    event_type: str = "PostInit"
    n: int

    def model_post_init(self, context: Any, /) -> None:
        object.__setattr__(self, "__pydantic_private__", {**self.__pydantic_private__, "_seen": 1})


class Private(DomainEvent):
    event_type: str = "Private"
    n: int
    _cache: int = PrivateAttr(default=5)


class Loose(DomainEvent):
    model_config = ConfigDict(extra="allow")
    event_type: str = "Loose"
    n: int = 0


def envelope(**overrides: Any) -> dict[str, Any]:
    return {
        "event_id": uuid4(),
        "aggregate_id": uuid4(),
        "aggregate_type": "Thing",
        "aggregate_version": 3,
        "tenant_id": "acme",
        "occurred_at": datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
        "correlation_id": uuid4(),
        "causation_id": None,
        "metadata": {"user": "ann", "nested": {"a": [1]}},
        **overrides,
    }


def registry() -> EventRegistry:
    registry = EventRegistry()
    for cls in (Plain, Checked, PostInit, Private, Loose):
        registry.register(cls)
    return registry


def whole(cls: type[DomainEvent], payload: dict[str, Any], parts: dict[str, Any]) -> DomainEvent:
    """What the full path builds: model_validate of payload and envelope together."""
    return cls.model_validate(
        {**payload, **parts, "event_type": cls.default_event_type(), "schema_version": 1}
    )


def test_only_classes_that_validate_the_same_way_take_the_fast_path() -> None:
    assert _payload_validator(Plain) is not None
    assert _payload_validator(Checked) is None
    assert _payload_validator(PostInit) is None
    assert _payload_validator(Private) is None
    assert _payload_validator(Loose) is None


PAYLOADS = [
    {"title": "  padded  "},
    {"title": "t", "amount": "12.30", "when": "2024-05-06T07:08:09", "anything": [1, {"x": None}]},
    {"title": "t", "lines": [{"sku": "a"}, {"sku": "b", "qty": 3}], "tags": {"k": 2}},
]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_the_fast_path_builds_what_model_validate_builds(payload: dict[str, Any]) -> None:
    parts = envelope()
    fast = registry()._decode("Plain", 1, json.dumps(payload), dict(parts), 9)
    expected = whole(Plain, payload, parts)
    assert type(fast) is Plain
    assert dict(fast) == dict(expected)
    assert list(dict(fast)) == list(Plain.model_fields)  # field order too (repr, iteration)
    assert fast.model_fields_set == expected.model_fields_set
    assert fast.model_dump_json() == expected.model_dump_json()
    assert fast.position == 9
    assert fast.metadata == parts["metadata"]
    assert fast.metadata is not parts["metadata"]  # the event's own dict, as pydantic's copy
    with pytest.raises(Exception, match="frozen"):
        fast.title = "changed"  # type: ignore[misc]


@pytest.mark.parametrize("cls", [Checked, PostInit, Private, Loose])
def test_other_classes_are_validated_whole(cls: type[DomainEvent]) -> None:
    payload = {"low": 1, "high": 2} if cls is Checked else {"n": 4}
    parts = envelope()
    event = registry()._decode(cls.default_event_type(), 1, json.dumps(payload), parts, 3)
    assert dict(event) == dict(whole(cls, payload, parts))
    assert event.position == 3
    if cls is Private:
        assert event._cache == 5  # type: ignore[attr-defined]
    if cls is PostInit:
        assert event.__pydantic_private__["_seen"] == 1  # type: ignore[index]


def test_a_model_validator_still_runs() -> None:
    with pytest.raises(InvalidEventPayload, match="low > high"):
        registry()._decode("Checked", 1, '{"low": 5, "high": 1}', envelope(), 1)


@pytest.mark.parametrize(
    ("text", "field"),
    [('{"title": 5}', "title"), ('{"nope": 1}', "title"), ('{"title": "x", "extra": 1}', "extra")],
)
def test_an_invalid_payload_names_the_field(text: str, field: str) -> None:
    with pytest.raises(InvalidEventPayload) as info:
        registry()._decode("Plain", 1, text, envelope(), 12)
    assert field in info.value.fields
    assert info.value.position == 12


def test_a_dict_payload_and_an_upcast_take_the_same_validator() -> None:
    class V2(DomainEvent):
        event_type: str = "V2"
        schema_version: int = 2
        title: str

    reg = EventRegistry()
    reg.register(V2)
    reg.register_upcaster("V2", 1, lambda p: {"title": p["name"]})
    stored = '{"name": "old"}'
    event = reg._decode("V2", 1, stored, envelope(), 4)
    assert (event.title, event.schema_version, event.position) == ("old", 2, 4)
    assert event.model_fields_set >= {"title", "schema_version", "event_id"}
    assert reg.load("V2", 2, {"title": "new"}, envelope()).title == "new"


def test_envelope_values_are_taken_as_stored() -> None:
    parts = envelope(tenant_id=None, correlation_id=None)
    event = registry()._decode("Plain", 1, '{"title": "a"}', parts, 1)
    assert isinstance(event.event_id, UUID)
    assert (event.tenant_id, event.correlation_id) == (None, None)
    assert event.aggregate_version == 3
    assert event.occurred_at == parts["occurred_at"]


def stored(reg: EventRegistry, event_type: str, text: str, parts: dict[str, Any]) -> StoredEvent:
    return StoredEvent(
        position=21,
        event_type=event_type,
        schema_version=1,
        payload=text,
        metadata=json.dumps(parts["metadata"]),
        recorded_at=parts["occurred_at"],
        registry=reg,
        **{k: v for k, v in parts.items() if k != "metadata"},
    )


@pytest.mark.parametrize("payload", PAYLOADS)
def test_a_stored_event_decodes_as_the_registry_does(payload: dict[str, Any]) -> None:
    """StoredEvent.event inlines the fast path (the registry's cache is warm after the first
    decode of a type): the same event, field for field, in the same order."""
    reg = registry()
    parts = envelope()
    first = stored(reg, "Plain", json.dumps(payload), parts).event  # fills the cache
    assert "Plain" in reg._fast
    inlined = stored(reg, "Plain", json.dumps(payload), parts)
    event = inlined.event
    expected = whole(Plain, payload, parts)
    assert list(dict(event).items()) == list(dict(expected).items())
    assert list(dict(first).items()) == list(dict(expected).items())
    assert event.model_fields_set == expected.model_fields_set
    assert event.position == 21
    assert event.metadata == inlined.metadata
    assert event.metadata is not inlined.metadata


def test_a_stored_event_with_a_bad_payload_names_the_field() -> None:
    reg = registry()
    assert (
        stored(reg, "Plain", '{"title": "ok"}', envelope()).event.title == "ok"
    )  # warms the cache
    with pytest.raises(InvalidEventPayload) as info:
        stored(reg, "Plain", '{"title": ["not", "a", "str"]}', envelope()).event  # noqa: B018
    assert info.value.fields == ["title"]
    assert info.value.position == 21


FULL = {
    "title": "t",
    "amount": "1.50",
    "when": None,
    "lines": [{"sku": "a", "qty": 2}],
    "tags": {"k": 1},
    "anything": {"x": [1]},
}


class Thawed(Plain):
    """Not frozen: pydantic adds to an instance's set of fields on assignment."""

    model_config = ConfigDict(frozen=False)
    event_type: str = "Thawed"


def test_events_whose_payload_has_every_field_share_one_set_of_field_names() -> None:
    """The decoded events of a frozen class share the class's set of field names when the
    payload carries every field: the same set model_validate gives, and deriving an event
    (model_copy with an update) does not change it for the others."""
    reg = registry()
    parts = envelope()
    stored(reg, "Plain", json.dumps(FULL), parts).event  # noqa: B018  (fills the cache)
    kept = [stored(reg, "Plain", json.dumps(FULL), parts).event for _ in range(2)]
    one, two = kept
    expected = whole(Plain, FULL, parts)
    assert one.model_fields_set == two.model_fields_set == expected.model_fields_set
    assert one.model_fields_set is two.model_fields_set
    derived = one.model_copy(update={"title": "u"})
    assert derived.title == "u"
    assert derived.model_fields_set is not one.model_fields_set
    assert one.model_fields_set == expected.model_fields_set
    assert one.model_dump(exclude_unset=True) == expected.model_dump(exclude_unset=True)
    # A payload without a defaulted field: the event's own set, as model_validate builds it.
    partial = stored(reg, "Plain", '{"title": "p"}', parts).event
    assert partial.model_fields_set == whole(Plain, {"title": "p"}, parts).model_fields_set
    assert partial.model_fields_set is not one.model_fields_set


def test_a_class_that_is_not_frozen_keeps_a_set_per_event() -> None:
    reg = registry()
    reg.register(Thawed)
    parts = envelope()
    stored(reg, "Thawed", json.dumps(FULL), parts).event  # noqa: B018  (fills the cache)
    one = stored(reg, "Thawed", json.dumps(FULL), parts).event
    two = stored(reg, "Thawed", json.dumps(FULL), parts).event
    assert one.model_fields_set == two.model_fields_set == set(Thawed.model_fields)
    assert one.model_fields_set is not two.model_fields_set
    one.title = "changed"
    assert two.title == "t"


def test_a_read_event_is_the_same_object_while_held_and_decoded_again_once_dropped() -> None:
    """A stored event that was read does not keep its decoded event alive (a page would hold
    a second copy of every event): while the caller holds it, ``.event`` returns it; once it
    is gone, ``.event`` decodes an equal event again."""
    reg = registry()
    parts = envelope()
    for text in (json.dumps(FULL), '{"title": "p"}'):
        for event_type in ("Plain", "Checked"):  # the inlined fast path and the full path
            if event_type == "Checked":
                text = '{"low": 1, "high": 2}'
            one = stored(reg, event_type, text, parts)
            held = one.event
            assert one.event is held
            expected = dict(held)
            reference = weakref.ref(held)
            del held
            gc.collect()
            assert reference() is None  # nothing but the caller kept it
            again = one.event
            assert dict(again) == expected
            assert again.position == 21
            assert one.event is again

"""Domain events: defaults, immutability, payloads, the type registry and upcasting.

Event classes defined here are registered only in private :class:`EventRegistry` instances
(or in a private registry patched in for the module-level decorators), never globally.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

import pytest
from django.core.exceptions import ImproperlyConfigured
from pydantic import PrivateAttr, ValidationError

from django_eventsource import events as events_module
from django_eventsource.events import (
    ENVELOPE_FIELDS,
    DomainEvent,
    EventRegistry,
    event_registry,
    register_event,
    upcaster,
)
from django_eventsource.exceptions import (
    EventSourceError,
    InvalidEventPayload,
    UnknownEventType,
)
from tests.testapp.events import TaskCreated


class Unnamed(DomainEvent):
    """No ``event_type`` default: the class name is used."""

    amount: int


class Renamed(DomainEvent):
    event_type: str = "SomethingElse"
    note: str = ""


def envelope(**overrides: Any) -> dict[str, Any]:
    """The envelope columns a store hands to ``EventRegistry.load``."""
    return {
        "event_id": uuid4(),
        "aggregate_id": uuid4(),
        "aggregate_type": "Task",
        "aggregate_version": 1,
        "tenant_id": None,
        "occurred_at": datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
        "correlation_id": None,
        "causation_id": None,
        "metadata": {},
        **overrides,
    }


# Defaults --------------------------------------------------------------------------------


def test_event_type_defaults_to_the_class_name() -> None:
    event = Unnamed(aggregate_id=uuid4(), amount=3)
    assert event.event_type == "Unnamed"
    assert Unnamed.default_event_type() == "Unnamed"


def test_event_type_default_declared_on_the_class_wins_over_the_class_name() -> None:
    assert Renamed.default_event_type() == "SomethingElse"
    assert Renamed(aggregate_id=uuid4()).event_type == "SomethingElse"


def test_tutorial_style_subclass() -> None:
    task = uuid4()
    event = TaskCreated(aggregate_id=task, title="Task 1", aggregate_version=1)
    assert event.event_type == "TaskCreated"
    assert event.aggregate_type == "Task"
    assert event.title == "Task 1"
    assert event.aggregate_id == task
    assert event.aggregate_version == 1
    assert event.schema_version == 1
    assert event.tenant_id is None
    assert event.metadata == {}
    assert isinstance(event.event_id, UUID)
    assert event.occurred_at.tzinfo is not None


def test_envelope_defaults_are_fresh_per_instance() -> None:
    first = Unnamed(aggregate_id=uuid4(), amount=1)
    second = Unnamed(aggregate_id=uuid4(), amount=1)
    assert first.event_id != second.event_id
    assert first.metadata is not second.metadata


def test_an_empty_event_type_falls_back_to_the_default() -> None:
    assert Unnamed(aggregate_id=uuid4(), amount=1, event_type="").event_type == "Unnamed"


def test_aggregate_id_is_required() -> None:
    with pytest.raises(ValidationError) as info:
        Unnamed(amount=1)  # type: ignore[call-arg]
    assert [e["loc"] for e in info.value.errors()] == [("aggregate_id",)]


def test_an_unstored_event_has_no_position() -> None:
    event = Unnamed(aggregate_id=uuid4(), amount=1)
    assert not hasattr(event, "position")
    with pytest.raises(AttributeError, match="has not been stored"):
        _ = event.position


# Immutability and strictness --------------------------------------------------------------


def test_events_are_frozen() -> None:
    event = TaskCreated(aggregate_id=uuid4(), title="A")
    with pytest.raises(ValidationError, match="frozen"):
        event.title = "B"  # type: ignore[misc]
    with pytest.raises(ValidationError, match="frozen"):
        event.aggregate_version = 7  # type: ignore[misc]
    assert event.title == "A"
    assert event.aggregate_version == 0


def test_model_copy_derives_a_changed_event_and_leaves_the_original() -> None:
    event = TaskCreated(aggregate_id=uuid4(), title="A")
    changed = event.model_copy(update={"title": "B"})
    assert (event.title, changed.title) == ("A", "B")
    assert changed.event_id == event.event_id


def test_extra_fields_are_forbidden() -> None:
    with pytest.raises(ValidationError) as info:
        TaskCreated(aggregate_id=uuid4(), title="A", priority="high")  # type: ignore[call-arg]
    [error] = info.value.errors()
    assert error["type"] == "extra_forbidden"
    assert error["loc"] == ("priority",)


# Payload ----------------------------------------------------------------------------------


def test_payload_excludes_the_envelope() -> None:
    event = TaskCreated(
        aggregate_id=uuid4(),
        title="Write tests",
        tenant_id="acme",
        correlation_id=uuid4(),
        metadata={"user": "ann"},
    )
    assert event.payload() == {"title": "Write tests"}


def test_payload_is_json_ready() -> None:
    class Scheduled(DomainEvent):
        due: datetime
        owner: UUID

    owner = uuid4()
    event = Scheduled(
        aggregate_id=uuid4(), due=datetime(2024, 5, 6, 7, 8, tzinfo=UTC), owner=owner
    )
    assert event.payload() == {"due": "2024-05-06T07:08:00Z", "owner": str(owner)}


def test_envelope_fields_are_the_base_class_fields() -> None:
    assert set(ENVELOPE_FIELDS) == set(DomainEvent.model_fields)
    assert "title" not in ENVELOPE_FIELDS
    assert {"event_id", "event_type", "aggregate_id", "metadata"} <= ENVELOPE_FIELDS


# Registry ---------------------------------------------------------------------------------


def test_register_and_get() -> None:
    registry = EventRegistry()
    assert registry.register(Unnamed) is Unnamed
    assert registry.get("Unnamed") is Unnamed
    assert "Unnamed" in registry
    assert "SomethingElse" not in registry
    registry.register(Renamed)
    assert list(registry) == ["SomethingElse", "Unnamed"]


def test_reregistering_the_same_class_is_a_no_op() -> None:
    registry = EventRegistry()
    registry.register(Unnamed)
    assert registry.register(Unnamed) is Unnamed
    assert registry.get("Unnamed") is Unnamed


def test_another_class_under_a_taken_name_is_refused() -> None:
    registry = EventRegistry()
    registry.register(Renamed)

    class Impostor(DomainEvent):
        event_type: str = "SomethingElse"

    with pytest.raises(ImproperlyConfigured) as info:
        registry.register(Impostor)
    message = str(info.value)
    assert "'SomethingElse'" in message
    assert "Renamed" in message
    assert "Impostor" in message
    assert registry.get("SomethingElse") is Renamed


def test_registering_a_non_event_is_a_type_error() -> None:
    registry = EventRegistry()

    class NotAnEvent:
        pass

    with pytest.raises(TypeError, match="DomainEvent subclass"):
        registry.register(NotAnEvent)  # type: ignore[type-var]
    with pytest.raises(TypeError, match="DomainEvent subclass"):
        registry.register(Unnamed(aggregate_id=uuid4(), amount=1))  # type: ignore[arg-type]
    assert list(registry) == []


def test_register_event_decorator_uses_the_process_wide_registry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    private = EventRegistry()
    monkeypatch.setattr(events_module, "event_registry", private)

    @register_event
    class Decorated(DomainEvent):
        value: int = 0

    assert private.get("Decorated") is Decorated
    assert "Decorated" not in event_registry


def test_the_test_app_events_are_registered_globally() -> None:
    assert event_registry.get("TaskCreated") is TaskCreated
    with pytest.raises(ImproperlyConfigured):

        @register_event
        class TaskCreated2(DomainEvent):  # a different class under a taken name
            event_type: str = "TaskCreated"

    assert event_registry.get("TaskCreated") is TaskCreated


def test_unknown_type_on_get() -> None:
    with pytest.raises(UnknownEventType) as info:
        EventRegistry().get("Nope")
    assert info.value.event_type == "Nope"
    assert info.value.position is None
    assert isinstance(info.value, LookupError)
    assert isinstance(info.value, EventSourceError)


# Loading and upcasting --------------------------------------------------------------------


class TaskV3(DomainEvent):
    """Schema history: v1 {name}; v2 {title}; v3 {title, priority}."""

    event_type: str = "VersionedTask"
    schema_version: int = 3
    title: str
    priority: str


def v1_to_v2(payload: dict[str, Any]) -> dict[str, Any]:
    payload["title"] = payload.pop("name")
    return payload


def v2_to_v3(payload: dict[str, Any]) -> dict[str, Any]:
    return {**payload, "priority": "normal"}


@pytest.fixture
def versioned() -> EventRegistry:
    registry = EventRegistry()
    registry.register(TaskV3)
    registry.register_upcaster("VersionedTask", 1, v1_to_v2)
    registry.register_upcaster("VersionedTask", 2, v2_to_v3)
    return registry


def test_load_rebuilds_a_typed_event_with_its_envelope_and_position() -> None:
    registry = EventRegistry()
    registry.register(TaskCreated)
    parts = envelope(tenant_id="acme", metadata={"user": "ann"})
    event = registry.load("TaskCreated", 1, {"title": "A"}, parts, position=42)
    assert isinstance(event, TaskCreated)
    assert event.title == "A"
    assert event.position == 42
    assert event.tenant_id == "acme"
    assert event.event_id == parts["event_id"]
    assert event.aggregate_id == parts["aggregate_id"]
    assert event.occurred_at == parts["occurred_at"]
    assert event.metadata == {"user": "ann"}


def test_upcasters_run_in_order_from_v1_to_v3(versioned: EventRegistry) -> None:
    stored = {"name": "old"}
    event = versioned.load("VersionedTask", 1, stored, envelope(), position=7)
    assert isinstance(event, TaskV3)
    assert (event.title, event.priority) == ("old", "normal")
    assert event.schema_version == 3
    assert event.position == 7
    assert stored == {"name": "old"}, "upcasting must not mutate the stored payload"


def test_upcasting_starts_at_the_stored_version(versioned: EventRegistry) -> None:
    event = versioned.load("VersionedTask", 2, {"title": "mid"}, envelope())
    assert (event.title, event.priority) == ("mid", "normal")  # type: ignore[attr-defined]
    current = versioned.load("VersionedTask", 3, {"title": "t", "priority": "high"}, envelope())
    assert current.priority == "high"  # type: ignore[attr-defined]
    assert versioned.upcast("VersionedTask", 1, {"name": "n"}) == {
        "title": "n",
        "priority": "normal",
    }


def test_upcaster_decorator_registers_in_the_process_wide_registry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    private = EventRegistry()
    monkeypatch.setattr(events_module, "event_registry", private)
    register_event(TaskV3)
    upcaster("VersionedTask", from_version=1)(v1_to_v2)
    decorated = upcaster("VersionedTask", from_version=2)(v2_to_v3)
    assert decorated is v2_to_v3
    event = private.load("VersionedTask", 1, {"name": "x"}, envelope())
    assert (event.title, event.priority) == ("x", "normal")  # type: ignore[attr-defined]


def test_a_second_upcaster_for_the_same_step_is_refused(versioned: EventRegistry) -> None:
    versioned.register_upcaster("VersionedTask", 1, v1_to_v2)  # the same function: fine
    with pytest.raises(ImproperlyConfigured, match="from schema version 1"):
        versioned.register_upcaster("VersionedTask", 1, v2_to_v3)


def test_a_missing_upcaster_names_the_type_and_version() -> None:
    registry = EventRegistry()
    registry.register(TaskV3)
    registry.register_upcaster("VersionedTask", 1, v1_to_v2)  # 2 -> 3 is missing
    with pytest.raises(InvalidEventPayload) as info:
        registry.load("VersionedTask", 1, {"name": "x"}, envelope(), position=9)
    error = info.value
    assert error.event_type == "VersionedTask"
    assert error.schema_version == 1
    assert error.position == 9
    message = str(error)
    assert "'VersionedTask'" in message
    assert "from schema version 2 to 3" in message
    assert "position 9" in message


def test_a_payload_stored_by_a_newer_schema_is_refused(versioned: EventRegistry) -> None:
    with pytest.raises(InvalidEventPayload) as info:
        versioned.load("VersionedTask", 4, {"title": "x", "priority": "p"}, envelope())
    assert info.value.event_type == "VersionedTask"
    assert info.value.schema_version == 4
    assert "schema version 4" in str(info.value)
    assert "newer than the class's 3" in str(info.value)


def test_a_payload_that_no_longer_validates_names_the_field_and_type() -> None:
    registry = EventRegistry()
    registry.register(TaskCreated)
    with pytest.raises(InvalidEventPayload) as info:
        registry.load("TaskCreated", 1, {"title": ["not", "a", "str"]}, envelope(), position=3)
    error = info.value
    assert error.fields == ["title"]
    assert error.event_type == "TaskCreated"
    assert error.position == 3
    assert "'TaskCreated'" in str(error)
    assert "title:" in str(error)
    assert isinstance(error.__cause__, ValidationError)
    assert isinstance(error, ValueError)


def test_a_payload_missing_a_field_names_it() -> None:
    registry = EventRegistry()
    registry.register(TaskCreated)
    with pytest.raises(InvalidEventPayload) as info:
        registry.load("TaskCreated", 1, {}, envelope())
    assert info.value.fields == ["title"]
    assert info.value.errors[0]["type"] == "missing"


def test_a_payload_with_a_removed_field_is_invalid() -> None:
    registry = EventRegistry()
    registry.register(TaskCreated)
    with pytest.raises(InvalidEventPayload) as info:
        registry.load("TaskCreated", 1, {"title": "a", "colour": "red"}, envelope())
    assert info.value.fields == ["colour"]


def test_loading_an_unknown_type_reports_its_position() -> None:
    with pytest.raises(UnknownEventType) as info:
        EventRegistry().load("Vanished", 1, {}, envelope(), position=12)
    assert info.value.event_type == "Vanished"
    assert info.value.position == 12
    assert "'Vanished'" in str(info.value)
    assert "position 12" in str(info.value)


# Building an event: the private-attribute setup and the event type default, made cheaper
# (issue 19), behave as pydantic's own.


class Positioned(DomainEvent):
    event_type: str = "Positioned"
    n: int = 0


class PositionedChild(Positioned):
    m: int = 0


post_inits: list[str] = []


class WithPostInit(DomainEvent):
    event_type: str = "WithPostInit"

    def model_post_init(self, context: Any, /) -> None:
        post_inits.append(type(self).__name__)


class WithPostInitChild(WithPostInit):
    pass


class WithAnotherPrivate(DomainEvent):
    event_type: str = "WithAnotherPrivate"
    _cache: int = PrivateAttr(default=5)


@pytest.mark.parametrize("cls", [Positioned, PositionedChild, Unnamed, DomainEvent])
def test_a_new_event_has_its_position_slot_and_nothing_else(cls: type[DomainEvent]) -> None:
    def new() -> DomainEvent:
        return cls(aggregate_id=uuid4(), **({"amount": 1} if cls is Unnamed else {}))

    for event in (
        new(),
        cls.model_validate(new().model_dump()),
        cls.model_construct(aggregate_id=uuid4()),
        new().model_copy(update={"aggregate_version": 3}),
    ):
        assert event.__pydantic_private__ == {"_position": None}
        assert not hasattr(event, "position")
    # Each event its own slot: stamping one leaves a new one unstamped.
    first = new()
    first._position = 7
    assert first.position == 7
    assert new().__pydantic_private__ == {"_position": None}


def test_a_post_init_of_its_own_still_runs_after_the_private_setup() -> None:
    post_inits.clear()
    for cls in (WithPostInit, WithPostInitChild):
        event = cls(aggregate_id=uuid4())
        assert event.__pydantic_private__ == {"_position": None}
    assert post_inits == ["WithPostInit", "WithPostInitChild"]


def test_another_private_attribute_gets_its_default() -> None:
    event = WithAnotherPrivate(aggregate_id=uuid4())
    assert event.__pydantic_private__ == {"_position": None, "_cache": 5}


def test_the_event_type_default_without_the_input_copy() -> None:
    stream = uuid4()
    data = {"aggregate_id": stream}
    assert Positioned.model_validate(data).event_type == "Positioned"
    assert data == {"aggregate_id": stream}  # the caller's dict is not changed
    assert Positioned(aggregate_id=stream, event_type="").event_type == "Positioned"
    assert Positioned(aggregate_id=stream, event_type=None).event_type == "Positioned"  # type: ignore[arg-type]
    assert Unnamed(aggregate_id=stream, amount=1).event_type == "Unnamed"
    assert Renamed(aggregate_id=stream).event_type == Renamed.default_event_type()

"""The aggregate root: one stream's state, changed only by applying its events."""

from __future__ import annotations

import copy
import inspect
import typing
from collections.abc import Callable
from typing import Any, ClassVar, Final, Self, TypeVar, overload
from uuid import UUID

from django.core.exceptions import ImproperlyConfigured
from pydantic import BaseModel, ConfigDict, create_model

from django_eventsource.events import DomainEvent, mark_event_types, marked_methods

__all__ = ["AggregateRoot", "applies"]

A = TypeVar("A", bound="AggregateRoot")
E = TypeVar("E", bound=DomainEvent)
F = TypeVar("F", bound=Callable[..., Any])

APPLIES_ATTR: Final = "__eventsource_applies__"
#: Class-level settings: never state fields, even when annotated without ``ClassVar``.
CLASS_SETTINGS: Final = frozenset({"aggregate_type", "snapshot_every", "snapshot_version"})
#: Instance attributes of every aggregate; a state field may not reuse these names.
RESERVED: Final = frozenset(
    {"id", "tenant_id", "version", "committed_version", "uncommitted_events", "is_new"}
)


def applies(*event_types: type[DomainEvent] | str) -> Callable[[F], F]:
    """Mark an aggregate method as the applier of one or more event types (classes or names).

    An applier changes the aggregate's state from the event and does nothing else: no checks,
    no I/O, no new events. It runs on replay for every stored event, so it must accept any
    event that was ever valid.
    """
    return mark_event_types("applies", APPLIES_ATTR, event_types)


def _is_classvar(annotation: Any) -> bool:
    if isinstance(annotation, str):
        return annotation.split("[", 1)[0].strip().rsplit(".", 1)[-1] == "ClassVar"
    return annotation is ClassVar or typing.get_origin(annotation) is ClassVar


class AggregateRoot:
    """Base class of aggregates: one stream's state, rebuilt by applying its events.

    Declare the state as annotated class attributes (defaults are copied per instance), mark
    appliers with [`applies`][django_eventsource.applies], and write command methods that check the rules and call
    [`record`][django_eventsource.aggregates.AggregateRoot.record]::

        class Task(AggregateRoot):
            aggregate_type = "Task"
            snapshot_every = 100  # optional

            title: str = ""
            done: bool = False

            @classmethod
            def create(cls, title: str, *, tenant_id: str | None = None) -> Task:
                task = cls(uuid4(), tenant_id=tenant_id)
                task.record(TaskCreated, title=title)
                return task

            def complete(self) -> None:
                if self.done:
                    raise ValueError("already done")
                self.record(TaskCompleted)

            @applies(TaskCreated)
            def _created(self, event: TaskCreated) -> None:
                self.title = event.title

            @applies(TaskCompleted)
            def _completed(self, event: TaskCompleted) -> None:
                self.done = True

    Class attributes, all optional:

    * ``aggregate_type``: the stream type stamped on recorded events (default: the class
      name; subclasses inherit their parent's).
    * ``snapshot_every``: take a snapshot when a save brings the aggregate this many events
      past its last snapshot (default ``None``: never).
    * ``snapshot_version``: the version of the snapshot's shape. Bump it when the state
      changes shape; older snapshots are then ignored and rebuilt.

    The constructor takes ``(aggregate_id, *, tenant_id=None)`` only: the repository builds
    empty instances with it before replaying.
    """

    aggregate_type: ClassVar[str] = ""
    snapshot_every: ClassVar[int | None] = None
    snapshot_version: ClassVar[int] = 1

    _appliers: ClassVar[dict[str, str]] = {}
    _state_fields: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.aggregate_type:
            cls.aggregate_type = cls.__name__
        cls._appliers = marked_methods(cls, APPLIES_ATTR, "_appliers", "applier")

        fields = list(cls._state_fields)
        for name, annotation in inspect.get_annotations(cls).items():
            if (
                name.startswith("_")
                or name in CLASS_SETTINGS
                or _is_classvar(annotation)
                or name in fields
            ):
                continue
            if name in RESERVED:
                raise ImproperlyConfigured(
                    f"{cls.__qualname__}.{name} is reserved by AggregateRoot; rename the field."
                )
            fields.append(name)
        cls._state_fields = tuple(fields)

        every = cls.snapshot_every
        if every is not None and (
            not isinstance(every, int) or isinstance(every, bool) or every < 1
        ):
            raise ImproperlyConfigured(
                f"{cls.__qualname__}.snapshot_every must be a positive int or None, not {every!r}."
            )
        version = cls.snapshot_version
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ImproperlyConfigured(
                f"{cls.__qualname__}.snapshot_version must be a positive int, not {version!r}."
            )
        if every and not fields and cls.to_snapshot is AggregateRoot.to_snapshot:
            raise ImproperlyConfigured(
                f"{cls.__qualname__} takes snapshots (snapshot_every={every}) but declares no "
                "state fields: annotate its state as class attributes, or override "
                "to_snapshot() and from_snapshot()."
            )

    def __init__(self, aggregate_id: UUID, *, tenant_id: str | None = None) -> None:
        if not isinstance(aggregate_id, UUID):
            raise TypeError(f"aggregate_id must be a UUID, not {type(aggregate_id).__name__}")
        self.id = aggregate_id
        self.tenant_id = tenant_id or None
        self._version = 0
        self._committed_version = 0
        self._snapshot_at = 0
        self._uncommitted: list[DomainEvent] = []
        cls = type(self)
        for name in cls._state_fields:
            if hasattr(cls, name):
                setattr(self, name, copy.deepcopy(getattr(cls, name)))

    def __repr__(self) -> str:
        pending = f" (+{len(self._uncommitted)} unsaved)" if self._uncommitted else ""
        return f"<{type(self).__name__} {self.id} v{self._version}{pending}>"

    # Versions and pending events ------------------------------------------------------------

    @property
    def version(self) -> int:
        """The version of the last event applied, recorded ones included (0: nothing yet)."""
        return self._version

    @property
    def committed_version(self) -> int:
        """The stream version this instance was loaded at (or last saved at).

        ``save()`` appends with this as ``expected_version``.
        """
        return self._committed_version

    @property
    def uncommitted_events(self) -> tuple[DomainEvent, ...]:
        """The events recorded since the last load or save, in order."""
        return tuple(self._uncommitted)

    @property
    def is_new(self) -> bool:
        """Whether the stream does not exist yet in the store (never saved)."""
        return self._committed_version == 0

    @classmethod
    def handled_types(cls) -> frozenset[str]:
        """The event types this aggregate has appliers for."""
        return frozenset(cls._appliers)

    # Recording and applying -----------------------------------------------------------------

    @overload
    def record(self, event: E, /) -> E: ...

    @overload
    def record(self, event: type[E], /, **fields: Any) -> E: ...

    def record(self, event: E | type[E], /, **fields: Any) -> E:
        """Record a new event: fill in its envelope, apply it, and queue it for ``save()``.

        Pass an event class and its payload fields (``self.record(TaskRenamed, title=t)``),
        or an event instance. The aggregate fills ``aggregate_id``, ``aggregate_type``,
        ``tenant_id`` and ``aggregate_version``; an instance that already carries different
        values is refused (``ValueError``), so an event can never land in the wrong stream.
        """
        version = self._version + 1
        envelope: dict[str, Any] = {
            "aggregate_id": self.id,
            "aggregate_type": self.aggregate_type,
            "tenant_id": self.tenant_id,
            "aggregate_version": version,
        }
        if isinstance(event, type):
            if not issubclass(event, DomainEvent):
                raise TypeError(f"record() takes a DomainEvent class or instance, not {event!r}")
            clash = sorted(envelope.keys() & fields.keys())
            if clash:
                raise TypeError(f"record() fills {', '.join(clash)} itself; do not pass them.")
            declared = event.model_fields["aggregate_type"].default
            self._check_type(event.default_event_type(), declared)
            instance = event(**fields, **envelope)
        elif isinstance(event, DomainEvent):
            if fields:
                raise TypeError("record(instance) takes no fields; set them on the event.")
            name = event.event_type
            if event.aggregate_id != self.id:
                raise ValueError(
                    f"{name} belongs to aggregate {event.aggregate_id}, not {self.id}."
                )
            self._check_type(name, event.aggregate_type)
            if (event.tenant_id or None) not in (None, self.tenant_id):
                raise ValueError(
                    f"{name} has tenant_id {event.tenant_id!r} but {self!r} belongs to "
                    f"tenant {self.tenant_id!r}."
                )
            if event.aggregate_version not in (0, version):
                raise ValueError(
                    f"{name} carries aggregate_version {event.aggregate_version}, but the "
                    f"next version of {self!r} is {version}. Leave it 0."
                )
            instance = event.model_copy(update=envelope)
        else:
            raise TypeError(
                f"record() takes a DomainEvent class or instance, not {type(event).__name__}"
            )
        self._apply(instance)  # first: an applier that raises leaves nothing queued
        self._uncommitted.append(instance)
        return instance

    def _check_type(self, event_type: str, declared: object) -> None:
        if declared and declared != self.aggregate_type:
            raise ValueError(
                f"{event_type} is an event of aggregate type {declared!r}; "
                f"{type(self).__name__} writes {self.aggregate_type!r} streams."
            )

    def _apply(self, event: DomainEvent) -> None:
        """Apply one event (stored or just recorded) and advance the version."""
        if event.aggregate_id != self.id:
            raise ValueError(f"{event.event_type} belongs to {event.aggregate_id}, not {self!r}.")
        expected = self._version + 1
        if event.aggregate_version != expected:
            raise ValueError(
                f"{self!r} expected the event of version {expected}, got "
                f"{event.event_type} v{event.aggregate_version}: the stream has a gap."
            )
        name = self._appliers.get(event.event_type)
        if name is None:
            raise TypeError(
                f"{type(self).__qualname__} has no @applies method for {event.event_type!r}. "
                f"Add one (it may do nothing); known: {sorted(self._appliers) or 'none'}."
            )
        getattr(self, name)(event)
        self._version = event.aggregate_version

    def _mark_committed(self, *, snapshot_at: int | None = None) -> None:
        self._uncommitted.clear()
        self._committed_version = self._version
        if snapshot_at is not None:
            self._snapshot_at = snapshot_at

    # Snapshots ------------------------------------------------------------------------------

    @classmethod
    def snapshot_model(cls) -> type[BaseModel]:
        """The pydantic model of the state fields that default snapshots are validated with.

        ``extra="forbid"``: a snapshot with a field the class no longer has does not load.
        """
        cached = cls.__dict__.get("_snapshot_model_cache")
        if cached is not None:
            return typing.cast("type[BaseModel]", cached)
        try:
            hints = typing.get_type_hints(cls)
        except NameError as exc:
            raise ImproperlyConfigured(
                f"Cannot resolve the state field types of {cls.__qualname__} ({exc}): import "
                "them at the module level of the class, not inside a function."
            ) from exc
        definitions: dict[str, Any] = {name: (hints[name], ...) for name in cls._state_fields}
        model = create_model(
            f"{cls.__name__}Snapshot",
            __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=False),
            **definitions,
        )
        cls._snapshot_model_cache = model  # type: ignore[attr-defined]
        return typing.cast("type[BaseModel]", model)

    def to_snapshot(self) -> dict[str, Any]:
        """The state as a JSON-ready dict (default: every state field, through pydantic).

        pydantic round-trips what JSON cannot hold (UUIDs, datetimes, decimals, enums, sets,
        nested models) exactly as events do. Override together with [`from_snapshot`][django_eventsource.aggregates.AggregateRoot.from_snapshot]
        for state that is not declared as annotated fields.
        """
        model = type(self).snapshot_model()
        values: dict[str, Any] = {}
        for name in model.model_fields:
            try:
                values[name] = getattr(self, name)
            except AttributeError:
                raise AttributeError(
                    f"{self!r} has no value for state field {name!r}: give it a default or "
                    "set it in an applier."
                ) from None
        return model.model_validate(values).model_dump(mode="json")

    @classmethod
    def from_snapshot(
        cls, aggregate_id: UUID, state: dict[str, Any], *, tenant_id: str | None = None
    ) -> Self:
        """A new instance whose state is ``state`` (the version is set by the repository).

        Raising anything here (pydantic's ``ValidationError`` by default) makes the
        repository ignore the snapshot and replay the whole stream instead.
        """
        data = cls.snapshot_model().model_validate(state)
        aggregate = cls(aggregate_id, tenant_id=tenant_id)
        for name in type(data).model_fields:
            setattr(aggregate, name, getattr(data, name))
        return aggregate

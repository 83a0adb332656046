"""Aggregates: state rebuilt from one stream's events, saved with optimistic concurrency.

An :class:`AggregateRoot` is the write side of one stream. Its *command* methods check the
rules and :meth:`~AggregateRoot.record` new events; its *applier* methods, marked with
:func:`applies`, change the state from an event and nothing else. Loading replays the stream
through the appliers; recording applies the new event at once, so a command sees its own
effect.

A :class:`Repository` loads and saves one aggregate class through an event store. ``save()``
appends the recorded events with ``expected_version`` = the version the aggregate was loaded
at, so a concurrent save of the same aggregate raises
:class:`~django_eventsource.ConcurrencyError` and writes nothing; ``update()`` retries a
command on a fresh load when that happens.

Snapshots are optional per aggregate class (``snapshot_every = N``). They are an optimisation
only, never a source of truth: a snapshot of another ``snapshot_version``, one that does not
validate, or one whose version the stream does not hold is ignored, the aggregate is rebuilt
from its events, and the next save writes a fresh one.

Why ``@applies(EventType)`` and not ``apply_<EventType>`` naming: the decorator is the same
mechanism as the projections' :func:`~django_eventsource.handles` (one idiom to learn); it
takes the event *class*, so renaming a class or its ``event_type`` cannot silently orphan a
handler (a name-based method would simply never be called again); the handler table is built
and checked once, at class creation (two appliers for one type fail at import); and
:meth:`AggregateRoot.handled_types` lists it for documentation and tests.
"""

from __future__ import annotations

import copy
import inspect
import json
import logging
import threading
import typing
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Generic, Self, TypeVar, overload
from uuid import UUID

from asgiref.sync import sync_to_async
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from pydantic import BaseModel, ConfigDict, create_model

from django_eventsource.events import DomainEvent, mark_event_types, marked_methods
from django_eventsource.exceptions import AggregateNotFound, ConcurrencyError
from django_eventsource.store import NO_TENANT, BaseEventStore, EventStore, StoredEvent

__all__ = [
    "AggregateRoot",
    "DatabaseSnapshotStore",
    "InMemorySnapshotStore",
    "Repository",
    "SnapshotRecord",
    "SnapshotStore",
    "applies",
]

logger = logging.getLogger("django_eventsource.aggregates")

A = TypeVar("A", bound="AggregateRoot")
E = TypeVar("E", bound=DomainEvent)
F = TypeVar("F", bound=Callable[..., Any])

APPLIES_ATTR: Final = "__eventsource_applies__"
#: Events read per query while replaying a stream.
REPLAY_PAGE: Final = 1000
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
    appliers with :func:`applies`, and write command methods that check the rules and call
    :meth:`record`::

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
        nested models) exactly as events do. Override together with :meth:`from_snapshot`
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


# Snapshot stores ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SnapshotRecord:
    """One stored snapshot: the state of an aggregate at ``version``."""

    aggregate_type: str
    aggregate_id: UUID
    tenant_id: str | None
    version: int
    schema_version: int
    state: dict[str, Any]


class SnapshotStore:
    """Where a repository keeps snapshots: the latest one per stream."""

    #: Whether writes join the database transaction of the append (and roll back with it).
    transactional: ClassVar[bool] = False

    def load(
        self, aggregate_type: str, aggregate_id: UUID, *, tenant_id: str | None = None
    ) -> SnapshotRecord | None:
        """The latest snapshot of the stream, or None."""
        raise NotImplementedError

    def save(self, record: SnapshotRecord) -> None:
        """Store ``record``, replacing the stream's previous snapshot."""
        raise NotImplementedError

    async def aload(
        self, aggregate_type: str, aggregate_id: UUID, *, tenant_id: str | None = None
    ) -> SnapshotRecord | None:
        """Async twin of :meth:`load`."""
        return await sync_to_async(self.load)(aggregate_type, aggregate_id, tenant_id=tenant_id)

    async def asave(self, record: SnapshotRecord) -> None:
        """Async twin of :meth:`save`."""
        await sync_to_async(self.save)(record)


class InMemorySnapshotStore(SnapshotStore):
    """Snapshots in process memory, for :class:`~django_eventsource.InMemoryEventStore`.

    States are copied through JSON on the way in and out, as the database would, so a
    snapshot that is not JSON-ready fails here too, and nobody shares a mutable state.
    """

    def __init__(self) -> None:
        self._records: dict[tuple[str, str, UUID], tuple[SnapshotRecord, str]] = {}
        self._lock = threading.Lock()

    def load(
        self, aggregate_type: str, aggregate_id: UUID, *, tenant_id: str | None = None
    ) -> SnapshotRecord | None:
        with self._lock:
            found = self._records.get((tenant_id or NO_TENANT, aggregate_type, aggregate_id))
        if found is None:
            return None
        record, state = found
        return SnapshotRecord(
            record.aggregate_type,
            record.aggregate_id,
            record.tenant_id,
            record.version,
            record.schema_version,
            json.loads(state),
        )

    def save(self, record: SnapshotRecord) -> None:
        state = json.dumps(record.state, separators=(",", ":"))
        key = (record.tenant_id or NO_TENANT, record.aggregate_type, record.aggregate_id)
        with self._lock:
            self._records[key] = (record, state)


class DatabaseSnapshotStore(SnapshotStore):
    """Snapshots in the ``Snapshot`` model, in the database ``using`` (default: the store's).

    A repository over an :class:`~django_eventsource.EventStore` writes the snapshot in the
    same transaction as the append, so a snapshot never describes events that were rolled
    back.
    """

    transactional = True

    def __init__(self, using: str | None = None) -> None:
        self._using = using

    @property
    def using(self) -> str:
        """The database alias of the snapshots."""
        if self._using is None:
            from django_eventsource.conf import get_settings

            return get_settings().database_alias
        return self._using

    def load(
        self, aggregate_type: str, aggregate_id: UUID, *, tenant_id: str | None = None
    ) -> SnapshotRecord | None:
        from django_eventsource.models import Snapshot

        row = (
            Snapshot.objects.using(self.using)
            .filter(
                tenant_id=tenant_id or NO_TENANT,
                aggregate_type=aggregate_type,
                aggregate_id=aggregate_id,
            )
            .values_list("version", "schema_version", "state")
            .first()
        )
        if row is None:
            return None
        version, schema_version, state = row
        return SnapshotRecord(
            aggregate_type, aggregate_id, tenant_id or None, version, schema_version, state
        )

    def save(self, record: SnapshotRecord) -> None:
        from django_eventsource.models import Snapshot

        Snapshot.objects.using(self.using).update_or_create(
            tenant_id=record.tenant_id or NO_TENANT,
            aggregate_type=record.aggregate_type,
            aggregate_id=record.aggregate_id,
            defaults={
                "version": record.version,
                "schema_version": record.schema_version,
                "state": record.state,
            },
        )


# The repository -----------------------------------------------------------------------------


class Repository(Generic[A]):
    """Loads and saves aggregates of one class through an event store.

    ``Repository(Task)`` uses an :class:`~django_eventsource.EventStore` on the default
    alias and snapshots in the database; with an
    :class:`~django_eventsource.InMemoryEventStore` snapshots stay in memory. Pass
    ``snapshot_store`` to choose another.
    """

    def __init__(
        self,
        aggregate_class: type[A],
        store: BaseEventStore | None = None,
        *,
        snapshot_store: SnapshotStore | None = None,
    ) -> None:
        if not (isinstance(aggregate_class, type) and issubclass(aggregate_class, AggregateRoot)):
            raise TypeError(
                f"Repository() takes an AggregateRoot subclass, not {aggregate_class!r}"
            )
        self.aggregate_class = aggregate_class
        self.store: BaseEventStore = store if store is not None else EventStore()
        self._snapshot_store = snapshot_store
        if snapshot_store is None and not isinstance(self.store, EventStore):
            self._snapshot_store = InMemorySnapshotStore()

    def __repr__(self) -> str:
        return f"<Repository of {self.aggregate_class.__qualname__} on {self.store!r}>"

    @property
    def snapshot_store(self) -> SnapshotStore:
        """Where this repository keeps snapshots."""
        if self._snapshot_store is not None:
            return self._snapshot_store
        assert isinstance(self.store, EventStore)
        return DatabaseSnapshotStore(self.store.using)

    # Loading --------------------------------------------------------------------------------

    def load(self, aggregate_id: UUID, *, tenant_id: str | None = None) -> A:
        """The aggregate, rebuilt from its latest usable snapshot and the events after it.

        Raises :class:`~django_eventsource.AggregateNotFound` when the stream does not exist
        (in this tenant).
        """
        cls = self.aggregate_class
        tenant_id = tenant_id or None
        aggregate: A | None = None
        if cls.snapshot_every:
            aggregate = self._from_snapshot(aggregate_id, tenant_id)
        if aggregate is None:
            aggregate = cls(aggregate_id, tenant_id=tenant_id)
            self._replay(aggregate, self._read(aggregate_id, 0, tenant_id))
        if aggregate.version == 0:
            raise AggregateNotFound(cls.aggregate_type, aggregate_id, tenant_id)
        aggregate._mark_committed()
        return aggregate

    def _read(
        self, aggregate_id: UUID, from_version: int, tenant_id: str | None
    ) -> Iterator[StoredEvent]:
        """The stream after ``from_version``, read in pages."""
        while True:
            page = self.store.read_stream(
                aggregate_id, from_version=from_version, tenant_id=tenant_id, limit=REPLAY_PAGE
            )
            yield from page
            if len(page) < REPLAY_PAGE:
                return
            from_version = page.events[-1].aggregate_version

    def _replay(self, aggregate: A, events: Iterable[StoredEvent]) -> None:
        for stored in events:
            if stored.aggregate_version == 1 and stored.aggregate_type not in (
                "",
                aggregate.aggregate_type,
            ):
                raise AggregateNotFound(
                    aggregate.aggregate_type,
                    aggregate.id,
                    aggregate.tenant_id,
                    hint=f"the stream holds {stored.aggregate_type!r} events, not "
                    f"{aggregate.aggregate_type!r} ones.",
                )
            aggregate._apply(stored.event)

    def _from_snapshot(self, aggregate_id: UUID, tenant_id: str | None) -> A | None:
        """The aggregate from its snapshot plus later events; None if no snapshot is usable."""
        cls = self.aggregate_class
        record = self.snapshot_store.load(cls.aggregate_type, aggregate_id, tenant_id=tenant_id)
        if record is None or record.version < 1:
            return None
        if record.schema_version != cls.snapshot_version:
            logger.info(
                "Ignoring the snapshot of %s %s: schema version %s, the class is at %s.",
                cls.aggregate_type,
                aggregate_id,
                record.schema_version,
                cls.snapshot_version,
            )
            return None
        try:
            aggregate = cls.from_snapshot(aggregate_id, record.state, tenant_id=tenant_id)
        except Exception:
            logger.warning(
                "Ignoring the snapshot of %s %s at version %s: it does not load.",
                cls.aggregate_type,
                aggregate_id,
                record.version,
                exc_info=True,
            )
            return None
        if not isinstance(aggregate, cls) or aggregate.id != aggregate_id:
            raise TypeError(
                f"{cls.__qualname__}.from_snapshot() returned {aggregate!r}; it must return "
                f"a {cls.__qualname__} with id {aggregate_id}."
            )
        # Read from the snapshot's own event: proof that the stream really holds its version.
        events = self._read(aggregate_id, record.version - 1, tenant_id)
        first = next(events, None)
        if first is None or first.aggregate_version != record.version:
            logger.warning(
                "Ignoring the snapshot of %s %s: version %s is not in the stream.",
                cls.aggregate_type,
                aggregate_id,
                record.version,
            )
            return None
        aggregate._version = record.version
        aggregate._snapshot_at = record.version
        self._replay(aggregate, events)
        return aggregate

    # Saving ---------------------------------------------------------------------------------

    def save(self, aggregate: A) -> list[StoredEvent]:
        """Append the aggregate's recorded events; returns them as stored.

        The append expects the stream at ``aggregate.committed_version``: if anyone else
        saved the aggregate since it was loaded, :class:`~django_eventsource.ConcurrencyError`
        is raised, nothing is written, and the aggregate keeps its recorded events (reload it
        and re-run the command, or use :meth:`update`). Inline projections and the snapshot
        (when one is due) are written in the same transaction as the events.
        """
        if not isinstance(aggregate, self.aggregate_class):
            raise TypeError(
                f"{self!r} saves {self.aggregate_class.__qualname__} aggregates, "
                f"not {type(aggregate).__qualname__}."
            )
        events = list(aggregate._uncommitted)
        if not events:
            return []
        # Built before anything is written: a failing to_snapshot() writes nothing.
        snapshot = self._due_snapshot(aggregate)
        store = self.store
        if isinstance(store, EventStore):
            snapshots = self.snapshot_store
            if isinstance(snapshots, DatabaseSnapshotStore) and snapshots.using != store.using:
                raise ImproperlyConfigured(
                    f"Snapshots go to database {snapshots.using!r} but events to "
                    f"{store.using!r}; they must share the append's transaction."
                )
            with transaction.atomic(using=store.using):
                stored = store.append(
                    aggregate.id, events, expected_version=aggregate.committed_version
                )
                if snapshot is not None:
                    if snapshots.transactional:
                        snapshots.save(snapshot)
                    else:  # never keep a snapshot of events that were rolled back
                        transaction.on_commit(
                            lambda: snapshots.save(snapshot), using=store.using, robust=True
                        )
        else:
            stored = store.append(
                aggregate.id, events, expected_version=aggregate.committed_version
            )
            if snapshot is not None:
                self.snapshot_store.save(snapshot)
        aggregate._mark_committed(snapshot_at=snapshot.version if snapshot else None)
        return stored

    def _due_snapshot(self, aggregate: A) -> SnapshotRecord | None:
        cls = type(aggregate)
        every = cls.snapshot_every
        if not every or aggregate.version - aggregate._snapshot_at < every:
            return None
        return SnapshotRecord(
            aggregate_type=cls.aggregate_type,
            aggregate_id=aggregate.id,
            tenant_id=aggregate.tenant_id,
            version=aggregate.version,
            schema_version=cls.snapshot_version,
            state=aggregate.to_snapshot(),
        )

    def update(
        self,
        aggregate_id: UUID,
        command: Callable[[A], object],
        *,
        tenant_id: str | None = None,
        retries: int = 3,
    ) -> A:
        """Load, run ``command(aggregate)``, save; on a conflict reload and run it again.

        ``command`` is called once per attempt on a freshly loaded aggregate, so it must act
        only on the aggregate (no e-mails, no other writes). Its exceptions propagate at
        once; only :class:`~django_eventsource.ConcurrencyError` is retried, at most
        ``retries`` times, after which it is raised. Returns the saved aggregate.
        """
        _check_retries(retries)
        attempt = 0
        while True:
            aggregate = self.load(aggregate_id, tenant_id=tenant_id)
            command(aggregate)
            try:
                self.save(aggregate)
            except ConcurrencyError as exc:
                if attempt >= retries:
                    raise
                attempt += 1
                logger.debug("Retrying %s after a conflict: %s", command, exc)
                continue
            return aggregate

    # Async twins ----------------------------------------------------------------------------

    async def aload(self, aggregate_id: UUID, *, tenant_id: str | None = None) -> A:
        """Async twin of :meth:`load`."""
        return await sync_to_async(self.load)(aggregate_id, tenant_id=tenant_id)

    async def asave(self, aggregate: A) -> list[StoredEvent]:
        """Async twin of :meth:`save`."""
        return await sync_to_async(self.save)(aggregate)

    async def aupdate(
        self,
        aggregate_id: UUID,
        command: Callable[[A], object | Awaitable[object]],
        *,
        tenant_id: str | None = None,
        retries: int = 3,
    ) -> A:
        """Async twin of :meth:`update`; ``command`` may be a plain or an ``async`` function."""
        _check_retries(retries)
        attempt = 0
        while True:
            aggregate = await self.aload(aggregate_id, tenant_id=tenant_id)
            result = command(aggregate)
            if inspect.isawaitable(result):
                await result
            try:
                await self.asave(aggregate)
            except ConcurrencyError as exc:
                if attempt >= retries:
                    raise
                attempt += 1
                logger.debug("Retrying %s after a conflict: %s", command, exc)
                continue
            return aggregate


def _check_retries(retries: int) -> None:
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        raise ValueError(f"retries must be an int >= 0, not {retries!r}")

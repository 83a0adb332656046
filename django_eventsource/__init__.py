"""django-eventsource: event sourcing for Django with projections that never lose, skip or
double-apply an event.

The public API is re-exported here. Importing this package never imports models (model-backed
names are loaded on first access), so it is safe to list in ``INSTALLED_APPS``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django_eventsource.aggregates import (
    AggregateRoot,
    DatabaseSnapshotStore,
    InMemorySnapshotStore,
    Repository,
    SnapshotRecord,
    SnapshotStore,
    applies,
)
from django_eventsource.checkpoints import (
    CheckpointStore,
    DatabaseCheckpointStore,
    InMemoryCheckpointStore,
    Lag,
    measure_lag,
)
from django_eventsource.events import DomainEvent, EventRegistry, register_event, upcaster
from django_eventsource.exceptions import (
    AggregateNotFound,
    AppendOnlyError,
    AppendTimeout,
    ConcurrencyError,
    DatabaseBusy,
    DuplicateEventId,
    EventAlreadyPassed,
    EventGapError,
    EventSourceError,
    HorizonNotSettled,
    IllegalTransition,
    InlineNotPausable,
    InvalidAppend,
    InvalidEventPayload,
    IsolationNotSupported,
    NotSupportedOnBackend,
    PositionNotFound,
    ProjectionError,
    ProjectionLocked,
    ProjectionSkipped,
    RebuildAborted,
    RebuildRefused,
    StaleSnapshot,
    UnknownEventType,
    UnknownTenant,
    ValueTooLong,
    WrongExpectedVersion,
)
from django_eventsource.projections import (
    DeclarativeProjection,
    Projection,
    handles,
    projection_registry,
)
from django_eventsource.runner import CatchUpResult, apply_batch, catch_up
from django_eventsource.store import (
    BaseEventStore,
    EventStore,
    ExpectedVersion,
    InMemoryEventStore,
    ReadResult,
    StoredEvent,
)
from django_eventsource.version import __version__

if TYPE_CHECKING:
    from django_eventsource.models import CheckpointedModel, DeadLetter, Event, ProjectionState

__all__ = [
    "AggregateNotFound",
    "AggregateRoot",
    "AppendOnlyError",
    "AppendTimeout",
    "BaseEventStore",
    "CatchUpResult",
    "CheckpointStore",
    "CheckpointedModel",
    "ConcurrencyError",
    "DatabaseBusy",
    "DatabaseCheckpointStore",
    "DatabaseSnapshotStore",
    "DeadLetter",
    "DeclarativeProjection",
    "DomainEvent",
    "DuplicateEventId",
    "Event",
    "EventAlreadyPassed",
    "EventGapError",
    "EventRegistry",
    "EventSourceError",
    "EventStore",
    "ExpectedVersion",
    "HorizonNotSettled",
    "IllegalTransition",
    "InMemoryCheckpointStore",
    "InMemoryEventStore",
    "InMemorySnapshotStore",
    "InlineNotPausable",
    "InvalidAppend",
    "InvalidEventPayload",
    "IsolationNotSupported",
    "Lag",
    "NotSupportedOnBackend",
    "PositionNotFound",
    "Projection",
    "ProjectionError",
    "ProjectionLocked",
    "ProjectionSkipped",
    "ProjectionState",
    "ReadResult",
    "RebuildAborted",
    "RebuildRefused",
    "Repository",
    "SnapshotRecord",
    "SnapshotStore",
    "StaleSnapshot",
    "StoredEvent",
    "UnknownEventType",
    "UnknownTenant",
    "ValueTooLong",
    "WrongExpectedVersion",
    "__version__",
    "applies",
    "apply_batch",
    "catch_up",
    "handles",
    "measure_lag",
    "projection_registry",
    "register_event",
    "upcaster",
]

# Names that live in modules importing models; loaded on first access (PEP 562).
_LAZY = {
    "CheckpointedModel": "django_eventsource.models",
    "DeadLetter": "django_eventsource.models",
    "Event": "django_eventsource.models",
    "ProjectionState": "django_eventsource.models",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'django_eventsource' has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(module), name)

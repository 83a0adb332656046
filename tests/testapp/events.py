"""Events of the test domain: the tutorial's tasks, grown a little."""

from __future__ import annotations

from django_eventsource import DomainEvent, register_event


@register_event
class TaskCreated(DomainEvent):
    event_type: str = "TaskCreated"
    aggregate_type: str = "Task"
    title: str


@register_event
class TaskRenamed(DomainEvent):
    event_type: str = "TaskRenamed"
    aggregate_type: str = "Task"
    title: str


@register_event
class TaskCompleted(DomainEvent):
    event_type: str = "TaskCompleted"
    aggregate_type: str = "Task"


@register_event
class Counted(DomainEvent):
    """A bare event for concurrency tests: ``writer`` and ``seq`` identify who wrote it."""

    event_type: str = "Counted"
    aggregate_type: str = "Counter"
    writer: int = 0
    seq: int = 0

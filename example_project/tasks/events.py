"""The task domain's events. Every stream is one task; every event carries its tenant."""

from __future__ import annotations

from django_eventsource import DomainEvent, register_event


@register_event
class TaskCreated(DomainEvent):
    event_type: str = "TaskCreated"
    aggregate_type: str = "Task"
    title: str


@register_event
class TaskAssigned(DomainEvent):
    event_type: str = "TaskAssigned"
    aggregate_type: str = "Task"
    assignee: str


@register_event
class TaskCompleted(DomainEvent):
    event_type: str = "TaskCompleted"
    aggregate_type: str = "Task"


@register_event
class TaskReopened(DomainEvent):
    event_type: str = "TaskReopened"
    aggregate_type: str = "Task"
    reason: str = ""

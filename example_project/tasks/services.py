"""Commands of the task domain: load a task from its stream, decide, append.

The views and ``simulate_tasks`` both go through these functions. Each append passes the
version the decision was based on as ``expected_version``, so two concurrent edits of one
task cannot both win: the loser gets a ``ConcurrencyError`` and nothing is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID, uuid4

from django_eventsource import DomainEvent, EventStore, StoredEvent
from tasks.events import TaskAssigned, TaskCompleted, TaskCreated, TaskReopened


class TaskRuleError(ValueError):
    """The command is not allowed in the task's current state."""


@dataclass
class Task:
    """A task's state, folded from its stream."""

    task_id: UUID
    tenant_id: str
    version: int = 0
    title: str = ""
    assignee: str = ""
    done: bool = False

    @classmethod
    def load(cls, store: EventStore, tenant_id: str, task_id: UUID) -> Task:
        task = cls(task_id=task_id, tenant_id=tenant_id)
        for stored in store.read_stream(task_id, tenant_id=tenant_id):
            task.apply(stored.event)
            task.version = stored.aggregate_version
        if task.version == 0:
            raise TaskRuleError(f"Task {task_id} does not exist in tenant {tenant_id!r}.")
        return task

    def apply(self, event: DomainEvent) -> None:
        if isinstance(event, TaskCreated):
            self.title = event.title
        elif isinstance(event, TaskAssigned):
            self.assignee = event.assignee
        elif isinstance(event, TaskCompleted):
            self.done = True
        elif isinstance(event, TaskReopened):
            self.done = False


def _envelope(task_id: UUID, tenant_id: str, **extra: Any) -> dict[str, Any]:
    envelope: dict[str, Any] = {"aggregate_id": task_id, "tenant_id": tenant_id}
    occurred_at: datetime | None = extra.pop("occurred_at", None)
    if occurred_at is not None:
        envelope["occurred_at"] = occurred_at
    envelope["metadata"] = extra.pop("metadata", {})
    return envelope


def create_task(
    store: EventStore,
    tenant_id: str,
    title: str,
    *,
    assignee: str = "",
    **extra: Any,
) -> list[StoredEvent]:
    """Create a task (optionally assigned at once): a new stream, version 0 expected."""
    title = title.strip()
    if not title:
        raise TaskRuleError("A task needs a title.")
    task_id = uuid4()
    envelope = _envelope(task_id, tenant_id, **extra)
    events: list[DomainEvent] = [TaskCreated(title=title, **envelope)]
    if assignee:
        events.append(TaskAssigned(assignee=assignee, **envelope))
    return store.append(task_id, events, expected_version=0)


def assign_task(
    store: EventStore, tenant_id: str, task_id: UUID, assignee: str, **extra: Any
) -> list[StoredEvent]:
    task = Task.load(store, tenant_id, task_id)
    if task.done:
        raise TaskRuleError(f"{task.title!r} is done; reopen it before reassigning it.")
    if task.assignee == assignee:
        raise TaskRuleError(f"{task.title!r} is already assigned to {assignee}.")
    event = TaskAssigned(assignee=assignee, **_envelope(task_id, tenant_id, **extra))
    return store.append(task_id, [event], expected_version=task.version)


def complete_task(
    store: EventStore, tenant_id: str, task_id: UUID, **extra: Any
) -> list[StoredEvent]:
    task = Task.load(store, tenant_id, task_id)
    if task.done:
        raise TaskRuleError(f"{task.title!r} is already done.")
    event = TaskCompleted(**_envelope(task_id, tenant_id, **extra))
    return store.append(task_id, [event], expected_version=task.version)


def reopen_task(
    store: EventStore, tenant_id: str, task_id: UUID, reason: str = "", **extra: Any
) -> list[StoredEvent]:
    task = Task.load(store, tenant_id, task_id)
    if not task.done:
        raise TaskRuleError(f"{task.title!r} is not done.")
    event = TaskReopened(reason=reason, **_envelope(task_id, tenant_id, **extra))
    return store.append(task_id, [event], expected_version=task.version)

"""Aggregates of the test domain: a Task over TaskCreated / TaskRenamed / TaskCompleted."""

from __future__ import annotations

from uuid import UUID, uuid4

from django_eventsource.aggregates import AggregateRoot, applies
from tests.testapp.events import TaskCompleted, TaskCreated, TaskRenamed


class TaskAlreadyDone(Exception):
    """A command refused: the task is completed."""


class Task(AggregateRoot):
    """A task without snapshots: every load replays the whole stream."""

    aggregate_type = "Task"

    title: str = ""
    done: bool = False
    renames: int = 0
    history: list[str]  # no default: set by the TaskCreated applier (a fresh list per task)

    @classmethod
    def create(
        cls, title: str, *, task_id: UUID | None = None, tenant_id: str | None = None
    ) -> Task:
        task = cls(task_id or uuid4(), tenant_id=tenant_id)
        task.record(TaskCreated, title=title)
        return task

    def rename(self, title: str) -> None:
        if self.done:
            raise TaskAlreadyDone(f"{self!r} is done; it cannot be renamed.")
        if title != self.title:
            self.record(TaskRenamed, title=title)

    def complete(self) -> None:
        if self.done:
            raise TaskAlreadyDone(f"{self!r} is already done.")
        self.record(TaskCompleted)

    @applies(TaskCreated)
    def _created(self, event: TaskCreated) -> None:
        self.title = event.title
        self.history = [event.title]

    @applies(TaskRenamed)
    def _renamed(self, event: TaskRenamed) -> None:
        self.title = event.title
        self.renames += 1
        self.history.append(event.title)

    @applies(TaskCompleted)
    def _completed(self, event: TaskCompleted) -> None:
        self.done = True


class SnapshottedTask(Task):
    """The same stream type, with a snapshot every 5 events."""

    snapshot_every = 5


class SnapshottedTaskV2(SnapshottedTask):
    """As if the snapshot's shape had changed: version 1 snapshots must be ignored."""

    snapshot_version = 2

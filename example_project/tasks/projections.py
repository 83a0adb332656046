"""Projections of the task domain (autodiscovered by django_eventsource).

``self.row(Model, event, **lookup)`` returns the row to change (loaded or new) with its
embedded checkpoint already set, or None when the row already holds the event (a replay).
"""

from __future__ import annotations

from typing import ClassVar

from django_eventsource import DeclarativeProjection, DomainEvent, handles
from tasks.events import TaskAssigned, TaskCompleted, TaskCreated, TaskReopened
from tasks.models import TaskCard, TenantBoard


class TaskCards(DeclarativeProjection):
    """Inline: applied inside each append's own transaction, so a view that appends and then
    redirects to the task list always sees its own write."""

    name = "task_cards"
    inline = True
    models = (TaskCard,)
    row_keys: ClassVar = {TaskCard: "task_id"}

    def _card(self, event: DomainEvent) -> TaskCard | None:
        row = self.row(TaskCard, event, task_id=event.aggregate_id)
        if row is not None:
            row.updated_at = event.occurred_at
        return row

    @handles(TaskCreated)
    def created(self, event: TaskCreated) -> None:
        if row := self._card(event):
            row.title = event.title
            row.created_at = event.occurred_at

    @handles(TaskAssigned)
    def assigned(self, event: TaskAssigned) -> None:
        if row := self._card(event):
            row.assignee = event.assignee

    @handles(TaskCompleted)
    def completed(self, event: TaskCompleted) -> None:
        if row := self._card(event):
            row.status = TaskCard.Status.DONE

    @handles(TaskReopened)
    def reopened(self, event: TaskReopened) -> None:
        if row := self._card(event):
            row.status = TaskCard.Status.OPEN
            row.times_reopened += 1


class TenantBoards(DeclarativeProjection):
    """Asynchronous: run by ``manage.py replay_projections`` (``--follow`` as a worker)."""

    name = "tenant_boards"
    models = (TenantBoard,)

    def _board(self, event: DomainEvent) -> TenantBoard | None:
        row = self.row(TenantBoard, event, tenant_id=event.tenant_id or "")
        if row is not None:
            row.last_activity_at = event.occurred_at
        return row

    @handles(TaskCreated)
    def created(self, event: TaskCreated) -> None:
        if row := self._board(event):
            row.created += 1
            row.open += 1

    @handles(TaskAssigned)
    def assigned(self, event: TaskAssigned) -> None:
        if row := self._board(event):
            row.assignments += 1

    @handles(TaskCompleted)
    def completed(self, event: TaskCompleted) -> None:
        if row := self._board(event):
            row.completed += 1
            row.open -= 1

    @handles(TaskReopened)
    def reopened(self, event: TaskReopened) -> None:
        if row := self._board(event):
            row.reopened += 1
            row.open += 1

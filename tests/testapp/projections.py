"""Projections of the test app (autodiscovered by django_eventsource)."""

from __future__ import annotations

import os
import time
from typing import ClassVar

from django_eventsource import DeclarativeProjection, handles
from tests.testapp.events import TaskCompleted, TaskCreated, TaskRenamed
from tests.testapp.models import TaskIndex, TaskSummary, TenantStats

#: Crash tests slow handlers down so that a kill lands inside a batch's transaction.
HANDLER_SLEEP = float(os.environ.get("TESTAPP_HANDLER_SLEEP", "0"))


class TaskBoard(DeclarativeProjection):
    """Rows keyed by one stream: one TaskSummary per task."""

    name = "task_board"
    models = (TaskSummary,)
    row_keys: ClassVar = {TaskSummary: "task_id"}

    def _touch(self, event) -> TaskSummary | None:
        if HANDLER_SLEEP:
            time.sleep(HANDLER_SLEEP)
        row = self.row(TaskSummary, event, task_id=event.aggregate_id)
        if row is not None:
            row.events_applied += 1
        return row

    @handles(TaskCreated)
    def created(self, event: TaskCreated) -> None:
        if row := self._touch(event):
            row.title = event.title

    @handles(TaskRenamed)
    def renamed(self, event: TaskRenamed) -> None:
        if event.title == "boom":
            raise ValueError("the handler refuses the title 'boom'")
        if row := self._touch(event):
            row.title = event.title
            row.renames += 1

    @handles(TaskCompleted)
    def completed(self, event: TaskCompleted) -> None:
        if row := self._touch(event):
            row.done = True


class TenantStatsProjection(DeclarativeProjection):
    """Rows fed by many streams: one TenantStats per tenant, checkpointed by position."""

    name = "tenant_stats"
    models = (TenantStats,)

    @handles(TaskCreated)
    def created(self, event: TaskCreated) -> None:
        if row := self.row(TenantStats, event, tenant_id=event.tenant_id or ""):
            row.tasks += 1

    @handles(TaskCompleted)
    def completed(self, event: TaskCompleted) -> None:
        if row := self.row(TenantStats, event, tenant_id=event.tenant_id or ""):
            row.completed += 1


class TaskIndexProjection(DeclarativeProjection):
    """Inline: applied inside each append's transaction (read-your-writes)."""

    name = "task_index"
    inline = True
    models = (TaskIndex,)

    @handles(TaskCreated)
    def created(self, event: TaskCreated) -> None:
        if event.title == "inline-boom":
            raise RuntimeError("inline handler failure")
        if row := self.row(TaskIndex, event, task_id=event.aggregate_id):
            row.title = event.title

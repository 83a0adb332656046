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
#: Lost-lock tests: after this many events, TaskBoard's handler hands its state row to "a
#: successor" inside the batch's transaction, as a runner that took the projection over
#: would (SQLite serializes writers, so another process's claim cannot be timed to land
#: while the runner works; PostgreSQL's test steals the real lock instead).
TAKEOVER_AFTER = int(os.environ.get("TESTAPP_TAKEOVER_AFTER", "0"))
#: The title TaskBoard's rename handler refuses, as a handler bug would; a test "deploys the
#: fix" by setting it to None.
REFUSED_TITLE: str | None = "boom"
_handled = 0


class TaskBoard(DeclarativeProjection):
    """Rows keyed by one stream: one TaskSummary per task."""

    name = "task_board"
    models = (TaskSummary,)
    row_keys: ClassVar = {TaskSummary: "task_id"}

    def _touch(self, event) -> TaskSummary | None:
        global _handled
        if HANDLER_SLEEP:
            time.sleep(HANDLER_SLEEP)
        _handled += 1
        if TAKEOVER_AFTER and _handled == TAKEOVER_AFTER:
            from django_eventsource.models import ProjectionState

            ProjectionState.objects.filter(name=self.name).update(owner="a successor")
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
        if REFUSED_TITLE is not None and event.title == REFUSED_TITLE:
            raise ValueError(f"the handler refuses the title {REFUSED_TITLE!r}")
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
        if HANDLER_SLEEP:
            time.sleep(HANDLER_SLEEP)
        if event.title == "inline-boom":
            raise RuntimeError("inline handler failure")
        if row := self.row(TaskIndex, event, task_id=event.aggregate_id):
            row.title = event.title

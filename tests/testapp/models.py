"""Read models of the test app, with embedded checkpoints."""

from __future__ import annotations

from django.db import models

from django_eventsource.models import CheckpointedModel


class Note(models.Model):
    """Something other than an event, written by concurrency tests before they append."""

    text = models.CharField(max_length=100)


class TaskSummary(CheckpointedModel):
    """One row per task stream (checkpointed by stream version)."""

    task_id = models.UUIDField()
    tenant_id = models.CharField(max_length=100, blank=True, default="")
    title = models.CharField(max_length=200, blank=True, default="")
    done = models.BooleanField(default=False)
    renames = models.PositiveIntegerField(default=0)
    events_applied = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = (
            models.UniqueConstraint(fields=("tenant_id", "task_id"), name="testapp_summary_task"),
        )


class TenantStats(CheckpointedModel):
    """One row per tenant, fed by many streams (checkpointed by global position)."""

    checkpoint_by = "position"

    tenant_id = models.CharField(max_length=100, unique=True)
    tasks = models.PositiveIntegerField(default=0)
    completed = models.PositiveIntegerField(default=0)


class TaskIndex(CheckpointedModel):
    """Maintained inline, in the append's own transaction."""

    task_id = models.UUIDField()
    tenant_id = models.CharField(max_length=100, blank=True, default="")
    title = models.CharField(max_length=200)

    class Meta:
        constraints = (
            models.UniqueConstraint(fields=("tenant_id", "task_id"), name="testapp_index_task"),
        )

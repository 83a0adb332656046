"""Read models. Each row embeds its own checkpoint (``CheckpointedModel``)."""

from __future__ import annotations

from django.db import models

from django_eventsource.models import CheckpointedModel


class TaskCard(CheckpointedModel):
    """One row per task stream, kept by the inline ``task_cards`` projection.

    Checkpointed by stream version (the default): an event whose ``aggregate_version`` the
    row already holds is skipped.
    """

    class Status(models.TextChoices):
        OPEN = "open", "open"
        DONE = "done", "done"

    tenant_id = models.CharField(max_length=100)
    task_id = models.UUIDField()
    title = models.CharField(max_length=200)
    assignee = models.CharField(max_length=100, blank=True, default="")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.OPEN)
    times_reopened = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("tenant_id", "-created_at")
        constraints = (
            models.UniqueConstraint(fields=("tenant_id", "task_id"), name="tasks_card_task"),
        )

    def __str__(self) -> str:
        return f"{self.title} ({self.tenant_id})"


class TenantBoard(CheckpointedModel):
    """One row per tenant, fed by every task stream of that tenant.

    Kept by the asynchronous ``tenant_boards`` projection (``replay_projections``). A row fed
    by many streams is checkpointed by global position.
    """

    checkpoint_by = "position"

    tenant_id = models.CharField(max_length=100, unique=True)
    created = models.PositiveIntegerField(default=0)
    assignments = models.PositiveIntegerField(default=0)
    completed = models.PositiveIntegerField(default=0)
    reopened = models.PositiveIntegerField(default=0)
    open = models.IntegerField(default=0)
    last_activity_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("tenant_id",)

    def __str__(self) -> str:
        return self.tenant_id

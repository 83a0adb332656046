"""The read model of the catch-up bench: one row per aggregate, with its embedded checkpoint."""

from __future__ import annotations

from django.db import models

from django_eventsource.models import CheckpointedModel


class BenchItem(CheckpointedModel):
    item_id = models.UUIDField(unique=True)
    label = models.CharField(max_length=100, default="")
    total = models.BigIntegerField(default=0)
    changes = models.IntegerField(default=0)

    class Meta:
        app_label = "catchup_app"


class BenchPing(CheckpointedModel):
    """``bench/shadow.py``: one row per ping, stamped when another projection applies it."""

    ping_id = models.UUIDField(unique=True)
    applied_at = models.FloatField(default=0.0)

    class Meta:
        app_label = "catchup_app"

"""Projection state: ``events_processed`` goes (nothing ever wrote it; the admin showed 0),
and the status choices name the reported statuses ``stale`` and ``inline`` (never stored).
"""

from __future__ import annotations

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("django_eventsource", "0005_dead_letter_streams"),
    ]

    operations = [
        migrations.RemoveField(
            model_name="projectionstate",
            name="events_processed",
        ),
        migrations.AlterField(
            model_name="projectionstate",
            name="status",
            field=models.CharField(
                choices=[
                    ("idle", "idle"),
                    ("running", "running"),
                    ("paused", "paused"),
                    ("failed", "failed"),
                    ("rebuilding", "rebuilding"),
                    ("stale", "stale (its runner stopped beating)"),
                    ("inline", "inline (kept current by the appends)"),
                ],
                default="idle",
                max_length=20,
            ),
        ),
    ]

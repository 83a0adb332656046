"""The status choices name the reported status ``interrupted`` (never stored): a rebuild
that stopped cleanly before it caught up."""

from __future__ import annotations

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("django_eventsource", "0009_horizon_committing_writers"),
    ]

    operations = [
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
                    ("interrupted", "interrupted (a rebuild stopped before it caught up)"),
                    ("inline", "inline (kept current by the appends)"),
                ],
                default="idle",
                max_length=20,
            ),
        ),
    ]

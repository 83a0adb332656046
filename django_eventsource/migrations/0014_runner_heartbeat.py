"""Runner heartbeats: a row per lock owner, beaten by the runner's heartbeat thread while
its batch holds the state row (see ``django_eventsource.heartbeats``)."""

from __future__ import annotations

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("django_eventsource", "0013_inline_built_and_reported_statuses"),
    ]

    operations = [
        migrations.CreateModel(
            name="RunnerHeartbeat",
            fields=[
                ("owner", models.CharField(max_length=255, primary_key=True, serialize=False)),
                ("beat_at", models.DateTimeField()),
            ],
            options={
                "verbose_name": "runner heartbeat",
                "verbose_name_plural": "runner heartbeats",
            },
        ),
    ]

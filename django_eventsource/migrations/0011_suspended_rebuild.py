"""``ProjectionState.suspended_rebuild``: a projection paused or failed in the middle of its
rebuild remembers it, so that resuming it returns it to ``rebuilding`` (it went ``idle``, and
appends then applied an inline projection to rows the replay had not reached)."""

from __future__ import annotations

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("django_eventsource", "0010_interrupted_rebuild_status"),
    ]

    operations = [
        migrations.AddField(
            model_name="projectionstate",
            name="suspended_rebuild",
            field=models.BooleanField(
                default=False,
                help_text="Paused or failed in the middle of a rebuild: resuming it returns "
                "it to rebuilding.",
            ),
        ),
    ]

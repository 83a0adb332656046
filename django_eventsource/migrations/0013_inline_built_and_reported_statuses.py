"""``BuiltProjection`` marks the inline projections that hold every event, and the status
choices name the reported statuses ``unassigned`` and ``unbuilt`` (never stored).

An upgrade cannot tell which existing inline projections were built over the history they
were added to: every inline projection registered when this runs is marked built (on a
store with events, reason ``upgrade``), so that none reads ``unbuilt`` after the upgrade.
One that was added to a store with history and never rebuilt still needs
``rebuild_projections <name>`` (see the status how-to).
"""

from __future__ import annotations

from typing import Any

from django.db import migrations, models
from django.db.models import Max


def mark_registered_inline_built(apps: Any, schema_editor: Any) -> None:
    """Mark every registered inline projection built, on the events' database."""
    from django_eventsource.conf import database_alias
    from django_eventsource.projections import projection_registry

    using = schema_editor.connection.alias
    if using != database_alias():
        return
    names = [n for n in projection_registry.names() if projection_registry.get(n).inline]
    built = apps.get_model("django_eventsource", "BuiltProjection").objects.using(using)
    events = apps.get_model("django_eventsource", "Event").objects.using(using)
    head = events.aggregate(head=Max("position"))["head"] or 0
    for name in names:
        built.get_or_create(
            name=name, defaults={"position": head, "reason": "upgrade" if head else "empty store"}
        )


class Migration(migrations.Migration):
    dependencies = [
        ("django_eventsource", "0012_append_lockout_fence"),
    ]

    operations = [
        migrations.CreateModel(
            name="BuiltProjection",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("name", models.CharField(max_length=200, unique=True)),
                ("position", models.BigIntegerField(default=0)),
                ("reason", models.CharField(blank=True, default="", max_length=50)),
                ("built_at", models.DateTimeField(auto_now_add=True)),
            ],
            options={
                "verbose_name": "built inline projection",
                "verbose_name_plural": "built inline projections",
                "ordering": ("name",),
            },
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
                    ("interrupted", "interrupted (a rebuild stopped before it caught up)"),
                    ("inline", "inline (kept current by the appends)"),
                    ("unassigned", "unassigned (a tenant's events no runner applies)"),
                    ("unbuilt", "unbuilt (an inline projection never rebuilt over older events)"),
                ],
                default="idle",
                max_length=20,
            ),
        ),
        migrations.RunPython(mark_registered_inline_built, migrations.RunPython.noop),
    ]

"""Dead letters know their stream, so that a stream waits behind its dead letter.

Letters written before this migration get their stream from the event table of the same
database (where the events live elsewhere they keep none, and are retried one by one, as
before).
"""

from __future__ import annotations

from typing import Any

from django.db import migrations, models


def fill_streams(apps: Any, schema_editor: Any) -> None:
    alias = schema_editor.connection.alias
    DeadLetter = apps.get_model("django_eventsource", "DeadLetter")
    Event = apps.get_model("django_eventsource", "Event")
    letters = DeadLetter.objects.using(alias).filter(aggregate_id=None)
    for letter in letters.iterator():
        event = (
            Event.objects.using(alias)
            .filter(position=letter.event_position)
            .values("tenant_id", "aggregate_id", "aggregate_version")
            .first()
        )
        if event is not None:
            letters.filter(pk=letter.pk).update(
                stream_tenant_id=event["tenant_id"],
                aggregate_id=event["aggregate_id"],
                aggregate_version=event["aggregate_version"],
            )


class Migration(migrations.Migration):
    dependencies = [
        ("django_eventsource", "0004_writer_scoped_horizon"),
    ]

    operations = [
        migrations.AddField(
            model_name="deadletter",
            name="aggregate_id",
            field=models.UUIDField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="deadletter",
            name="aggregate_version",
            field=models.PositiveIntegerField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="deadletter",
            name="parked_behind",
            field=models.BigIntegerField(
                blank=True,
                help_text="For a parked event: the position of the failed event it waits behind.",
                null=True,
            ),
        ),
        migrations.AddField(
            model_name="deadletter",
            name="resolution",
            field=models.CharField(
                blank=True,
                choices=[
                    ("applied", "applied by a retry"),
                    ("held", "already in the read model"),
                    ("rebuilt", "replayed by a rebuild"),
                ],
                default="",
                max_length=20,
            ),
        ),
        migrations.AddField(
            model_name="deadletter",
            name="stream_tenant_id",
            field=models.CharField(
                blank=True, default="", help_text="The event's own tenant.", max_length=255
            ),
        ),
        migrations.AlterField(
            model_name="deadletter",
            name="tenant_id",
            field=models.CharField(
                blank=True,
                default="",
                help_text="The tenant scope of the projection's runner ('' for all tenants).",
                max_length=255,
            ),
        ),
        migrations.AddIndex(
            model_name="deadletter",
            index=models.Index(
                condition=models.Q(("resolved_at", None)),
                fields=["projection", "tenant_id", "stream_tenant_id", "aggregate_id"],
                name="django_eventsource_dl_parked",
            ),
        ),
        migrations.RunPython(fill_streams, migrations.RunPython.noop, elidable=True),
    ]

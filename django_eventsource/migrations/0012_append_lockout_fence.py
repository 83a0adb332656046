"""PostgreSQL: a fence that appends under an old snapshot run into.

A transaction that locks appends out (a rebuild's reset and hand-over of an inline
projection, a shadow rebuild's swap) changes what appends must do with inline projections,
and the appends that waited for it read that change once it commits: at READ COMMITTED each
statement takes a new snapshot. A ``REPEATABLE READ`` or ``SERIALIZABLE`` transaction reads
under the snapshot of its first statement, which may be older than the lock-out: it would
read the projection's state (and rows) as they were before it, and lose or double-apply
events. Every lock-out now also bumps the one row of ``django_eventsource_lockout``, and an
append with inline projections in such a transaction runs into that row
(``INSERT … ON CONFLICT DO NOTHING``, which PostgreSQL answers with a serialization failure
when the row changed after the transaction's snapshot): the append raises ``StaleSnapshot``
instead of applying anything.

The SQL is frozen here (``post_migrate`` creates the table where tables were made without
migrations). SQLite needs nothing: it serializes writers.
"""

from __future__ import annotations

from typing import Any

from django.db import migrations

TABLE = r"""
CREATE TABLE IF NOT EXISTS django_eventsource_lockout (
    id integer PRIMARY KEY,
    generation bigint NOT NULL DEFAULT 0
)
"""

#: Its one row (a lock-out and an append create it too, if it is missing).
ROW = (
    "INSERT INTO django_eventsource_lockout (id, generation) VALUES (1, 0) "
    "ON CONFLICT (id) DO NOTHING"
)

DROP = "DROP TABLE IF EXISTS django_eventsource_lockout"


def create(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(TABLE)
        schema_editor.execute(ROW)


def drop(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP)


class Migration(migrations.Migration):
    dependencies = [
        ("django_eventsource", "0011_suspended_rebuild"),
    ]

    operations = [migrations.RunPython(create, drop)]

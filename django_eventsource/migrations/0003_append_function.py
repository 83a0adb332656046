"""PostgreSQL: the append as a PL/pgSQL function, so its plan is cached per session.

Django prepares no statement by default (``prepare_threshold`` is None, which keeps
transaction-pooling connection poolers working), so a plain ``INSERT … SELECT`` is parsed and
planned again on every append; for a ten-event append that was a third of the server's time.
A PL/pgSQL function caches the plans of its statements in each session by itself, whatever
the pooler or the driver settings, and the call that reaches it is trivial to plan.

The function does what the single statement did (see
:mod:`django_eventsource.backends.postgresql`), in the caller's transaction:

* ``p_expected >= 0``: the stream must be exactly at that version. A stream past it fails on
  the unique (tenant, aggregate, version) constraint; one short of it fails the EXISTS probe
  and nothing is inserted (the store raises ConcurrencyError for both).
* ``-1`` (ANY) appends after the current version; ``-2`` (STREAM_EXISTS) requires one.
* The ordering stamp is ``GREATEST(own transaction id, highest stamp)``, computed in the
  INSERT itself, under the INSERT's own snapshot, as before.
* Followers are woken once per append (``pg_notify`` at commit), not once per event.

The SQL is frozen here; a later change ships a new function name in a new migration.
SQLite needs nothing: the operation is a no-op there.
"""

from __future__ import annotations

from typing import Any

from django.db import migrations

CREATE = r"""
CREATE OR REPLACE FUNCTION django_eventsource_append_v1(
    p_tenant text,
    p_aggregate uuid,
    p_recorded timestamptz,
    p_events jsonb,
    p_expected integer,
    p_channel text
) RETURNS TABLE (o_position bigint, o_version integer)
LANGUAGE plpgsql VOLATILE AS $function$
DECLARE
    v_current integer;
BEGIN
    IF p_expected >= 0 THEN
        IF p_expected > 0 AND NOT EXISTS (
            SELECT FROM django_eventsource_event
            WHERE tenant_id = p_tenant AND aggregate_id = p_aggregate
            AND aggregate_version = p_expected
        ) THEN
            RETURN;
        END IF;
        v_current := p_expected;
    ELSE
        SELECT COALESCE(MAX(aggregate_version), 0) INTO v_current
        FROM django_eventsource_event
        WHERE tenant_id = p_tenant AND aggregate_id = p_aggregate;
        IF p_expected = -2 AND v_current = 0 THEN
            RETURN;
        END IF;
    END IF;
    RETURN QUERY
    INSERT INTO django_eventsource_event (
        event_id, event_type, schema_version, tenant_id, aggregate_id, aggregate_type,
        aggregate_version, payload, metadata, correlation_id, causation_id, occurred_at,
        recorded_at, stamp
    )
    SELECT e.i, e.t, e.s, p_tenant, p_aggregate, e.a, v_current + e.n, e.p, e.m, e.c, e.k,
        e.o, p_recorded,
        GREATEST(
            pg_current_xact_id()::text::bigint,
            COALESCE(
                (SELECT x.stamp FROM django_eventsource_event x ORDER BY x.stamp DESC LIMIT 1),
                0
            )
        )
    FROM jsonb_to_recordset(p_events) AS e(
        n integer, i uuid, t text, s integer, a text, p jsonb, m jsonb, c uuid, k uuid,
        o timestamptz
    )
    ORDER BY e.n
    RETURNING position, aggregate_version;
    IF FOUND THEN
        PERFORM pg_notify(p_channel, '');
    END IF;
END
$function$
"""

DROP = (
    "DROP FUNCTION IF EXISTS django_eventsource_append_v1("
    "text, uuid, timestamptz, jsonb, integer, text)"
)


def create(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE)


def drop(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP)


class Migration(migrations.Migration):
    dependencies = [
        ("django_eventsource", "0002_lag_samples_and_snapshots"),
    ]

    operations = [migrations.RunPython(create, drop)]

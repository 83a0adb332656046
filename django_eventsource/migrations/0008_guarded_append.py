"""PostgreSQL: an append inside the caller's transaction needs no savepoint.

``django_eventsource_append_v3`` is 0004's ``django_eventsource_append_v2`` with one more
argument, ``p_guard``. With ``p_guard`` true, a unique violation of the INSERT (another writer
took the stream's next version, or an event id is stored already) is caught inside the
function: its INSERT is rolled back alone, and the function returns one row naming the
constraint (``o_position`` NULL, ``o_conflict`` the constraint's name) instead of raising.
The caller's transaction stays usable, so the store can tell a repeat from a conflict with
further queries in it, where it had to wrap every append in a savepoint (two more round trips)
before. Outside a transaction the store passes false: the statement is a transaction of its
own, and the error ends nothing else.

Everything else is 0004's: the lock first, the probe for a non-READ COMMITTED transaction, the
expected-version check, the stamp, one NOTIFY per append. Stored events do not change. 0004's
function stays (a process running the previous code keeps calling it) until a later migration
drops it. SQLite needs nothing: an INSERT that fails there leaves the transaction usable.
"""

from __future__ import annotations

from typing import Any

from django.db import migrations

#: The INSERT of both branches: the rows of ``p_events``, the stamp of 0004.
_INSERT = r"""
            WITH ins AS (
                INSERT INTO django_eventsource_event (
                    event_id, event_type, schema_version, tenant_id, aggregate_id,
                    aggregate_type, aggregate_version, payload, metadata, correlation_id,
                    causation_id, occurred_at, recorded_at, stamp
                )
                SELECT e.i, e.t, e.s, p_tenant, p_aggregate, e.a, v_current + e.n, e.p, e.m,
                    e.c, e.k, e.o, p_recorded,
                    GREATEST(
                        pg_current_xact_id()::text::bigint,
                        v_floor,
                        COALESCE(
                            (SELECT x.stamp FROM django_eventsource_event x
                             ORDER BY x.stamp DESC LIMIT 1),
                            0
                        )
                    )
                FROM jsonb_to_recordset(p_events) AS e(
                    n integer, i uuid, t text, s integer, a text, p jsonb, m jsonb, c uuid,
                    k uuid, o timestamptz
                )
                ORDER BY e.n
                RETURNING position, aggregate_version
            )
            SELECT array_agg(ins.position), array_agg(ins.aggregate_version)
            INTO v_positions, v_versions
            FROM ins;
"""

APPEND = (
    r"""
CREATE OR REPLACE FUNCTION django_eventsource_append_v3(
    p_tenant text,
    p_aggregate uuid,
    p_recorded timestamptz,
    p_events jsonb,
    p_expected integer,
    p_channel text,
    p_guard boolean
) RETURNS TABLE (o_position bigint, o_version integer, o_conflict text)
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
AS $function$
DECLARE
    v_current integer;
    v_floor bigint := 0;
    v_top bigint;
    v_probe bigint;
    v_positions bigint[];
    v_versions integer[];
    v_conflict text;
BEGIN
    -- As django_eventsource_append_v2 (migration 0004) up to the INSERT.
    IF current_setting('transaction_isolation') <> 'read committed'
            AND pg_current_xact_id_if_assigned() IS NOT NULL THEN
        v_top := pg_current_xact_id()::text::bigint;
    END IF;
    LOCK TABLE django_eventsource_event IN ROW EXCLUSIVE MODE;
    IF v_top IS NOT NULL THEN
        BEGIN
            INSERT INTO django_eventsource_xid_probe VALUES (0) RETURNING xmin::text::bigint
                INTO v_probe;
            RAISE EXCEPTION USING ERRCODE = 'P0004';
        EXCEPTION WHEN SQLSTATE 'P0004' THEN
            NULL;
        END;
        v_floor := (v_top & ~4294967295::bigint) | v_probe;
        IF v_floor < v_top THEN
            v_floor := v_floor + 4294967296;
        END IF;
    END IF;
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
    IF p_guard THEN
        -- Inside the caller's transaction: a unique violation rolls back this INSERT alone
        -- (the block is a subtransaction) and is reported as a row, not raised.
        BEGIN
"""
    + _INSERT
    + r"""
        EXCEPTION WHEN unique_violation THEN
            GET STACKED DIAGNOSTICS v_conflict = CONSTRAINT_NAME;
            RETURN QUERY SELECT NULL::bigint, NULL::integer, v_conflict;
            RETURN;
        END;
    ELSE
"""
    + _INSERT
    + r"""
    END IF;
    IF v_positions IS NOT NULL THEN
        PERFORM pg_notify(p_channel, '');
        RETURN QUERY SELECT unnest(v_positions), unnest(v_versions), NULL::text;
    END IF;
END
$function$
"""
)

DROP = (
    "DROP FUNCTION IF EXISTS django_eventsource_append_v3("
    "text, uuid, timestamptz, jsonb, integer, text, boolean)"
)


def create(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(APPEND)


def drop(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP)


class Migration(migrations.Migration):
    dependencies = [
        ("django_eventsource", "0007_horizon_running_at_the_read"),
    ]

    operations = [migrations.RunPython(create, drop)]

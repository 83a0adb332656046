"""PostgreSQL: a writer-scoped read horizon (only event writers hold readers back).

Until this migration the read horizon was ``pg_snapshot_xmin``: every transaction in the
whole cluster that held a transaction id held every reader back, including transactions in
other databases and ones that never touch the event table. This migration ships:

* ``django_eventsource_append_v2``: the append of 0003, which first takes
  ``LOCK TABLE … IN ROW EXCLUSIVE MODE``, so that a writer shows in ``pg_locks`` before its
  INSERT's snapshot is taken (the INSERT's own lock may be taken after its snapshot). A
  transaction that is not READ COMMITTED and already had a transaction id inserts under an
  old transaction snapshot: its stamp also takes a transaction id assigned after the lock
  (a rolled-back subtransaction's insert into ``django_eventsource_xid_probe``), so that it
  still sorts after every event a reader could have passed.
* ``django_eventsource_horizon_v1(snapshot)``: the horizon of ``docs/concepts/ordering.md``,
  evaluated once per reading statement with that statement's snapshot.

Both pin their ``search_path`` to the one in force when they are created, so that a schema
earlier on a caller's path cannot shadow the table or the functions they use.

The SQL is frozen here (the ``post_migrate`` guard runs it where tables were made without
migrations); a later change ships new function names in a new migration. 0003's function
stays until a later migration drops it. SQLite needs nothing: the operations are no-ops there.
"""

from __future__ import annotations

from typing import Any

from django.db import migrations

PROBE = r"""
CREATE UNLOGGED TABLE IF NOT EXISTS django_eventsource_xid_probe (id integer)
"""

APPEND = r"""
CREATE OR REPLACE FUNCTION django_eventsource_append_v2(
    p_tenant text,
    p_aggregate uuid,
    p_recorded timestamptz,
    p_events jsonb,
    p_expected integer,
    p_channel text
) RETURNS TABLE (o_position bigint, o_version integer)
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
AS $function$
DECLARE
    v_current integer;
    v_floor bigint := 0;
    v_top bigint;
    v_probe bigint;
BEGIN
    -- Not READ COMMITTED and a transaction id taken before this append: the INSERT below
    -- would run under the transaction's old snapshot, not one taken after the lock.
    IF current_setting('transaction_isolation') <> 'read committed'
            AND pg_current_xact_id_if_assigned() IS NOT NULL THEN
        v_top := pg_current_xact_id()::text::bigint;
    END IF;
    -- First: a writer shows in pg_locks before its INSERT's snapshot is taken.
    LOCK TABLE django_eventsource_event IN ROW EXCLUSIVE MODE;
    IF v_top IS NOT NULL THEN
        -- A transaction id assigned after the lock is at least the next id of every reader's
        -- snapshot that did not see the lock: the stamp takes it, so the events sort after
        -- everything such a reader may have passed. A subtransaction gets one by writing;
        -- rolling it back keeps the id (in v_probe) and leaves nothing behind.
        BEGIN
            INSERT INTO django_eventsource_xid_probe VALUES (0) RETURNING xmin::text::bigint
                INTO v_probe;
            RAISE EXCEPTION USING ERRCODE = 'P0004';
        EXCEPTION WHEN SQLSTATE 'P0004' THEN
            NULL;
        END;
        -- pg_locks and xmin show 32-bit ids: put the probe's id in the epoch of our own.
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
            v_floor,
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

HORIZON = r"""
CREATE OR REPLACE FUNCTION django_eventsource_horizon_v1(p_snapshot pg_snapshot)
RETURNS bigint
LANGUAGE plpgsql VOLATILE PARALLEL RESTRICTED
SET search_path FROM CURRENT
AS $function$
DECLARE
    v_xmin bigint := pg_snapshot_xmin(p_snapshot)::text::bigint;
    v_sleep text;
    v_writers bigint[];
    v_horizon bigint;
BEGIN
    -- The cheap horizon hides no committed event: nothing to gain. The highest visible
    -- stamp is one backward probe of the (stamp, position) index whatever the plan (an
    -- EXISTS on "stamp >= v_xmin" gets a generic plan that may scan the table). On a
    -- standby pg_locks does not show the primary's writers: keep the cheap one there too.
    IF COALESCE((SELECT e.stamp FROM django_eventsource_event e
                 ORDER BY e.stamp DESC, e.position DESC LIMIT 1), -1) < v_xmin
            OR pg_is_in_recovery() THEN
        RETURN v_xmin;
    END IF;
    -- Fault injection for the test suite only: widen the race between the caller's
    -- snapshot and the pg_locks read below.
    v_sleep := current_setting('django_eventsource.horizon_test_sleep', true);
    IF v_sleep <> '' THEN
        PERFORM pg_sleep(v_sleep::float8);
    END IF;
    -- 1. Who writes the event table now (read AFTER the caller's snapshot): one scan of
    --    pg_locks, grouped by transaction (prepared ones have no pid). A backend's own ids
    --    are its granted ExclusiveLock transactionid rows (top level and subtransactions);
    --    a ShareLock transactionid row is a wait on ANOTHER transaction.
    SELECT COALESCE(array_agg(w.xid), '{}') INTO v_writers
    FROM (
        SELECT unnest(array_agg(l.transactionid::text::bigint) FILTER (
                   WHERE l.locktype = 'transactionid' AND l.mode = 'ExclusiveLock'
                   AND l.granted)) AS xid,
               bool_or(l.locktype = 'relation'
                   AND l.relation = 'django_eventsource_event'::regclass
                   AND l.mode = 'RowExclusiveLock' AND l.granted) AS writes
        FROM pg_locks l
        WHERE l.locktype = 'transactionid'
           OR l.database = (SELECT d.oid FROM pg_database d
                            WHERE d.datname = current_database())
        GROUP BY l.virtualtransaction
    ) w
    WHERE w.writes;
    -- 2. Then: a transaction running in the snapshot (or our own) holds readers back if it
    --    writes the event table, or if it has ended since the snapshot (its events may be
    --    committed yet invisible to the caller). pg_locks shows 32-bit ids.
    SELECT min(x.xid) INTO v_horizon
    FROM (
        SELECT s::text::bigint AS xid FROM pg_snapshot_xip(p_snapshot) AS s
        UNION ALL
        SELECT pg_current_xact_id_if_assigned()::text::bigint
    ) x
    WHERE x.xid IS NOT NULL AND (
        (x.xid & 4294967295) = ANY (v_writers)
        OR pg_xact_status(x.xid::text::xid8) IS DISTINCT FROM 'in progress'  -- ended since
    );
    RETURN COALESCE(v_horizon, pg_snapshot_xmax(p_snapshot)::text::bigint);
END
$function$
"""

#: Pin the search_path of 0003's function too (it stays until a later migration drops it).
PIN_V1 = (
    "ALTER FUNCTION django_eventsource_append_v1(text, uuid, timestamptz, jsonb, integer, text)"
    " SET search_path FROM CURRENT"
)

DROP = (
    "DROP FUNCTION IF EXISTS django_eventsource_horizon_v1(pg_snapshot);"
    "DROP FUNCTION IF EXISTS django_eventsource_append_v2("
    "text, uuid, timestamptz, jsonb, integer, text);"
    "DROP TABLE IF EXISTS django_eventsource_xid_probe;"
    "ALTER FUNCTION django_eventsource_append_v1(text, uuid, timestamptz, jsonb, integer, text)"
    " RESET search_path"
)


def create(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        for sql in (PROBE, APPEND, HORIZON, PIN_V1):
            schema_editor.execute(sql)


def drop(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP)


class Migration(migrations.Migration):
    dependencies = [
        ("django_eventsource", "0003_append_function"),
    ]

    operations = [migrations.RunPython(create, drop)]

"""PostgreSQL: ``django_eventsource_horizon_v2``, a narrower "ended since" term.

Version 1 held readers back at any transaction of the reader's snapshot that was no longer
running when checked *after* the ``pg_locks`` read. On a busy server some short, unrelated
transaction (any database) nearly always ends in that window, so a reader often stopped
short of events that had committed long before: ``read_all`` right after a commit could
miss it, and a catch-up could end early. Version 2 holds readers back only at a
transaction that

* writes the event table when ``pg_locks`` is read (unchanged), or
* is gone from ``pg_locks`` at that read (it ended between the snapshot and the read)
  and *committed* (a rolled-back one wrote nothing anyone can read).

A transaction still running at the read but not writing the event table needs no term:
any append it makes takes the lock after the read, so its INSERT runs under a snapshot
taken after the read (or, when not READ COMMITTED, its stamp takes an id assigned after
the lock), and its events sort after everything the reader passed. That was already the
argument for transactions still running after the check; it holds from the read on.

The SQL is frozen here (``post_migrate`` creates it where tables were made without
migrations). Version 1 stays until a later migration drops it, for processes of the
previous release still running during a deploy. SQLite needs nothing.
"""

from __future__ import annotations

from typing import Any

from django.db import migrations

HORIZON = r"""
CREATE OR REPLACE FUNCTION django_eventsource_horizon_v2(p_snapshot pg_snapshot)
RETURNS bigint
LANGUAGE plpgsql VOLATILE PARALLEL RESTRICTED
SET search_path FROM CURRENT
AS $function$
DECLARE
    v_xmin bigint := pg_snapshot_xmin(p_snapshot)::text::bigint;
    v_sleep text;
    v_writers bigint[];
    v_running bigint[];
    v_horizon bigint;
BEGIN
    -- The cheap horizon hides no committed event: nothing to gain. The highest visible
    -- stamp is one backward probe of the (stamp, position) index whatever the plan. On a
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
    -- 1. One scan of pg_locks (read AFTER the caller's snapshot), grouped by transaction
    --    (prepared ones have no pid): every transaction id that is running (any database:
    --    a transaction holds ExclusiveLock on its own ids until it ends, subtransactions
    --    included), and those of transactions that write the event table. A ShareLock
    --    transactionid row is a wait on ANOTHER transaction. pg_locks shows 32-bit ids.
    SELECT COALESCE(array_agg(w.xid) FILTER (WHERE w.writes), '{}'),
           COALESCE(array_agg(w.xid), '{}')
    INTO v_writers, v_running
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
    ) w;
    -- Fault injection for the test suite only: a transaction that ends after the read
    -- must not hold the reader back.
    v_sleep := current_setting('django_eventsource.horizon_test_sleep_after', true);
    IF v_sleep <> '' THEN
        PERFORM pg_sleep(v_sleep::float8);
    END IF;
    -- 2. A transaction running in the snapshot (or our own) holds readers back if it
    --    writes the event table, or if it ended between the snapshot and the read and
    --    committed (its events may be committed yet invisible to the caller).
    SELECT min(x.xid) INTO v_horizon
    FROM (
        SELECT s::text::bigint AS xid FROM pg_snapshot_xip(p_snapshot) AS s
        UNION ALL
        SELECT pg_current_xact_id_if_assigned()::text::bigint
    ) x
    WHERE x.xid IS NOT NULL AND (
        (x.xid & 4294967295) = ANY (v_writers)
        OR (NOT (x.xid & 4294967295) = ANY (v_running)  -- ended before the read
            AND pg_xact_status(x.xid::text::xid8) IS DISTINCT FROM 'aborted')
    );
    RETURN COALESCE(v_horizon, pg_snapshot_xmax(p_snapshot)::text::bigint);
END
$function$
"""

DROP = "DROP FUNCTION IF EXISTS django_eventsource_horizon_v2(pg_snapshot)"


def create(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(HORIZON)


def drop(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP)


class Migration(migrations.Migration):
    dependencies = [
        ("django_eventsource", "0006_projection_state_machine"),
    ]

    operations = [migrations.RunPython(create, drop)]

"""PostgreSQL: ``django_eventsource_horizon_v3``, a writer that is committing still counts.

Version 2 (migration 0007) let a transaction of the reader's snapshot go when it was still
in ``pg_locks`` at the read but held no ``ROW EXCLUSIVE`` lock on the event table then: it
had not appended yet, so anything it appends later sorts after what the reader passes.
That inference is wrong for a transaction that is *committing*. PostgreSQL commits in
this order: the commit record and the commit log, then the transaction leaves the
process array (snapshots now see its rows), then it releases its locks, and fast-path
relation locks (``ROW EXCLUSIVE`` on one table is one) go before its transaction-id lock.
A ``pg_locks`` read in between shows the id without the table lock, and version 2 took a
writer whose events were committed, but invisible to the reader's snapshot, for a
bystander: the reader passed events with higher stamps, and those events were skipped
for good. The test suite's global-order test lost one to three events about once in 25
runs under load; a probe that reads in a loop beside four writers saw it once in about
15,000 reads.

Version 3 checks each such transaction's status right after the ``pg_locks`` read: one
that is still running then had not started to commit while ``pg_locks`` was read (it
leaves the process array before it releases any lock), so it had not appended and may
go; one that has committed by then holds readers back. A transaction gone from
``pg_locks`` at the read holds them back unless it rolled back, as before.

0007's ``django_eventsource_horizon_v2`` is replaced by a call to version 3, so processes
of the previous release still running during a deploy read safely too. The SQL is frozen
here (``post_migrate`` creates it where tables were made without migrations). SQLite
needs nothing.
"""

from __future__ import annotations

from typing import Any

from django.db import migrations

#: Which transactions of the reader's snapshot (and the reader's own) hold readers back,
#: given the writers and the running transactions of one ``pg_locks`` read just before.
HOLDS = r"""
        (x.xid & 4294967295) = ANY (v_writers)
        OR CASE WHEN (x.xid & 4294967295) = ANY (v_running)
                -- still there at the read: committing (its table lock may already be
                -- released) unless it is still running now
                THEN pg_xact_status(x.xid::text::xid8) = 'committed'
                -- gone at the read: ended since the snapshot
                ELSE pg_xact_status(x.xid::text::xid8) IS DISTINCT FROM 'aborted'
           END
"""

HORIZON = (
    r"""
CREATE OR REPLACE FUNCTION django_eventsource_horizon_v3(p_snapshot pg_snapshot)
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
    -- 2. At once, in its own statement (so after that read): a transaction running in the
    --    snapshot (or our own) holds readers back if it wrote the event table at the read,
    --    or has committed by now (a writer that was committing at the read may have
    --    released its table lock already), or was gone at the read and did not roll back.
    SELECT min(x.xid) INTO v_horizon
    FROM (
        SELECT s::text::bigint AS xid FROM pg_snapshot_xip(p_snapshot) AS s
        UNION ALL
        SELECT pg_current_xact_id_if_assigned()::text::bigint
    ) x
    WHERE x.xid IS NOT NULL AND ("""
    + HOLDS
    + r"""    );
    -- Fault injection for the test suite only: a transaction that ends after the read
    -- (and the status check) must not hold the reader back.
    v_sleep := current_setting('django_eventsource.horizon_test_sleep_after', true);
    IF v_sleep <> '' THEN
        PERFORM pg_sleep(v_sleep::float8);
    END IF;
    RETURN COALESCE(v_horizon, pg_snapshot_xmax(p_snapshot)::text::bigint);
END
$function$
"""
)

#: 0007's function, for processes of the previous release: now version 3's rule.
V2_CALLS_V3 = r"""
CREATE OR REPLACE FUNCTION django_eventsource_horizon_v2(p_snapshot pg_snapshot)
RETURNS bigint
LANGUAGE sql VOLATILE PARALLEL RESTRICTED
SET search_path FROM CURRENT
AS $function$ SELECT django_eventsource_horizon_v3(p_snapshot) $function$
"""

DROP = "DROP FUNCTION IF EXISTS django_eventsource_horizon_v3(pg_snapshot)"


def create(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(HORIZON)
        schema_editor.execute(V2_CALLS_V3)


def drop(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        from importlib import import_module

        previous = import_module("django_eventsource.migrations.0007_horizon_running_at_the_read")
        schema_editor.execute(previous.HORIZON)
        schema_editor.execute(DROP)


class Migration(migrations.Migration):
    dependencies = [
        ("django_eventsource", "0008_guarded_append"),
    ]

    operations = [migrations.RunPython(create, drop)]

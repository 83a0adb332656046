"""The read horizon on PostgreSQL: only event writers hold readers back.

Readers see events whose stamp is below the *horizon* ``h`` of their statement's snapshot
``S``, in ``(stamp, position)`` order, and resume after the pair they passed. The horizon is
computed by ``django_eventsource_horizon_v3`` (migration 0009), once per reading statement
(an InitPlan), from ``pg_current_snapshot()`` of that statement::

    h = min{ x in xip(S) (and our own transaction) :
             x holds ROW EXCLUSIVE on the event table when pg_locks is read,
             or x is gone from pg_locks at that read and did not roll back,
             or x is still in pg_locks at that read and has committed right after it }
        (xmax(S) when the set is empty)

in that order: ``S`` first, then one read of ``pg_locks``, then (in the next statement) the
status of each ``x``. Why no reader can pass an event that commits later (each step is
needed):

* The append takes ``LOCK TABLE … IN ROW EXCLUSIVE MODE`` as its first statement, so a
  writer shows in ``pg_locks`` before its INSERT's snapshot is taken, and until it starts
  to release its locks at the end.
* ``x`` in ``xip(S)`` holding that lock: ``h <= x <= `` the stamp of anything it writes.
* ``x`` in ``xip(S)`` that ended between ``S`` and the read: its events are invisible to
  ``S`` but may be committed, so ``h <= x`` as well. (Without this term a test that sleeps
  between the snapshot and the ``pg_locks`` read loses events: see the tests.) One that
  rolled back wrote nothing readable and is left out.
* ``x`` in ``xip(S)``, in ``pg_locks`` at the read without the table lock, and committed
  when its status is read just after: it may have been committing during the read.
  PostgreSQL makes a commit visible (the transaction leaves the process array) before it
  releases the transaction's locks, and it releases fast-path relation locks (the table
  lock is one) before the transaction-id lock, so a read in between sees a writer without
  its table lock. ``h <= x``. (Version 2 of the function let it go, and a reader in a loop
  beside four writers skipped an event about once in 15,000 reads; see migration 0009.)
* ``x`` in ``xip(S)``, without the table lock at the read and still running when its status
  is read: it was in the process array during the whole read, so it had not started to
  commit and had not appended. Any append it makes takes the lock after the read, so its
  INSERT runs under a snapshot taken after the read, which sees every event ``S`` saw. Its
  stamp is at least their highest and its position larger, so it sorts after everything
  the reader passed, whenever it ends. (A transaction that is not READ COMMITTED inserts
  under its old transaction snapshot; when it already had an id, the append makes its stamp
  at least an id assigned after the lock, which is at least ``xmax(S)``.) Version 1 of the
  function held readers back at these too when they ended before a later check: on a busy
  server, a short unrelated transaction nearly always did, and a read right after a commit
  could miss it.
* ``x`` not in ``xip(S)``: it started after ``S``, so its id, and thus its stamp, is at least
  ``xmax(S)``.
* Our own transaction is not in ``xip(S)``: when it has appended, it counts as a writer
  (as with the cluster-wide rule, a transaction never reads its own uncommitted events).

``pg_locks`` shows 32-bit ids (the function compares the low 32 bits); a transaction holds
``ExclusiveLock`` on each of its own ids until it ends (a ``ShareLock`` row is a wait on
another transaction); subtransactions and prepared transactions (no pid) are grouped by
virtual transaction. The function only reads ``pg_locks`` when the cheap horizon
``pg_snapshot_xmin`` would hide a committed event (one index probe decides), so an idle or
healthy server pays nothing; it also keeps the cheap horizon on a standby, where ``pg_locks``
does not show the primary's writers.

What still holds readers back, by design: a transaction that appended events and has not
committed. `horizon_holders` names those transactions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from django.db import connections

from django_eventsource.constants import EVENT_TABLE

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

__all__ = [
    "CLUSTER_HORIZON_SQL",
    "HORIZON_SQL",
    "TEST_SLEEP_AFTER_SETTING",
    "TEST_SLEEP_SETTING",
    "HorizonHolder",
    "has_appended",
    "has_transaction_id",
    "hidden_events",
    "horizon_holder",
    "horizon_holders",
]

#: The exclusive upper bound on the stamps a reading statement may see.
HORIZON_SQL = "(SELECT django_eventsource_horizon_v3(pg_current_snapshot()))"

#: The cluster-wide rule that the writer-scoped one replaced (for comparisons, such as the
#: benchmark): every transaction with an id anywhere on the server holds readers back.
CLUSTER_HORIZON_SQL = "(SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint)"

#: A session setting (seconds) that makes the horizon function sleep between the reading
#: statement's snapshot and its ``pg_locks`` read: fault injection for the test suite only.
TEST_SLEEP_SETTING = "django_eventsource.horizon_test_sleep"
#: The same, for a sleep right after the ``pg_locks`` read.
TEST_SLEEP_AFTER_SETTING = "django_eventsource.horizon_test_sleep_after"


@dataclass(frozen=True)
class HorizonHolder:
    """A transaction that appended events and has not ended (PostgreSQL): its events, and
    every event committed after it took its id, wait until it commits or rolls back."""

    #: The backend's process id (None for a prepared transaction).
    pid: int | None
    #: Seconds since the transaction started (or was prepared).
    age_seconds: float
    #: The backend's state (``idle in transaction``, ``active``, ``prepared``).
    state: str
    application: str
    #: The query text: only filled in when asked for (it may show other users' data).
    query: str = ""
    database: str = ""
    user: str = ""
    #: The transaction id (64-bit).
    transaction_id: int | None = None

    def describe(self) -> str:
        """One line for messages and command output (without the query text)."""
        who = f"pid {self.pid}" if self.pid is not None else "a prepared transaction"
        parts = [
            f"{who} ({self.state or 'unknown state'}, {self.age_seconds:.0f}s",
            f"application {self.application!r}",
            f"user {self.user!r}",
            f"database {self.database!r}",
        ]
        return ", ".join(parts) + f", transaction {self.transaction_id})"


# One scan of pg_locks grouped by virtual transaction (a self-join costs far more), joined to
# the backends' and prepared transactions' details. The query text is a separate column.
_HOLDERS_SQL = f"""
WITH writers AS (
    SELECT l.virtualtransaction,
           max(l.pid) AS pid,
           array_agg(l.transactionid::text::bigint) FILTER (
               WHERE l.locktype = 'transactionid' AND l.mode = 'ExclusiveLock' AND l.granted
           ) AS xids,
           bool_or(l.locktype = 'relation' AND l.relation = '{EVENT_TABLE}'::regclass
                   AND l.mode = 'RowExclusiveLock' AND l.granted) AS writes
    FROM pg_locks l
    WHERE l.locktype = 'transactionid'
       OR l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
    GROUP BY l.virtualtransaction
)
SELECT w.pid,
       COALESCE(a.backend_xid::text::bigint, p.transaction::text::bigint),
       EXTRACT(EPOCH FROM (now() - COALESCE(a.xact_start, p.prepared))),
       CASE WHEN w.pid IS NULL THEN 'prepared' ELSE a.state END,
       COALESCE(a.application_name, p.gid),
       COALESCE(a.datname, p.database),
       COALESCE(a.usename, p.owner),
       CASE WHEN %s THEN left(a.query, 200) ELSE '' END
FROM writers w
LEFT JOIN pg_stat_activity a ON a.pid = w.pid
LEFT JOIN pg_prepared_xacts p
       ON w.pid IS NULL AND p.transaction::text::bigint = ANY (w.xids)
WHERE w.writes AND w.xids IS NOT NULL
  AND w.pid IS DISTINCT FROM pg_backend_pid()
  AND (a.backend_xid IS NOT NULL OR p.transaction IS NOT NULL)
ORDER BY 3 DESC NULLS LAST
"""


def horizon_holders(using: str = "default", *, with_query: bool = False) -> list[HorizonHolder]:
    """On PostgreSQL, the transactions that hold readers back: those that appended events
    (they hold ``ROW EXCLUSIVE`` on the event table) and have not ended, oldest first.

    Transactions that never wrote the event table (other databases, other tables, idle
    sessions) hold nobody back and are not listed. ``with_query`` adds each one's current
    query text (the first 200 characters); leave it off wherever the caller may not see
    other users' SQL. Empty on other backends (nothing is ever held back there).
    """
    connection = connections[using]
    if connection.vendor != "postgresql":
        return []
    with connection.cursor() as cursor:
        cursor.execute(_HOLDERS_SQL, [with_query])
        rows = cursor.fetchall()
    return [
        HorizonHolder(
            pid=None if pid is None else int(pid),
            age_seconds=float(age or 0),
            state=state or "",
            application=application or "",
            query=query or "",
            database=database or "",
            user=user or "",
            transaction_id=None if xid is None else int(xid),
        )
        for pid, xid, age, state, application, database, user, query in rows
    ]


def horizon_holder(using: str = "default", *, with_query: bool = False) -> HorizonHolder | None:
    """The oldest of `horizon_holders` (None when nothing holds readers back)."""
    holders = horizon_holders(using, with_query=with_query)
    return holders[0] if holders else None


def hidden_events(using: str, tenant_id: str | None) -> int:
    """Events this connection can see that ``read_all`` cannot yet (above the horizon)."""
    sql = f"SELECT COUNT(*) FROM {EVENT_TABLE} WHERE stamp >= {HORIZON_SQL}"
    params: list[str] = []
    if tenant_id is not None:
        sql += " AND tenant_id = %s"
        params.append(tenant_id)
    with connections[using].cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    return int(row[0]) if row else 0


def has_transaction_id(connection: BaseDatabaseWrapper) -> bool:
    """Whether the connection's transaction has written anything (it has an id)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_current_xact_id_if_assigned() IS NOT NULL")
        row = cursor.fetchone()
    return bool(row and row[0])


def has_appended(connection: BaseDatabaseWrapper) -> bool:
    """Whether the connection's transaction has appended events (it then holds readers back,
    its own reads included, until it ends)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_current_xact_id_if_assigned() IS NOT NULL AND EXISTS ("
            "SELECT FROM pg_locks WHERE pid = pg_backend_pid() AND locktype = 'relation' "
            "AND relation = %s::regclass AND mode = 'RowExclusiveLock' AND granted)",
            [EVENT_TABLE],
        )
        row = cursor.fetchone()
    return bool(row and row[0])

"""Maintenance of the event table: detecting and repairing stamps that sit above the server.

On PostgreSQL every event carries an ordering ``stamp`` derived from transaction ids (see
`django_eventsource.backends.postgresql`), and readers only see rows whose stamp is below
the oldest running transaction id. A *logical* dump and restore (``pg_dump`` / ``pg_restore``
into another cluster) copies the stamps but not the server's transaction counter. When the new
cluster's counter is lower than the old one's, the restored stamps sit above it, and:

* nothing appended before the dump that a projection had not read yet becomes visible;
* every new append takes ``GREATEST(its xid, max(stamp))``, i.e. the restored maximum, which is
  still above the horizon: the feed stalls until the counter catches up (possibly never).

**Detection.** A stamp is ``GREATEST(xid of the writer, stamps it saw)``, so by induction every
stored stamp is at most some transaction id that was already assigned, and thus *below* the next
id the server will assign (``pg_snapshot_xmax`` of a current snapshot). In-flight transactions
cannot explain a stamp at or above it. ``max(stamp) >= next xid`` is therefore the signature of
a restore (or of a hand-edited table), with no false positive. Reading it assigns no xid.

**Repair** (`rebase_stamps`). Inside one transaction that holds an ``EXCLUSIVE`` lock on
the event table (appends wait, readers do not), every stamp is rewritten below the oldest
running transaction id, preserving the ``(stamp, position)`` order exactly. Checkpoints are
plain positions and readers resume with ``(stamp, position) > ((SELECT stamp … WHERE position =
p), p)``, which looks the checkpoint's *current* stamp up, so every checkpoint stays valid.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from django.db import connections

from django_eventsource.conf import database_alias
from django_eventsource.constants import EVENT_TABLE as TABLE
from django_eventsource.exceptions import NotSupportedOnBackend
from django_eventsource.transactions import write_transaction

__all__ = ["RebaseResult", "StampDiagnosis", "diagnose_stamps", "rebase_stamps"]


@dataclass(frozen=True)
class StampDiagnosis:
    """The event table's stamps compared with the server's transaction counter (PostgreSQL)."""

    #: The database alias diagnosed.
    using: str
    #: The highest stored stamp (None: no events).
    max_stamp: int | None
    #: The oldest running transaction id: readers see stamps strictly below it.
    horizon: int
    #: The next transaction id the server will assign.
    next_xid: int

    @property
    def needs_rebase(self) -> bool:
        """Whether stamps sit where no transaction of this server can have put them."""
        return self.max_stamp is not None and self.max_stamp >= self.next_xid

    @property
    def excess(self) -> int:
        """How far the highest stamp is above the next transaction id (0 when healthy)."""
        return max((self.max_stamp or 0) - self.next_xid + 1, 0) if self.needs_rebase else 0

    def message(self) -> str:
        """One line for status output, checks and the command."""
        if not self.needs_rebase:
            if self.max_stamp is None:
                return "No events: no stamps to check."
            return (
                f"Event stamps are consistent with the server (max {self.max_stamp}, "
                f"next transaction id {self.next_xid})."
            )
        return (
            f"Event stamps (max {self.max_stamp}) are above the server's transaction counter "
            f"(next {self.next_xid}): new events stay invisible. Restored from a dump? "
            "Run manage.py rebase_event_stamps."
        )

    def as_dict(self) -> dict[str, Any]:
        """The fields and the derived ``needs_rebase`` and ``excess``, as a plain dict."""
        return {**asdict(self), "needs_rebase": self.needs_rebase, "excess": self.excess}


def _require_postgresql(using: str) -> None:
    vendor = connections[using].vendor
    if vendor != "postgresql":
        raise NotSupportedOnBackend(
            "Re-basing event stamps",
            vendor,
            "Only PostgreSQL stores transaction-id stamps; on SQLite the stamp is always 0 and "
            "positions are already commit-ordered, so there is nothing to re-base.",
        )


def _diagnose(cursor: Any, using: str) -> StampDiagnosis:
    # One statement, one snapshot: the max and the counters are read at the same instant.
    cursor.execute(
        f"SELECT (SELECT MAX(stamp) FROM {TABLE}), "
        "pg_snapshot_xmin(s)::text::bigint, pg_snapshot_xmax(s)::text::bigint "
        "FROM (SELECT pg_current_snapshot() AS s) AS snap"
    )
    max_stamp, horizon, next_xid = cursor.fetchone()
    return StampDiagnosis(
        using=using,
        max_stamp=None if max_stamp is None else int(max_stamp),
        horizon=int(horizon),
        next_xid=int(next_xid),
    )


def diagnose_stamps(using: str | None = None) -> StampDiagnosis | None:
    """Compare the stored stamps with the server's counter; None on backends without stamps.

    Cheap (one index probe) and side-effect free: it assigns no transaction id, so it never
    holds the horizon back itself.
    """
    using = database_alias(using)
    if connections[using].vendor != "postgresql":
        return None
    with connections[using].cursor() as cursor:
        return _diagnose(cursor, using)


@dataclass(frozen=True)
class RebaseResult:
    """What `rebase_stamps` did (or, with ``dry_run``, would do)."""

    before: StampDiagnosis
    #: Events examined (0 when the stamps were healthy and nothing was planned).
    events: int
    #: Events whose stamp changes.
    changed: int
    #: Distinct stamps after the re-base (as few as the order allows).
    stamps: int
    #: The new lowest and highest stamps (None: no events).
    new_min: int | None
    new_max: int | None
    dry_run: bool


# Rows in (stamp, position) order get a group number that grows by one wherever the position
# goes *down*. Within a group positions increase, so giving the whole group a single stamp keeps
# the (stamp, position) order exactly; a new group (a larger stamp) is needed only where the
# stamp order and the position order disagree, i.e. where commits landed out of position order.
# That keeps the new stamps dense (usually a handful) instead of one per old stamp, so they fit
# below even a freshly initialised server's transaction counter. ``%s`` is the new maximum.
_PLAN = f"""
WITH ordered AS (
    SELECT position, stamp,
           CASE WHEN position < LAG(position) OVER (ORDER BY stamp, position)
                THEN 1 ELSE 0 END AS step
    FROM {TABLE}
), grouped AS (
    SELECT position, stamp,
           SUM(step) OVER (ORDER BY stamp, position ROWS UNBOUNDED PRECEDING) AS grp
    FROM ordered
), plan AS (
    SELECT position, stamp, (%s - MAX(grp) OVER () + grp)::bigint AS new_stamp
    FROM grouped
)
"""


def rebase_stamps(
    using: str | None = None, *, dry_run: bool = False, force: bool = False
) -> RebaseResult:
    """Rewrite every stamp below the oldest running transaction id, keeping the order exactly.

    Does nothing (``changed == 0``) when the stamps are healthy, unless ``force``.

    Events are append-only through the ORM
    ([`AppendOnlyError`][django_eventsource.AppendOnlyError]), and
    rightly so: no application code may change history. This is raw SQL on purpose: it changes
    no event, only the *ordering key* that ties the events to this server's transaction
    counter, which a logical restore broke. It must run here and nowhere else:

    * ``LOCK TABLE … IN EXCLUSIVE MODE`` waits for every transaction that has appended (they
      hold ``ROW EXCLUSIVE`` until commit) and makes new appends wait until we commit; readers
      keep reading (the old stamps, until the commit).
    * Under the lock, every running transaction's id is at least the horizon ``h`` read now,
      so mapping the stamps into ``… h - 1`` makes all events visible at commit and every later
      append (stamp ``>= its xid >= h``) sorts after all of them: no reader can skip one.
      An append that waited for the lock reads the highest stamp under a snapshot taken
      after the lock was granted (READ COMMITTED), so it sees the re-based stamps, not the
      restored ones (``test_an_append_waiting_on_the_rebase_lands_after_it_and_stays_visible``).
    * The order of ``(stamp, position)`` is preserved exactly (see ``_PLAN``), and checkpoints
      are positions whose stamp readers look up afresh: projections resume where they were.

    Raises [`NotSupportedOnBackend`][django_eventsource.NotSupportedOnBackend] on SQLite (nothing
    to re-base).
    Rewrites the rows whose stamp changes (plan a ``VACUUM`` on a large table afterwards).
    """
    using = database_alias(using)
    _require_postgresql(using)
    connection = connections[using]
    with write_transaction(using), connection.cursor() as cursor:
        if not dry_run:
            cursor.execute(f"LOCK TABLE {TABLE} IN EXCLUSIVE MODE")
        before = _diagnose(cursor, using)
        if not (before.needs_rebase or force):
            return RebaseResult(before, 0, 0, 0, None, None, dry_run)
        top = before.horizon - 1
        cursor.execute(
            _PLAN + "SELECT COUNT(*), COUNT(*) FILTER (WHERE stamp <> new_stamp), "
            "COUNT(DISTINCT new_stamp), MIN(new_stamp), MAX(new_stamp) FROM plan",
            [top],
        )
        events, changed, stamps, new_min, new_max = cursor.fetchone()
        if not dry_run and changed:
            cursor.execute(
                _PLAN + f"UPDATE {TABLE} AS e SET stamp = plan.new_stamp FROM plan "
                "WHERE e.position = plan.position AND e.stamp <> plan.new_stamp",
                [top],
            )
    return RebaseResult(
        before=before,
        events=int(events),
        changed=int(changed),
        stamps=int(stamps),
        new_min=None if new_min is None else int(new_min),
        new_max=None if new_max is None else int(new_max),
        dry_run=dry_run,
    )

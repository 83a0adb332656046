"""Runner heartbeats that keep beating while the runner is busy.

A runner writes ``ProjectionState.heartbeat_at`` between batches, so a worker that is alive
but busy (a long batch, a retry's backoff, a wait on the ordering horizon) would stop beating
there and be reported `stale`, a false alarm that gets healthy workers killed. So each runner
also runs a [`Heartbeat`][django_eventsource.heartbeats.Heartbeat]: a thread with its own
database connection that beats every ``HEARTBEAT_INTERVAL`` while the runner holds
projections, whatever its loop is doing, and dies with the process (kill -9) or stops with
the run. It beats to its own table (`RunnerHeartbeat`, one row per lock owner), never to the
state row: on PostgreSQL a batch holds that row's lock until it commits, and a beat that
waited for it would wait for the whole batch. The status takes the newer of the two beats
([`merge_beats`][django_eventsource.heartbeats.merge_beats]).

SQLite has one write lock, which a batch holds until it commits: no beat can be written
meanwhile (and another runner's batch blocks this one's beats too). There the status asks
the operating system instead: a runner of this host whose process is alive
(``backends.base.runner_alive``) is not `stale`, however old
its beats. A runner on another host (a database file shared over the network, which SQLite
does not recommend) can only be judged by its beats, and a batch of it longer than three
heartbeat intervals reads `stale` while it runs.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from django.db import DatabaseError, connections
from django.utils import timezone

from django_eventsource.backends.base import runner_alive
from django_eventsource.text import printable
from django_eventsource.transactions import write_transaction

if TYPE_CHECKING:
    from django_eventsource.models import ProjectionState

__all__ = ["JOIN_TIMEOUT", "PRUNE_AFTER", "Heartbeat", "merge_beats"]

logger = logging.getLogger(__name__)

#: Seconds a stopping runner waits for its heartbeat thread to end, beyond two intervals.
JOIN_TIMEOUT = 5.0
#: Beats older than this (seconds) are deleted when a heartbeat starts: a killed runner's
#: row is never read again once its projection is taken over, and is long stale anyway.
PRUNE_AFTER = 3600.0


class Heartbeat:
    """A thread that beats for the lock owners a runner holds, every ``interval`` seconds,
    on a connection of its own (one per database), until
    [`stop`][django_eventsource.heartbeats.Heartbeat.stop].

    The runner adds an owner when it takes a projection's lock and discards it when it lets
    go; the thread starts with the first and stops (joined, its connections closed, its rows
    deleted) with the last. Its first beat comes one interval after an owner is added: the
    runner beats the state row when it takes a projection, and a run shorter than an
    interval never costs the thread a query.
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._owners: dict[str, str] = {}  # owner -> database alias
        self._guard = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()  # the running thread's own
        self._failing: set[str] = set()  # databases its last beat could not be written to

    def add(self, owner: str, using: str) -> None:
        """Beat for ``owner`` (a lock's owner id) in database ``using``; starts the thread."""
        with self._guard:
            self._owners[owner] = using
            if self._thread is None:
                # Each thread has its own stop event: one that outlives its stop (a beat
                # that waits for the database) never beats on for its successor.
                self._stopped = threading.Event()
                self._thread = threading.Thread(
                    target=self._run,
                    args=(self._stopped,),
                    name=f"django_eventsource heartbeat {owner}",
                    daemon=True,
                )
                self._thread.start()

    def discard(self, owner: str) -> None:
        """Stop beating for ``owner``; the last one stops the thread."""
        with self._guard:
            self._owners.pop(owner, None)
            last = not self._owners
        if last:
            self.stop()

    def stop(self) -> None:
        """Stop beating: the thread ends its beat in hand, deletes its rows, closes its
        connections, and is joined. A beat waits for the database at most about an
        interval (SQLite's write lock), so the join is bounded; a thread still waiting
        after that is left to end on its own (a daemon: it never holds the process)."""
        with self._guard:
            self._owners.clear()
            thread, self._thread = self._thread, None
            self._stopped.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=JOIN_TIMEOUT + 2 * self.interval)

    def _run(self, stopped: threading.Event) -> None:
        written: dict[str, str] = {}  # what it wrote (owner -> alias), deleted at the end
        try:
            pruned: set[str] = set()
            while not stopped.wait(self.interval):
                with self._guard:
                    owners = dict(self._owners) if not stopped.is_set() else {}
                for using in sorted(set(owners.values())):
                    mine = [owner for owner, alias in owners.items() if alias == using]
                    if self._beat(using, mine, prune=using not in pruned):
                        written.update(dict.fromkeys(mine, using))
                    pruned.add(using)
        finally:
            self._forget(written)
            connections.close_all()  # this thread's connections only

    def _connect(self, using: str) -> None:
        """The thread's connection: on SQLite, a beat waits for the write lock at most one
        interval (a batch holds it; the next beat tries again)."""
        connection = connections[using]
        if connection.connection is None:
            connection.ensure_connection()
            if connection.vendor == "sqlite":
                with connection.cursor() as cursor:
                    cursor.execute(f"PRAGMA busy_timeout = {max(int(self.interval * 1000), 50)}")

    def _beat(self, using: str, owners: list[str], *, prune: bool) -> bool:
        """Write the beat of ``owners``; returns whether it was written."""
        from django_eventsource.models import RunnerHeartbeat

        now = timezone.now()
        try:
            self._connect(using)
            with write_transaction(using):
                beats = RunnerHeartbeat.objects.using(using)
                if prune:
                    beats.filter(beat_at__lt=now - timedelta(seconds=PRUNE_AFTER)).delete()
                beats.bulk_create(
                    [RunnerHeartbeat(owner=owner, beat_at=now) for owner in owners],
                    update_conflicts=True,
                    unique_fields=["owner"],
                    update_fields=["beat_at"],
                )
        except DatabaseError as exc:
            # The next beat tries again (SQLite: a batch holds the write lock, as expected;
            # elsewhere a database restart, or no connection to spare: said once a streak).
            vendor = connections[using].vendor
            first = using not in self._failing
            self._failing.add(using)
            logger.log(
                logging.WARNING if first and vendor != "sqlite" else logging.DEBUG,
                "The runner's heartbeat could not be written (the next one tries again): %s",
                printable(exc),
                extra={"database": using, "error": str(exc)},
            )
            with contextlib.suppress(DatabaseError):
                connections[using].close()
            return False
        self._failing.discard(using)
        return True

    def _forget(self, written: dict[str, str]) -> None:
        """Delete the rows ``written``: a runner that stops cleanly leaves none."""
        from django_eventsource.models import RunnerHeartbeat

        for using in sorted(set(written.values())):
            mine = [owner for owner, alias in written.items() if alias == using]
            try:
                self._connect(using)
                RunnerHeartbeat.objects.using(using).filter(owner__in=mine).delete()
            except DatabaseError as exc:
                logger.debug(
                    "The runner's heartbeats could not be deleted: %s",
                    printable(exc),
                    extra={"database": using, "error": str(exc)},
                )


def merge_beats(
    states: Iterable[ProjectionState], using: str, *, now: datetime | None = None
) -> set[str]:
    """Give each state row the newer of its own beat and its runner's thread's
    (``heartbeat_at``, in place; one query). Returns the owners, among the rows still
    without a fresh beat, whose runner is known to be alive: on SQLite, a process of this
    host that lives (a batch holds the write lock, so no beat can be written; see the
    module's docstring). Empty elsewhere."""
    from django_eventsource.models import RunnerHeartbeat
    from django_eventsource.state import LIVE, stale_after

    claimed = [state for state in states if state.owner]
    if not claimed:
        return set()
    beats = dict(
        RunnerHeartbeat.objects.using(using)
        .filter(owner__in={state.owner for state in claimed})
        .values_list("owner", "beat_at")
    )
    now = now or timezone.now()
    alive = set()
    for state in claimed:
        beat = beats.get(state.owner)
        if beat is not None and (state.heartbeat_at is None or beat > state.heartbeat_at):
            state.heartbeat_at = beat
        fresh = (
            state.heartbeat_at is not None
            and (now - state.heartbeat_at).total_seconds() <= stale_after()
        )
        if (
            not fresh
            and state.status in LIVE
            and connections[using].vendor == "sqlite"
            and runner_alive(state.owner, since=state.heartbeat_at)
        ):
            alive.add(state.owner)
    return alive

"""Events that PostgreSQL's ordering horizon holds back, as the runner meets them.

After a read that returned everything readable, [`settle`][django_eventsource.runner.held.settle]
tells a momentary hold (re-read) from a real one (a transaction that appended events has not
committed: report the events held, never hide them). While a follower is idle,
[`HeldWatch`][django_eventsource.runner.held.HeldWatch] warns when such a transaction holds
its projections' events back for longer than ``MAX_HELD_SECONDS``. Neither does anything on
SQLite or with the in-memory store.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from django_eventsource.backends.postgresql.horizon import horizon_holder, horizon_holders
from django_eventsource.checkpoints import DatabaseCheckpointStore, measure_lag
from django_eventsource.exceptions import HorizonNotSettled
from django_eventsource.logs import tenant_text
from django_eventsource.runner.progress import logger
from django_eventsource.store import BaseEventStore, EventStore
from django_eventsource.text import printable

if TYPE_CHECKING:
    from django_eventsource.projections import Projection

__all__ = ["SETTLE_FIRST_PAUSE", "SETTLE_SECONDS", "HeldWatch", "settle"]

#: How long a run that has read everything readable re-reads while the horizon holds events
#: back and no appending transaction is open (a momentary hold: a transaction of the
#: cluster ended while the horizon was computed), before it returns reporting them held.
SETTLE_SECONDS = 2.0
#: The first pause between those re-reads (doubled each time, up to 0.1 s).
SETTLE_FIRST_PAUSE = 0.005


def _never() -> bool:
    return False


def _horizon_store(store: BaseEventStore) -> EventStore | None:
    """The store, if its backend has an ordering horizon (PostgreSQL)."""
    if isinstance(store, EventStore) and store.backend.horizon_sql() is not None:
        return store
    return None


def settle(
    store: BaseEventStore,
    position: int,
    tenant_id: str | None,
    *,
    strict: bool = False,
    halted: Callable[[], bool] = _never,
) -> int:
    """After a read that returned everything readable after ``position``: -1 if more
    events are readable now (read again), else how many the ordering horizon holds back.

    On PostgreSQL the horizon may hold events back for one read without any appending
    transaction open (a transaction of the cluster ended while it was computed). Then
    this re-reads with a short backoff for up to ``SETTLE_SECONDS``, so that a catch-up
    does not stop early saying it caught up; a real hold (a transaction that appended
    and has not committed) returns at once, and so does a runner that is ``halted``. Events
    still held are returned, never hidden. ``strict``: no appending transaction can be
    open (the caller locked them out), so a hold that outlasts the bound raises
    [`HorizonNotSettled`][django_eventsource.HorizonNotSettled].
    """
    ordered = _horizon_store(store)
    if ordered is None:
        return 0
    pending = ordered.pending_events(position, tenant_id=tenant_id)
    deadline = time.monotonic() + SETTLE_SECONDS
    pause = SETTLE_FIRST_PAUSE
    while True:
        if pending.readable:
            return -1
        if not pending.held:
            return 0
        if not strict and horizon_holders(ordered.using):
            return pending.held  # a real hold: its transaction has not committed
        if time.monotonic() >= deadline or (not strict and halted()):
            if strict:
                raise HorizonNotSettled(pending.held, SETTLE_SECONDS)
            return pending.held
        time.sleep(pause)
        pause = min(pause * 2, 0.1)
        pending = ordered.pending_events(position, tenant_id=tenant_id)


class HeldWatch:
    """While a follower is idle: say when its projections' events have been held back by an
    appending transaction that has not committed for longer than ``max_held_seconds``
    (naming it), every minute while it lasts, and when they are released (with how long
    they were held, measured up to the check that found them released: within one
    ``interval``). At most one status query per projection per ``interval``."""

    def __init__(
        self,
        store: BaseEventStore,
        tenant_id: str | None,
        *,
        interval: float,
        max_held_seconds: float,
    ) -> None:
        self.store = _horizon_store(store)
        self.tenant_id = tenant_id
        self.interval = interval
        self.max_held_seconds = max_held_seconds
        self._checked: dict[str, float] = {}
        self._warned: dict[str, float] = {}
        #: When the hold it warned about began (monotonic), per projection.
        self._held_since: dict[str, float] = {}

    def check(self, projections: Iterable[Projection]) -> None:
        """Look at ``projections`` (those the runner holds), each at most once an
        ``interval``."""
        store = self.store
        if store is None:
            return
        now = time.monotonic()
        for projection in projections:
            label = projection.label
            if now - self._checked.get(label, -1e9) < self.interval:
                continue
            self._checked[label] = now
            lag = measure_lag(
                label,
                DatabaseCheckpointStore(projection.database),
                store,
                tenant_id=self.tenant_id,
            )
            fields = {"projection": label, "tenant": self.tenant_id}
            name = printable(label) + tenant_text(self.tenant_id)
            if lag.held_events and lag.held_seconds > self.max_held_seconds:
                # The oldest held event's wait is the hold's age (kept from the first warning:
                # the events held then may be released while younger ones are still held).
                self._held_since.setdefault(label, now - lag.held_seconds)
                if now - self._warned.get(label, -1e9) < 60:
                    continue
                self._warned[label] = now
                holder = horizon_holder(store.using)
                logger.warning(
                    "%d events of %s have been held back for %.0fs by %s",
                    lag.held_events,
                    name,
                    lag.held_seconds,
                    printable(holder.describe())
                    if holder
                    else "an appending transaction that has not committed",
                    extra={
                        **fields,
                        "held_events": lag.held_events,
                        "held_seconds": lag.held_seconds,
                        "holder_pid": holder.pid if holder else None,
                        "holder_application": holder.application if holder else None,
                        "holder_age": holder.age_seconds if holder else None,
                    },
                )
            elif not lag.held_events and self._warned.pop(label, None) is not None:
                held = now - self._held_since.pop(label, now)
                logger.info(
                    "The events held back from %s were released after %.0fs",
                    name,
                    held,
                    extra={**fields, "held_seconds": held},
                )

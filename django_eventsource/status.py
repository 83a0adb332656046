"""Projection status and lag, as ``projection_status`` and the admin show them."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.db import connections
from django.utils import timezone

from django_eventsource.store import BaseEventStore, EventStore

if TYPE_CHECKING:
    from django_eventsource.maintenance import StampDiagnosis

__all__ = [
    "HorizonHolder",
    "ProjectionStatusRow",
    "horizon_holder",
    "projection_statuses",
    "record_lag_sample",
    "stamp_problem",
]


@dataclass(frozen=True)
class HorizonHolder:
    """The oldest running transaction with a transaction id (PostgreSQL): while it runs,
    readers cannot pass it, so it is what holds projections back."""

    pid: int
    age_seconds: float
    state: str
    application: str
    query: str


@dataclass(frozen=True)
class ProjectionStatusRow:
    projection: str
    tenant_id: str
    status: str
    position: int
    head: int
    lag_events: int
    lag_seconds: float
    heartbeat_age: float | None
    last_progress_age: float | None
    owner: str
    last_error: str
    failed_event_position: int | None
    registered: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _age(now: datetime, moment: datetime | None) -> float | None:
    return None if moment is None else max((now - moment).total_seconds(), 0.0)


def projection_statuses(
    names: list[str] | None = None, *, event_store: BaseEventStore | None = None
) -> list[ProjectionStatusRow]:
    """One row per projection and tenant: registered projections, plus any state rows."""
    from django_eventsource.checkpoints import measure_lag
    from django_eventsource.models import ProjectionState
    from django_eventsource.projections import projection_registry

    store = event_store or EventStore()
    registered = projection_registry.names()
    wanted = names or registered
    now = timezone.now()
    states: dict[tuple[str, str], ProjectionState] = {}
    databases = {projection_registry.get(n)().database for n in wanted if n in projection_registry}
    if not databases:
        databases = {store.using if isinstance(store, EventStore) else "default"}
    for alias in sorted(databases):
        for state in ProjectionState.objects.using(alias).filter(name__in=wanted):
            states[(state.name, state.tenant_id)] = state
    for name in wanted:
        if not any(key[0] == name for key in states):
            states[(name, "")] = ProjectionState(name=name)
    rows = []
    inline = {n for n in registered if projection_registry.get(n).inline}
    for (name, tenant), state in sorted(states.items()):
        if name in inline and state.position is None:
            # Kept current by the appends themselves: no checkpoint, no lag.
            state.status = "inline"
            state.position = store.head_position()
        lag = measure_lag(
            name,
            _FixedCheckpoint(state.position),
            store,
            tenant_id=tenant or None,
            now=now,
        )
        rows.append(
            ProjectionStatusRow(
                projection=name,
                tenant_id=tenant,
                status=state.status,
                position=state.position or 0,
                head=lag.head,
                lag_events=lag.events,
                lag_seconds=round(lag.seconds, 3),
                heartbeat_age=_age(now, state.heartbeat_at),
                last_progress_age=_age(now, state.last_progress_at),
                owner=state.owner,
                last_error=state.last_error.split("\n\n", 1)[0],
                failed_event_position=state.failed_event_position,
                registered=name in registered,
            )
        )
    return rows


class _FixedCheckpoint:
    """A checkpoint store that answers with one known position (no extra query)."""

    def __init__(self, position: int | None) -> None:
        self.position = position

    def load(self, projection_id: str, *, tenant_id: str | None = None) -> int | None:
        return self.position

    def save(self, projection_id: str, position: int, *, tenant_id: str | None = None) -> None:
        raise NotImplementedError

    async def asave(
        self, projection_id: str, position: int, *, tenant_id: str | None = None
    ) -> None:
        raise NotImplementedError

    async def aload(self, projection_id: str, *, tenant_id: str | None = None) -> int | None:
        return self.position


def horizon_holder(using: str = "default") -> HorizonHolder | None:
    """On PostgreSQL, the oldest transaction holding the ordering horizon back (if any)."""
    connection = connections[using]
    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid, EXTRACT(EPOCH FROM (now() - xact_start)), state, application_name, "
            "left(query, 200) FROM pg_stat_activity WHERE backend_xid IS NOT NULL "
            "AND pid <> pg_backend_pid() ORDER BY age(backend_xid) DESC LIMIT 1"
        )
        row = cursor.fetchone()
    if row is None:
        return None
    pid, age, state, application, query = row
    return HorizonHolder(int(pid), float(age or 0), state or "", application or "", query or "")


def stamp_problem(using: str = "default") -> StampDiagnosis | None:
    """On PostgreSQL, why nothing new is visible after a restore: the stamps' diagnosis when
    they sit above the server's transaction counter (see :mod:`django_eventsource.maintenance`);
    None when they are healthy, or on other backends. Lag alone cannot show this: the events
    are invisible, so they do not count as lag."""
    from django_eventsource.maintenance import diagnose_stamps

    diagnosis = diagnose_stamps(using)
    return diagnosis if diagnosis is not None and diagnosis.needs_rebase else None


def record_lag_sample(
    name: str,
    tenant_id: str | None,
    position: int,
    *,
    using: str,
    event_store: BaseEventStore,
    history_days: int = 7,
) -> None:
    """Store the projection's current lag for the admin chart, and prune old samples."""
    from datetime import timedelta

    from django_eventsource.checkpoints import measure_lag
    from django_eventsource.models import LagSample

    now = timezone.now()
    lag = measure_lag(name, _FixedCheckpoint(position), event_store, tenant_id=tenant_id, now=now)
    samples = LagSample.objects.using(using)
    samples.create(
        name=name,
        tenant_id=tenant_id or "",
        position=position,
        head=lag.head,
        lag_events=lag.events,
        lag_seconds=lag.seconds,
        recorded_at=now,
    )
    samples.filter(recorded_at__lt=now - timedelta(days=history_days)).delete()

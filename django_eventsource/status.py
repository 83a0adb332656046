"""Projection status and lag, as ``projection_status`` and the admin show them, and what
the read models' embedded checkpoints say about them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.db.models import Count, Max, Min, OuterRef, Subquery
from django.utils import timezone

from django_eventsource.backends.postgresql.horizon import (
    HorizonHolder,
    horizon_holder,
    horizon_holders,
)
from django_eventsource.backends.postgresql.stamps import diagnose_stamps
from django_eventsource.checkpoints import lag_from_pending, measure_lag
from django_eventsource.conf import get_settings
from django_eventsource.heartbeats import merge_beats
from django_eventsource.projections import projection_registry
from django_eventsource.store import BaseEventStore, EventStore
from django_eventsource.text import plural

if TYPE_CHECKING:
    from django_eventsource.backends.postgresql.stamps import StampDiagnosis
    from django_eventsource.models import ProjectionState
    from django_eventsource.projections import Projection
    from django_eventsource.shadow import ShadowBuild

# Models are imported inside the functions that use them, so that importing this module (the
# runner does) never needs the app registry.
__all__ = [
    "CHECKS",
    "HorizonHolder",
    "Problem",
    "ProjectionStatusRow",
    "ReadModelStatistics",
    "StatusCheck",
    "check_status",
    "find_problems",
    "horizon_holder",
    "horizon_holders",
    "projection_statuses",
    "read_model_statistics",
    "record_lag_sample",
    "stamp_problem",
]


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
    #: Of ``lag_events``: events readable now, not applied yet (behind the visible head).
    behind_events: int = 0
    #: Of ``lag_events``: committed events PostgreSQL's ordering horizon holds back (an
    #: appending transaction has not committed; see ``horizon_holders``). 0 on SQLite.
    held_events: int = 0
    #: How long the oldest held-back event has waited (0.0 when none).
    held_seconds: float = 0.0
    #: The status as stored; ``status`` is what to report: ``stale`` when a running or
    #: rebuilding projection's heartbeat is older than three heartbeat intervals (its
    #: runner died), ``interrupted`` for a rebuild no runner claims (it stopped before it
    #: caught up), ``inline`` for an inline projection without a checkpoint, ``unbuilt``
    #: for one never replayed over the events stored before it, ``unassigned`` for a
    #: tenant no runner serves (a made-up row: stored ``idle``, position 0).
    stored_status: str = ""
    #: Unresolved dead letters (failed events, and events parked behind them).
    dead_letters: int = 0
    #: A shadow rebuild in progress (or interrupted, to resume): the position its shadow
    #: tables are built up to (None: none; PostgreSQL only, see `django_eventsource.shadow`).
    shadow_position: int | None = None
    #: The event that shadow build failed on, when a handler raised (None: it did not fail);
    #: the live tables still serve and nothing was swapped.
    shadow_failed_position: int | None = None
    #: That failure: the exception's type and message.
    shadow_error: str = ""
    #: Paused or failed in the middle of a rebuild (see `django_eventsource.state`): its
    #: read model is half-built, and resuming it returns it to the rebuild.
    suspended_rebuild: bool = False

    def as_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (``projection_status --json``, the health view)."""
        return asdict(self)


def _age(now: datetime, moment: datetime | None) -> float | None:
    return None if moment is None else max((now - moment).total_seconds(), 0.0)


def projection_statuses(
    names: list[str] | None = None,
    *,
    event_store: BaseEventStore | None = None,
    keys: Iterable[tuple[str, str]] | None = None,
) -> list[ProjectionStatusRow]:
    """One row per projection and tenant: registered projections, plus any state rows.

    ``keys`` keeps only those ``(projection, tenant)`` rows (a page of the admin's list).
    The lag of every row is measured together: the number of queries does not grow with
    the number of rows. ``status`` is what to report (see `django_eventsource.state`):
    ``stale`` for a live status without a fresh heartbeat, ``interrupted`` for a rebuild
    that stopped before it caught up, ``inline`` for an inline projection without a
    checkpoint, ``unbuilt`` for one never replayed over the events stored before it.

    Rows no state row backs: a registered projection without any gets one for every tenant
    (``""``); one whose runners each serve one tenant gets an ``unassigned`` row for each
    tenant whose events none serves (``""``: the events without a tenant), with that
    tenant's events as its lag.
    """
    from django_eventsource.models import ProjectionState, ProjectionStatus
    from django_eventsource.state import reported_status

    store = event_store or EventStore()
    registered = projection_registry.names()
    wanted = names or registered
    now = timezone.now()
    states: dict[tuple[str, str], ProjectionState] = {}
    databases = {projection_registry.get(n)().database for n in wanted if n in projection_registry}
    if not databases:
        databases = {store.using if isinstance(store, EventStore) else "default"}
    alive: set[str] = set()  # owners whose process lives, without a fresh beat (SQLite)
    for alias in sorted(databases):
        found = list(ProjectionState.objects.using(alias).filter(name__in=wanted))
        alive |= merge_beats(found, alias, now=now)  # the runners' threads beat elsewhere
        for state in found:
            states[(state.name, state.tenant_id)] = state
    inline = {n for n in registered if projection_registry.get(n).inline}
    # Tenants whose events no state row covers: their rows are made up, `unassigned`.
    unassigned = _unassigned(wanted, states, inline, store)
    for key in unassigned:
        states[key] = ProjectionState(name=key[0], tenant_id=key[1])
    head = store.head_position()
    built = _built_inline(inline & set(wanted), head)
    for name in wanted:
        if not any(key[0] == name for key in states) or (
            name in inline and name not in built  # its tenant rows do not say it is built
        ):
            states.setdefault((name, ""), ProjectionState(name=name))
    if keys is not None:
        kept = set(keys)
        states = {key: state for key, state in states.items() if key in kept}
    rows = []
    ordered = sorted(states.items())
    statuses: list[str] = []
    for key, state in ordered:
        name = key[0]
        status = reported_status(state, now=now, runner_alive=state.owner in alive)
        if key in unassigned:
            status = ProjectionStatus.UNASSIGNED
        elif (
            name in inline
            # A rebuild of it (in progress, or suspended by a pause or failure) is reported
            # as such: appends leave their events to it.
            and state.status != ProjectionStatus.REBUILDING
            and not state.suspended_rebuild
            and (
                state.position is None
                or status == ProjectionStatus.IDLE
                # Paused outside a rebuild (earlier versions allowed it): appends apply it
                # all the same, so it is reported as what it is; resuming clears the pause.
                or status == ProjectionStatus.PAUSED
            )
        ):
            if key[1] or name in built:
                # Kept current by the appends themselves: no lag. A checkpoint left by a
                # rebuild or a catch-up of it stays where that run ended, since appends
                # never move it; measured against it, the lag grew with every append.
                status = ProjectionStatus.INLINE
                state.position = head
            else:  # never replayed over the events stored before it: all of them wait
                status = ProjectionStatus.UNBUILT
                state.position = None
        statuses.append(str(status))
    letters = _dead_letter_counts(wanted, databases)
    shadows = _shadow_builds(databases)
    # An unassigned row's events are its tenant's alone, "" the events without a tenant
    # (any other row of tenant "" is a runner of every tenant: no filter).
    checkpoints = [
        (state.position or 0, key[1] if key in unassigned else key[1] or None)
        for key, state in ordered
    ]
    pending = store.pending_events_many(checkpoints) if head and checkpoints else []
    for index, ((name, tenant), state) in enumerate(ordered):
        status = statuses[index]
        shadow = shadows.get(name) if not tenant else None
        lag = lag_from_pending(
            name,
            tenant or None,
            state.position or 0,
            head,
            pending[index] if pending else None,
            now=now,
        )
        rows.append(
            ProjectionStatusRow(
                projection=name,
                tenant_id=tenant,
                status=str(status),
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
                behind_events=lag.behind_events,
                held_events=lag.held_events,
                held_seconds=round(lag.held_seconds, 3),
                stored_status=str(state.status),
                dead_letters=letters.get((name, tenant), 0),
                shadow_position=shadow.position if shadow else None,
                shadow_failed_position=shadow.failed_position if shadow else None,
                shadow_error=shadow.error if shadow else "",
                suspended_rebuild=state.suspended_rebuild,
            )
        )
    return rows


def _unassigned(
    names: list[str],
    states: dict[tuple[str, str], ProjectionState],
    inline: set[str],
    store: BaseEventStore,
) -> set[tuple[str, str]]:
    """The ``(projection, tenant)`` pairs whose events no runner applies: a registered,
    asynchronous projection with state rows for some tenants and none for every tenant
    (``tenant_id = ""``, a runner without ``--tenant``), and a tenant that carries events
    but has no row; ``""`` for the events without a tenant, which only a runner of every
    tenant applies. A runner of every tenant covers them all (its own lag counts every
    tenant's events), so then nothing is unassigned. The tenants come from a skip scan of
    the events' per-tenant index, only when some projection runs per tenant alone."""
    split = [
        name
        for name in names
        if name in projection_registry
        and name not in inline
        and (name, "") not in states
        and any(key[0] == name for key in states)
    ]
    if not split:
        return set()
    tenants = store.event_tenants()
    return {(name, t) for name in split for t in tenants if (name, t) not in states}


def _built_inline(names: set[str], head: int) -> set[str]:
    """The inline projections of ``names`` known to hold every event (see
    `django_eventsource.built`); all of them while the store is empty."""
    from django_eventsource.built import built_inline

    if not head:
        return set(names)
    found: set[str] = set()
    for alias in sorted({projection_registry.get(n)().database for n in names}):
        found |= built_inline(names, alias)
    return found


def _shadow_builds(databases: set[str]) -> dict[str, ShadowBuild]:
    """The shadow build of each projection (PostgreSQL; one query per database, plus one
    per build)."""
    from django_eventsource.shadow import shadow_builds

    return {b.projection: b for alias in sorted(databases) for b in shadow_builds(alias)}


def _dead_letter_counts(names: list[str], databases: set[str]) -> dict[tuple[str, str], int]:
    """Unresolved dead letters per projection and tenant scope (one query per database)."""
    from django_eventsource.models import DeadLetter

    counts: dict[tuple[str, str], int] = {}
    for alias in sorted(databases):
        grouped = (
            DeadLetter.objects.using(alias)
            .filter(projection__in=names, resolved_at=None)
            .values_list("projection", "tenant_id")
            .annotate(n=Count("pk"))
            .order_by()
        )
        for projection, tenant, count in grouped:
            counts[(projection, tenant)] = counts.get((projection, tenant), 0) + count
    return counts


# The checks: one function decides what is wrong, for ``projection_status --check``, the
# health view and the metrics alike. ---------------------------------------------------------

#: The kinds of problem the checks report, in the order they are reported.
CHECKS = (
    "stamps",
    "unassigned",
    "unbuilt",
    "failed",
    "stale",
    "interrupted",
    "shadow_failed",
    "dead_letters",
    "lag",
    "held",
)


@dataclass(frozen=True)
class Problem:
    """One reason the status check fails."""

    #: Which check: one of `CHECKS`.
    check: str
    #: The projection and tenant concerned ("" for the whole store, e.g. ``stamps``).
    projection: str = ""
    tenant_id: str = ""
    #: What is wrong, for people (without the projection's name, and without error texts,
    #: so that the health view can show it).
    message: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (``projection_status --json``, the health view)."""
        return asdict(self)


def find_problems(
    rows: list[ProjectionStatusRow],
    *,
    stamps: StampDiagnosis | None = None,
    max_lag: int | None = None,
    max_held_seconds: float | None = None,
    allow_dead_letters: bool = False,
) -> list[Problem]:
    """What is wrong, according to the status ``rows`` (and ``stamps``, the diagnosis of
    `stamp_problem`): the one definition of a failing check.

    * ``stamps``: the event stamps need ``rebase_event_stamps`` (nothing new is visible);
    * ``unassigned``: a tenant's events (or the events without a tenant) are applied by no
      runner: the projection runs per tenant (``--tenant``) and no state row covers that
      tenant, nor every tenant;
    * ``unbuilt``: an inline projection never replayed the events stored before it existed
      (``rebuild_projections <name>`` does);
    * ``failed``: a projection stopped on an event it cannot apply;
    * ``stale``: a running (or rebuilding) projection's worker stopped beating: it died;
    * ``interrupted``: a rebuild stopped cleanly before it caught up: the read model is
      half-built until a rebuild (or a catch-up) of it resumes from its checkpoint;
    * ``shadow_failed``: a shadow rebuild stopped on an event its handlers cannot apply
      (PostgreSQL): nothing was swapped, and the live projection, whose status this does not
      change, keeps serving the old rows until the shadow rebuild is resumed or discarded;
    * ``dead_letters``: events were set aside and are not resolved (unless
      ``allow_dead_letters``);
    * ``lag``: more than ``max_lag`` events wait (default: the ``MAX_LAG`` setting; None
      checks no lag);
    * ``held``: events have been held back by an appending transaction that has not
      committed for more than ``max_held_seconds`` (default: ``MAX_HELD_SECONDS``).
    """
    from django_eventsource.models import ProjectionStatus

    options = get_settings()
    if max_lag is None:
        max_lag = options.max_lag
    if max_held_seconds is None:
        max_held_seconds = options.max_held_seconds
    problems = []
    if stamps is not None and stamps.needs_rebase:
        problems.append(Problem("stamps", message=stamps.message()))
    for row in rows:
        found = []
        if row.status == ProjectionStatus.UNASSIGNED:
            waiting = plural(row.lag_events, "event")
            if row.tenant_id:
                unassigned = (
                    f"unassigned: {waiting} of tenant {row.tenant_id} wait for a runner (no "
                    f"state row covers the tenant: run replay_projections --tenant "
                    f"{row.tenant_id}, or a runner of every tenant)"
                )
            else:
                unassigned = (
                    f"unassigned: {waiting} without a tenant wait for a runner (only a runner "
                    "of every tenant, replay_projections without --tenant, applies them)"
                )
            found.append(("unassigned", unassigned))
        if row.status == ProjectionStatus.UNBUILT:
            unbuilt = (
                "unbuilt: an inline projection never replayed the events stored before it "
                f"({plural(row.lag_events, 'event')} in the store, none known to be applied: "
                "run rebuild_projections)"
            )
            found.append(("unbuilt", unbuilt))
        if row.status == ProjectionStatus.FAILED:
            at = row.failed_event_position
            found.append(("failed", "failed" + (f" at event #{at}" if at is not None else "")))
        if row.status == ProjectionStatus.STALE:
            age = " ever" if row.heartbeat_age is None else f" for {row.heartbeat_age:.0f}s"
            found.append(
                ("stale", f"stale: {row.stored_status} but no heartbeat{age} (its runner is gone)")
            )
        if row.status == ProjectionStatus.INTERRUPTED:
            interrupted = (
                f"rebuild interrupted at event #{row.position} of {row.head}: the read model is "
                "half-built until the rebuild is resumed (run rebuild_projections again; a "
                "catch-up or worker of it resumes it too)"
            )
            found.append(("interrupted", interrupted))
        if row.shadow_failed_position is not None:
            shadow = (
                f"shadow rebuild failed at event #{row.shadow_failed_position}, built up to "
                f"#{row.shadow_position}: nothing was swapped, the live tables still serve "
                "(fix the handler, then rebuild_projections --shadow resumes it)"
            )
            found.append(("shadow_failed", shadow))
        if row.dead_letters and not allow_dead_letters:
            found.append(("dead_letters", f"{row.dead_letters} unresolved dead letter(s)"))
        if max_lag is not None and row.lag_events > max_lag:
            found.append(("lag", f"lag {row.lag_events} > {max_lag}"))
        if row.held_events and row.held_seconds > max_held_seconds:
            found.append(("held", f"{row.held_events} held back for {row.held_seconds:.0f}s"))
        problems += [Problem(c, row.projection, row.tenant_id, m) for c, m in found]
    order = {check: i for i, check in enumerate(CHECKS)}
    return sorted(problems, key=lambda p: order.get(p.check, len(order)))


@dataclass(frozen=True)
class StatusCheck:
    """The statuses, and what the checks found in them."""

    rows: list[ProjectionStatusRow]
    problems: list[Problem]
    #: The stamps' diagnosis when they need a re-base (PostgreSQL), else None.
    stamps: StampDiagnosis | None = None

    @property
    def ok(self) -> bool:
        """Whether nothing is wrong (``--check`` exits 0, the health view answers 200)."""
        return not self.problems


def check_status(
    names: list[str] | None = None,
    *,
    event_store: BaseEventStore | None = None,
    tenant_id: str | None = None,
    max_lag: int | None = None,
    max_held_seconds: float | None = None,
    allow_dead_letters: bool = False,
) -> StatusCheck:
    """Measure every projection (or ``names``; one tenant's rows with ``tenant_id``) and run
    the checks of [`find_problems`][django_eventsource.status.find_problems] on them."""
    store = event_store or EventStore()
    rows = projection_statuses(names, event_store=store)
    if tenant_id is not None:
        rows = [r for r in rows if r.tenant_id == tenant_id]
    using = store.using if isinstance(store, EventStore) else "default"
    stamps = stamp_problem(using)
    problems = find_problems(
        rows,
        stamps=stamps,
        max_lag=max_lag,
        max_held_seconds=max_held_seconds,
        allow_dead_letters=allow_dead_letters,
    )
    return StatusCheck(rows, problems, stamps)


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


def stamp_problem(using: str = "default") -> StampDiagnosis | None:
    """On PostgreSQL, why nothing new is visible after a restore: the stamps' diagnosis when
    they sit above the server's transaction counter (see `django_eventsource.maintenance`);
    None when they are healthy, or on other backends. Lag alone cannot show this: the events
    are invisible, so they do not count as lag."""
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


@dataclass(frozen=True)
class ReadModelStatistics:
    """What a read model's embedded checkpoint columns say about it."""

    model: str
    table: str
    rows: int
    min_position: int | None
    max_position: int | None
    #: Rows whose last applied version is below their stream's latest handled event
    #: (None when it cannot be measured: rows fed by many streams, no row key, another
    #: database than the events).
    behind: int | None
    behind_note: str


def read_model_statistics(
    projection: Projection, tenant_id: str | None = None, *, event_store: EventStore | None = None
) -> list[ReadModelStatistics]:
    """Rows, min/max ``last_event_position`` and rows behind their stream, per read model."""
    from django_eventsource.models import CheckpointedModel, Event

    store = event_store or EventStore()
    database = projection.database
    handled = sorted(projection.handled_types())
    statistics = []
    for model in projection.models:
        fields = {f.name for f in model._meta.concrete_fields}
        rows = model._default_manager.using(database).all()
        if tenant_id is not None and "tenant_id" in fields:
            rows = rows.filter(tenant_id=tenant_id)
        checkpointed = issubclass(model, CheckpointedModel)
        if checkpointed:
            totals = rows.aggregate(
                rows=Count("pk"),
                low=Min("last_event_position"),
                high=Max("last_event_position"),
            )
        else:
            totals = {**rows.aggregate(rows=Count("pk")), "low": None, "high": None}
        key = projection.row_keys.get(model)
        behind: int | None = None
        if not checkpointed:
            note = "not a CheckpointedModel"
        elif getattr(model, "checkpoint_by", "version") != "version":
            note = "fed by many streams (checkpointed by position)"
        elif not key:
            note = "no row key names the stream"
        elif database != store.using:
            note = "the events are in another database"
        elif not handled:
            note = "the projection handles no event type"
        else:
            head = Event.objects.using(database).filter(
                aggregate_id=OuterRef(key), event_type__in=handled
            )
            if "tenant_id" in fields:
                head = head.filter(tenant_id=OuterRef("tenant_id"))
            latest = head.order_by("-aggregate_version").values("aggregate_version")[:1]
            behind = rows.filter(last_event_version__lt=Subquery(latest)).count()
            note = "compared with each stream's latest event of a handled type"
        statistics.append(
            ReadModelStatistics(
                model=model._meta.label,
                table=model._meta.db_table,
                rows=totals["rows"],
                min_position=totals["low"],
                max_position=totals["high"],
                behind=behind,
                behind_note=note,
            )
        )
    return statistics

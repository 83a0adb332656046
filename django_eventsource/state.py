"""The one owner of a projection's status: every change goes through a named transition here.

A projection (and tenant) has one [`ProjectionState`][django_eventsource.ProjectionState]
row. Its ``status`` changes only through the transitions below, each a conditional
``UPDATE … WHERE status IN (<where it may come from>)``: a change that does not apply
(an operator paused the projection meanwhile, another runner took it over) is refused, never
written over. Operators' transitions raise
[`IllegalTransition`][django_eventsource.IllegalTransition]; a runner's return False and the
runner acts on what the row says instead.

Stored statuses:

| status | meaning |
| --- | --- |
| `idle` | no runner is applying it: it caught up, or its runner stopped cleanly |
| `running` | a runner holds its lock and applies events; its heartbeat is fresh |
| `rebuilding` | a rebuild replays it (an interrupted one resumes from its checkpoint) |
| `paused` | an operator paused it; runners skip it until it is resumed |
| `failed` | an event failed (error policy `pause`); runners skip it until it is resumed (which retries the event) or the event is dead-lettered |

A rebuild that is paused, or fails, is *suspended*, not over: ``suspended_rebuild`` says so
while the projection is `paused` or `failed` (it is False in every other status). Appends
keep leaving an inline projection to the rebuild meanwhile (its rows are half-built: an
append applied to a row the replay has not reached would make the replay skip that row's
older events), and resuming it, or setting its failed event aside, returns it to
`rebuilding`, for a rebuild or a runner to carry on from the checkpoint and hand it over.

Reported, never stored:

| status | meaning |
| --- | --- |
| `stale` | stored `running` or `rebuilding`, but the heartbeat is older than three heartbeat intervals: its process died (kill -9, a lost machine). A live runner keeps beating from a thread of its own, whatever its loop does (see `django_eventsource.heartbeats`) |
| `interrupted` | stored `rebuilding`, and no runner claims it: the rebuild stopped cleanly (SIGTERM, ``--max-events``) before it caught up, and the read model is half-built until a rebuild or a catch-up of it resumes from the checkpoint |
| `inline` | an inline projection that no runner has a checkpoint for: the appends keep it current |
| `unbuilt` | an inline projection never replayed over the events stored before it (`django_eventsource.built`) |
| `unassigned` | no row: a tenant whose events no runner serves, the projection's runners each serving one other tenant (see `django_eventsource.status.projection_statuses`) |

Transitions (name: from → to):

| transition | from | to | by |
| --- | --- | --- | --- |
| `start` | idle, running | running | a runner that holds the lock (`running`: a dead runner's row) |
| `finish` | running | idle | a runner that caught up, or stops cleanly (SIGTERM) |
| `interrupt_rebuild` | rebuilding | rebuilding, unclaimed (reported `interrupted`) | a rebuild (or a runner resuming one) that stops cleanly before it caught up |
| `begin_rebuild` | idle, running, failed, rebuilding | rebuilding | a rebuild that holds the lock (it claims the row) |
| `begin_paused_rebuild` | paused | paused, in a suspended rebuild | a rebuild of a paused projection (it claims the row, and replays it all the same) |
| `finish_rebuild` | rebuilding | idle | the replay that caught up |
| `fail` | running, rebuilding | failed (from rebuilding: a suspended rebuild) | the runner, on an event that keeps failing (policy `pause`) |
| `fail_paused_rebuild` | paused, in a suspended rebuild the runner claims | failed, in a suspended rebuild | the runner of that rebuild, likewise |
| `pause` | idle, running, failed, rebuilding | paused (from rebuilding: a suspended rebuild) | an operator |
| `resume` | paused, failed | idle | an operator (from failed: retries the event) |
| `resume_rebuild` | paused, failed, in a suspended rebuild | rebuilding (from failed: unclaimed, reported `interrupted`) | an operator, through `resume` |
| `set_aside` | failed | idle | an operator who dead-letters the failed event |
| `set_aside_in_rebuild` | failed, in a suspended rebuild | rebuilding, unclaimed (reported `interrupted`) | an operator, through `set_aside` |
| `swap_shadow` | idle, running, failed, rebuilding | idle | a shadow rebuild's swap (a `paused` one stays paused; a suspended rebuild is over) |

A runner that lets go of a `paused` or `failed` projection (``finish``) ends its claim, and
if its replay caught up (a rebuild's hand-over, for an inline one), the suspended rebuild is
over: the projection stays paused, and resuming it makes it `idle`. (A runner checks the
status when it starts a pass, not between batches: a rebuild paused in the middle of its
replay carries on to the end of it, or until it is stopped.)

An operator's pause survives a rebuild, whatever its kind: a rebuild of a `paused`
projection (``begin_paused_rebuild``) leaves it `paused`, with its rebuild suspended while
the rebuild replays it (the rebuild runs it all the same, see
[`claim_paused_rebuild`][django_eventsource.state.claim_paused_rebuild]; workers skip it),
and the end of the replay ends the suspended rebuild as above: still `paused`, the
checkpoint where the replay ended. A rebuild stopped before that leaves it `paused` in a
suspended rebuild, which the next rebuild resumes. An event that keeps failing in it makes
it `failed` (``fail_paused_rebuild``), as in any rebuild. (A shadow rebuild's swap keeps it
`paused` too.)

The checkpoint (``position``) is the checkpoint store's to write, in each batch's transaction;
the lease columns (``owner``, ``lease_until``) on SQLite are the lock's.
"""

from __future__ import annotations

import traceback as tb
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.db.models import Case, F, Value, When
from django.utils import timezone

from django_eventsource.conf import get_settings
from django_eventsource.constants import NO_TENANT
from django_eventsource.exceptions import IllegalTransition
from django_eventsource.models import ProjectionState, ProjectionStatus
from django_eventsource.transactions import write_transaction
from django_eventsource.validation import check_projection_name

if TYPE_CHECKING:
    from django_eventsource.exceptions import ProjectionError

__all__ = [
    "TRANSITIONS",
    "ProjectionStatus",
    "Transition",
    "begin_rebuild",
    "claim_paused_rebuild",
    "fail",
    "finish",
    "finish_rebuild",
    "heartbeat",
    "interrupt_rebuild",
    "pause",
    "reported_status",
    "resume",
    "set_aside",
    "stale_after",
    "start",
    "swap_shadow",
]

Status = ProjectionStatus


@dataclass(frozen=True)
class Transition:
    """A named change of status, and the statuses it may start from."""

    name: str
    sources: frozenset[str]
    target: str


def _transition(name: str, sources: set[str], target: str) -> Transition:
    return Transition(name, frozenset(sources), target)


START = _transition("start", {Status.IDLE, Status.RUNNING}, Status.RUNNING)
FINISH = _transition("finish", {Status.RUNNING}, Status.IDLE)
BEGIN_REBUILD = _transition(
    "begin_rebuild",
    {Status.IDLE, Status.RUNNING, Status.FAILED, Status.REBUILDING},
    Status.REBUILDING,
)
#: ``begin_rebuild`` of a paused projection: the operator's pause stays, the rebuild is
#: suspended by it from the start (and runs all the same).
BEGIN_PAUSED_REBUILD = _transition("begin_paused_rebuild", {Status.PAUSED}, Status.PAUSED)
FINISH_REBUILD = _transition("finish_rebuild", {Status.REBUILDING}, Status.IDLE)
#: The status stays; the runner's claim ends, which is what tells it from a live rebuild.
INTERRUPT_REBUILD = _transition("interrupt_rebuild", {Status.REBUILDING}, Status.REBUILDING)
FAIL = _transition("fail", {Status.RUNNING, Status.REBUILDING}, Status.FAILED)
#: ``fail`` in a rebuild that runs while the projection is paused (its runner's claim).
FAIL_PAUSED_REBUILD = _transition("fail_paused_rebuild", {Status.PAUSED}, Status.FAILED)
PAUSE = _transition(
    "pause", {Status.IDLE, Status.RUNNING, Status.FAILED, Status.REBUILDING}, Status.PAUSED
)
RESUME = _transition("resume", {Status.PAUSED, Status.FAILED}, Status.IDLE)
#: ``resume`` of a suspended rebuild (paused or failed while rebuilding).
RESUME_REBUILD = _transition("resume_rebuild", {Status.PAUSED, Status.FAILED}, Status.REBUILDING)
SET_ASIDE = _transition("set_aside", {Status.FAILED}, Status.IDLE)
#: ``set_aside`` in a suspended rebuild (it failed while rebuilding).
SET_ASIDE_IN_REBUILD = _transition("set_aside_in_rebuild", {Status.FAILED}, Status.REBUILDING)
SWAP_SHADOW = _transition(
    "swap_shadow", {Status.IDLE, Status.RUNNING, Status.FAILED, Status.REBUILDING}, Status.IDLE
)

#: Every transition, by name.
TRANSITIONS: dict[str, Transition] = {
    t.name: t
    for t in (
        START,
        FINISH,
        BEGIN_REBUILD,
        BEGIN_PAUSED_REBUILD,
        FINISH_REBUILD,
        INTERRUPT_REBUILD,
        FAIL,
        FAIL_PAUSED_REBUILD,
        PAUSE,
        RESUME,
        RESUME_REBUILD,
        SET_ASIDE,
        SET_ASIDE_IN_REBUILD,
        SWAP_SHADOW,
    )
}

#: Statuses a live runner keeps up to date with its heartbeat.
LIVE = frozenset({Status.RUNNING, Status.REBUILDING})
#: Statuses that suspend a rebuild (``suspended_rebuild``) instead of ending it.
SUSPENDED = frozenset({Status.PAUSED, Status.FAILED})

#: ``suspended_rebuild`` as a transition into `paused` or `failed` sets it: True from
#: `rebuilding`, unchanged from a suspended status (a failed rebuild paused stays one).
_SUSPENDS = Case(
    When(status=Status.REBUILDING, then=Value(value=True)), default=F("suspended_rebuild")
)
#: The claim of a resumed rebuild: a `failed` one has no runner working on it (so it is
#: reported `interrupted` until one claims it); a `paused` one keeps its runner's claim,
#: since the rebuild that was running when it was paused may still be.
_CLAIM_ON_RESUME = Case(When(status=Status.FAILED, then=Value("")), default=F("owner"))


# Time rules ---------------------------------------------------------------------------------


def stale_after() -> float:
    """Seconds without a heartbeat after which a `running` or `rebuilding` projection is
    reported `stale`: three heartbeat intervals (`HEARTBEAT_INTERVAL`), at least one second.
    A runner's lease (SQLite) expires after the same time, for replays and rebuilds alike."""
    return get_settings().heartbeat_timeout


def reported_status(
    state: ProjectionState, *, now: datetime | None = None, runner_alive: bool = False
) -> str:
    """The status to show: the stored one; `interrupted` for a rebuild that no runner
    claims (it stopped cleanly before it caught up); `stale` when a live status has no
    fresh heartbeat (its runner died), unless ``runner_alive``: its runner's process is
    known to live (SQLite, where a batch holds the write lock that a beat needs; see
    [`merge_beats`][django_eventsource.heartbeats.merge_beats], which also gives the row
    its runner thread's newer beat)."""
    if state.status == Status.REBUILDING and not state.owner:
        return Status.INTERRUPTED
    if state.status in LIVE and not runner_alive:
        now = now or timezone.now()
        beat = state.heartbeat_at
        if beat is None or (now - beat).total_seconds() > stale_after():
            return Status.STALE
    return str(state.status)


# Transitions --------------------------------------------------------------------------------


def _states(using: str) -> Any:
    return ProjectionState.objects.using(using)


def _apply(
    step: Transition,
    name: str,
    tenant_id: str | None,
    using: str,
    *,
    strict: bool,
    fence: str | None = None,
    suspended: bool | None = None,
    **fields: Any,
) -> bool:
    """Run ``step`` on the row (created if missing); ``fence``: only while that runner
    still owns the row; ``suspended``: only if the row's ``suspended_rebuild`` is that.
    Returns whether it applied; raises IllegalTransition when it did not and ``strict``."""
    tenant = tenant_id or NO_TENANT
    check_projection_name(name)  # ValueError: a name no projection can have gets no row
    with write_transaction(using):
        _states(using).get_or_create(name=name, tenant_id=tenant)
        rows = _states(using).filter(name=name, tenant_id=tenant, status__in=step.sources)
        if fence is not None:
            rows = rows.filter(owner=fence)
        if suspended is not None:
            rows = rows.filter(suspended_rebuild=suspended)
        changed = rows.update(status=step.target, updated_at=timezone.now(), **fields)
    if changed or not strict:
        return bool(changed)
    current = (
        _states(using).filter(name=name, tenant_id=tenant).values_list("status", flat=True).first()
    )
    raise IllegalTransition(name, tenant_id, step.name, str(current), sorted(step.sources))


def start(name: str, tenant_id: str | None, using: str, *, owner: str) -> bool:
    """A runner that holds the lock takes the projection: it claims the row for ``owner``
    (every batch's checkpoint then checks the claim) and beats; the status becomes
    `running`, unless the row is `rebuilding` (a rebuild to continue), `paused` or `failed`
    (returns False: skip it)."""
    now = timezone.now()
    tenant = tenant_id or NO_TENANT
    check_projection_name(name)  # ValueError: a name no projection can have gets no row
    with write_transaction(using):
        _states(using).get_or_create(name=name, tenant_id=tenant)
        rows = _states(using).filter(name=name, tenant_id=tenant)
        claimed = rows.exclude(status__in=(Status.PAUSED, Status.FAILED)).update(
            owner=owner, heartbeat_at=now, updated_at=now
        )
        if claimed:
            _apply(START, name, tenant_id, using, strict=False)
    return bool(claimed)


def finish(
    name: str, tenant_id: str | None, using: str, *, owner: str | None, caught_up: bool
) -> bool:
    """A runner lets go of the projection: it caught up, or it stops cleanly. `running`
    becomes `idle`; a `rebuilding` one becomes `idle` when it ``caught_up``, else it is
    interrupted (as [`interrupt_rebuild`][django_eventsource.state.interrupt_rebuild]: it
    stays `rebuilding`, to be resumed). A `paused` or `failed` one (an operator paused it
    while the runner worked) keeps its status; if it ``caught_up`` (for an inline
    projection: in the rebuild's hand-over, with appends locked out), a rebuild suspended
    by the pause is over. Only while ``owner`` (the runner's claim) still owns the row: a
    successor's status is never touched. The claim ends. Returns whether the status
    changed."""
    done = _apply(FINISH, name, tenant_id, using, strict=False, fence=owner, owner="")
    rebuild = FINISH_REBUILD if caught_up else INTERRUPT_REBUILD
    done = _apply(rebuild, name, tenant_id, using, strict=False, fence=owner, owner="") or done
    if owner is not None:
        ended: dict[str, Any] = {"suspended_rebuild": False} if caught_up else {}
        _states(using).filter(
            name=name, tenant_id=tenant_id or NO_TENANT, status__in=SUSPENDED, owner=owner
        ).update(owner="", updated_at=timezone.now(), **ended)
    return done


def interrupt_rebuild(name: str, tenant_id: str | None, using: str, *, owner: str | None) -> bool:
    """A rebuild (or a runner resuming one) stops cleanly before it caught up: the status
    stays `rebuilding` (appends keep leaving an inline projection to it) and the runner's
    claim ends, so that it is reported `interrupted`, not running (or, later, stale). Only
    while ``owner`` still owns the row."""
    return _apply(INTERRUPT_REBUILD, name, tenant_id, using, strict=False, fence=owner, owner="")


def heartbeat(name: str, tenant_id: str | None, using: str, *, owner: str | None) -> bool:
    """Record that the runner that owns the row is alive; False if it owns it no more."""
    rows = _states(using).filter(name=name, tenant_id=tenant_id or NO_TENANT)
    if owner is not None:
        rows = rows.filter(owner=owner)
    return bool(rows.update(heartbeat_at=timezone.now()))


def fail(
    name: str,
    tenant_id: str | None,
    using: str,
    error: ProjectionError,
    *,
    attempts: int,
    owner: str | None = None,
    strict: bool = False,
) -> bool:
    """The runner gives up on ``error``'s event (policy `pause`): `failed`, with the error
    and the event; the checkpoint stays just before it. Also in a rebuild that runs while
    the projection is paused (``fail_paused_rebuild``), when ``owner`` claims it."""
    failure: dict[str, Any] = {
        "last_error": describe(error),
        "failed_event_position": error.position,
        "failed_event_id": error.event_id,
        "failed_event_type": error.event_type,
        "attempts": attempts,
    }
    with write_transaction(using):
        if owner is not None and _apply(
            FAIL_PAUSED_REBUILD,
            name,
            tenant_id,
            using,
            strict=False,
            fence=owner,
            suspended=True,
            **failure,
        ):
            return True
        return _apply(
            FAIL,
            name,
            tenant_id,
            using,
            strict=strict,
            fence=owner,
            suspended_rebuild=_SUSPENDS,
            **failure,
        )


def describe(error: ProjectionError) -> str:
    """The error as ``last_error`` keeps it: the message, a blank line, the traceback."""
    cause = error.cause
    trace = "".join(tb.format_exception(type(cause), cause, cause.__traceback__))
    return f"{error}\n\n{trace}"


def pause(name: str, tenant_id: str | None, using: str) -> None:
    """An operator stops runners from applying events until
    [`resume`][django_eventsource.state.resume]. A `rebuilding` projection's rebuild is
    suspended, not over (``suspended_rebuild``): appends keep leaving an inline projection
    to it."""
    _apply(PAUSE, name, tenant_id, using, strict=True, suspended_rebuild=_SUSPENDS)


def resume(name: str, tenant_id: str | None, using: str) -> None:
    """An operator lets runners continue a paused projection, or retry a failed one's
    event (its checkpoint is still just before it): `idle`; a suspended rebuild goes back
    to `rebuilding` (``resume_rebuild``), for a rebuild or a runner to carry on from the
    checkpoint."""
    with write_transaction(using):
        if _apply(
            RESUME_REBUILD,
            name,
            tenant_id,
            using,
            strict=False,
            suspended=True,
            suspended_rebuild=False,
            owner=_CLAIM_ON_RESUME,
            attempts=0,
        ):
            return
        _apply(RESUME, name, tenant_id, using, strict=True, suspended=False, attempts=0)


def set_aside(name: str, tenant_id: str | None, using: str, *, position: int) -> None:
    """An operator dead-lettered the failed event (at ``position``): the checkpoint moves
    onto it and the projection continues with the next one: `idle`, or, in a suspended
    rebuild, `rebuilding` again (``set_aside_in_rebuild``; unclaimed, so reported
    `interrupted` until a rebuild or a runner carries on). Runs inside the caller's
    transaction, which records the dead letter."""
    cleared: dict[str, Any] = {
        "position": position,
        "attempts": 0,
        "last_error": "",
        "failed_event_position": None,
        "failed_event_id": None,
        "failed_event_type": "",
    }
    with write_transaction(using):
        if _apply(
            SET_ASIDE_IN_REBUILD,
            name,
            tenant_id,
            using,
            strict=False,
            suspended=True,
            suspended_rebuild=False,
            owner="",
            **cleared,
        ):
            return
        _apply(SET_ASIDE, name, tenant_id, using, strict=True, suspended=False, **cleared)


def begin_rebuild(
    name: str, tenant_id: str | None, using: str, *, owner: str | None = None
) -> None:
    """A rebuild (holding the lock) resets the projection: `rebuilding`, errors cleared; with
    ``owner`` (its lock's), it claims the row and beats, so the reset rebuild is never
    reported `interrupted` or `stale` before its replay starts. A `paused` projection stays
    paused (``begin_paused_rebuild``): its rebuild is suspended by the pause from the start,
    and its runner replays it all the same
    ([`claim_paused_rebuild`][django_eventsource.state.claim_paused_rebuild])."""
    claim: dict[str, Any] = (
        {} if owner is None else {"owner": owner, "heartbeat_at": timezone.now()}
    )
    cleared: dict[str, Any] = {
        "attempts": 0,
        "last_error": "",
        "failed_event_position": None,
        "failed_event_id": None,
        "failed_event_type": "",
        **claim,
    }
    tenant = tenant_id or NO_TENANT
    check_projection_name(name)  # ValueError: a name no projection can have gets no row
    with write_transaction(using):
        # Locked: an operator's pause lands before or after both, never between them.
        _states(using).get_or_create(name=name, tenant_id=tenant)
        list(_states(using).select_for_update().filter(name=name, tenant_id=tenant).values("pk"))
        if _apply(
            BEGIN_PAUSED_REBUILD,
            name,
            tenant_id,
            using,
            strict=False,
            suspended_rebuild=True,
            **cleared,
        ):
            return
        _apply(
            BEGIN_REBUILD, name, tenant_id, using, strict=True, suspended_rebuild=False, **cleared
        )


def claim_paused_rebuild(name: str, tenant_id: str | None, using: str, *, owner: str) -> bool:
    """A rebuild (holding the lock) runs a projection that is `paused` in the middle of its
    rebuild: it claims the row for ``owner`` and beats, the status staying `paused`, so that
    its batches pass the checkpoint's fence and an event that keeps failing makes it
    `failed`. Returns False (nothing claimed) unless the row is `paused` in a suspended
    rebuild. Workers never do this: they skip a paused projection."""
    now = timezone.now()
    return bool(
        _states(using)
        .filter(
            name=name,
            tenant_id=tenant_id or NO_TENANT,
            status=Status.PAUSED,
            suspended_rebuild=True,
        )
        .update(owner=owner, heartbeat_at=now, updated_at=now)
    )


def finish_rebuild(name: str, tenant_id: str | None, using: str) -> bool:
    """The rebuild's replay caught up: `idle`; paused meanwhile, it stays paused and the
    suspended rebuild is over."""
    done = _apply(FINISH_REBUILD, name, tenant_id, using, strict=False)
    _states(using).filter(
        name=name, tenant_id=tenant_id or NO_TENANT, status=Status.PAUSED, suspended_rebuild=True
    ).update(suspended_rebuild=False, updated_at=timezone.now())
    return done


def swap_shadow(name: str, tenant_id: str | None, using: str, *, position: int | None) -> None:
    """A shadow rebuild swapped its tables in (inside its transaction): the checkpoint becomes
    the shadow's ``position`` (None: an inline projection without a runner keeps none), the
    errors are cleared and the runner's claim ends, so a live runner's next batch is fenced
    and it resumes from the new checkpoint. `idle`, unless an operator paused it (it stays
    `paused`); a suspended rebuild is over (the swapped-in tables are complete)."""
    cleared: dict[str, Any] = {
        "position": position,
        "owner": "",
        "suspended_rebuild": False,
        "attempts": 0,
        "last_error": "",
        "failed_event_position": None,
        "failed_event_id": None,
        "failed_event_type": "",
    }
    if not _apply(SWAP_SHADOW, name, tenant_id, using, strict=False, **cleared):
        _states(using).filter(name=name, tenant_id=tenant_id or NO_TENANT).update(
            updated_at=timezone.now(), **cleared
        )

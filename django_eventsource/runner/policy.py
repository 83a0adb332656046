"""The error policy: what the batch loop does when an event fails.

The events before the failing one are committed, the failing one is retried alone with
exponential backoff (``MAX_RETRIES``, ``RETRY_BACKOFF``), then the policy applies: the
runner's ``error_policy``, else the projection's, else ``ERROR_POLICY``:

* ``pause``: the projection is `failed` (through `django_eventsource.state`), its checkpoint
  just before the event; runners skip it until an operator resumes it;
* ``dead_letter``: the event is set aside (`django_eventsource.deadletters`) and the run goes
  on with the next one;
* ``raise`` (the runner's only, for [`catch_up`][django_eventsource.catch_up]): the failure
  is recorded as for ``pause``, then the
  [`ProjectionError`][django_eventsource.ProjectionError] is raised.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from django.db import connections

from django_eventsource.checkpoints import CheckpointStore
from django_eventsource.exceptions import ProjectionError
from django_eventsource.runner.batch import apply_batch

if TYPE_CHECKING:
    from django_eventsource.projections import Projection
    from django_eventsource.stored import StoredEvent

__all__ = ["Applied", "PolicyRunner", "apply_with_policy"]


class Applied(NamedTuple):
    """What [`apply_with_policy`][django_eventsource.runner.policy.apply_with_policy] did to
    a batch."""

    #: Events applied (the dead-lettered and parked ones not counted).
    applied: int
    #: Events consumed from the front of the batch: all of them, or up to the failing one.
    consumed: int
    #: The checkpoint now committed.
    position: int
    #: Whether the projection failed (policy ``pause``): the run stops.
    failed: bool


class PolicyRunner(Protocol):
    """What the error policy needs of its runner (a
    [`ProjectionRunner`][django_eventsource.runner.ProjectionRunner])."""

    tenant_id: str | None
    #: Whether the runner keeps status (then ``pause`` marks the projection `failed`).
    managed: bool
    max_retries: int
    retry_backoff: float
    #: The runner's own policy (None: the projection's, else the setting's).
    error_policy: str | None
    default_policy: str

    def report(self, kind: str, **data: Any) -> None:
        """Tell the progress callback and the logs (``retry``, ``failed``, ...)."""
        ...

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds`` (a retry's backoff); True when told to stop meanwhile."""
        ...


def apply_with_policy(
    runner: PolicyRunner,
    projection: Projection,
    events: Sequence[StoredEvent],
    checkpoints: CheckpointStore,
    start: int,
    owner: str | None,
) -> Applied:
    """Apply a batch. On a failure, commit the events before the failing one, retry it
    alone with backoff, then pause or dead-letter it (or raise).

    Positions say nothing about order (the feed is ordered by (stamp, position)), so
    progress is counted by index (``Applied.consumed``).
    """
    from django_eventsource import deadletters, state  # they import models

    tenant = runner.tenant_id
    try:
        return Applied(
            apply_batch(projection, events, checkpoints, tenant_id=tenant),
            len(events),
            events[-1].position,
            failed=False,
        )
    except ProjectionError as first_error:
        error = first_error
    applied = 0
    index = next((i for i, e in enumerate(events) if e.position == error.position), None)
    if index is None:
        # Not one event's fault as far as we know (the batch's rows failed to write):
        # apply the events one at a time to find the one that fails.
        for index, event in enumerate(events):  # noqa: B007 (index is used below)
            try:
                applied += apply_batch(projection, [event], checkpoints, tenant_id=tenant)
            except ProjectionError as single:
                error = single
                break
        else:
            return Applied(applied, len(events), events[-1].position, failed=False)
    elif index:
        applied = apply_batch(projection, events[:index], checkpoints, tenant_id=tenant)
    committed = events[index - 1].position if index else start
    failing = events[index]
    attempts = 1
    for attempt in range(runner.max_retries):
        delay = runner.retry_backoff * (2**attempt)
        runner.report(
            "retry",
            projection=projection.label,
            position=failing.position,
            attempt=attempts,
            delay=delay,
            error=str(error),
            event=failing,
            exception=error,
            tenant_id=tenant,
        )
        if runner.wait(delay):
            return Applied(applied, index, committed, failed=False)
        connection = connections[projection.database]
        if not connection.in_atomic_block:  # an atomic rebuild's transaction must live
            connection.close_if_unusable_or_obsolete()
        attempts += 1
        try:
            applied += apply_batch(projection, [failing], checkpoints, tenant_id=tenant)
        except ProjectionError as again:
            error = again
        else:
            return Applied(applied, index + 1, failing.position, failed=False)
    policy = runner.error_policy or projection.error_policy or runner.default_policy
    if policy == "dead_letter":
        deadletters.dead_letter(
            projection,
            failing,
            error,
            attempts=attempts,
            tenant_id=tenant,
            checkpoint_store=checkpoints,
        )
        runner.report(
            "dead_lettered",
            projection=projection.label,
            position=failing.position,
            error=str(error),
            tenant_id=tenant,
        )
        return Applied(applied, index + 1, failing.position, failed=False)
    if runner.managed:
        state.fail(
            projection.label,
            tenant,
            projection.database,
            error,
            attempts=attempts,
            owner=owner,
        )
    runner.report(
        "failed",
        projection=projection.label,
        position=failing.position,
        error=str(error),
        event=failing,
        exception=error,
        attempts=attempts,
        tenant_id=tenant,
        paused=runner.managed and not connections[projection.database].in_atomic_block,
    )
    if policy == "raise":
        raise error
    return Applied(applied, index, committed, failed=True)

"""Django models of the event store.

``Event`` is written only by [`EventStore`][django_eventsource.EventStore] (a single bulk
``INSERT`` per append, which also computes the ordering stamp) and is append-only: the ORM
refuses to save, update or delete its rows.
"""

from __future__ import annotations

from typing import Any, NoReturn

from django.db import models

from django_eventsource.constants import NO_TENANT
from django_eventsource.exceptions import AppendOnlyError

__all__ = [
    "BuiltProjection",
    "CheckpointedModel",
    "DeadLetter",
    "Event",
    "LagSample",
    "ProjectionState",
    "RunnerHeartbeat",
    "Snapshot",
]


def _refuse(what: str) -> NoReturn:
    raise AppendOnlyError(
        f"Stored events are append-only: {what} is refused. Append new events with "
        "EventStore.append() (for example a compensating event) instead."
    )


class EventQuerySet(models.QuerySet["Event"]):
    """A queryset that reads events but refuses every bulk write."""

    def update(self, **kwargs: Any) -> int:
        _refuse("QuerySet.update()")

    def delete(self) -> tuple[int, dict[str, int]]:
        _refuse("QuerySet.delete()")

    def bulk_create(self, *args: Any, **kwargs: Any) -> list[Event]:
        _refuse("bulk_create()")

    def bulk_update(self, *args: Any, **kwargs: Any) -> int:
        _refuse("bulk_update()")

    def get_or_create(self, *args: Any, **kwargs: Any) -> tuple[Event, bool]:
        _refuse("get_or_create()")

    def update_or_create(self, *args: Any, **kwargs: Any) -> tuple[Event, bool]:
        _refuse("update_or_create()")


class Event(models.Model):
    """One stored domain event.

    ``position`` is the global, ever-increasing id. On PostgreSQL positions are allocated at
    insert but committed in any order, so readers order by ``(stamp, position)`` instead; see
    `django_eventsource.backends.postgresql`. On SQLite writers are serialized and
    ``stamp`` is always 0.
    """

    position = models.BigAutoField(primary_key=True)
    stamp = models.BigIntegerField(
        default=0,
        editable=False,
        help_text="Ordering stamp (PostgreSQL: causal transaction id); 0 on SQLite.",
    )
    event_id = models.UUIDField(unique=True, editable=False)
    event_type = models.CharField(max_length=255)
    schema_version = models.PositiveIntegerField(default=1)
    tenant_id = models.CharField(max_length=255, blank=True, default=NO_TENANT)
    aggregate_id = models.UUIDField()
    aggregate_type = models.CharField(max_length=255, blank=True, default="")
    aggregate_version = models.PositiveIntegerField()
    payload = models.JSONField(default=dict)
    metadata = models.JSONField(default=dict, blank=True)
    correlation_id = models.UUIDField(null=True, blank=True)
    causation_id = models.UUIDField(null=True, blank=True)
    occurred_at = models.DateTimeField()
    recorded_at = models.DateTimeField()

    objects = EventQuerySet.as_manager()

    class Meta:
        ordering = ("stamp", "position")
        verbose_name = "event"
        verbose_name_plural = "events"
        constraints = (
            models.UniqueConstraint(
                fields=("tenant_id", "aggregate_id", "aggregate_version"),
                name="django_eventsource_event_stream_version",
            ),
        )
        indexes = (
            models.Index(fields=("stamp", "position"), name="django_eventsource_evt_order"),
            models.Index(fields=("event_type", "position"), name="django_eventsource_evt_type"),
            models.Index(
                fields=("tenant_id", "stamp", "position"), name="django_eventsource_evt_tenant"
            ),
        )

    def __str__(self) -> str:
        return f"#{self.position} {self.event_type} {self.aggregate_id} v{self.aggregate_version}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        """Refused for a stored event: events are appended by the store (``AppendOnlyError``)."""
        _refuse("Event.save()")

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        """Refused: events are append-only (``AppendOnlyError``)."""
        _refuse("Event.delete()")


class CheckpointedModel(models.Model):
    """Abstract base of read models: each row embeds its own checkpoint (ADR-016).

    The three fields name the last event applied to *this row*. They are written in the same
    transaction as the row's other columns, so a row and its checkpoint never disagree, and an
    event the row already holds is never applied to it again:

    * rows keyed by one stream skip an event with ``aggregate_version <= last_event_version``
      (and a gap in the stream's versions is reported, never applied over);
    * rows fed by many streams skip an event that comes at or before ``last_event_position``
      in feed order, ``(stamp, position)`` (on PostgreSQL a lower position can be delivered
      after a higher one; the stamps are looked up from the event table, not stored here).

    Set ``checkpoint_by = "position"`` on the model for the second kind. Each read model
    belongs to one projection (check E009).
    """

    checkpoint_by: str = "version"

    last_event_id = models.UUIDField(null=True, blank=True, editable=False)
    last_event_version = models.PositiveIntegerField(null=True, blank=True, editable=False)
    last_event_position = models.BigIntegerField(
        null=True, blank=True, editable=False, db_index=True
    )

    class Meta:
        abstract = True


CHECKPOINT_FIELDS = ("last_event_id", "last_event_version", "last_event_position")


class ProjectionStatus(models.TextChoices):
    """A projection's statuses; `django_eventsource.state` owns every change between them.

    ``STALE``, ``INTERRUPTED``, ``INLINE``, ``UNASSIGNED`` and ``UNBUILT`` are reported (by
    `projection_status` and the admin), never stored.
    """

    IDLE = "idle", "idle"
    RUNNING = "running", "running"
    PAUSED = "paused", "paused"
    FAILED = "failed", "failed"
    REBUILDING = "rebuilding", "rebuilding"
    STALE = "stale", "stale (its runner stopped beating)"
    INTERRUPTED = "interrupted", "interrupted (a rebuild stopped before it caught up)"
    INLINE = "inline", "inline (kept current by the appends)"
    UNASSIGNED = "unassigned", "unassigned (a tenant's events no runner applies)"
    UNBUILT = "unbuilt", "unbuilt (an inline projection never rebuilt over older events)"


class ProjectionState(models.Model):
    """One row per projection and tenant: the resume point, status and last error.

    ``position`` is written in the same transaction as the batch of read-model writes it
    covers (once per batch, never per event), so it never claims uncommitted work.
    """

    name = models.CharField(max_length=200)
    tenant_id = models.CharField(max_length=255, blank=True, default=NO_TENANT)
    position = models.BigIntegerField(null=True, blank=True)
    status = models.CharField(
        max_length=20, choices=ProjectionStatus.choices, default=ProjectionStatus.IDLE
    )
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    owner = models.CharField(max_length=255, blank=True, default="")
    lease_until = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    failed_event_position = models.BigIntegerField(null=True, blank=True)
    failed_event_id = models.UUIDField(null=True, blank=True)
    failed_event_type = models.CharField(max_length=255, blank=True, default="")
    attempts = models.PositiveIntegerField(default=0)
    #: Paused or failed in the middle of a rebuild: resuming it (or setting its failed event
    #: aside) returns it to `rebuilding`, and appends keep leaving an inline projection to
    #: the rebuild meanwhile (see `django_eventsource.state`). False in every other status.
    suspended_rebuild = models.BooleanField(
        default=False,
        help_text="Paused or failed in the middle of a rebuild: resuming it returns it to "
        "rebuilding.",
    )
    last_progress_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    Status = ProjectionStatus

    class Meta:
        ordering = ("name", "tenant_id")
        verbose_name = "projection"
        verbose_name_plural = "projections"
        constraints = (
            models.UniqueConstraint(
                fields=("name", "tenant_id"), name="django_eventsource_projection_tenant"
            ),
        )
        permissions = (
            ("pause_projection", "Can pause and resume projections"),
            ("retry_projection", "Can retry or skip a projection's failed event"),
            ("rebuild_projection", "Can rebuild projections"),
        )

    def __str__(self) -> str:
        return f"{self.name} ({self.tenant_id})" if self.tenant_id else self.name


class BuiltProjection(models.Model):
    """An inline projection known to hold every event stored before it existed.

    Appends apply an inline projection to their own events only: one added to a store with
    history has never seen the older events until ``rebuild_projections`` replays them. A
    rebuild's checkpoint says that; this row says it where no checkpoint does: the
    projection was registered while the store held no event (``migrate`` marks it), a
    shadow rebuild swapped it in, or it was registered when the upgrade to this marker ran
    (0013: the upgrade cannot tell, see the status how-to). Without either, the status
    reports the projection ``unbuilt``.
    """

    name = models.CharField(max_length=200, unique=True)
    #: The store's head when it was marked.
    position = models.BigIntegerField(default=0)
    #: How it was known to be built (``empty store``, ``shadow swap``, ``upgrade``).
    reason = models.CharField(max_length=50, blank=True, default="")
    built_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("name",)
        verbose_name = "built inline projection"
        verbose_name_plural = "built inline projections"

    def __str__(self) -> str:
        return f"{self.name} (built: {self.reason})" if self.reason else self.name


class RunnerHeartbeat(models.Model):
    """A runner's latest heartbeat, written by its heartbeat thread while it holds a
    projection: one row per lock owner (``ProjectionState.owner``).

    Not the state row's ``heartbeat_at``, which the runner writes between batches: a beat of
    the state row would wait for a batch's lock on it. The status takes the newer of the two
    (see `django_eventsource.heartbeats`).
    """

    owner = models.CharField(max_length=255, primary_key=True)
    beat_at = models.DateTimeField()

    class Meta:
        verbose_name = "runner heartbeat"
        verbose_name_plural = "runner heartbeats"

    def __str__(self) -> str:
        return f"{self.owner} at {self.beat_at:%Y-%m-%d %H:%M:%S}"


class DeadLetterResolution(models.TextChoices):
    APPLIED = "applied", "applied by a retry"
    HELD = "held", "already in the read model"
    REBUILT = "rebuilt", "replayed by a rebuild"


class DeadLetter(models.Model):
    """An event a projection set aside: one it could not apply, or one parked behind it.

    While a stream (its tenant and aggregate) has an unresolved dead letter in a projection,
    the stream is *parked* there: the runner applies none of its later events, and records
    each as a dead letter whose ``parked_behind`` names the failed event's position; other
    streams go on. Retrying any letter of the stream applies the failed event and then the
    parked ones, in stream order (see ``django_eventsource.deadletters``).
    """

    Resolution = DeadLetterResolution

    projection = models.CharField(max_length=200)
    tenant_id = models.CharField(
        max_length=255,
        blank=True,
        default=NO_TENANT,
        help_text="The tenant scope of the projection's runner ('' for all tenants).",
    )
    event_position = models.BigIntegerField()
    event_id = models.UUIDField()
    event_type = models.CharField(max_length=255)
    stream_tenant_id = models.CharField(
        max_length=255, blank=True, default=NO_TENANT, help_text="The event's own tenant."
    )
    aggregate_id = models.UUIDField(null=True, blank=True)
    aggregate_version = models.PositiveIntegerField(null=True, blank=True)
    parked_behind = models.BigIntegerField(
        null=True,
        blank=True,
        help_text="For a parked event: the position of the failed event it waits behind.",
    )
    error = models.TextField()
    traceback = models.TextField(blank=True, default="")
    attempts = models.PositiveIntegerField(default=1)
    created_at = models.DateTimeField(auto_now_add=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolution = models.CharField(
        max_length=20, blank=True, default="", choices=DeadLetterResolution.choices
    )

    class Meta:
        ordering = ("-created_at",)
        verbose_name = "dead letter"
        verbose_name_plural = "dead letters"
        constraints = (
            models.UniqueConstraint(
                fields=("projection", "tenant_id", "event_position"),
                name="django_eventsource_deadletter_event",
            ),
        )
        indexes = (
            models.Index(
                fields=("projection", "tenant_id", "stream_tenant_id", "aggregate_id"),
                condition=models.Q(resolved_at=None),
                name="django_eventsource_dl_parked",
            ),
        )

    def __str__(self) -> str:
        return f"{self.projection}: {self.event_type} #{self.event_position}"


class LagSample(models.Model):
    """A projection's lag at one moment, recorded by runners for the admin's lag chart."""

    name = models.CharField(max_length=200)
    tenant_id = models.CharField(max_length=255, blank=True, default=NO_TENANT)
    position = models.BigIntegerField()
    head = models.BigIntegerField()
    lag_events = models.BigIntegerField()
    lag_seconds = models.FloatField()
    recorded_at = models.DateTimeField()

    class Meta:
        ordering = ("name", "tenant_id", "recorded_at")
        verbose_name = "lag sample"
        verbose_name_plural = "lag samples"
        indexes = (
            models.Index(
                fields=("name", "tenant_id", "recorded_at"), name="django_eventsource_lag_time"
            ),
        )

    def __str__(self) -> str:
        return f"{self.name} lag {self.lag_events} at {self.recorded_at:%Y-%m-%d %H:%M:%S}"


class Snapshot(models.Model):
    """The latest snapshot of one aggregate's state, to load it without replaying it all.

    ``schema_version`` is the aggregate class's snapshot version when it was taken; a
    snapshot of another version is ignored (and replaced), never trusted.
    """

    tenant_id = models.CharField(max_length=255, blank=True, default=NO_TENANT)
    aggregate_id = models.UUIDField()
    aggregate_type = models.CharField(max_length=255)
    version = models.PositiveIntegerField()
    schema_version = models.PositiveIntegerField(default=1)
    state = models.JSONField()
    created_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "snapshot"
        verbose_name_plural = "snapshots"
        constraints = (
            models.UniqueConstraint(
                fields=("tenant_id", "aggregate_type", "aggregate_id"),
                name="django_eventsource_snapshot_stream",
            ),
        )

    def __str__(self) -> str:
        return f"{self.aggregate_type} {self.aggregate_id} v{self.version}"

"""The runner's progress reports, and the log records and metrics they become.

The batch loop says what happened through one call, ``report(kind, **data)`` (a
[`Reporter`][django_eventsource.runner.progress.Reporter]); this module maps each kind to
its log record and metric, then passes it on to the ``progress_callback`` (the commands
print it). It also writes the records of a runner's life (started, stopped, reconnected).

Every module of the runner logs through one logger, ``django_eventsource.runner`` (the name
the "Monitoring" how-to documents), defined here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from django_eventsource import metrics
from django_eventsource.logs import event_fields, tenant_text
from django_eventsource.text import plural, printable

if TYPE_CHECKING:
    from django_eventsource.stored import StoredEvent

__all__ = ["ProgressCallback", "Reporter", "logger"]

#: ``progress_callback(kind, **data)``: what a runner reports (``start``, ``batch``,
#: ``done``, ``retry``, ``failed``, ``dead_lettered``, ``locked``, ``standby``,
#: ``took_over``, ``lock_lost``, ``skipped``, ``signal``, ``disconnected``, ``busy``, ``reset``,
#: ``swapped``).
ProgressCallback = Callable[..., None]

#: The runner's logger: the records of every module of ``django_eventsource.runner``.
logger = logging.getLogger("django_eventsource.runner")


def _ignore(kind: str, **data: Any) -> None:
    return None


class Reporter:
    """The runner's progress reports, turned into log records (``django_eventsource.runner``)
    and metrics, then passed on to the ``progress_callback``.

    One place maps each report to its record, so the batch loop stays free of logging code.
    Reports are per batch or rarer, never per event; a batch's DEBUG record is only built
    when DEBUG is enabled.
    """

    def __init__(
        self, callback: ProgressCallback | None, tenant_id: str | None, *, shadow: bool = False
    ) -> None:
        self.callback = callback or _ignore
        self.tenant_id = tenant_id
        #: The reports of a shadow rebuild's build: its batches, retries and failure are not
        #: the live projection's (metrics of their own, and records that say so).
        self.shadow = shadow

    def __call__(self, kind: str, **data: Any) -> None:
        handler = getattr(self, f"_on_{kind}", None)
        if handler is not None:
            handler(data)
        self.callback(kind, **data)

    def _fields(self, data: dict[str, Any]) -> dict[str, Any]:
        return {
            "projection": data.get("projection"),
            "tenant": data.get("tenant_id", self.tenant_id),
        }

    def _name(self, data: dict[str, Any]) -> str:
        return printable(data.get("projection", "")) + tenant_text(
            data.get("tenant_id", self.tenant_id)
        )

    def _on_batch(self, data: dict[str, Any]) -> None:
        duration = data.get("duration")
        if duration is not None and self.shadow:  # the shadow's work, not the live one's
            metrics.record_shadow_batch(
                data["projection"], applied=data.get("applied", 0), seconds=duration
            )
        elif duration is not None:
            metrics.record_batch(
                data["projection"],
                data.get("tenant_id", self.tenant_id),
                applied=data.get("applied", 0),
                seconds=duration,
            )
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "Applied a batch to %s: %s passed, %s applied, position %s to %s in %.3fs",
                self._name(data),
                plural(data.get("events", 0), "event"),
                data.get("applied", 0),
                data.get("from_position"),
                data.get("position"),
                duration or 0.0,
                extra={
                    **self._fields(data),
                    "from_position": data.get("from_position"),
                    "to_position": data.get("position"),
                    "count": data.get("events", 0),
                    "applied": data.get("applied", 0),
                    "duration": duration,
                },
            )

    def _event_failure(self, data: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """The failing event and error, as text and as fields."""
        event: StoredEvent | None = data.get("event")
        error: BaseException | None = data.get("exception")
        cause = getattr(error, "cause", error)
        text = f"#{data.get('position')}"
        fields: dict[str, Any] = {**self._fields(data), "event_position": data.get("position")}
        if event is not None:
            text += (
                f" ({printable(event.event_type)}, stream {event.aggregate_id} "
                f"version {event.aggregate_version})"
            )
            fields.update(event_fields(event))
        fields["error"] = str(cause) if cause is not None else data.get("error")
        fields["error_type"] = type(cause).__name__ if cause is not None else None
        return text, fields

    def _on_retry(self, data: dict[str, Any]) -> None:
        if self.shadow:
            metrics.record_shadow_retry(data["projection"])
        else:
            metrics.record_retry(data["projection"])
        event, fields = self._event_failure(data)
        logger.warning(
            "Retrying event %s of %s in %.2fs (retry %s): %s",
            event,
            self._name(data),
            data.get("delay", 0.0),
            data.get("attempt"),
            printable(fields["error"]),
            extra={**fields, "attempt": data.get("attempt"), "delay": data.get("delay")},
        )

    def _on_failed(self, data: dict[str, Any]) -> None:
        event, fields = self._event_failure(data)
        if self.shadow:
            metrics.record_shadow_failure(data["projection"])
            logger.error(
                "The shadow build of %s failed on event %s after %s; the live projection "
                "keeps serving and being applied, and nothing is swapped: %s",
                self._name(data),
                event,
                plural(data.get("attempts") or 1, "attempt"),
                printable(fields["error"]),
                extra={**fields, "attempts": data.get("attempts"), "shadow": True},
            )
            return
        metrics.record_failure(data["projection"])
        logger.error(
            "%s failed on event %s after %s and %s: %s",
            self._name(data),
            event,
            plural(data.get("attempts") or 1, "attempt"),
            # Not when the state is not the database's (a shadow build, an in-memory
            # checkpoint store) or a caller's transaction holds it (an atomic rebuild).
            "is paused (its checkpoint stays before the event)"
            if data.get("paused", True)
            else "the run stops before it",
            printable(fields["error"]),
            extra={**fields, "attempts": data.get("attempts")},
        )

    def _on_dead_lettered(self, data: dict[str, Any]) -> None:
        # django_eventsource.deadletters logs the letter itself.
        metrics.record_dead_letter(data["projection"])

    def _on_locked(self, data: dict[str, Any]) -> None:
        logger.info(
            "%s is held by %s; skipped",
            self._name(data),
            printable(data.get("holder") or "another runner"),
            extra={**self._fields(data), "holder": data.get("holder")},
        )

    def _on_standby(self, data: dict[str, Any]) -> None:
        logger.info(
            "%s is held by %s; waiting as a standby",
            self._name(data),
            printable(data.get("holder") or "another runner"),
            extra={**self._fields(data), "holder": data.get("holder")},
        )

    def _on_took_over(self, data: dict[str, Any]) -> None:
        logger.info("Took over %s from another runner", self._name(data), extra=self._fields(data))

    def _on_lock_lost(self, data: dict[str, Any]) -> None:
        logger.warning(
            "Lost the lock of %s: another runner holds it now; its batch in hand, if any, is "
            "rolled back",
            self._name(data),
            extra=self._fields(data),
        )

    def _on_skipped(self, data: dict[str, Any]) -> None:
        logger.info(
            "%s is %s; skipped until it is resumed",
            self._name(data),
            data.get("status"),
            extra={**self._fields(data), "status": str(data.get("status"))},
        )

    def _on_signal(self, data: dict[str, Any]) -> None:
        logger.info(
            "Received %s: stopping after the batch in hand",
            data.get("signal"),
            extra={"signal": data.get("signal")},
        )

    def _on_disconnected(self, data: dict[str, Any]) -> None:
        logger.warning(
            "The database is unavailable (%s); retrying",
            printable(data.get("error", "")),
            extra={"error": data.get("error"), "error_type": data.get("error_type")},
        )

    def _on_busy(self, data: dict[str, Any]) -> None:
        logger.warning(
            "The database is busy: another connection has held its write lock for longer "
            "than %s (%s); retrying in %.2fs (attempt %d), without letting go of the "
            "projections",
            data.get("limit") or "its lock timeout",
            printable(data.get("error", "")),
            data.get("delay", 0.0),
            data.get("attempt", 1),
            extra={
                "error": data.get("error"),
                "error_type": data.get("error_type"),
                "attempt": data.get("attempt"),
                "delay": data.get("delay"),
                "database": data.get("using"),
            },
        )

    def _on_reset(self, data: dict[str, Any]) -> None:
        logger.info(
            "Reset the rows and checkpoint of %s for a rebuild",
            self._name(data),
            extra=self._fields(data),
        )


# Records of a runner's life -----------------------------------------------------------------


def log_start(labels: list[str], tenant_id: str | None, *, follow: bool) -> float:
    """A runner starts catching up (or following) ``labels``; returns the start time."""
    logger.info(
        "Runner %s: %s%s",
        "following" if follow else "catching up",
        printable(", ".join(labels)),
        tenant_text(tenant_id),
        extra={"projections": labels, "tenant": tenant_id, "follow": follow},
    )
    return time.monotonic()


def log_stop(
    labels: list[str], tenant_id: str | None, *, applied: int, failed: list[str], started: float
) -> None:
    """A runner stopped: how long it ran, what it applied and what failed."""
    duration = time.monotonic() - started
    logger.info(
        "Runner stopped after %.1fs: %s applied%s",
        duration,
        plural(applied, "event"),
        f"; failed: {printable(', '.join(failed))}" if failed else "",
        extra={
            "projections": labels,
            "tenant": tenant_id,
            "applied": applied,
            "duration": duration,
            "failed": list(failed),
        },
    )


def log_not_busy(busy_since: float, attempts: int) -> None:
    """A follower wrote again after the database was busy."""
    busy = time.monotonic() - busy_since
    logger.info(
        "The database took writes again after %.1fs busy (%s)",
        busy,
        plural(attempts, "attempt"),
        extra={"busy_seconds": busy, "attempts": attempts},
    )


def log_reconnected(down_since: float) -> None:
    """A follower reached the database again."""
    down = time.monotonic() - down_since
    logger.info("Reconnected to the database after %.1fs", down, extra={"down_seconds": down})

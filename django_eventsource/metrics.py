"""Process-local metrics: what *this* process did (events appended and applied, batch
durations, retries, dead letters), as Prometheus counters and histograms.

They need ``prometheus_client`` (``pip install "django-eventsource[prometheus]"``). Without
it every ``record_*`` function returns at once and the library runs as usual. They are
registered in ``prometheus_client``'s default registry the first time something is recorded,
so any exporter of that registry shows them; the gauges computed from the database at scrape
time (lag, held-back events, dead letters, status) live in
[`django_eventsource.prometheus`][django_eventsource.prometheus].

Cheap on the hot paths: the append path adds one dictionary lookup and one counter increment
(no database round trip), and the runner records once per batch, never per event.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Final

from django.db import connections, transaction

from django_eventsource.conf import get_settings

if TYPE_CHECKING:
    from prometheus_client import Counter, Histogram

__all__ = [
    "MISSING_MESSAGE",
    "OTHER_TENANTS",
    "TenantLabels",
    "available",
    "record_appended",
    "record_batch",
    "record_dead_letter",
    "record_failure",
    "record_retry",
    "record_shadow_batch",
    "record_shadow_failure",
    "record_shadow_retry",
]

#: The ``tenant`` label of the tenants beyond ``METRICS_MAX_TENANTS`` (a tenant really named
#: "(other)" would be counted with them).
OTHER_TENANTS: Final = "(other)"

#: What the metrics view and ``--metrics-port`` say when ``prometheus_client`` is missing.
MISSING_MESSAGE: Final = (
    "Prometheus metrics need the prometheus_client package: "
    'pip install "django-eventsource[prometheus]"'
)

#: Buckets of ``eventsource_batch_duration_seconds``: a batch takes milliseconds to seconds.
BATCH_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def available() -> bool:
    """Whether ``prometheus_client`` can be imported."""
    return _instruments() is not None


class TenantLabels:
    """Bounds the values of a ``tenant`` label: the first ``METRICS_MAX_TENANTS`` tenants a
    process sees keep their id, later ones are counted as ``"(other)"``. No tenant is ``""``
    and never counts against the limit."""

    def __init__(self) -> None:
        self._named: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, tenant_id: str | None) -> str:
        tenant = tenant_id or ""
        if not tenant or tenant in self._named:
            return tenant
        with self._lock:
            if tenant in self._named or len(self._named) < get_settings().metrics_max_tenants:
                self._named.add(tenant)
                return tenant
        return OTHER_TENANTS


class _Instruments:
    def __init__(self) -> None:
        from prometheus_client import Counter, Histogram

        self.tenant = TenantLabels()
        self.appended: Counter = Counter(
            "eventsource_events_appended",
            "Events this process appended to the store (counted at commit).",
            ["tenant"],
        )
        self.applied: Counter = Counter(
            "eventsource_events_applied",
            "Events this process's runners applied to projections (handled or skipped by "
            "the rows' embedded checkpoints), counted per committed batch.",
            ["projection", "tenant"],
        )
        self.batches: Histogram = Histogram(
            "eventsource_batch_duration_seconds",
            "Seconds to read, apply and commit one batch, in this process.",
            ["projection"],
            buckets=BATCH_BUCKETS,
        )
        self.retries: Counter = Counter(
            "eventsource_event_retries",
            "Retries of a failing event by this process's runners.",
            ["projection"],
        )
        self.dead_letters: Counter = Counter(
            "eventsource_events_dead_lettered",
            "Events this process's runners set aside as dead letters.",
            ["projection"],
        )
        self.failures: Counter = Counter(
            "eventsource_projection_failures",
            "Times this process's runners stopped a projection on a failing event (pause policy).",
            ["projection"],
        )
        self.shadow_failures: Counter = Counter(
            "eventsource_shadow_build_failures",
            "Times a shadow rebuild in this process stopped on a failing event before its swap "
            "(the live projection did not fail: it keeps serving and being applied).",
            ["projection"],
        )
        # A shadow rebuild's build: its work is not the live projection's, so it has its own
        # names (dashboards of the live projection do not see it).
        self.shadow_applied: Counter = Counter(
            "eventsource_shadow_events_applied",
            "Events this process's shadow rebuilds applied to their shadow tables, counted "
            "per committed batch (not applied to the live projection).",
            ["projection"],
        )
        self.shadow_batches: Histogram = Histogram(
            "eventsource_shadow_batch_duration_seconds",
            "Seconds to read, apply and commit one batch of a shadow rebuild's build, in this "
            "process.",
            ["projection"],
            buckets=BATCH_BUCKETS,
        )
        self.shadow_retries: Counter = Counter(
            "eventsource_shadow_event_retries",
            "Retries of a failing event by this process's shadow rebuilds.",
            ["projection"],
        )
        self._appended_children: dict[str, Any] = {}

    def appended_child(self, tenant_id: str | None) -> Any:
        child = self._appended_children.get(tenant_id or "")
        if child is None:
            child = self.appended.labels(self.tenant(tenant_id))
            self._appended_children[tenant_id or ""] = child
        return child


_state: dict[str, Any] = {}
_state_lock = threading.Lock()


def _instruments() -> _Instruments | None:
    """The instruments, created on first use (None when prometheus_client is missing)."""
    try:
        return _state["instruments"]  # type: ignore[no-any-return]
    except KeyError:
        pass
    with _state_lock:
        if "instruments" not in _state:
            try:
                import prometheus_client  # noqa: F401
            except ImportError:
                _state["instruments"] = None
            else:
                _state["instruments"] = _Instruments()
    return _state["instruments"]  # type: ignore[no-any-return]


def record_appended(using: str, tenant_id: str | None, count: int) -> None:
    """Count ``count`` events appended on database ``using``: now if the append has
    committed, else when the caller's transaction commits (never if it rolls back)."""
    instruments = _instruments()
    if instruments is None:
        return
    child = instruments.appended_child(tenant_id)
    if connections[using].in_atomic_block:
        transaction.on_commit(lambda: child.inc(count), using=using)
    else:
        child.inc(count)


def record_batch(projection: str, tenant_id: str | None, *, applied: int, seconds: float) -> None:
    """One committed batch of a runner: ``applied`` events in ``seconds``."""
    instruments = _instruments()
    if instruments is None:
        return
    if applied:
        instruments.applied.labels(projection, instruments.tenant(tenant_id)).inc(applied)
    instruments.batches.labels(projection).observe(seconds)


def record_retry(projection: str) -> None:
    """A runner retries a failing event."""
    instruments = _instruments()
    if instruments is not None:
        instruments.retries.labels(projection).inc()


def record_dead_letter(projection: str) -> None:
    """A runner set an event aside as a dead letter."""
    instruments = _instruments()
    if instruments is not None:
        instruments.dead_letters.labels(projection).inc()


def record_failure(projection: str) -> None:
    """A runner stopped a projection on a failing event."""
    instruments = _instruments()
    if instruments is not None:
        instruments.failures.labels(projection).inc()


def record_shadow_batch(projection: str, *, applied: int, seconds: float) -> None:
    """One committed batch of a shadow rebuild's build (the live projection's counters are
    not touched: it did not do this work)."""
    instruments = _instruments()
    if instruments is None:
        return
    if applied:
        instruments.shadow_applied.labels(projection).inc(applied)
    instruments.shadow_batches.labels(projection).observe(seconds)


def record_shadow_retry(projection: str) -> None:
    """A shadow rebuild's build retries a failing event."""
    instruments = _instruments()
    if instruments is not None:
        instruments.shadow_retries.labels(projection).inc()


def record_shadow_failure(projection: str) -> None:
    """A shadow rebuild's build stopped on a failing event (the live projection did not)."""
    instruments = _instruments()
    if instruments is not None:
        instruments.shadow_failures.labels(projection).inc()

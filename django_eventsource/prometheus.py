"""Prometheus exposition: gauges computed from the database at scrape time, and the registry
that the metrics view and ``replay_projections --metrics-port`` serve.

Why gauges from the database: lag, held-back events, dead letters, statuses and heartbeats
are facts of the database, the same whichever process is scraped. Computed at scrape time
they are right in a multi-process server (gunicorn, uWSGI), where process-local gauges are a
known trap. Only the counters and histograms of
[`django_eventsource.metrics`][django_eventsource.metrics] are per process; see the
"Monitoring" how-to for prometheus_client's multiprocess mode.

Needs ``prometheus_client`` (``pip install "django-eventsource[prometheus]"``); importing
this module without it raises ``ImproperlyConfigured`` naming the extra.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, connections

from django_eventsource.conf import get_settings
from django_eventsource.metrics import MISSING_MESSAGE, OTHER_TENANTS
from django_eventsource.status import CHECKS, ProjectionStatusRow, StatusCheck, check_status
from django_eventsource.store import BaseEventStore

try:
    from prometheus_client import REGISTRY, CollectorRegistry
    from prometheus_client.core import GaugeMetricFamily, Metric
except ImportError as exc:  # pragma: no cover - tested in a subprocess without it
    raise ImproperlyConfigured(MISSING_MESSAGE) from exc

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

__all__ = ["DatabaseCollector", "metrics_registry", "start_metrics_server"]

logger = logging.getLogger(__name__)


class DatabaseCollector:
    """A prometheus_client collector whose gauges are read from the database when scraped:
    one status query per projection and tenant (the same as ``projection_status``).

    ``names`` limits it to those projections (a worker shows the ones it runs);
    ``tenant_id`` to one tenant's rows. ``close_connections`` closes the scraping thread's
    database connections after each scrape (for the worker's HTTP server thread; a view's
    connections are Django's to manage).
    """

    def __init__(
        self,
        names: list[str] | None = None,
        *,
        tenant_id: str | None = None,
        event_store: BaseEventStore | None = None,
        close_connections: bool = False,
    ) -> None:
        self.names = names
        self.tenant_id = tenant_id
        self.event_store = event_store
        self.close_connections = close_connections

    def describe(self) -> list[Metric]:
        """Nothing: registering the collector must not query the database."""
        # Registering must not query the database: describe nothing (prometheus_client
        # then never calls collect() at registration).
        return []

    def collect(self) -> Iterator[Metric]:
        """Read the status from the database, once per scrape, and yield the gauges."""
        up = GaugeMetricFamily(
            "eventsource_database_up",
            "1 when the gauges below could be read from the database, else 0.",
        )
        try:
            check = check_status(
                self.names, event_store=self.event_store, tenant_id=self.tenant_id
            )
            letters = _dead_letters(check.rows)
        except DatabaseError as exc:
            logger.warning(
                "Metrics: the database could not be read (%s)",
                type(exc).__name__,
                extra={"error": str(exc)},
            )
            up.add_metric([], 0)
            yield up
            return
        finally:
            if self.close_connections:
                connections.close_all()
        up.add_metric([], 1)
        yield up
        yield from _gauges(check, letters)


def _dead_letters(rows: list[ProjectionStatusRow]) -> dict[tuple[str, str], int]:
    """Unresolved dead letters per projection and tenant scope (one query per database)."""
    from django_eventsource.control import projection_database
    from django_eventsource.status import _dead_letter_counts

    names = sorted({r.projection for r in rows})
    return _dead_letter_counts(names, {projection_database(n) for n in names})


def _named_tenants(rows: list[ProjectionStatusRow], letters: dict[Any, int]) -> set[str]:
    """The tenants that keep their own label: the ``METRICS_MAX_TENANTS`` in the worst state
    (failed or unassigned, then most lag, then longest held back); no tenant ("") always
    does."""
    worst: dict[str, tuple[int, int, int, float]] = {}
    for row in rows:
        if not row.tenant_id:
            continue
        score = (
            int(row.status in ("failed", "unassigned")),  # a tenant no runner serves, too
            letters.get((row.projection, row.tenant_id), 0),
            row.lag_events,
            row.held_seconds,
        )
        worst[row.tenant_id] = max(worst.get(row.tenant_id, score), score)
    ranked = sorted(worst, key=lambda t: (tuple(-v for v in worst[t]), t))
    return {"", *ranked[: get_settings().metrics_max_tenants]}


def _gauges(check: StatusCheck, letters: dict[tuple[str, str], int]) -> Iterator[Metric]:
    from django_eventsource.models import ProjectionStatus

    rows = check.rows
    labels = ["projection", "tenant"]
    families = {
        "position": GaugeMetricFamily(
            "eventsource_projection_position",
            "The projection's checkpoint: the position of the last event it applied.",
            labels=labels,
        ),
        "lag_events": GaugeMetricFamily(
            "eventsource_lag_events",
            "Committed events after the projection's checkpoint, readable or held back.",
            labels=labels,
        ),
        "lag_seconds": GaugeMetricFamily(
            "eventsource_lag_seconds",
            "Age of the oldest event the projection has not applied yet (0 when caught up).",
            labels=labels,
        ),
        "held_events": GaugeMetricFamily(
            "eventsource_held_events",
            "Of the lag, events PostgreSQL's ordering horizon holds back (an appending "
            "transaction has not committed). Always 0 on SQLite.",
            labels=labels,
        ),
        "held_seconds": GaugeMetricFamily(
            "eventsource_held_seconds",
            "How long the oldest held-back event has waited (0 when none).",
            labels=labels,
        ),
        "dead_letters": GaugeMetricFamily(
            "eventsource_dead_letters",
            "Unresolved dead letters: events the projection set aside, and the events parked "
            "behind them.",
            labels=labels,
        ),
        "heartbeat": GaugeMetricFamily(
            "eventsource_heartbeat_age_seconds",
            "Seconds since a runner last showed it was alive for this projection.",
            labels=labels,
        ),
        "up": GaugeMetricFamily(
            "eventsource_worker_up",
            "1 when a runner has heartbeated for the projection within three heartbeat "
            "intervals (or, on SQLite, its process on this host lives), else 0.",
            labels=labels,
        ),
    }
    status = GaugeMetricFamily(
        "eventsource_projection_status",
        '1 for the projection\'s current status, 0 for the others (with tenant="(other)": '
        "how many of the other tenants are in each status).",
        labels=[*labels, "status"],
    )
    statuses = list(dict.fromkeys([*ProjectionStatus.values, "inline", *(r.status for r in rows)]))
    named = _named_tenants(rows, letters)
    stale_after = get_settings().heartbeat_timeout
    # (projection, tenant label) -> aggregated values
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        tenant = row.tenant_id if row.tenant_id in named else OTHER_TENANTS
        group = groups.setdefault(
            (row.projection, tenant),
            {"rows": 0, "statuses": dict.fromkeys(statuses, 0), "up": 1.0},
        )
        # A live status is reported only for a runner that beats, or whose process lives
        # while its beats wait for SQLite's write lock (see django_eventsource.heartbeats).
        alive = row.status in (ProjectionStatus.RUNNING, ProjectionStatus.REBUILDING) or (
            row.heartbeat_age is not None and row.heartbeat_age <= stale_after
        )
        values = {
            "lag_events": row.lag_events,
            "held_events": row.held_events,
            "dead_letters": letters.get((row.projection, row.tenant_id), 0),
        }
        for key, value in values.items():  # summed over the "(other)" tenants
            group[key] = group.get(key, 0) + value
        worst: list[tuple[str, float | None]] = [
            ("lag_seconds", row.lag_seconds),
            ("held_seconds", row.held_seconds),
            ("heartbeat", row.heartbeat_age),
        ]
        for name, seconds in worst:  # the worst of the "(other)" tenants
            if seconds is not None:
                group[name] = max(group.get(name, 0.0), seconds)
        group["up"] = min(group["up"], 1.0 if alive else 0.0)
        group["position"] = row.position
        group["statuses"][row.status] += 1
        group["rows"] += 1
    for (projection, tenant), group in sorted(groups.items()):
        for key, family in families.items():
            if key == "position" and tenant == OTHER_TENANTS:
                continue  # positions of several tenants do not add up
            if key in group:
                family.add_metric([projection, tenant], group[key])
        for name, count in group["statuses"].items():
            status.add_metric([projection, tenant, name], count)
    yield from families.values()
    yield status
    head = GaugeMetricFamily(
        "eventsource_head_position",
        "The store's highest committed position (its increase is the append rate of every "
        "process).",
    )
    head.add_metric([], max((r.head for r in rows), default=0))
    yield head
    ok = GaugeMetricFamily(
        "eventsource_check_ok",
        "1 when projection_status --check would pass (the health view answers 200), else 0.",
    )
    ok.add_metric([], 1 if check.ok else 0)
    yield ok
    problems = GaugeMetricFamily(
        "eventsource_check_problems",
        "Problems the status check finds, by check (see projection_status --check).",
        labels=["check"],
    )
    kinds = list(dict.fromkeys([*CHECKS, *(p.check for p in check.problems)]))
    for kind in kinds:
        problems.add_metric([kind], sum(1 for p in check.problems if p.check == kind))
    yield problems


class _Forward:
    """A collector that yields what another registry collects."""

    def __init__(self, registry: Any) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        return iter(self.registry.collect())


def metrics_registry(
    names: list[str] | None = None,
    *,
    tenant_id: str | None = None,
    event_store: BaseEventStore | None = None,
    close_connections: bool = False,
) -> CollectorRegistry:
    """What to expose: this process's metrics (prometheus_client's default registry, or
    every process's when ``PROMETHEUS_MULTIPROC_DIR`` is set) and the database's gauges."""
    registry = CollectorRegistry(auto_describe=False)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry.register(_Forward(REGISTRY))
    registry.register(
        DatabaseCollector(
            names,
            tenant_id=tenant_id,
            event_store=event_store,
            close_connections=close_connections,
        )
    )
    return registry


def start_metrics_server(
    port: int,
    address: str = "0.0.0.0",
    *,
    names: list[str] | None = None,
    tenant_id: str | None = None,
    event_store: BaseEventStore | None = None,
) -> WSGIServer:
    """Serve ``/metrics`` on ``address:port`` from a daemon thread (port 0: any free port;
    read it from the returned server's ``server_port``). For workers that serve no HTTP."""
    from prometheus_client import start_http_server

    registry = metrics_registry(
        names, tenant_id=tenant_id, event_store=event_store, close_connections=True
    )
    server, _thread = start_http_server(port, address, registry=registry)
    logger.info(
        "Serving Prometheus metrics on http://%s:%d/metrics",
        address,
        server.server_port,
        extra={"address": address, "port": server.server_port},
    )
    return server

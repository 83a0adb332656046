"""Views for operators: a health probe and the Prometheus metrics.

Mount them with ``path("eventsource/", include("django_eventsource.urls"))`` or one by one.
Both are safe to expose to a load balancer: they show no query text, no error text and no
secrets, only projection names, tenant ids and numbers. Restrict the metrics view as you
would any ``/metrics`` (at the proxy, or by wrapping it).
"""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.decorators import method_decorator
from django.views import View
from django.views.decorators.cache import never_cache

from django_eventsource.metrics import MISSING_MESSAGE, available
from django_eventsource.status import check_status

__all__ = ["HealthView", "health", "metrics"]

logger = logging.getLogger(__name__)


@method_decorator(never_cache, name="dispatch")
class HealthView(View):
    """200 when ``projection_status --check`` would pass, 503 with the problems when not.

    The checks are [`find_problems`][django_eventsource.status.find_problems]'s, with the
    same thresholds: the ``MAX_LAG`` and ``MAX_HELD_SECONDS`` settings, or the class
    attributes below, e.g. ``HealthView.as_view(max_lag=10_000, projections=["orders"])``.
    The body is small JSON: ``{"status": "ok" | "failing", "problems": [{"check",
    "projection", "tenant_id", "message"}]}``. A database that cannot be read is a
    ``database`` problem (503), without its error text.
    """

    http_method_names = ["get", "head", "options"]  # noqa: RUF012 (as Django declares it)
    #: The largest acceptable lag in events (None: the ``MAX_LAG`` setting).
    max_lag: int | None = None
    #: How long events may be held back, in seconds (None: ``MAX_HELD_SECONDS``).
    max_held_seconds: float | None = None
    #: Only these projections (None: every registered projection).
    projections: list[str] | None = None
    #: Whether unresolved dead letters pass (as ``--allow-dead-letters``).
    allow_dead_letters: bool = False

    def get(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        """200 with the status as JSON when the check passes, 503 when it does not (or the
        database cannot be read)."""
        try:
            report = check_status(
                self.projections,
                max_lag=self.max_lag,
                max_held_seconds=self.max_held_seconds,
                allow_dead_letters=self.allow_dead_letters,
            )
        except DatabaseError as exc:
            logger.warning(
                "Health check: the database could not be read (%s)",
                type(exc).__name__,
                extra={"error": str(exc)},
            )
            problem = {
                "check": "database",
                "projection": "",
                "tenant_id": "",
                "message": "the database could not be read",
            }
            return JsonResponse({"status": "failing", "problems": [problem]}, status=503)
        return JsonResponse(
            {
                "status": "ok" if report.ok else "failing",
                "problems": [p.as_dict() for p in report.problems],
            },
            status=200 if report.ok else 503,
        )


#: The health view with the settings' thresholds.
health = HealthView.as_view()


@never_cache
def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus metrics: this process's counters and histograms (every process's in
    prometheus_client's multiprocess mode) and the gauges read from the database now.

    Needs ``prometheus_client`` (the ``prometheus`` extra): without it, it raises
    ``ImproperlyConfigured`` saying what to install.
    """
    if not available():
        raise ImproperlyConfigured(MISSING_MESSAGE)
    from prometheus_client.exposition import choose_encoder

    from django_eventsource.prometheus import metrics_registry

    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    return HttpResponse(encoder(metrics_registry()), content_type=content_type)

"""Lag over time, drawn as inline SVG from the runner's lag samples."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from django.db import connections
from django.utils import timezone

from django_eventsource import control
from django_eventsource.admin.base import duration
from django_eventsource.backends import backend_for
from django_eventsource.models import LagSample

__all__ = ["CHART_BUCKETS", "CHART_HEIGHT", "CHART_WIDTH", "LagChart", "lag_charts"]


@dataclass(frozen=True)
class LagChart:
    """One projection's lag over time, scaled for an inline SVG."""

    projection: str
    tenant_id: str
    metric: str
    points: str
    samples: int
    maximum: float
    latest: float | None
    start: datetime
    end: datetime
    width: int
    height: int

    @property
    def area(self) -> str:
        """The polyline closed down to the x axis (a filled area under the line)."""
        if not self.points:
            return ""
        first, last = self.points.split(" ")[0], self.points.split(" ")[-1]
        return (
            f"{first.split(',')[0]},{self.height} {self.points} {last.split(',')[0]},{self.height}"
        )

    @property
    def last_point(self) -> tuple[str, str] | None:
        """The newest point, marked with a dot (a single sample draws no line)."""
        if not self.points:
            return None
        x, y = self.points.rsplit(" ", 1)[-1].split(",")
        return x, y

    @property
    def maximum_label(self) -> str:
        return duration(self.maximum) if self.metric == "seconds" else f"{self.maximum:,.0f}"

    @property
    def latest_label(self) -> str:
        if self.latest is None:
            return "no samples"
        return duration(self.latest) if self.metric == "seconds" else f"{self.latest:,.0f}"


CHART_WIDTH = 600
CHART_HEIGHT = 120
CHART_BUCKETS = 200


def lag_charts(
    series: Iterable[tuple[str, str]],
    *,
    since: datetime,
    until: datetime | None = None,
    metric: str = "events",
) -> list[LagChart]:
    """Lag charts from [`LagSample`][django_eventsource.models.LagSample], one per series.

    The database reduces the samples: one statement per database groups them into at most
    ``CHART_BUCKETS`` slices per series, keeping the worst lag of each slice, and one more
    finds each series' latest sample. The number of queries does not grow with the number
    of series or samples.
    """
    until = until or timezone.now()
    field = "lag_seconds" if metric == "seconds" else "lag_events"
    span = max((until - since).total_seconds(), 1.0)
    wanted = list(dict.fromkeys(series))
    by_database: dict[str, list[tuple[str, str]]] = {}
    for name, tenant in wanted:
        by_database.setdefault(control.projection_database(name), []).append((name, tenant))
    buckets: dict[tuple[str, str], dict[int, float]] = {key: {} for key in wanted}
    counts: dict[tuple[str, str], int] = dict.fromkeys(wanted, 0)
    latest: dict[tuple[str, str], float | None] = dict.fromkeys(wanted)
    for using, keys in by_database.items():
        _reduce(using, keys, since, until, span, field, buckets, counts, latest)
    charts = []
    for name, tenant in wanted:
        points_by_bucket = buckets[(name, tenant)]
        maximum = max(points_by_bucket.values(), default=0.0)
        scale = maximum or 1.0
        points = " ".join(
            f"{(b + 0.5) * CHART_WIDTH / CHART_BUCKETS:.1f},"
            f"{CHART_HEIGHT - v / scale * (CHART_HEIGHT - 4):.1f}"
            for b, v in sorted(points_by_bucket.items())
        )
        charts.append(
            LagChart(
                name,
                tenant,
                metric,
                points,
                counts[(name, tenant)],
                maximum,
                latest[(name, tenant)],
                since,
                until,
                CHART_WIDTH,
                CHART_HEIGHT,
            )
        )
    return charts


def _reduce(
    using: str,
    keys: list[tuple[str, str]],
    since: datetime,
    until: datetime,
    span: float,
    field: str,
    buckets: dict[tuple[str, str], dict[int, float]],
    counts: dict[tuple[str, str], int],
    latest: dict[tuple[str, str], float | None],
) -> None:
    """Fill the series of one database: worst lag per slice, sample counts, latest value."""
    connection = connections[using]
    quote = connection.ops.quote_name
    meta = LagSample._meta
    table = quote(meta.db_table)

    def column(name: str) -> str:
        return quote(str(meta.get_field(name).column))  # type: ignore[union-attr]

    names = sorted({name for name, _ in keys})
    tenants = sorted({tenant for _, tenant in keys})
    bucket = backend_for(connection).time_bucket_sql(column("recorded_at"))
    sql = (
        f"SELECT {column('name')}, {column('tenant_id')}, {bucket} AS slice, "
        f"MAX({column(field)}), COUNT(*) FROM {table} "
        f"WHERE {column('name')} IN ({', '.join(['%s'] * len(names))}) "
        f"AND {column('tenant_id')} IN ({', '.join(['%s'] * len(tenants))}) "
        f"AND {column('recorded_at')} >= %s AND {column('recorded_at')} <= %s "
        "GROUP BY 1, 2, 3"
    )
    start = since.timestamp()
    params = [
        start,
        CHART_BUCKETS / span,
        *names,
        *tenants,
        connection.ops.adapt_datetimefield_value(since),
        connection.ops.adapt_datetimefield_value(until),
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        for name, tenant, slice_, worst, count in cursor.fetchall():
            key = (name, tenant)
            if key not in buckets:
                continue  # another tenant of a wanted projection
            index = min(max(int(slice_), 0), CHART_BUCKETS - 1)
            series = buckets[key]
            series[index] = max(series.get(index, 0.0), float(worst))
            counts[key] += int(count)
        # The newest sample of each series: one probe of the (name, tenant, recorded_at)
        # index per series, in the same statement.
        pairs = ", ".join(["(%s, %s)"] * len(keys))
        cursor.execute(
            f"WITH v(name, tenant) AS (VALUES {pairs}) SELECT v.name, v.tenant, "
            f"(SELECT s.{column(field)} FROM {table} s WHERE s.{column('name')} = v.name "
            f"AND s.{column('tenant_id')} = v.tenant AND s.{column('recorded_at')} >= %s "
            f"AND s.{column('recorded_at')} <= %s "
            f"ORDER BY s.{column('recorded_at')} DESC, s.{quote(str(meta.pk.column))} DESC LIMIT 1) "
            "FROM v",
            [*(value for key in keys for value in key), *params[-2:]],
        )
        for name, tenant, value in cursor.fetchall():
            if value is not None:
                latest[(name, tenant)] = float(value)

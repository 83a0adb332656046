"""What a reader of the ORM store has left after a position: the SQL behind
`EventStore.pending_events` and `pending_events_many`, which the status pages and
`measure_lag` ask for.

Each measurement is one statement, so that both counts (readable now, and held back by
PostgreSQL's read horizon) come from one snapshot and one horizon.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.db import connections

from django_eventsource.backends import Backend
from django_eventsource.basestore import PENDING_COUNT_LIMIT, Pending
from django_eventsource.constants import EVENT_TABLE as TABLE
from django_eventsource.constants import HELD_REREADS
from django_eventsource.exceptions import PositionNotFound
from django_eventsource.validation import check_position, check_read_tenant

__all__ = ["count_pending", "count_pending_many"]


def count_pending(
    using: str, backend: Backend, from_position: int = 0, tenant_id: str | None = None
) -> Pending:
    """[`pending_events`][django_eventsource.store.BaseEventStore.pending_events] in SQL."""
    from_position = check_position(from_position)
    check_read_tenant(tenant_id)
    # One statement: one snapshot and one horizon for both counts.
    where = ""
    params: list[Any] = []
    if from_position and backend.stamped:
        where += (
            f" AND (e.stamp, e.position) > ((SELECT stamp FROM {TABLE} WHERE position = %s), %s)"
        )
        params += [from_position, from_position]
    elif from_position:
        where += " AND e.position > %s"
        params.append(from_position)
    if tenant_id is not None:
        where += " AND e.tenant_id = %s"
        params.append(tenant_id)
    horizon = backend.horizon_sql()
    sql = f"{_with(horizon)}SELECT {_measures(backend, where, horizon)}"
    params *= 2 if horizon is None else 4  # the measures repeat ``where`` that many times
    with backend.read_cursor(connections[using]) as cursor:
        for attempt in range(HELD_REREADS + 1):
            cursor.execute(sql, params)
            readable, held, next_at, held_at = cursor.fetchone()
            if not held or attempt == HELD_REREADS or not _momentary(backend, cursor):
                break
        if not (readable or held) and from_position:
            cursor.execute(f"SELECT 1 FROM {TABLE} WHERE position = %s", [from_position])
            if cursor.fetchone() is None:
                raise PositionNotFound(from_position)
    return _pending(backend, readable, held, next_at, held_at)


def check_tenant(tenant: str | None) -> str | None:
    check_read_tenant(tenant)
    return tenant


def count_pending_many(
    using: str, backend: Backend, checkpoints: Sequence[tuple[int, str | None]]
) -> list[Pending]:
    """[`pending_events_many`][django_eventsource.store.BaseEventStore.pending_events_many] in
    SQL."""
    # One statement for the pairs with a tenant and one for those without (so that each
    # count keeps its index), each evaluating pending_events' subqueries per pair.
    found: dict[int, Pending] = {}
    for with_tenant in (False, True):
        group = [
            (index, check_position(position), check_tenant(tenant))
            for index, (position, tenant) in enumerate(checkpoints)
            if (tenant is not None) == with_tenant
        ]
        if group:
            found.update(_pending_group(using, backend, group, with_tenant=with_tenant))
    return [found[index] for index in range(len(checkpoints))]


def _pending_group(
    using: str,
    backend: Backend,
    group: list[tuple[int, int, str | None]],
    *,
    with_tenant: bool,
) -> dict[int, Pending]:
    if backend.stamped:
        where = (
            " AND (e.stamp, e.position) > "
            f"(COALESCE((SELECT s.stamp FROM {TABLE} s WHERE s.position = v.pos), -1), v.pos)"
        )
    else:
        where = " AND e.position > v.pos"
    if with_tenant:
        where += " AND e.tenant_id = v.tenant"
    horizon = backend.horizon_sql()
    values = ", ".join(
        ["(CAST(%s AS INTEGER), CAST(%s AS BIGINT), CAST(%s AS TEXT))"] * len(group)
    )
    params = [value for row in group for value in row]
    exists = f"(v.pos = 0 OR EXISTS (SELECT 1 FROM {TABLE} x WHERE x.position = v.pos))"
    sql = (
        f"{_with(horizon, f'v(i, pos, tenant) AS (VALUES {values})')}SELECT v.i, "
        f"{_measures(backend, where, horizon)}, {exists} FROM v"
    )
    with backend.read_cursor(connections[using]) as cursor:
        for attempt in range(HELD_REREADS + 1):
            cursor.execute(sql, params)
            rows = cursor.fetchall()
            if (
                not any(row[2] for row in rows)
                or attempt == HELD_REREADS
                or not _momentary(backend, cursor)
            ):
                break
    positions = {index: position for index, position, _ in group}
    found = {}
    for index, readable, held, next_at, held_at, present in rows:
        if not present:
            raise PositionNotFound(positions[index])
        found[int(index)] = _pending(backend, readable, held, next_at, held_at)
    return found


def _momentary(backend: Backend, cursor: Any) -> bool:
    """Whether events counted as held back may only have met a momentary hold (no
    transaction appends now: see ``Backend.momentarily_held``): then count again, as
    ``read_all`` reads again, so that a status does not show events held for an instant."""
    return backend.momentarily_held(cursor, [], [])


def _with(horizon: str | None, *tables: str) -> str:
    """The ``WITH`` clause: the horizon ``h``, read once (when the backend has one), and
    ``tables``."""
    if horizon is not None:
        tables = (f"h AS MATERIALIZED (SELECT {horizon} AS h)", *tables)
    return f"WITH {', '.join(tables)} " if tables else ""


def _measures(backend: Backend, where: str, horizon: str | None) -> str:
    """The four measures of a reader, as SQL expressions over the events ``e`` that
    ``where`` selects: how many are readable, how many the horizon ``h`` holds back, when
    the next readable one and the oldest held-back one were recorded.

    Each count stops at ``PENDING_COUNT_LIMIT``, so a large backlog costs a bounded index
    range scan.
    """
    order = "e.stamp, e.position" if backend.stamped else "e.position"
    limit = PENDING_COUNT_LIMIT
    if horizon is None:  # every committed event is readable
        return (
            f"(SELECT COUNT(*) FROM (SELECT 1 FROM {TABLE} e WHERE 1 = 1{where} "
            f"LIMIT {limit}) r), 0, (SELECT e.recorded_at FROM {TABLE} e WHERE 1 = 1{where} "
            f"ORDER BY {order} LIMIT 1), NULL"
        )
    return (
        f"(SELECT COUNT(*) FROM (SELECT 1 FROM {TABLE} e, h WHERE e.stamp < h.h{where} "
        f"LIMIT {limit}) r), "
        f"(SELECT COUNT(*) FROM (SELECT 1 FROM {TABLE} e, h WHERE e.stamp >= h.h{where} "
        f"LIMIT {limit}) q), "
        f"(SELECT e.recorded_at FROM {TABLE} e, h WHERE e.stamp < h.h{where} "
        f"ORDER BY {order} LIMIT 1), "
        f"(SELECT MIN(q.recorded_at) FROM (SELECT e.recorded_at FROM {TABLE} e, h "
        f"WHERE e.stamp >= h.h{where} LIMIT {limit}) q)"
    )


def _pending(backend: Backend, readable: Any, held: Any, next_at: Any, held_at: Any) -> Pending:
    """A row of the four measures as the database returns them."""
    return Pending(
        int(readable),
        int(held),
        None if next_at is None else backend.to_datetime(next_at),
        None if held_at is None else backend.to_datetime(held_at),
    )

"""The unit of work behind ``Projection.row()``: read-model rows with embedded checkpoints.

A :class:`RowSet` lives for one transaction (one event, or one batch of the runner). It
loads each row at most once (a batch prefetches rows keyed by stream with one query),
decides per row whether an event was already applied (ADR-016), stamps the row's checkpoint,
and writes every changed row back with one bulk upsert per model when flushed.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, TypeVar, cast
from uuid import UUID

from django.db import connections, models

from django_eventsource.events import DomainEvent
from django_eventsource.exceptions import EventGapError
from django_eventsource.store import TABLE, StoredEvent

if TYPE_CHECKING:
    from django_eventsource.projections import Projection

__all__ = ["RowSet"]

M = TypeVar("M", bound=models.Model)
_MISSING = object()


def _key(model: type[models.Model], lookup: dict[str, Any]) -> tuple[Any, ...]:
    if len(lookup) == 1:
        return (model, *lookup.items())
    return (model, *sorted(lookup.items()))


class RowSet:
    """Rows touched by the events of one transaction, keyed by model and lookup."""

    def __init__(self, projection: Projection, *, tenant_id: str | None = None) -> None:
        self.projection = projection
        self.using = projection.database
        self.tenant_id = tenant_id
        self._rows: dict[tuple[Any, ...], Any] = {}
        self._dirty: dict[int, models.Model] = {}
        self._deleted: dict[int, models.Model] = {}
        self._lock = connections[self.using].vendor == "postgresql"
        #: The event being handled and its position (set by ``Projection.apply``), so that
        #: ``get`` need not read the position back from the pydantic event (a slow lookup).
        self._event: DomainEvent | None = None
        self._event_position: int | None = None

    # Loading ------------------------------------------------------------------------------

    def _queryset(self, model: type[M]) -> models.QuerySet[M]:
        queryset = model._default_manager.using(self.using).all()
        if self._lock:
            # Inline projections may update one row from concurrent appends: serialize them.
            queryset = queryset.select_for_update()
        return queryset

    def prefetch(self, events: Iterable[StoredEvent]) -> None:
        """Load the rows of every ``row_keys`` model for these events' streams, one query each."""
        keys = self.projection.row_keys
        if not keys:
            return
        handled = self.projection.handled_types()
        wanted: dict[str | None, set[UUID]] = {}
        for event in events:
            if event.event_type in handled:
                wanted.setdefault(event.tenant_id, set()).add(event.aggregate_id)
        for model, field in keys.items():
            tenant_field = _has_tenant(model)
            for tenant, ids in wanted.items():
                lookup: dict[str, Any] = {}
                if tenant_field:
                    lookup["tenant_id"] = tenant or ""
                queryset = self._queryset(model).filter(**lookup)
                if self._lock:  # PostgreSQL: one array parameter, not one per stream
                    column, array_type = _any_column(model, field, self.using)
                    queryset = queryset.extra(
                        where=[f"{column} = ANY(%s::{array_type}[])"], params=[list(ids)]
                    )
                else:
                    queryset = queryset.filter(**{f"{field}__in": ids})
                found = {getattr(row, field): row for row in queryset}
                for aggregate_id in ids:
                    row_lookup: dict[str, Any] = {field: aggregate_id}
                    if tenant_field:
                        row_lookup["tenant_id"] = tenant or ""
                    self._rows.setdefault(_key(model, row_lookup), found.get(aggregate_id))

    def _load(self, model: type[M], lookup: dict[str, Any]) -> M | None:
        key = _key(model, lookup)
        row = self._rows.get(key, _MISSING)
        if row is _MISSING:
            row = self._queryset(model).filter(**lookup).first()
            self._rows[key] = row
        return cast("M | None", row)

    # The checkpoint decision --------------------------------------------------------------

    def get(self, model: type[M], event: DomainEvent, **lookup: Any) -> M | None:
        """The row to apply ``event`` to (new or loaded), or None if it already holds it."""
        if "tenant_id" not in lookup and _has_tenant(model):
            lookup["tenant_id"] = event.tenant_id or ""
        key = _key(model, lookup)
        row: Any = self._rows.get(key, _MISSING)
        if row is _MISSING:
            row = self._queryset(model).filter(**lookup).first()
            self._rows[key] = row
        if row is None:
            row = self._rows[key] = model(**lookup)
        elif self._deleted and id(row) in self._deleted:
            return None
        position = self._event_position if event is self._event else event._position
        by = getattr(model, "checkpoint_by", "version")
        if by == "position":
            if position is None:
                raise ValueError(
                    f"{model.__name__} checkpoints by position, but event {event.event_id} "
                    "has not been stored (it has no position)."
                )
            held = row.last_event_position
            if held is not None and position <= held:
                return None
        else:
            held = row.last_event_version
            if held is not None and event.aggregate_version <= held:
                return None
            if event.aggregate_version > (held or 0) + 1:
                self._check_gap(model, event, held)
        row.last_event_id = event.event_id
        row.last_event_version = event.aggregate_version
        row.last_event_position = position
        self._dirty[id(row)] = row
        return cast("M", row)

    def _check_gap(self, model: type[models.Model], event: DomainEvent, held: int | None) -> None:
        """Fail if the stream has events this projection handles between held and incoming."""
        store = self.projection.event_store
        from django_eventsource.store import EventStore

        if store is not None and not isinstance(store, EventStore):
            missed = [
                e
                for e in store.read_stream(event.aggregate_id, tenant_id=event.tenant_id)
                if (held or 0) < e.aggregate_version < event.aggregate_version
                and e.event_type in self.projection.handled_types()
            ]
            if missed:
                raise EventGapError(
                    model.__name__, event.aggregate_id, held, event.aggregate_version
                )
            return
        using = store.using if isinstance(store, EventStore) else self.using
        types = sorted(self.projection.handled_types())
        connection = connections[using]
        aggregate = (
            event.aggregate_id if connection.vendor == "postgresql" else event.aggregate_id.hex
        )
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT 1 FROM {TABLE} WHERE tenant_id = %s AND aggregate_id = %s "
                "AND aggregate_version > %s AND aggregate_version < %s "
                f"AND event_type IN ({', '.join(['%s'] * len(types))}) LIMIT 1",
                [event.tenant_id or "", aggregate, held or 0, event.aggregate_version, *types],
            )
            if cursor.fetchone() is not None:
                raise EventGapError(
                    model.__name__, event.aggregate_id, held, event.aggregate_version
                )

    def delete(self, row: models.Model) -> None:
        self._dirty.pop(id(row), None)
        if row.pk is not None:
            self._deleted[id(row)] = row

    # Writing ------------------------------------------------------------------------------

    def flush(self) -> int:
        """Write every changed row (one bulk upsert per model) and delete the deleted ones."""
        by_model: dict[type[models.Model], list[models.Model]] = {}
        for row in self._dirty.values():
            by_model.setdefault(type(row), []).append(row)
        for model, rows in by_model.items():
            existing = [r for r in rows if r.pk is not None]
            new = [r for r in rows if r.pk is None]
            if existing and not self._upsert(model, existing, update=True):
                model._default_manager.db_manager(self.using).bulk_create(
                    existing,
                    update_conflicts=True,
                    unique_fields=[model._meta.pk.name],
                    update_fields=_upsert_fields(model),
                )
            if new and not self._upsert(model, new, update=False):
                model._default_manager.db_manager(self.using).bulk_create(new)
        for model_rows in _group(self._deleted.values()).items():
            model, rows = model_rows
            model._default_manager.using(self.using).filter(pk__in=[r.pk for r in rows]).delete()
        written = len(self._dirty) + len(self._deleted)
        self._dirty.clear()
        self._deleted.clear()
        return written

    def _upsert(
        self, model: type[models.Model], rows: list[models.Model], *, update: bool
    ) -> bool:
        """Write ``rows`` with one ``INSERT`` (``… ON CONFLICT (pk) DO UPDATE`` when
        ``update``) per chunk, the SQL that ``bulk_create`` would send; returns False, having
        written nothing, when ``bulk_create`` must do it instead.

        ``bulk_create`` prepares every value of every row through the field's full
        ``pre_save``/``get_db_prep_save`` chain and the SQL compiler, which cost more than
        everything else in a batch that touches many rows. Here values of the plain field
        types (ints, strings, booleans, UUIDs) pass straight through when they already have
        the Python type the field stores, and every other value still goes through Django's
        own chain. Models with a custom manager ``bulk_create``, multi-table inheritance or
        fields with custom placeholders, and values that are expressions, use
        ``bulk_create``.
        """
        connection = connections[self.using]
        plan = _plan(model, connection.vendor, self.using)
        if plan is None:
            return False
        fields, converters = plan[0], plan[1]
        if not update:
            fields, converters = fields[1:], converters[1:]  # new rows: the pk is generated
        values: list[Any] = []
        plain = True  # only None, int, str, bool and UUID values: JSON can carry them
        for row in rows:
            for field, convert in zip(fields, converters, strict=True):
                value = getattr(row, field.attname)
                fast = convert(value)
                if fast is _SLOW:
                    fast = field.get_db_prep_save(field.pre_save(row, not update), connection)
                    if hasattr(fast, "resolve_expression"):
                        return False
                    if isinstance(fast, int) and type(fast) not in (int, bool):
                        # psycopg's Int2/Int4/Int8 (Django wraps ints on PostgreSQL): a
                        # plain int, as the fast path gives, so that arrays are uniform.
                        fast = int(fast)
                    if fast is not None and type(fast) not in _JSON_TYPES:
                        plain = False
                values.append(fast)
        quote = connection.ops.quote_name
        columns = ", ".join(quote(_column(f)) for f in fields)
        sql = f"INSERT INTO {quote(model._meta.db_table)} ({columns}) VALUES "
        suffix = ""
        if update:
            names = set(_upsert_fields(model))
            assignments = ", ".join(
                f"{quote(_column(f))} = EXCLUDED.{quote(_column(f))}"
                for f in fields
                if f.name in names
            )
            pk = quote(_column(fields[0]))
            suffix = f" ON CONFLICT ({pk}) DO UPDATE SET {assignments}"
        returning = not update and connection.features.can_return_rows_from_bulk_insert
        if returning:  # as bulk_create does: new rows learn their primary key
            suffix = f" RETURNING {quote(_column(plan[0][0]))}"
        width = len(fields)
        array_types = plan[2] if update else plan[2][1:]
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql" and len(rows) > 1 and plain:
                # One JSON parameter: psycopg dumps lists (UNNEST's arrays) element by
                # element in Python, while json.dumps and a string parameter cost a third.
                columns_sql = ", ".join(f"(x->>{i})::{t}" for i, t in enumerate(array_types))
                document = json.dumps(
                    [values[i : i + width] for i in range(0, len(values), width)],
                    separators=(",", ":"),
                    default=str,  # UUIDs (the only other type a plain batch holds)
                )
                sql = sql.replace(
                    " VALUES ",
                    f" SELECT {columns_sql} FROM jsonb_array_elements(%s::jsonb) AS x",
                )
                cursor.execute(sql + suffix, [document])
                if returning:
                    self._set_pks(rows, cursor.fetchall())
            elif connection.vendor == "postgresql" and len(rows) > 1:
                # As Django does on PostgreSQL: one array per column, so that the statement
                # has ``width`` parameters instead of ``width`` per row.
                unnest = ", ".join(f"(%s)::{t}[]" for t in array_types)
                sql = sql.replace(" VALUES ", f" SELECT * FROM UNNEST({unnest})")
                cursor.execute(sql + suffix, [values[i::width] for i in range(width)])
                if returning:
                    self._set_pks(rows, cursor.fetchall())
            else:
                per_chunk = max(connection.ops.bulk_batch_size(fields, rows), 1)
                row_sql = "(" + ", ".join(["%s"] * width) + ")"
                for start in range(0, len(rows), per_chunk):
                    count = min(per_chunk, len(rows) - start)
                    cursor.execute(
                        sql + ", ".join([row_sql] * count) + suffix,
                        values[start * width : (start + count) * width],
                    )
                    if returning:
                        self._set_pks(rows[start : start + count], cursor.fetchall())
        for row in rows:
            row._state.adding = False
            row._state.db = self.using
        return True

    @staticmethod
    def _set_pks(rows: list[models.Model], returned: list[Any]) -> None:
        for row, (pk,) in zip(rows, returned, strict=True):
            row.pk = pk


_SLOW = object()
_JSON_TYPES = (int, str, bool, UUID)


@functools.cache
def _any_column(model: type[models.Model], name: str, alias: str) -> tuple[str, str]:
    """The qualified, quoted column of field ``name`` and its type, for ``= ANY(array)``."""
    connection = connections[alias]
    field = model._meta.get_field(name)
    quote = connection.ops.quote_name
    column = f"{quote(model._meta.db_table)}.{quote(_column(field))}"  # type: ignore[arg-type]
    return column, str(field.db_type(connection)).split("(")[0]


def _column(field: models.Field[Any, Any]) -> str:
    return cast(str, field.column)  # concrete fields always have one


def _as_is(kind: type) -> Any:
    def convert(value: Any) -> Any:
        return value if value is None or type(value) is kind else _SLOW

    return convert


def _uuid_hex(value: Any) -> Any:
    if value is None:
        return None
    return value.hex if type(value) is UUID else _SLOW


def _slow(value: Any) -> Any:
    return _SLOW


#: Field classes whose ``get_db_prep_save`` leaves a value of the given Python type as it is
#: (the exact classes only: a subclass may prepare values its own way).
_PLAIN: dict[type[models.Field[Any, Any]], type] = {
    models.IntegerField: int,
    models.BigIntegerField: int,
    models.SmallIntegerField: int,
    models.PositiveIntegerField: int,
    models.PositiveBigIntegerField: int,
    models.PositiveSmallIntegerField: int,
    models.CharField: str,
    models.TextField: str,
    models.BooleanField: bool,
}


@functools.cache
def _plan(
    model: type[models.Model], vendor: str, alias: str
) -> tuple[list[models.Field[Any, Any]], list[Any], list[str]] | None:
    """The pk and the other concrete fields of ``model``, a fast converter for each
    (returning ``_SLOW`` for values Django must prepare) and, on PostgreSQL, each column's
    array type for ``UNNEST``; None when ``bulk_create`` must write.
    """
    meta = model._meta
    if meta.parents or vendor not in ("postgresql", "sqlite"):
        return None
    queryset = type(model._default_manager.get_queryset())
    if queryset.bulk_create is not models.QuerySet.bulk_create:
        return None
    fields = [meta.pk, *(f for f in meta.concrete_fields if not f.primary_key)]
    connection = connections[alias]
    array_types: list[str] = []
    converters: list[Any] = []
    for field in fields:
        if (
            field is None
            or hasattr(field, "get_placeholder")
            or getattr(field, "generated", False)
        ):
            return None
        if vendor == "postgresql":
            if field.get_internal_type() not in connection.data_types:
                return None  # not known to be unnest'able (Django's own test)
            array_types.append(str(field.db_type(connection)).split("(")[0])
        kind = _PLAIN.get(type(field))
        if kind is not None:
            converters.append(_as_is(kind))
        elif type(field) is models.UUIDField:
            converters.append(_as_is(UUID) if vendor == "postgresql" else _uuid_hex)
        else:
            converters.append(_slow)
    return fields, converters, array_types


def _group(rows: Iterable[models.Model]) -> dict[type[models.Model], list[models.Model]]:
    grouped: dict[type[models.Model], list[models.Model]] = {}
    for row in rows:
        grouped.setdefault(type(row), []).append(row)
    return grouped


@functools.cache
def _has_tenant(model: type[models.Model]) -> bool:
    return any(f.name == "tenant_id" for f in model._meta.concrete_fields)


@functools.cache
def _upsert_fields(model: type[models.Model]) -> list[str]:
    """The columns an upsert of an existing row rewrites (all but the key and auto_now_add)."""
    return [
        f.name
        for f in model._meta.concrete_fields
        if not f.primary_key and not getattr(f, "auto_now_add", False)
    ]

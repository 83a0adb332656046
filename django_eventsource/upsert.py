"""Writing read-model rows fast: the bulk upsert behind ``RowSet.flush()``.

`upsert_rows` sends the SQL ``bulk_create(update_conflicts=True)`` would send, without
the per-value cost of Django's preparation chain where the value is already what the column
stores; it falls back to ``bulk_create`` wherever that is not known to be equivalent.
"""

from __future__ import annotations

import functools
import json
from typing import Any, cast
from uuid import UUID

from django.db import connections, models

__all__ = ["column_name", "upsert_rows"]


def upsert_rows(
    model: type[models.Model], rows: list[models.Model], using: str, *, update: bool
) -> None:
    """Insert ``rows`` (``update``: rows that exist, rewritten on their primary key)."""
    if _write(model, rows, using, update=update):
        return
    manager = model._default_manager.db_manager(using)
    if update:
        manager.bulk_create(
            rows,
            update_conflicts=True,
            unique_fields=[model._meta.pk.name],
            update_fields=_upsert_fields(model),
        )
    else:
        manager.bulk_create(rows)


def _write(
    model: type[models.Model], rows: list[models.Model], using: str, *, update: bool
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
    connection = connections[using]
    plan = _plan(model, connection.vendor, using)
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
    columns = ", ".join(quote(column_name(f)) for f in fields)
    sql = f"INSERT INTO {quote(model._meta.db_table)} ({columns}) VALUES "
    suffix = ""
    if update:
        names = set(_upsert_fields(model))
        assignments = ", ".join(
            f"{quote(column_name(f))} = EXCLUDED.{quote(column_name(f))}"
            for f in fields
            if f.name in names
        )
        pk = quote(column_name(fields[0]))
        suffix = f" ON CONFLICT ({pk}) DO UPDATE SET {assignments}"
    returning = not update and connection.features.can_return_rows_from_bulk_insert
    if returning:  # as bulk_create does: new rows learn their primary key
        suffix = f" RETURNING {quote(column_name(plan[0][0]))}"
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
                _set_pks(rows, cursor.fetchall())
        elif connection.vendor == "postgresql" and len(rows) > 1:
            # As Django does on PostgreSQL: one array per column, so that the statement
            # has ``width`` parameters instead of ``width`` per row.
            unnest = ", ".join(f"(%s)::{t}[]" for t in array_types)
            sql = sql.replace(" VALUES ", f" SELECT * FROM UNNEST({unnest})")
            cursor.execute(sql + suffix, [values[i::width] for i in range(width)])
            if returning:
                _set_pks(rows, cursor.fetchall())
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
                    _set_pks(rows[start : start + count], cursor.fetchall())
    for row in rows:
        row._state.adding = False
        row._state.db = using
    return True


def _set_pks(rows: list[models.Model], returned: list[Any]) -> None:
    for row, (pk,) in zip(rows, returned, strict=True):
        row.pk = pk


_SLOW = object()
_JSON_TYPES = (int, str, bool, UUID)


def column_name(field: models.Field[Any, Any]) -> str:
    """The database column of a concrete field."""
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


@functools.cache
def _upsert_fields(model: type[models.Model]) -> list[str]:
    """The columns an upsert of an existing row rewrites (all but the key and auto_now_add)."""
    return [
        f.name
        for f in model._meta.concrete_fields
        if not f.primary_key and not getattr(f, "auto_now_add", False)
    ]

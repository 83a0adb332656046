"""RowSet.flush() writes rows with its own bulk INSERT / upsert: every field type round-trips.

Plain values (ints, strings, booleans, UUIDs) skip Django's value preparation; every other
field (dates, decimals, JSON, auto_now, nullable columns) and any expression still goes
through Django. This module checks both against a model with one field of each kind,
created for the test (``schema_editor``), on the suite's database.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

import pytest
from django.apps.registry import Apps
from django.db import connection, models, transaction
from django.test.utils import CaptureQueriesContext

from django_eventsource import DeclarativeProjection
from django_eventsource.models import CheckpointedModel
from django_eventsource.rows import RowSet
from tests.testapp.events import TaskCreated

pytestmark = pytest.mark.django_db(transaction=True)


class WideRow(CheckpointedModel):
    item_id = models.UUIDField(unique=True)
    count = models.IntegerField(default=0)
    big = models.BigIntegerField(default=0)
    label = models.CharField(max_length=50, default="")
    note = models.TextField(null=True, blank=True)  # noqa: DJ001 (NULL must round-trip)
    flag = models.BooleanField(default=False)
    amount = models.DecimalField(max_digits=12, decimal_places=2, default=Decimal(0))
    data = models.JSONField(default=dict)
    seen_at = models.DateTimeField(null=True, blank=True)
    day = models.DateField(null=True, blank=True)
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        apps = Apps()  # not in the project's registry: no migration, no makemigrations change
        app_label = "rows_write"
        db_table = "test_rows_write_widerow"


class PlainRow(CheckpointedModel):
    """Only plain field types: on PostgreSQL a batch of these is sent as one JSON document."""

    item_id = models.UUIDField(unique=True)
    other_id = models.UUIDField(null=True)
    label = models.CharField(max_length=50, default="")
    note = models.TextField(null=True)  # noqa: DJ001 (NULL must round-trip)
    flag = models.BooleanField(null=True)
    count = models.IntegerField(default=0)
    big = models.BigIntegerField(default=0)

    class Meta:
        apps = WideRow._meta.apps
        app_label = "rows_write"
        db_table = "test_rows_write_plainrow"


class WideRows(DeclarativeProjection):
    models = (WideRow, PlainRow)
    row_keys = {WideRow: "item_id", PlainRow: "item_id"}  # noqa: RUF012


@pytest.fixture
def table() -> Iterator[None]:
    with connection.schema_editor() as editor:
        editor.create_model(WideRow)
        editor.create_model(PlainRow)
    try:
        yield
    finally:
        with connection.schema_editor() as editor:
            editor.delete_model(WideRow)
            editor.delete_model(PlainRow)


def event(item: UUID, version: int, position: int) -> TaskCreated:
    created = TaskCreated(aggregate_id=item, aggregate_version=version, title="t")
    created._position = position
    return created


def write(
    rows_by_item: dict[UUID, dict[str, Any]],
    version: int,
    position: int,
    model: type[CheckpointedModel] = WideRow,
) -> list[Any]:
    """One batch: set ``values`` on each item's row (new or loaded) and flush."""
    written = []
    with transaction.atomic():
        rows = RowSet(WideRows())
        for n, (item, values) in enumerate(rows_by_item.items()):
            row = rows.get(model, event(item, version, position + n), item_id=item)
            assert row is not None
            for name, value in values.items():
                setattr(row, name, value)
            written.append(row)
        rows.flush()
    return written


def stored(item: UUID, model: type[CheckpointedModel] = WideRow) -> dict[str, Any]:
    row = model._default_manager.get(item_id=item)
    return {f.attname: getattr(row, f.attname) for f in model._meta.concrete_fields}


def test_every_field_kind_round_trips_on_insert_and_on_upsert(table: None) -> None:
    a, b, c = uuid4(), uuid4(), uuid4()
    moment = dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=dt.UTC)
    first = {
        "count": 3,
        "big": 2**40,
        "label": "é ' \" \\ {a,b}",
        "note": None,
        "flag": True,
        "amount": Decimal("12.34"),
        "data": {"k": [1, "two", None], "nested": {"x": 1.5}},
        "seen_at": moment,
        "day": dt.date(2024, 1, 2),
    }
    rows = write({a: first, b: {"label": "b"}, c: {"note": "n"}}, version=1, position=10)
    assert all(r.pk is not None and not r._state.adding for r in rows)  # as bulk_create does
    row_a = stored(a)
    assert {k: row_a[k] for k in first} == first
    assert (row_a["last_event_version"], row_a["last_event_position"]) == (1, 10)
    assert row_a["last_event_id"] is not None
    assert stored(b)["note"] is None and stored(b)["label"] == "b"
    created, updated = row_a["created"], row_a["updated"]
    assert created is not None and updated is not None

    second = {
        "count": 4,
        "big": -1,
        "label": "",
        "note": "now set",
        "flag": False,
        "amount": Decimal("-0.50"),
        "data": [],
        "seen_at": None,
        "day": None,
    }
    write({a: second, b: {"count": 7}}, version=2, position=20)
    row_a = stored(a)
    assert {k: row_a[k] for k in second} == second
    assert (row_a["last_event_version"], row_a["last_event_position"]) == (2, 20)
    assert row_a["created"] == created  # auto_now_add is never rewritten
    assert row_a["updated"] >= updated  # auto_now is
    assert stored(b)["count"] == 7 and stored(b)["label"] == "b"
    assert stored(c)["last_event_version"] == 1  # untouched rows stay as they were
    assert WideRow.objects.count() == 3


def test_values_of_another_type_and_expressions_go_through_django(table: None) -> None:
    a, b = uuid4(), uuid4()
    write({a: {"count": 1}, b: {"count": 1}}, version=1, position=1)
    # A string in an IntegerField and a str UUID: Django's preparation converts them.
    write({a: {"count": "5", "label": 12}, b: {"count": 2}}, version=2, position=3)
    assert (stored(a)["count"], stored(a)["label"]) == (5, "12")
    # An expression: the whole model's rows fall back to bulk_create, and still upsert.
    write({a: {"count": models.Value(15)}, b: {"count": 3}}, version=3, position=5)
    assert (stored(a)["count"], stored(b)["count"]) == (15, 3)
    assert stored(a)["last_event_version"] == 3


def test_plain_values_round_trip_including_awkward_strings(table: None) -> None:
    awkward = [
        "",
        "plain",
        "quote ' double \" backslash \\ brace {a,b} comma , paren (x)",
        "newline\nand tab\t",
        "unicode é ß 漢字 🎉",
        "null",
        "NULL",
        "{}",
    ]
    items = [uuid4() for _ in awkward]
    first = {
        item: {
            "label": text[:50],
            "note": None if n % 2 else text,
            "flag": (None, True, False)[n % 3],
            "count": -(2**31) if n == 0 else n,
            "big": 2**62 if n == 1 else -n,
            "other_id": None if n % 2 else uuid4(),
        }
        for n, (item, text) in enumerate(zip(items, awkward, strict=True))
    }
    with CaptureQueriesContext(connection) as queries:
        rows = write(first, version=1, position=100, model=PlainRow)
    if connection.vendor == "postgresql":  # the path this test is about
        assert any("jsonb_array_elements" in q["sql"] for q in queries.captured_queries)
    assert all(r.pk is not None for r in rows)
    for n, (item, values) in enumerate(first.items()):
        row = stored(item, PlainRow)
        assert {k: row[k] for k in values} == values
        assert (row["last_event_version"], row["last_event_position"]) == (1, 100 + n)
    # Upsert them all: the loaded rows take the new values and checkpoints.
    second = {item: {**values, "note": "again", "flag": None} for item, values in first.items()}
    write(second, version=2, position=200, model=PlainRow)
    for n, (item, values) in enumerate(second.items()):
        row = stored(item, PlainRow)
        assert {k: row[k] for k in values} == values
        assert (row["last_event_version"], row["last_event_position"]) == (2, 200 + n)
    assert PlainRow.objects.count() == len(items)

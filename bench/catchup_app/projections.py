"""The bench's event and projection (imported by ``bench/catchup.py`` after ``django.setup()``).

``BenchItems`` upserts one ``BenchItem`` per aggregate, like ``tests/testapp``'s ``TaskBoard``:
each event sets the label, adds ``n`` to the total and counts the change. The raw baseline in
``bench/catchup.py`` does the same arithmetic in SQL.
"""

from __future__ import annotations

import time
from typing import ClassVar

from bench.catchup_app.models import BenchItem, BenchPing
from django_eventsource import DeclarativeProjection, DomainEvent, handles, register_event

EVENT_TYPE = "BenchItemChanged"


@register_event
class ItemChanged(DomainEvent):
    event_type: str = EVENT_TYPE
    aggregate_type: str = "BenchItem"
    label: str
    n: int


class BenchItems(DeclarativeProjection):
    name = "bench_items"
    models = (BenchItem,)
    row_keys: ClassVar = {BenchItem: "item_id"}

    @handles(ItemChanged)
    def changed(self, event: ItemChanged) -> None:
        if row := self.row(BenchItem, event, item_id=event.aggregate_id):
            row.label = event.label
            row.total += event.n
            row.changes += 1


@register_event
class Pinged(DomainEvent):
    """``bench/shadow.py``: a ping whose commit-to-apply latency is measured."""

    event_type: str = "BenchPinged"
    aggregate_type: str = "BenchPing"


class BenchPings(DeclarativeProjection):
    """Another projection, followed by its own runner while ``bench_items`` is rebuilt: it
    stamps each ping's row with the time it applied it."""

    name = "bench_pings"
    models = (BenchPing,)
    row_keys: ClassVar = {BenchPing: "ping_id"}

    @handles(Pinged)
    def pinged(self, event: Pinged) -> None:
        if row := self.row(BenchPing, event, ping_id=event.aggregate_id):
            row.applied_at = time.time()

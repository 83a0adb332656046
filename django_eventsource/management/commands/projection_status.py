"""``manage.py projection_status``: checkpoint, head, lag and errors per projection."""

from __future__ import annotations

import json
import sys
from typing import Any

from django.core.management.base import CommandError, CommandParser

from django_eventsource.management.commands._base import ProjectionCommand
from django_eventsource.status import horizon_holder, projection_statuses, stamp_problem
from django_eventsource.store import EventStore


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 120:
        return f"{value:.0f}s"
    if value < 7200:
        return f"{value / 60:.0f}m"
    return f"{value / 3600:.1f}h"


class Command(ProjectionCommand):
    tenant_help = "Only show this tenant's rows."
    help = (
        "Show each projection's status, checkpoint, the store's head, lag in events and "
        "seconds, heartbeat age and last error (per tenant). With --check, exit 1 when a "
        "projection failed or lags more than --max-lag events, or (PostgreSQL) when the "
        "event stamps need rebase_event_stamps after a restore: use it for monitoring."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        super().add_arguments(parser)
        parser.add_argument(
            "--format", choices=("table", "json"), default="table", help="Output format."
        )
        parser.add_argument(
            "--check",
            action="store_true",
            help="Exit 1 if a projection failed or lags more than --max-lag events, or the "
            "event stamps need a re-base.",
        )
        parser.add_argument(
            "--max-lag",
            type=int,
            default=None,
            help="With --check: the largest acceptable lag in events.",
        )

    def handle(self, *names: str, **options: Any) -> None:
        if options["max_lag"] is not None and options["max_lag"] < 0:
            raise CommandError("--max-lag must be zero or positive.")
        if options["max_lag"] is not None and not options["check"]:
            raise CommandError("--max-lag only makes sense with --check.")
        projections = self.resolve(list(options["names"]) + list(names), options)
        store = EventStore(self.check_database(options))
        rows = projection_statuses([p.label for p in projections], event_store=store)
        if options["tenant"] is not None:
            rows = [r for r in rows if r.tenant_id == options["tenant"]]
        holder = horizon_holder(store.using) if any(r.lag_events for r in rows) else None
        stamps = stamp_problem(store.using)
        if options["format"] == "json":
            self.stdout.write(
                json.dumps(
                    {
                        "projections": [r.as_dict() for r in rows],
                        "horizon_holder": holder.__dict__ if holder else None,
                        "stamps_need_rebase": stamps.as_dict() if stamps else None,
                    },
                    indent=2,
                    default=str,
                )
            )
        else:
            self._table(rows, holder)
            if stamps is not None:
                self.stdout.write(self.style.ERROR(stamps.message()))
        if options["check"]:
            if stamps is not None:
                self.stderr.write(self.style.ERROR(f"Check failed: {stamps.message()}"))
                sys.exit(1)
            problems = [r for r in rows if r.status == "failed"]
            if options["max_lag"] is not None:
                problems += [
                    r for r in rows if r.lag_events > options["max_lag"] and r not in problems
                ]
            if problems:
                self.stderr.write(
                    self.style.ERROR(
                        "Check failed: "
                        + ", ".join(
                            f"{r.projection} ({r.status}, lag {r.lag_events})" for r in problems
                        )
                    )
                )
                sys.exit(1)

    def _table(self, rows: list[Any], holder: Any) -> None:
        header = (
            "PROJECTION",
            "TENANT",
            "STATUS",
            "POSITION",
            "HEAD",
            "LAG",
            "LAG AGE",
            "HEARTBEAT",
            "LAST ERROR",
        )
        lines = [
            (
                r.projection,
                r.tenant_id or "-",
                r.status,
                str(r.position),
                str(r.head),
                str(r.lag_events),
                _seconds(r.lag_seconds if r.lag_events else None),
                _seconds(r.heartbeat_age),
                (r.last_error[:60] + ("…" if len(r.last_error) > 60 else "")) or "-",
            )
            for r in rows
        ]
        widths = [max(len(str(c)) for c in column) for column in zip(header, *lines, strict=False)]
        self.stdout.write("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
        for line, row in zip(lines, rows, strict=True):
            text = "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True))
            style = (
                self.style.ERROR
                if row.status == "failed"
                else self.style.WARNING
                if row.lag_events
                else self.style.SUCCESS
            )
            self.stdout.write(style(text))
        if holder is not None:
            self.stdout.write(
                self.style.WARNING(
                    f"Oldest open transaction (holds readers back): pid {holder.pid}, "
                    f"{holder.age_seconds:.0f}s, {holder.state}, {holder.application!r}: {holder.query}"
                )
            )

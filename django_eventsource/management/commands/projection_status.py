"""``manage.py projection_status``: checkpoint, head, lag and errors per projection."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict
from typing import Any

from django.core.management.base import CommandError, CommandParser

from django_eventsource.management.commands._base import ProjectionCommand
from django_eventsource.models import ProjectionStatus
from django_eventsource.status import (
    HorizonHolder,
    StatusCheck,
    check_status,
    horizon_holders,
)
from django_eventsource.store import EventStore
from django_eventsource.text import plural, printable

#: Statuses shown in red.
PROBLEM_STATUSES = frozenset(
    {
        ProjectionStatus.FAILED,
        ProjectionStatus.STALE,
        ProjectionStatus.INTERRUPTED,
        ProjectionStatus.UNASSIGNED,
        ProjectionStatus.UNBUILT,
    }
)


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 120:
        return f"{value:.0f}s"
    if value < 7200:
        return f"{value / 60:.0f}m"
    return f"{value / 3600:.1f}h"


class Command(ProjectionCommand):
    tenant_help = (
        "Only show this tenant's rows. A tenant no event carries and no projection has "
        "state for (a typo) is refused."
    )
    help = (
        "Show each projection's status, checkpoint, the store's head, lag in events and "
        "seconds, heartbeat age, unresolved dead letters and last error (per tenant). A "
        "running projection whose heartbeat is older than three heartbeat intervals shows as "
        "stale (its worker died); a rebuild stopped before it caught up shows as interrupted "
        "(its read model is half-built until it is resumed). A tenant whose events no runner "
        "applies (the runners each serve one tenant, --tenant, and none serves it; or events "
        "without a tenant, and no runner of every tenant) shows as unassigned; an inline "
        "projection never rebuilt over the events stored before it shows as unbuilt. Lag "
        "counts every committed event after the checkpoint; on "
        "PostgreSQL, events held back by an appending transaction that has not committed are "
        "shown as HELD, with that transaction. With --check, exit 1 when a projection failed, "
        "is stale, unassigned or unbuilt, or its rebuild interrupted, its shadow rebuild "
        "failed (PostgreSQL; the live projection keeps its status), has unresolved dead "
        "letters (unless --allow-dead-letters), lags more "
        "than --max-lag events, has events held back longer than --max-held-seconds, or "
        "(PostgreSQL) when the event stamps need rebase_event_stamps after a restore: use it "
        "for monitoring."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        super().add_arguments(parser)
        parser.add_argument(
            "--format", choices=("table", "json"), default="table", help="Output format."
        )
        parser.add_argument(
            "--check",
            action="store_true",
            help="Exit 1 if a projection failed, is stale, unassigned or unbuilt, or its "
            "rebuild interrupted, its "
            "shadow rebuild failed, has "
            "unresolved dead letters, lags more than --max-lag events, has events held back longer than "
            "--max-held-seconds, or the event stamps need a re-base.",
        )
        parser.add_argument(
            "--allow-dead-letters",
            action="store_true",
            help="With --check: unresolved dead letters do not fail the check.",
        )
        parser.add_argument(
            "--max-lag",
            type=int,
            default=None,
            help="With --check: the largest acceptable lag in events. Default: the MAX_LAG "
            "setting (None: lag is not checked).",
        )
        parser.add_argument(
            "--max-held-seconds",
            type=float,
            default=None,
            help="With --check: how long events may be held back by an appending transaction "
            "that has not committed (PostgreSQL) before the check fails. Default: the "
            "MAX_HELD_SECONDS setting (60).",
        )

    def handle(self, *names: str, **options: Any) -> None:
        if options["max_lag"] is not None and options["max_lag"] < 0:
            raise CommandError("--max-lag must be zero or positive.")
        if options["max_lag"] is not None and not options["check"]:
            raise CommandError("--max-lag only makes sense with --check.")
        max_held = options["max_held_seconds"]
        if max_held is not None and not (math.isfinite(max_held) and max_held >= 0):
            raise CommandError("--max-held-seconds must be a finite number of seconds >= 0.")
        if max_held is not None and not options["check"]:
            raise CommandError("--max-held-seconds only makes sense with --check.")
        if options["allow_dead_letters"] and not options["check"]:
            raise CommandError("--allow-dead-letters only makes sense with --check.")
        projections = self.resolve(list(options["names"]) + list(names), options)
        store = EventStore(self.check_database(options))
        # A typo would show an empty table, and --check would pass on it, forever.
        self.check_tenant(projections, options["tenant"], store, any_of=True)
        # The same checks as the health view and the metrics (status.find_problems).
        report = check_status(
            [p.label for p in projections],
            event_store=store,
            tenant_id=options["tenant"],
            max_lag=options["max_lag"],
            max_held_seconds=max_held,
            allow_dead_letters=options["allow_dead_letters"],
        )
        rows, stamps = report.rows, report.stamps
        # Who holds events back: only transactions that appended and have not committed.
        # The command runs with database access, so it shows their query text too.
        holders = (
            horizon_holders(store.using, with_query=True)
            if any(r.held_events for r in rows)
            else []
        )
        if options["format"] == "json":
            self.stdout.write(
                json.dumps(
                    {
                        "projections": [r.as_dict() for r in rows],
                        "horizon_holder": asdict(holders[0]) if holders else None,
                        "horizon_holders": [asdict(h) for h in holders],
                        "stamps_need_rebase": stamps.as_dict() if stamps else None,
                        # What --check checks (with its thresholds), as the health view
                        # reports it: a script reads why without parsing stderr.
                        "ok": report.ok,
                        "problems": [p.as_dict() for p in report.problems],
                    },
                    indent=2,
                    default=str,
                )
            )
        else:
            self._table(rows, holders)
            if stamps is not None:
                self.stdout.write(self.style.ERROR(stamps.message()))
        if options["check"] and not report.ok:
            self.stderr.write(self.style.ERROR("Check failed: " + self._problems(report)))
            sys.exit(1)

    @staticmethod
    def _problems(report: StatusCheck) -> str:
        """The problems, grouped per projection and tenant, user text escaped."""
        reasons: dict[tuple[str, str], list[str]] = {}
        rows = {(r.projection, r.tenant_id): r for r in report.rows}
        for problem in report.problems:
            reason = problem.message
            row = rows.get((problem.projection, problem.tenant_id))
            if problem.check == "failed":
                reason += f": {(row.last_error if row else '') or 'see its last error'}"
            elif problem.check == "shadow_failed" and row is not None and row.shadow_error:
                reason += f": {row.shadow_error}"
            reasons.setdefault((problem.projection, problem.tenant_id), []).append(reason)
        return " | ".join(
            printable(
                (f"{name}" + (f" (tenant {tenant})" if tenant else "") + ": " if name else "")
                + "; ".join(found)
            )
            for (name, tenant), found in reasons.items()
        )

    def _table(self, rows: list[Any], holders: list[HorizonHolder]) -> None:
        header = (
            "PROJECTION",
            "TENANT",
            "STATUS",
            "POSITION",
            "HEAD",
            "LAG",
            "LAG AGE",
            "HELD",
            "HEARTBEAT",
            "DEAD",
            "LAST ERROR",
        )
        lines = [
            (
                printable(r.projection),
                printable(r.tenant_id)
                or ("(no tenant)" if r.status == ProjectionStatus.UNASSIGNED else "-"),
                r.status,
                str(r.position),
                str(r.head),
                str(r.lag_events),
                _seconds(r.lag_seconds if r.lag_events else None),
                f"{r.held_events} ({_seconds(r.held_seconds)})" if r.held_events else "-",
                _seconds(r.heartbeat_age),
                str(r.dead_letters) if r.dead_letters else "-",
                printable(r.last_error[:60] + ("…" if len(r.last_error) > 60 else "")) or "-",
            )
            for r in rows
        ]
        widths = [max(len(str(c)) for c in column) for column in zip(header, *lines, strict=False)]
        self.stdout.write("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
        for line, row in zip(lines, rows, strict=True):
            text = "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True))
            style = (
                self.style.ERROR
                if row.status in PROBLEM_STATUSES
                else self.style.WARNING
                if row.lag_events or row.dead_letters
                else self.style.SUCCESS
            )
            self.stdout.write(style(text))
        for row in rows:
            if row.status == ProjectionStatus.UNASSIGNED:
                name = printable(row.projection)
                waiting = plural(row.lag_events, "event")
                if row.tenant_id:
                    tenant = printable(row.tenant_id)
                    text = (
                        f"{name}: {waiting} of tenant {tenant} wait for a runner: its runners "
                        "each serve one tenant, and none serves this one. Run "
                        f"replay_projections {name} --tenant {tenant} (or a runner of every "
                        "tenant)."
                    )
                else:
                    text = (
                        f"{name}: {waiting} without a tenant wait for a runner: its runners "
                        "each serve one tenant, and only a runner of every tenant "
                        f"(replay_projections {name}, without --tenant) applies these."
                    )
                self.stdout.write(self.style.ERROR(text))
            if row.status == ProjectionStatus.UNBUILT:
                name = printable(row.projection)
                self.stdout.write(
                    self.style.ERROR(
                        f"{name}: an inline projection that was never built: the appends "
                        "apply it to their own events only, and the events stored before it "
                        f"({plural(row.lag_events, 'event')} in the store, none known to be "
                        f"applied) were never replayed. Run rebuild_projections {name}."
                    )
                )
            if (
                row.status in (ProjectionStatus.INLINE, ProjectionStatus.UNBUILT)
                and row.stored_status == ProjectionStatus.PAUSED
            ):
                name = printable(row.projection)
                tenant = f", {printable(row.tenant_id)!r}" if row.tenant_id else ""
                self.stdout.write(
                    self.style.WARNING(
                        f"{name}: stored as paused (earlier versions let an inline "
                        "projection be paused), but appends apply it all the same; "
                        f"control.resume({name!r}{tenant}) (or the admin's Resume) clears it."
                    )
                )
            if row.status == ProjectionStatus.INTERRUPTED:
                name = printable(row.projection)
                again = name + (f" --tenant {printable(row.tenant_id)}" if row.tenant_id else "")
                self.stdout.write(
                    self.style.ERROR(
                        f"{name}: its rebuild was interrupted at event #{row.position} of "
                        f"{row.head}: the read model is half-built until it is resumed. "
                        f"rebuild_projections {again} resumes it from there (so does a "
                        f"catch-up, replay_projections {again}, or a worker running it)."
                    )
                )
            if row.suspended_rebuild:
                name = printable(row.projection)
                tenant = f" --tenant {printable(row.tenant_id)}" if row.tenant_id else ""
                self.stdout.write(
                    self.style.WARNING(
                        f"{name}: {row.status} in the middle of its rebuild, at event "
                        f"#{row.position} of {row.head}: the read model is half-built. "
                        + (
                            "Retrying or dead-lettering the failed event"
                            if row.stored_status == ProjectionStatus.FAILED
                            else "Resuming it"
                        )
                        + " returns it to the rebuild, which rebuild_projections "
                        f"{name}{tenant} (or a worker running it) carries on from there."
                        + (
                            ""
                            if row.stored_status == ProjectionStatus.FAILED
                            else f" While it is paused, rebuild_projections {name}{tenant} "
                            "carries it on too, and leaves it paused."
                        )
                    )
                )
            if row.shadow_position is None:
                continue
            name = printable(row.projection)
            resume = f"rebuild_projections {name} --shadow resumes it, --restart discards it"
            if row.shadow_failed_position is not None:
                self.stdout.write(
                    self.style.ERROR(
                        f"{name}: a shadow rebuild failed at event "
                        f"#{row.shadow_failed_position}: {printable(row.shadow_error)}. Its "
                        f"tables are built up to event #{row.shadow_position}; the live "
                        "tables still serve, nothing was swapped. Fix the handler, then "
                        f"{resume}."
                    )
                )
            else:
                self.stdout.write(
                    self.style.WARNING(
                        f"{name}: a shadow rebuild is built up to event "
                        f"#{row.shadow_position} (of {row.head}); the live tables serve until "
                        f"its swap ({resume})"
                    )
                )
        for holder in holders:
            self.stdout.write(
                self.style.WARNING(
                    "Held back by an appending transaction that has not committed: "
                    + printable(holder.describe() + (f": {holder.query}" if holder.query else ""))
                )
            )

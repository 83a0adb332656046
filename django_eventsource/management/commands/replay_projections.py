"""``manage.py replay_projections``: catch projections up, or follow the store live."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from django.core.management.base import CommandError, CommandParser

from django_eventsource import metrics
from django_eventsource.management.commands._base import (
    ProgressPrinter,
    ProjectionCommand,
    StopsOnSignals,
)
from django_eventsource.models import ProjectionStatus
from django_eventsource.projections import Projection
from django_eventsource.runner import ProjectionRunner
from django_eventsource.store import EventStore
from django_eventsource.text import plural, printable

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer


class Command(StopsOnSignals, ProjectionCommand):
    help = (
        "Apply new events to projections from their checkpoints until they are caught up, "
        "or keep running with --follow (a worker: wakes on PostgreSQL NOTIFY, polls "
        "otherwise; one active runner per projection, others wait as standbys). Stop with "
        "SIGINT/SIGTERM: the batch in hand finishes first, and its projections go idle. Exits "
        "1 if a projection fails or is skipped because it is failed, or its lock is lost to "
        "another runner mid-run; for a --follow worker, what holds when it stops: a "
        "projection still failed then, or a lock it lost mid-batch (the batch rolled back) "
        "and has not taken back. "
        "Without names, inline projections are left out (appends keep them current); name "
        "them or pass --all to replay them too."
    )
    requires_migrations_checks = True
    skip_inline_by_default = True

    def add_arguments(self, parser: CommandParser) -> None:
        super().add_arguments(parser)
        parser.add_argument(
            "--follow", action="store_true", help="Keep running and apply events as they arrive."
        )
        self.add_batch_size_argument(parser)
        parser.add_argument(
            "--max-events", type=int, default=None, help="Stop after this many events."
        )
        parser.add_argument(
            "--poll-interval",
            type=float,
            default=None,
            help="Seconds between polls in --follow mode (default: EVENTSOURCE['POLL_INTERVAL']).",
        )
        parser.add_argument(
            "--wait",
            action="store_true",
            help="Wait for projections another runner holds instead of skipping them.",
        )
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Show each projection's checkpoint, the head and the events to apply; write nothing.",
        )
        parser.add_argument(
            "--metrics-port",
            type=int,
            default=None,
            help="Serve Prometheus metrics on this port at /metrics while running (0: any free "
            "port, printed at start): this process's counters and the gauges of the "
            "projections it runs. Needs the prometheus extra.",
        )
        parser.add_argument(
            "--metrics-address",
            default="0.0.0.0",
            help="The address the metrics port listens on (default: 0.0.0.0, every "
            "interface; 127.0.0.1 keeps it local).",
        )

    def handle(self, *names: str, **options: Any) -> None:
        self.check_batch_size(options)
        if options["max_events"] is not None and options["max_events"] <= 0:
            raise CommandError("--max-events must be a positive integer.")
        interval = options["poll_interval"]
        if interval is not None and not (math.isfinite(interval) and interval > 0):
            raise CommandError(
                f"--poll-interval must be a positive, finite number of seconds, not {interval}."
            )
        if options["follow"] and options["dry_run"]:
            raise CommandError(
                "--follow and --dry-run cannot be combined: a dry run writes nothing and ends."
            )
        port = options["metrics_port"]
        if port is not None and not 0 <= port <= 65535:
            raise CommandError("--metrics-port must be a port number between 0 and 65535.")
        if port is not None and not metrics.available():
            raise CommandError(f"--metrics-port: {metrics.MISSING_MESSAGE}")
        projections = self.resolve(list(options["names"]) + list(names), options)
        store = EventStore(self.check_database(options))
        verbosity = options["verbosity"]
        tenant = options["tenant"]
        self.check_tenant(projections, tenant, store)  # before a state row is created
        if options["dry_run"]:
            from django_eventsource import control

            head = store.head_position()
            self.stdout.write(
                self.style.MIGRATE_HEADING("Planned replay (dry run, nothing written):")
            )
            for projection in projections:
                state = control.find_state(projection.label, tenant)  # a dry run creates nothing
                position = (state.position if state else None) or 0
                status = state.status if state else ProjectionStatus.IDLE  # a first run's status
                # Counted (the tenant's, in feed order), not head - position: positions
                # are shared by every tenant and have gaps.
                pending = store.pending_events(position, tenant_id=tenant)
                count = pending.readable + pending.held
                waiting = f", {pending.held} held back" if pending.held else ""
                self.stdout.write(
                    f"  {printable(projection.label)}: {status}, from {position} to {head} "
                    f"({'' if pending.counted_all else 'at least '}{count} events{waiting})"
                )
            return
        runner = ProjectionRunner(
            projections,
            tenant_id=tenant,
            event_store=store,
            batch_size=options["batch_size"],
            poll_interval=options["poll_interval"],
            progress_callback=ProgressPrinter(self, verbosity),
            install_signal_handlers=True,
            max_events=options["max_events"],
        )
        # From the heading on, a signal stops the run (not the process); restored after it.
        with runner.handling_signals():
            if self.signals is not None and self.signals.received:
                # Asked to stop before the run began: stop at once, and say so.
                runner.report("signal", signal=self.signals.received)
                runner.stop()
            if verbosity >= 1:
                heading = (
                    "Following projections (Ctrl-C to stop):"
                    if options["follow"]
                    else "Catching up projections:"
                )
                self.stdout.write(self.style.MIGRATE_HEADING(heading))
            server = None
            if port is not None:
                server = self._serve_metrics(
                    port, options["metrics_address"], projections, tenant, store, verbosity
                )
            try:
                if options["follow"]:
                    result = runner.follow()
                else:
                    result = runner.run_until_caught_up(wait_for_lock=options["wait"])
            finally:
                if server is not None:
                    server.shutdown()
                    server.server_close()
        if verbosity >= 1:
            self.stdout.write(f"{plural(result.events_applied, 'event')} handled.")
            held = sum(r.held for r in result.results)
            if held and not options["follow"]:
                self.stdout.write(
                    self.style.WARNING(
                        f"{held} committed event(s) are still held back by a transaction "
                        "that appended events and has not committed (PostgreSQL's ordering "
                        "horizon); the next run applies them. `manage.py projection_status` "
                        "names the transaction."
                    )
                )
        paused = [
            n for n, status in result.skipped_statuses.items() if status == ProjectionStatus.PAUSED
        ]
        if paused and verbosity >= 1:
            self.stderr.write(
                self.style.WARNING(
                    f"Skipped paused projection(s): {printable(', '.join(paused))} (resume them to run "
                    "them)."
                )
            )
        problems = []
        if result.failed:
            problems.append(
                f"{len(result.failed)} projection(s) failed and were paused: "
                f"{printable(', '.join(result.failed))}. See `manage.py projection_status`, fix "
                "the handler, then resume them (admin, or control.resume())."
            )
        skipped = [
            n for n, status in result.skipped_statuses.items() if status == ProjectionStatus.FAILED
        ]
        if skipped:
            problems.append(
                f"{len(skipped)} projection(s) were not run because they are failed: "
                f"{printable(', '.join(skipped))}. Fix the handler, then resume them (admin, or "
                "control.resume()), which retries the failed event; or dead-letter it."
            )
        if result.lost:
            problems.append(
                f"Lost the lock of {printable(', '.join(result.lost))} to another runner while applying "
                "events: the batch in hand was rolled back, and the other runner carries on "
                "from the last committed checkpoint."
            )
        if problems:
            raise CommandError(" ".join(problems), returncode=1)

    def _serve_metrics(
        self,
        port: int,
        address: str,
        projections: list[Projection],
        tenant: str | None,
        store: EventStore,
        verbosity: int,
    ) -> WSGIServer:
        from django_eventsource.prometheus import start_metrics_server

        try:
            server = start_metrics_server(
                port,
                address,
                names=[p.label for p in projections],
                tenant_id=tenant,
                event_store=store,
            )
        except OSError as exc:
            raise CommandError(f"Cannot serve metrics on {address}:{port}: {exc}") from exc
        if verbosity >= 1:
            self.stdout.write(
                f"Serving Prometheus metrics on http://{address}:{server.server_port}/metrics"
            )
        return server

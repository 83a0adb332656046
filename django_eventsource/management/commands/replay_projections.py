"""``manage.py replay_projections``: catch projections up, or follow the store live."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser

from django_eventsource.management.commands._base import ProgressPrinter, ProjectionCommand
from django_eventsource.runner import ProjectionRunner
from django_eventsource.store import EventStore


class Command(ProjectionCommand):
    help = (
        "Apply new events to projections from their checkpoints until they are caught up, "
        "or keep running with --follow (a worker: wakes on PostgreSQL NOTIFY, polls "
        "otherwise; one active runner per projection, others wait as standbys). Stop with "
        "SIGINT/SIGTERM: the batch in hand finishes first. Exits 1 if a projection fails. "
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

    def handle(self, *names: str, **options: Any) -> None:
        self.check_batch_size(options)
        if options["max_events"] is not None and options["max_events"] <= 0:
            raise CommandError("--max-events must be a positive integer.")
        if options["poll_interval"] is not None and options["poll_interval"] <= 0:
            raise CommandError("--poll-interval must be a positive number of seconds.")
        if options["follow"] and options["dry_run"]:
            raise CommandError(
                "--follow and --dry-run cannot be combined: a dry run writes nothing and ends."
            )
        projections = self.resolve(list(options["names"]) + list(names), options)
        store = EventStore(self.check_database(options))
        verbosity = options["verbosity"]
        tenant = options["tenant"]
        if options["dry_run"]:
            from django_eventsource import control

            head = store.head_position()
            self.stdout.write(
                self.style.MIGRATE_HEADING("Planned replay (dry run, nothing written):")
            )
            for projection in projections:
                state = control.get_state(projection.label, tenant)
                position = state.position or 0
                self.stdout.write(
                    f"  {projection.label}: {state.status}, from {position} to {head} "
                    f"({max(head - position, 0)} events)"
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
        if verbosity >= 1:
            heading = (
                "Following projections (Ctrl-C to stop):"
                if options["follow"]
                else "Catching up projections:"
            )
            self.stdout.write(self.style.MIGRATE_HEADING(heading))
        if options["follow"]:
            result = runner.follow()
        else:
            result = runner.run_until_caught_up(wait_for_lock=options["wait"])
        if verbosity >= 1:
            self.stdout.write(f"{result.events_applied} events handled.")
        if result.failed:
            raise CommandError(
                f"{len(result.failed)} projection(s) failed and were paused: "
                f"{', '.join(result.failed)}. See `manage.py projection_status`, fix the "
                "handler, then resume them (admin, or control.resume()).",
                returncode=1,
            )

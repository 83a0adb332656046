"""``manage.py rebase_event_stamps``: repair event stamps after a logical dump and restore."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections

from django_eventsource.exceptions import NotSupportedOnBackend
from django_eventsource.maintenance import diagnose_stamps, rebase_stamps


class Command(BaseCommand):
    help = (
        "PostgreSQL: after a logical dump and restore (pg_dump/pg_restore) into another "
        "cluster, the events' ordering stamps can sit above the new server's transaction "
        "counter, and projections then see nothing new (check django_eventsource.E008, "
        "projection_status). This re-bases the stamps below the counter in one transaction, "
        "keeping the order of events exactly; checkpoints stay valid. Appends wait while it "
        "runs; readers do not. Does nothing when the stamps are healthy."
    )
    requires_migrations_checks = True

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--database",
            default=None,
            help="Database alias of the event store (default: EVENTSOURCE['DATABASE_ALIAS']).",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Show what would change; change nothing."
        )
        parser.add_argument(
            "--noinput",
            "--no-input",
            action="store_false",
            dest="interactive",
            help="Do not ask for confirmation.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        alias = options["database"]
        if alias is not None and alias not in connections:
            raise CommandError(
                f"Unknown database {alias!r}. Configured databases: {', '.join(connections)}."
            )
        verbosity = options["verbosity"]
        try:
            plan = rebase_stamps(alias, dry_run=True)
        except NotSupportedOnBackend as exc:
            raise CommandError(str(exc)) from exc
        diagnosis = plan.before
        if not diagnosis.needs_rebase:
            if verbosity >= 1:
                self.stdout.write(self.style.SUCCESS(diagnosis.message() + " Nothing to do."))
            return
        if verbosity >= 1:
            self.stdout.write(self.style.WARNING(diagnosis.message()))
            self.stdout.write(
                f"Will re-base {plan.changed} of {plan.events} events onto {plan.stamps} "
                f"stamp(s) {plan.new_min}..{plan.new_max} (below the horizon "
                f"{diagnosis.horizon}), keeping their order."
            )
        if options["dry_run"]:
            if verbosity >= 1:
                self.stdout.write("Dry run: nothing was changed.")
            return
        if options["interactive"]:
            answer = input("Appends wait while this runs. Type 'yes' to continue: ")
            if answer.strip().lower() != "yes":
                raise CommandError("Re-base cancelled.")
        result = rebase_stamps(alias)
        after = diagnose_stamps(alias)
        if after is not None and after.needs_rebase:  # pragma: no cover - defensive
            raise CommandError(f"Re-base did not take: {after.message()}")
        if verbosity >= 1:
            self.stdout.write(
                self.style.SUCCESS(
                    f"Re-based {result.changed} of {result.events} events: stamps now "
                    f"{result.new_min}..{result.new_max}. Projections resume from their "
                    "checkpoints."
                )
            )

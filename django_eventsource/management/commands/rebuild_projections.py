"""``manage.py rebuild_projections``: reset projections and replay every event."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser

from django_eventsource.exceptions import ProjectionLocked, RebuildAborted
from django_eventsource.management.commands._base import ProgressPrinter, ProjectionCommand
from django_eventsource.rebuild import plan_rebuild, rebuild
from django_eventsource.store import EventStore


class Command(ProjectionCommand):
    help = (
        "Delete the rows of the named projections (their models' rows, or what their "
        "_truncate_read_models() hook removes), reset "
        "their checkpoints and replay every event in batches. Resumes an interrupted "
        "rebuild. Refuses while a live runner holds a projection (or waits with --wait). "
        "Readers see the projection fill up as it rebuilds, unless --atomic."
    )
    requires_migrations_checks = True
    all_by_default = False

    def add_arguments(self, parser: CommandParser) -> None:
        super().add_arguments(parser)
        parser.add_argument(
            "--noinput",
            "--no-input",
            action="store_false",
            dest="interactive",
            help="Do not ask for confirmation.",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Show what would be deleted and replayed."
        )
        self.add_batch_size_argument(parser)
        parser.add_argument(
            "--wait", action="store_true", help="Wait for a live runner to release the projection."
        )
        parser.add_argument(
            "--atomic",
            action="store_true",
            help=(
                "Reset and replay in one transaction: readers keep seeing the old rows until "
                "the new ones commit at once. Not resumable (a failure or a stop rolls it all "
                "back); holds PostgreSQL's ordering horizon (other projections lag meanwhile) "
                "or SQLite's write lock for as long as it runs."
            ),
        )
        parser.add_argument(
            "--restart",
            action="store_true",
            help="Start over even if an interrupted rebuild could be resumed.",
        )

    def handle(self, *names: str, **options: Any) -> None:
        self.check_batch_size(options)
        projections = self.resolve(list(options["names"]) + list(names), options)
        store = EventStore(self.check_database(options))
        tenant = options["tenant"]
        plans = [plan_rebuild(p, tenant_id=tenant, event_store=store) for p in projections]
        for plan in plans:
            resuming = plan.resuming and not options["atomic"]  # atomic always starts over
            action = "resume the interrupted rebuild of" if resuming else "delete"
            rows = (
                ""
                if resuming
                else f" {plan.rows} row{'' if plan.rows == 1 else 's'} of {', '.join(plan.tables) or 'no tables'} and"
            )
            self.stdout.write(
                f"{plan.projection}: will {action}{rows} replay up to {plan.events} events"
                + (f" (tenant {tenant})" if tenant else "")
                + "."
            )
        if options["dry_run"]:
            self.stdout.write("Dry run: nothing was changed.")
            return
        if options["interactive"]:
            answer = input("Type 'yes' to continue: ")
            if answer.strip().lower() != "yes":
                raise CommandError("Rebuild cancelled.")
        printer = ProgressPrinter(self, options["verbosity"])
        for projection in projections:
            try:
                result = rebuild(
                    projection,
                    tenant_id=tenant,
                    event_store=store,
                    batch_size=options["batch_size"],
                    progress_callback=printer,
                    wait=options["wait"],
                    restart=options["restart"],
                    atomic=options["atomic"],
                    install_signal_handlers=True,
                )
            except RebuildAborted as exc:
                raise CommandError(str(exc), returncode=1) from exc
            except ProjectionLocked as exc:
                raise CommandError(
                    f"{exc} Nothing was changed. Stop that runner, or run again with --wait."
                ) from exc
            if result.failed:
                raise CommandError(
                    f"Rebuild of {projection.label!r} failed; see projection_status.", returncode=1
                )

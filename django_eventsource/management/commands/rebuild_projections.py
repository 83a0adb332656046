"""``manage.py rebuild_projections``: reset projections and replay every event."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser

from django_eventsource.control import find_state
from django_eventsource.exceptions import (
    NotSupportedOnBackend,
    ProjectionLocked,
    RebuildAborted,
    RebuildRefused,
)
from django_eventsource.management.commands._base import (
    ProgressPrinter,
    ProjectionCommand,
    StopsOnSignals,
)
from django_eventsource.models import ProjectionStatus
from django_eventsource.projections import Projection
from django_eventsource.rebuild import RebuildPlan, plan_rebuild, rebuild
from django_eventsource.runner import Reporter, RunResult, StopSignals
from django_eventsource.shadow import check_shadow_rebuild, find_shadow_build
from django_eventsource.store import EventStore
from django_eventsource.text import plural, printable


class Command(StopsOnSignals, ProjectionCommand):
    help = (
        "Delete the rows of the named projections (their models' rows, or what their "
        "_truncate_read_models() hook removes), reset "
        "their checkpoints and replay every event in batches. Resumes an interrupted "
        "rebuild. Refuses while a live runner holds a projection (or waits with --wait), "
        "unless --shadow. Readers see the projection fill up as it rebuilds, unless --atomic "
        "or --shadow. SIGINT/SIGTERM, wherever it lands from the command's start to its exit, "
        "stops it after the batch in hand and exits 0 (run it again to resume), except "
        "--atomic, which rolls back and exits 1. Exits 1 when a "
        "rebuild is refused, fails or loses its lock. Either way it says so and leaves the "
        "projections after it alone."
    )
    requires_migrations_checks = True
    all_by_default = False

    def execute(self, *args: Any, **options: Any) -> Any:
        """Run the whole command (checks, plan, question, every rebuild) under one
        `StopSignals`: a signal anywhere stops it cleanly, never by ``KeyboardInterrupt``
        between two rebuilds. ``call_command`` restores the handlers it found."""
        if self.signals is not None:
            return super().execute(*args, **options)
        with StopSignals() as self.signals:
            try:
                return super().execute(*args, **options)
            finally:
                self.signals = None

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
            "--wait",
            action="store_true",
            help="Wait for a live runner to release the projection (not with --shadow, "
            "which leaves it running).",
        )
        parser.add_argument(
            "--atomic",
            action="store_true",
            help=(
                "Reset and replay in one transaction: readers keep seeing the old rows until "
                "the new ones commit at once. Not resumable (a failure or a stop rolls it all "
                "back); on SQLite it holds the write lock for as long as it runs (on PostgreSQL "
                "it holds back other projections only if its handlers append events)."
            ),
        )
        parser.add_argument(
            "--shadow",
            action="store_true",
            help=(
                "Rebuild without downtime (PostgreSQL): build the projection's tables in a "
                "shadow schema while the live ones keep serving and being applied, then swap "
                "them in one short transaction. Readers see the old rows until the swap and "
                "the new ones after. Resumes an interrupted shadow build (--restart discards "
                "it). Needs twice the disk of the tables while it runs; refuses --tenant, "
                "foreign keys into or out of the tables, and SQLite."
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
        if options["shadow"] and options["atomic"]:
            raise CommandError("Choose --atomic or --shadow, not both.")
        if options["shadow"] and options["wait"]:
            raise CommandError(
                "--wait waits for a live runner to release the projection; a --shadow "
                "rebuild leaves the live runner running, so it has nothing to wait for. Drop "
                "--wait."
            )
        try:
            if options["shadow"]:  # it refuses any --tenant: say that first
                for projection in projections:
                    check_shadow_rebuild(projection, tenant)
            self.check_tenant(projections, tenant, store)  # before a state row is created
            # --restart and --atomic start over; --shadow builds from its own checkpoint.
            restart = options["restart"] or options["atomic"] or options["shadow"]
            plans = [
                plan_rebuild(p, tenant_id=tenant, event_store=store, restart=restart)
                for p in projections
            ]
        except (RebuildRefused, NotSupportedOnBackend) as exc:
            raise CommandError(str(exc)) from exc
        # The plan: always for a dry run and before the question; else not at -v0.
        if options["verbosity"] >= 1 or options["dry_run"] or options["interactive"]:
            for plan, projection in zip(plans, projections, strict=True):
                self.stdout.write(self._plan_line(plan, projection, options))
        if options["dry_run"]:
            self.stdout.write("Dry run: nothing was changed.")
            return
        signals = self.signals or StopSignals()  # handle() called directly: no handlers
        if options["interactive"] and not signals.stopped:
            try:
                with signals.interrupting():  # Ctrl-C at the question cancels it
                    answer = input("Type 'yes' to continue: ")
            except (EOFError, KeyboardInterrupt):  # no terminal to answer, or Ctrl-C
                raise CommandError(
                    "Rebuild cancelled: no answer (pass --noinput to rebuild without "
                    "asking). Nothing was changed."
                ) from None
            if answer.strip().lower() != "yes":
                raise CommandError("Rebuild cancelled.")
        printer = ProgressPrinter(
            self, options["verbosity"], subject="shadow build" if options["shadow"] else ""
        )
        # Said once, where the command notices the signal (not from the signal handler).
        signals.on_stop = lambda name: Reporter(printer, tenant)("signal", signal=name)
        for index, projection in enumerate(projections):
            # Whatever ends the command early leaves these alone: say so.
            rest = [p.label for p in projections[index + 1 :]]
            left = f" Not rebuilt: {', '.join(rest)}." if rest else ""
            if signals():  # stopped before this one started: it is left as it was
                self._stopped_before(projection, projections[index:], signals, options)
                break
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
                    shadow=options["shadow"],
                    should_stop=signals,
                )
            except RebuildAborted as exc:
                raise CommandError(printable(f"{exc}{left}"), returncode=1) from exc
            except (RebuildRefused, NotSupportedOnBackend) as exc:
                raise CommandError(printable(f"{exc}{left}")) from exc
            except ProjectionLocked as exc:
                raise CommandError(printable(self._locked(exc, options) + left)) from exc
            ended, text = self._outcome(projection, tenant, result, options)
            if ended == "error":
                raise CommandError(printable(text + left), returncode=1)
            if ended == "stopped":  # a signal: stop here (exit 0), say where and what is left
                self.stdout.write(self.style.WARNING(text + left))
                break

    def _stopped_before(
        self,
        projection: Projection,
        left: list[Projection],
        signals: StopSignals,
        options: Any,
    ) -> None:
        """A signal came before the rebuild of ``projection`` started (during the checks,
        the plan, or the rebuild before it): it and the ones after are left as they were.
        Exit 0, as any stop; ``--atomic`` exits 1, as its stops do."""
        names = ", ".join(p.label for p in left)
        text = (
            f"Stopped by {signals.received} before the rebuild of {projection.label} "
            f"started: nothing of it was changed. Not rebuilt: {names}."
        )
        if options["atomic"]:
            raise CommandError(printable(text), returncode=1)
        self.stdout.write(self.style.WARNING(printable(text)))

    def _plan_line(self, plan: RebuildPlan, projection: Projection, options: Any) -> str:
        name, tenant = printable(plan.projection), options["tenant"]
        if options["shadow"]:
            build = find_shadow_build(plan.projection, projection.database)
            if build is None:
                start = "build "
            elif options["restart"]:
                start = f"discard its shadow build (at event #{build.position}) and build "
            else:
                failed = (
                    f"; it failed at event #{build.failed_position} last time: "
                    f"{printable(build.error)}"
                    if build.failed_position is not None
                    else ""
                )
                start = f"resume its shadow build (at event #{build.position}{failed}) of "
            return (
                f"{name}: will {start}{', '.join(plan.tables)} in a shadow schema, replaying "
                f"up to {self._replayed(plan)}, then swap it in; the {plan.rows} live "
                f"row{'' if plan.rows == 1 else 's'} keep serving until then."
                + self._stays_paused(plan)
            )
        # An atomic rebuild and --restart start over; otherwise an interrupted one resumes.
        resuming = plan.resuming and not options["atomic"] and not options["restart"]
        tables = ", ".join(plan.tables) or "no tables"
        if resuming:
            action = f"resume the interrupted rebuild of {tables} from event #{plan.position} and"
        else:
            action = f"delete {plan.rows} row{'' if plan.rows == 1 else 's'} of {tables} and"
        if plan.tenant_events is not None:  # the tenant's events, not every tenant's
            return (
                f"{name}: will {action} replay up to event #{plan.events} (tenant "
                f"{printable(tenant)}: {plural(plan.tenant_events, 'event')})."
                + self._stays_paused(plan)
            )
        return f"{name}: will {action} replay {self._replayed(plan)}." + self._stays_paused(plan)

    @staticmethod
    def _replayed(plan: RebuildPlan) -> str:
        """The events the replay reads, as the summary at its end counts them (not the
        head's position: positions have gaps, and PostgreSQL's horizon holds some back)."""
        held = (
            f" ({plan.held} more committed, held back by a transaction still open: the "
            "next catch-up applies them if the replay does not)"
            if plan.held
            else ""
        )
        return plural(plan.replayed, "event") + held

    @staticmethod
    def _stays_paused(plan: RebuildPlan) -> str:
        """An operator's pause survives the rebuild: the plan says so."""
        return " It is paused, and stays paused." if plan.paused else ""

    @staticmethod
    def _locked(error: ProjectionLocked, options: Any) -> str:
        label = error.projection
        if options["shadow"]:  # the lock of another shadow build: --wait does not wait
            return (
                f"Another shadow rebuild of {label!r} is running. Nothing was changed; let it "
                "finish (stopped, its shadow is kept and the next one resumes it)."
            )
        if options["wait"]:  # stopped (a signal) while it waited
            return f"Stopped while waiting for the lock of {label!r}. Nothing was changed."
        return f"{error} Nothing was changed (--wait waits for it)."

    def _outcome(
        self,
        projection: Projection,
        tenant: str | None,
        result: RunResult,
        options: Any,
    ) -> tuple[str, str]:
        """How the rebuild ended, to say: ``("", "")`` when it finished, ``("stopped",
        line)`` when a signal stopped it (exit 0, the next projections are left alone),
        ``("error", message)`` to exit 1 with."""
        label = projection.label
        name = printable(label)
        state = find_state(label, tenant)
        paused = state is not None and state.status == ProjectionStatus.PAUSED
        still_paused = (
            f" {name} is still paused: resume it (admin, or control.resume()) to let "
            "runners apply new events."
            if paused
            else ""
        )
        if options["shadow"]:
            if result.swap_seconds is not None:
                self.stdout.write(
                    f"{name}: swapped the shadow tables in "
                    f"({plural(result.events_applied, 'event')} replayed; the swap took "
                    f"{result.swap_seconds * 1000:.0f} ms)." + still_paused
                )
                return "", ""
            build = find_shadow_build(label, projection.database)
            built = f", built up to event #{build.position}" if build else ""
            return "stopped", (
                f"{name}: the shadow rebuild stopped before its swap{built}; the live tables "
                f"still serve, nothing was swapped: run rebuild_projections {name} --shadow "
                "again to resume it."
            )
        where = f"event #{state.position or 0}" if state else "its start"
        again = name + (f" --tenant {printable(tenant)}" if tenant else "")
        if result.lost:
            holder = state.owner if state and state.owner else "another runner"
            lost = (
                f"Rebuild of {label!r} lost its lock to {holder} at {where}: the batch in "
                "hand was rolled back."
            )
            if paused:  # workers skip it: nobody carries it on but a rebuild, or a resume
                return "error", (
                    f"{lost} It is paused in the middle of its rebuild, which workers skip "
                    f"while it is paused: another rebuild_projections {again} carries the "
                    "rebuild on from there (it stays paused), or resume it (admin, or "
                    "control.resume()) for a worker to."
                )
            return "error", (
                f"{lost} It stays rebuilding, and the runner that holds it now continues the "
                "replay from there."
            )
        if result.failed:
            error = state.last_error.split("\n\n", 1)[0] if state else "see projection_status"
            return "error", (
                f"Rebuild of {label!r} failed: {error}. It is failed, rebuilt up to {where}: "
                "fix the handler, then retry the event (admin, or control.retry()) and "
                f"rebuild_projections {again} carries the rebuild on from there (run without "
                "the retry, it starts over)."
            )
        if result.stopped:
            run = result.result_for(label)
            stopped = (
                f"{name}: the rebuild stopped at event #{run.position if run else 0} before "
                "it caught up; the read model is half-built until it is resumed: run "
                f"rebuild_projections {again} again"
            )
            if paused:  # workers skip it: only a rebuild carries it on while it is paused
                return "stopped", (
                    f"{stopped} (it stays paused), or resume it (admin, or control.resume()) "
                    "for a catch-up or a worker running it to carry the rebuild on."
                )
            return "stopped", (
                f"{stopped} (a catch-up of it, replay_projections {again}, resumes it too)."
            )
        if paused and options["verbosity"] >= 1:
            self.stdout.write(f"{name}: rebuilt.{still_paused}")
        return "", ""

"""What the projection commands share: arguments, name resolution and progress output."""

from __future__ import annotations

import difflib
import sys
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections

from django_eventsource import control
from django_eventsource.conf import MAX_BATCH_SIZE
from django_eventsource.exceptions import DatabaseBusy, UnknownTenant
from django_eventsource.projections import Projection, projection_registry
from django_eventsource.runner import StopSignals
from django_eventsource.store import BaseEventStore
from django_eventsource.text import printable


class ProjectionCommand(BaseCommand):
    """Base of ``replay_projections``, ``rebuild_projections`` and ``projection_status``."""

    #: Whether no names means every projection (True) or is an error (False).
    all_by_default = True
    #: Whether a bare run (no names, no --all) leaves inline projections out.
    skip_inline_by_default = False
    tenant_help = (
        "Only this tenant's events, rows and checkpoint. A tenant no event carries and the "
        "projection has no state for (a typo) is refused."
    )

    def execute(self, *args: Any, **options: Any) -> str | None:
        """Run the command; a busy database (`DatabaseBusy`, transient) ends it with its
        message and exit status 1, not a traceback. A ``--follow`` worker waits it out."""
        try:
            return super().execute(*args, **options)
        except DatabaseBusy as exc:
            raise CommandError(printable(exc), returncode=1) from exc

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "names",
            nargs="*",
            metavar="NAME",
            help="Projection names (projection_status lists them). "
            + (
                "Default: every asynchronous projection (inline ones only by name or --all)."
                if self.skip_inline_by_default
                else "Default: all."
                if self.all_by_default
                else "Or use --all."
            ),
        )
        parser.add_argument("--all", action="store_true", help="Every registered projection.")
        parser.add_argument("--tenant", default=None, help=self.tenant_help)
        parser.add_argument(
            "--database",
            default=None,
            help="Database alias of the event store (default: EVENTSOURCE['DATABASE_ALIAS']).",
        )

    @staticmethod
    def add_batch_size_argument(parser: CommandParser) -> None:
        """``--batch-size``, for the commands that apply events (checked by
        `check_batch_size`)."""
        parser.add_argument(
            "--batch-size",
            type=int,
            default=None,
            help="Events per transaction (default: EVENTSOURCE['BATCH_SIZE']).",
        )

    @staticmethod
    def check_batch_size(options: dict[str, Any]) -> None:
        """CommandError (exit 1, nothing changed) for a batch size outside 1 to
        ``MAX_BATCH_SIZE``, before anything is changed."""
        size = options["batch_size"]
        if size is not None and size <= 0:
            raise CommandError("--batch-size must be a positive integer.")
        if size is not None and size > MAX_BATCH_SIZE:
            raise CommandError(f"--batch-size must be at most {MAX_BATCH_SIZE:,}, not {size}.")

    def resolve(self, names: list[str], options: dict[str, Any]) -> list[Projection]:
        """Projection instances for the names given; CommandError naming the known ones."""
        known = projection_registry.names()
        if options.get("all") and names:
            raise CommandError("Give projection names or --all, not both.")
        if not names:
            if not (options.get("all") or self.all_by_default):
                raise CommandError(
                    "Name the projections to act on, or pass --all. Known projections: "
                    + (", ".join(known) or "none")
                    + "."
                )
            if not known:
                raise CommandError(
                    "No projections are registered. Define a Projection subclass with a name "
                    "in an installed app's projections.py."
                )
            names = known
            if self.skip_inline_by_default and not options.get("all"):
                # Inline projections are kept current by the appends themselves.
                names = [n for n in known if not projection_registry.get(n).inline]
        unknown = [n for n in names if n not in projection_registry]
        if unknown:
            hints = []
            for name in unknown:
                close = difflib.get_close_matches(name, known, n=1)
                hints.append(
                    f"Unknown projection {name!r}."
                    + (f" Did you mean {close[0]!r}?" if close else "")
                )
            raise CommandError(
                " ".join(hints) + f" Known projections: {', '.join(known) or 'none'}."
            )
        return [projection_registry.get(name)() for name in dict.fromkeys(names)]

    @staticmethod
    def check_tenant(
        projections: list[Projection],
        tenant: str | None,
        store: BaseEventStore,
        *,
        any_of: bool = False,
    ) -> None:
        """CommandError (exit 1, nothing written) for a ``--tenant`` that a projection does
        not know (``any_of``: that none of them knows): the same rule as the admin's
        ([`control.projection_known`][django_eventsource.control.projection_known]). A run
        for it would create its state row, which would then show forever; a status check
        of it would check nothing and pass."""
        if tenant == "":
            raise CommandError(
                "--tenant '' is not a tenant id: leave --tenant out for every tenant's "
                "events, or name one tenant."
            )
        refused: UnknownTenant | None = None
        for projection in projections:
            try:
                control.check_tenant(projection.label, tenant, event_store=store)
            except UnknownTenant as exc:
                if not any_of:
                    raise CommandError(printable(exc)) from exc
                refused = refused or exc
            except ValueError as exc:
                raise CommandError(f"--tenant: {printable(exc)}.") from exc
            else:
                if any_of:
                    return
        if refused is not None:
            raise CommandError(printable(refused)) from refused

    def check_database(self, options: dict[str, Any]) -> str | None:
        alias = options.get("database")
        if alias is not None and alias not in connections:
            raise CommandError(
                f"Unknown database {alias!r}. Configured databases: {', '.join(connections)}."
            )
        return alias


class StopsOnSignals(BaseCommand):
    """A command whose SIGINT and SIGTERM, from the command line, are one `StopSignals`'s
    from its start to the process's exit: a signal never kills it on its way (Python's
    default handler is not put back between its runs, nor, as the process exits, is it
    the default's), so its exit code and its last lines are its own. The command asks
    ``signals`` where it can stop cleanly."""

    #: SIGINT and SIGTERM, from the command's start to its exit (None: not installed).
    signals: StopSignals | None = None

    def run_from_argv(self, argv: list[str]) -> None:
        self.signals = StopSignals()
        self.signals.install()
        try:
            super().run_from_argv(argv)
        finally:  # its exit code (sys.exit) and output are the command's
            self.signals.ignore_until_exit()


class ProgressPrinter:
    """Turns runner progress callbacks into ``migrate``-style lines (or a live bar on a TTY)."""

    def __init__(
        self, command: BaseCommand, verbosity: int, *, every: float = 2.0, subject: str = ""
    ) -> None:
        self.command = command
        self.verbosity = verbosity
        #: What the lines are about besides the projection (``shadow build``), named after
        #: it: a shadow's failure is not the live projection's.
        self.subject = subject
        self.every = every
        self.heads: dict[str, int] = {}
        self.started: dict[str, float] = {}
        self.last_line = 0.0
        self.bars: dict[str, Any] = {}
        self.tty = verbosity >= 1 and _isatty(command.stdout)

    def __call__(self, kind: str, **data: Any) -> None:
        out, style = self.command.stdout, self.command.style
        name = printable(data.get("projection", ""))
        if self.subject:
            name += f" ({self.subject})"
        if kind == "start":
            self.heads[name] = data.get("head", 0)
            self.started[name] = time.monotonic()
            todo = max(self.heads[name] - data.get("position", 0), 0)
            if self.tty and todo:
                self.bars[name] = _bar(name, todo, out)
            elif self.verbosity >= 1:
                out.write(f"  {name} from {data.get('position', 0)} (head {self.heads[name]})")
        elif kind == "batch":
            bar = self.bars.get(name)
            if bar is not None:
                bar.update(data.get("events", 0))
            elif self.verbosity >= 2 or (
                self.verbosity >= 1 and time.monotonic() - self.last_line >= self.every
            ):
                self.last_line = time.monotonic()
                out.write(self._progress_line(name, data))
        elif kind == "done":
            self._close_bar(name)
            result = data["result"]
            if self.verbosity >= 1:
                elapsed = time.monotonic() - self.started.get(name, time.monotonic())
                rate = (
                    f", {result.events_read / elapsed:,.0f} events/s"
                    if elapsed > 0 and self.verbosity >= 2
                    else ""
                )
                out.write(
                    f"  {name} {result.start_position} → {result.position} "
                    f"({result.events_read} events, {result.events_applied} handled{rate})"
                    + style.SUCCESS(" OK")
                )
        elif kind in ("failed", "dead_lettered", "retry"):
            self._close_bar(name)
            if kind == "retry" and self.verbosity < 2:
                return
            label = {"failed": "FAILED", "dead_lettered": "DEAD-LETTERED", "retry": "retrying"}[
                kind
            ]
            self.command.stderr.write(
                style.ERROR(
                    f"  {name}: {label} at event #{data.get('position')}: "
                    f"{printable(data.get('error'))}"
                )
            )
        elif kind in ("locked", "standby"):
            if self.verbosity >= 1:
                holder = printable(data.get("holder") or "another runner")
                out.write(
                    style.WARNING(
                        f"  {name}: held by {holder}; waiting as a standby"
                        if kind == "standby"
                        else f"  {name}: held by {holder}; skipped"
                    )
                )
        elif kind == "lock_lost":
            self._close_bar(name)
            holder = printable(data.get("holder") or "another runner")
            self.command.stderr.write(
                style.ERROR(f"  {name}: lost its lock to {holder}; the batch in hand rolled back")
            )
        elif kind == "took_over" and self.verbosity >= 1:
            out.write(style.NOTICE(f"  {name}: took over"))
        elif kind == "skipped" and self.verbosity >= 1:
            out.write(
                style.WARNING(
                    f"  {name}: {printable(data.get('status'))}; skipped (resume it first)"
                )
            )
        elif kind == "reset" and self.verbosity >= 1:
            out.write(f"  {name}: rows and checkpoint reset")
        elif kind == "signal" and self.verbosity >= 1:
            out.write(
                style.WARNING(f"Received {data.get('signal')}: finishing the batch in hand...")
            )
        elif kind == "busy" and self.verbosity >= 1:
            self.command.stderr.write(
                style.WARNING(
                    f"Database busy ({printable(data.get('error'))}): another connection holds "
                    f"its write lock; retrying in {data.get('delay', 0):.2f}s..."
                )
            )
        elif kind == "disconnected" and self.verbosity >= 1:
            self.command.stderr.write(
                style.WARNING(
                    f"Database unavailable ({printable(data.get('error'))}); retrying..."
                )
            )

    def _progress_line(self, name: str, data: dict[str, Any]) -> str:
        # A follower passes the head it saw at its start: never print "at 9025 of 9021".
        head = max(self.heads.get(name, 0), data.get("position") or 0)
        done = data.get("total", 0)
        elapsed = max(time.monotonic() - self.started.get(name, time.monotonic()), 1e-9)
        rate = done / elapsed
        left = max(head - data.get("position", 0), 0)
        eta = f", ETA {left / rate:,.0f}s" if rate > 0 and left else ""
        return f"  {name}: at {data.get('position')} of {head} ({done} events, {rate:,.0f}/s{eta})"

    def _close_bar(self, name: str) -> None:
        bar = self.bars.pop(name, None)
        if bar is not None:
            bar.close()


def _isatty(stream: Any) -> bool:
    target = getattr(stream, "_out", stream)
    return bool(getattr(target, "isatty", lambda: False)())


def _bar(name: str, total: int, out: Any) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total, desc=f"  {name}", unit="ev", file=getattr(out, "_out", sys.stdout), leave=True
    )

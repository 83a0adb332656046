"""What the commands print while a runner works (``ProgressPrinter``)."""

from __future__ import annotations

from io import StringIO

from django.core.management.base import BaseCommand

from django_eventsource.management.commands._base import ProgressPrinter


def printer(verbosity: int = 1) -> tuple[BaseCommand, ProgressPrinter]:
    command = BaseCommand(stdout=StringIO(), stderr=StringIO(), no_color=True)
    return command, ProgressPrinter(command, verbosity, every=0)


def test_a_follower_never_prints_a_position_past_the_head() -> None:
    """A follower's head is the one it saw at its start; new events move past it."""
    command, progress = printer()
    progress("start", projection="board", position=9021, head=9021)
    progress("batch", projection="board", position=9025, events=4, total=4)
    out = command.stdout._out.getvalue()  # type: ignore[attr-defined]
    assert "at 9025 of 9025" in out, out


def test_a_lost_lock_escapes_the_holder() -> None:
    command, progress = printer()
    progress("lock_lost", projection="board", holder="host\x1b[31m:1#x")
    err = command.stderr._out.getvalue()  # type: ignore[attr-defined]
    assert "\x1b" not in err and "\\x1b[31m" in err, err

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


def test_a_shadow_build_s_failure_is_counted_as_the_shadow_s() -> None:
    """A failed shadow build counted as the live projection's failure
    (eventsource_projection_failures_total), although the live projection did not fail."""
    from prometheus_client import REGISTRY

    from django_eventsource.runner import Reporter

    def counts() -> tuple[float, float]:
        return tuple(  # type: ignore[return-value]
            REGISTRY.get_sample_value(name, {"projection": "unit_board"}) or 0.0
            for name in (
                "eventsource_projection_failures_total",
                "eventsource_shadow_build_failures_total",
            )
        )

    reported: list[str] = []
    failure = {"projection": "unit_board", "position": 7, "error": "boom", "attempts": 1}
    before = counts()
    Reporter(lambda kind, **data: reported.append(kind), None, shadow=True)("failed", **failure)
    shadow = counts()
    Reporter(None, None)("failed", **failure)
    live = counts()
    assert (shadow[0] - before[0], shadow[1] - before[1]) == (0.0, 1.0)
    assert (live[0] - shadow[0], live[1] - shadow[1]) == (1.0, 0.0)
    assert reported == ["failed"]  # the callback still hears of it


def test_a_shadow_build_s_batches_and_retries_are_counted_as_the_shadow_s() -> None:
    """A shadow build's batches and retries were counted under the live projection
    (eventsource_events_applied_total, _batch_duration_seconds, _event_retries_total), so
    its dashboards showed it doing work it was not doing."""
    from prometheus_client import REGISTRY

    from django_eventsource.runner import Reporter

    names = (
        ("eventsource_events_applied_total", {"projection": "unit_board", "tenant": ""}),
        ("eventsource_batch_duration_seconds_count", {"projection": "unit_board"}),
        ("eventsource_event_retries_total", {"projection": "unit_board"}),
        ("eventsource_shadow_events_applied_total", {"projection": "unit_board"}),
        ("eventsource_shadow_batch_duration_seconds_count", {"projection": "unit_board"}),
        ("eventsource_shadow_event_retries_total", {"projection": "unit_board"}),
    )

    def counts() -> list[float]:
        return [REGISTRY.get_sample_value(name, labels) or 0.0 for name, labels in names]

    batch = {"projection": "unit_board", "position": 9, "events": 3, "applied": 3}
    retry = {"projection": "unit_board", "position": 7, "error": "boom", "attempt": 1}
    before = counts()
    shadow = Reporter(None, None, shadow=True)
    shadow("batch", **batch, duration=0.01)
    shadow("retry", **retry)
    built = counts()
    live = Reporter(None, None)
    live("batch", **batch, duration=0.01)
    live("retry", **retry)
    after = counts()
    assert [b - a for a, b in zip(before, built, strict=True)] == [0, 0, 0, 3, 1, 1]
    assert [b - a for a, b in zip(built, after, strict=True)] == [3, 1, 1, 0, 0, 0]

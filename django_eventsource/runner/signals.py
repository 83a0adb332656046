"""[`StopSignals`][django_eventsource.runner.signals.StopSignals]: SIGINT and SIGTERM ask a
whole program to stop, from its start to its exit, instead of interrupting it wherever they
land.

A runner's own handlers
([`handling_signals`][django_eventsource.runner.loop.ProjectionRunner.handling_signals])
last one run: a program that runs several (``rebuild_projections``, one rebuild per
projection) has windows between them, and before the first, where Python's default handler
raises ``KeyboardInterrupt`` in the middle of whatever it was doing. One ``StopSignals``
for the whole program closes them: its handler only notes the signal, and the program asks
``stop_signals()`` (a runner's ``should_stop``) where it can stop cleanly.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, Self

__all__ = ["StopSignals"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """While installed, SIGINT and SIGTERM only note that the program was asked to stop.

    Call it (``stop_signals()``, the ``should_stop`` of a
    [`ProjectionRunner`][django_eventsource.runner.ProjectionRunner] or of
    [`rebuild`][django_eventsource.rebuild.rebuild]) to know: the first call after a signal
    calls ``on_stop(name)`` once, from the program's own flow (a signal handler that prints
    could interrupt a write to the same stream). A second signal changes nothing: the
    program stops at the same clean point.

    A context manager restores the handlers it found (``call_command``). A program whose
    process ends with it calls ``install()`` at its start and
    [`ignore_until_exit`][django_eventsource.runner.signals.StopSignals.ignore_until_exit]
    at its end instead: no window is left where Python's default handler kills it. Signal handlers belong to the main thread: elsewhere it installs nothing
    (the stop is then the caller's, as without it).
    """

    def __init__(self, on_stop: Callable[[str], None] | None = None) -> None:
        #: Called once with the signal's name (``"SIGINT"``), from the first call after it.
        self.on_stop = on_stop
        #: The first signal received ("" before any).
        self.received = ""
        self._announced = False
        self._interrupting = False
        self._previous: dict[signal.Signals, Any] = {}

    @property
    def stopped(self) -> bool:
        """Whether a signal asked the program to stop (without announcing it)."""
        return bool(self.received)

    def __call__(self) -> bool:
        """Whether a signal asked the program to stop; announces it the first time."""
        if self.received and not self._announced:
            self._announced = True
            if self.on_stop is not None:
                self.on_stop(self.received)
        return bool(self.received)

    def install(self) -> bool:
        """Install the handlers (main thread only); returns whether it did."""
        if self._previous or threading.current_thread() is not threading.main_thread():
            return False
        for signum in _SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return True

    def restore(self) -> None:
        """Put back the handlers found at ``install()``."""
        previous, self._previous = self._previous, {}
        for signum, before in previous.items():
            # None: a handler not installed from Python; the default is the nearest.
            signal.signal(signum, signal.SIG_DFL if before is None else before)

    def ignore_until_exit(self) -> None:
        """The program is done: ignore SIGINT and SIGTERM until the process exits.

        As the interpreter exits it puts the default back in place of every Python handler
        (not of an ignored signal), and a signal then kills the process (exit -2 or -15,
        the program's own exit code and the end of its output lost)."""
        if threading.current_thread() is threading.main_thread():
            for signum in _SIGNALS:
                signal.signal(signum, signal.SIG_IGN)
            self._previous = {}

    def __enter__(self) -> Self:
        self.install()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.restore()

    @contextlib.contextmanager
    def interrupting(self) -> Iterator[None]:
        """In the block, a signal raises ``KeyboardInterrupt`` as by default: a program
        waiting for an answer at a prompt is cancelled by Ctrl-C (the answer is read in a
        loop that a handler which only notes the signal would not end)."""
        self._interrupting = True
        try:
            yield
        finally:
            self._interrupting = False

    def _handle(self, signum: int, frame: Any) -> None:
        if self._interrupting:
            raise KeyboardInterrupt
        if not self.received:
            self.received = signal.Signals(signum).name

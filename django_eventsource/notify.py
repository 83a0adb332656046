"""Follow-mode wake-ups. A hint only: correctness never depends on a notification arriving.

Where the backend can notify (PostgreSQL: ``LISTEN`` on a connection of its own, see
``backends/postgresql/listen.py``) a follower wakes when an append commits; elsewhere, and
whenever that connection is down, it simply polls every ``POLL_INTERVAL`` seconds.
"""

from __future__ import annotations

import threading

from django.db import connections

from django_eventsource.backends import backend_for
from django_eventsource.backends.base import Listener
from django_eventsource.store import BaseEventStore, EventStore

__all__ = ["Waker"]


class Waker:
    """Waits until events may have arrived: a notification, the poll interval, or a stop."""

    def __init__(self, store: BaseEventStore, poll_interval: float) -> None:
        self.poll_interval = poll_interval
        self.using = store.using if isinstance(store, EventStore) else None
        self._listener: Listener | None = None

    @property
    def listening(self) -> bool:
        return self._listener is not None and not self._listener.closed

    def _listen(self) -> None:
        if self.using is None:
            return
        self._listener = backend_for(connections[self.using]).listener(self.using)

    def wait(self, stop: threading.Event) -> None:
        """Return after a notification, ``poll_interval`` seconds, or ``stop`` being set."""
        if not self.listening:
            self._listen()
        if self._listener is None or self._listener.closed:
            stop.wait(self.poll_interval)
            return
        self._listener.wait(self.poll_interval)

    def close(self) -> None:
        if self._listener is not None:
            try:
                self._listener.close()
            finally:
                self._listener = None

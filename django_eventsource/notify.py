"""Follow-mode wake-ups. A hint only: correctness never depends on a notification arriving.

On PostgreSQL each append sends ``pg_notify(NOTIFY_CHANNEL, '')`` at commit, and a follower
``LISTEN``\\ s on a connection of its own; elsewhere (and whenever that connection is down) it
simply polls every ``POLL_INTERVAL`` seconds.
"""

from __future__ import annotations

import threading
from typing import Any

from django.db import connections

from django_eventsource.store import BaseEventStore, EventStore

__all__ = ["Waker"]


class Waker:
    """Waits until events may have arrived: a NOTIFY, the poll interval, or a stop request."""

    def __init__(self, store: BaseEventStore, poll_interval: float) -> None:
        self.poll_interval = poll_interval
        self.using = store.using if isinstance(store, EventStore) else None
        self._connection: Any = None

    @property
    def listening(self) -> bool:
        return self._connection is not None and not self._connection.closed

    def _listen(self) -> None:
        if self.using is None or connections[self.using].vendor != "postgresql":
            return
        import psycopg
        from psycopg import sql

        from django_eventsource.conf import get_settings

        settings = connections[self.using].settings_dict
        params = {
            "dbname": settings["NAME"],
            "user": settings.get("USER") or None,
            "password": settings.get("PASSWORD") or None,
            "host": settings.get("HOST") or None,
            "port": settings.get("PORT") or None,
            "application_name": "django_eventsource listener",
            "autocommit": True,
        }
        try:
            self._connection = psycopg.connect(**{k: v for k, v in params.items() if v})
            channel = sql.Identifier(get_settings().notify_channel)
            self._connection.execute(sql.SQL("LISTEN {}").format(channel))
        except psycopg.Error:
            self.close()  # poll until the database is back

    def wait(self, stop: threading.Event) -> None:
        """Return after a notification, ``poll_interval`` seconds, or ``stop`` being set."""
        if not self.listening:
            self._listen()
        if not self.listening:
            stop.wait(self.poll_interval)
            return
        import psycopg

        try:
            for _ in self._connection.notifies(timeout=self.poll_interval, stop_after=1):
                break
        except psycopg.Error:
            self.close()

    def close(self) -> None:
        if self._connection is not None:
            try:
                self._connection.close()
            finally:
                self._connection = None

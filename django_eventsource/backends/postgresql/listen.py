"""Follow-mode wake-ups on PostgreSQL: ``LISTEN`` on a connection of its own.

Each append sends ``pg_notify(NOTIFY_CHANNEL, '')`` at commit (inside the append function).
A notification is a hint only: followers poll as well, and correctness never depends on one
arriving.

psycopg is imported inside the methods: it is optional (the ``postgres`` extra), and this
module is imported on every backend.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from django_eventsource.backends.postgresql.connection import connect
from django_eventsource.text import printable

__all__ = ["PostgresListener"]

logger = logging.getLogger(__name__)

#: Seconds between two warnings that LISTEN cannot connect (a follower retries every poll).
WARN_EVERY = 60.0


class _Health:
    """Whether the last LISTEN attempt worked, so that only changes are logged."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.failing = False
        self.warned_at = float("-inf")

    def failed(self, channel: str, reason: str, error: str) -> None:
        with self.lock:
            now = time.monotonic()
            if self.failing and now - self.warned_at < WARN_EVERY:
                return
            self.failing, self.warned_at = True, now
        logger.warning(
            "%s; followers poll until LISTEN on %s works again",
            reason,
            channel,
            extra={"channel": channel, "error": error},
        )

    def listening(self, channel: str) -> None:
        with self.lock:
            again, self.failing = self.failing, False
        logger.log(
            logging.INFO if again else logging.DEBUG,
            "Listening on %s%s",
            channel,
            " again" if again else "",
            extra={"channel": channel},
        )


_health = _Health()


class PostgresListener:
    """A dedicated autocommit connection that ``LISTEN``s on the notify channel."""

    def __init__(self, connection: Any, channel: str = "") -> None:
        self._connection = connection
        self.channel = channel

    @classmethod
    def connect(cls, using: str, channel: str) -> PostgresListener | None:
        """Listen on ``channel``; None when the database cannot be reached (poll meanwhile)."""
        import psycopg
        from psycopg import sql

        connection = None
        try:
            connection = connect(using, "django_eventsource listener")
            connection.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        except psycopg.Error as exc:
            if connection is not None:
                connection.close()
            _health.failed(channel, f"Cannot LISTEN: {printable(exc)}", str(exc))
            return None
        _health.listening(channel)
        return cls(connection, channel)

    @property
    def closed(self) -> bool:
        return self._connection is None or bool(self._connection.closed)

    def wait(self, timeout: float) -> None:
        import psycopg

        try:
            for _ in self._connection.notifies(timeout=timeout, stop_after=1):
                break
        except psycopg.Error as exc:
            _health.failed(
                self.channel, f"The LISTEN connection was lost: {printable(exc)}", str(exc)
            )
            self.close()

    def close(self) -> None:
        if self._connection is not None:
            try:
                self._connection.close()
            finally:
                self._connection = None

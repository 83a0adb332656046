"""One active runner per projection and tenant on PostgreSQL: a session-level advisory lock
held on a dedicated connection. If the process dies, its connection closes and PostgreSQL
releases the lock at once.

psycopg is imported inside the methods: it is optional (the ``postgres`` extra), and this
module is imported on every backend.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from typing import Any

from django.db import OperationalError, connections

from django_eventsource.backends.base import ProjectionLock
from django_eventsource.backends.postgresql.connection import connect
from django_eventsource.text import printable

__all__ = ["PostgresAdvisoryLock", "lock_key"]

logger = logging.getLogger(__name__)


def lock_key(name: str, tenant_id: str | None) -> int:
    """A stable signed 64-bit advisory-lock key for a projection and tenant."""
    digest = hashlib.blake2b(
        f"django_eventsource:{name}:{tenant_id or ''}".encode(), digest_size=8
    )
    return int.from_bytes(digest.digest(), "big", signed=True)


class PostgresAdvisoryLock(ProjectionLock):
    """``pg_try_advisory_lock`` on a connection of its own (never Django's shared one)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.key = lock_key(self.name, self.tenant_id)
        self._connection: Any = None

    def _connect(self) -> Any:
        return connect(self.using, f"django_eventsource runner {self.owner}")

    def acquire(self) -> bool:
        if self.held and self.renew():
            return True
        self.held = self._try_lock()
        if self.held:
            logger.info(
                "Took the lock of %s (advisory lock %d)",
                self.describe(),
                self.key,
                extra=self.log_fields(),
            )
        return self.held

    def _try_lock(self) -> bool:
        """``pg_try_advisory_lock`` on our session, opening a new one if the old one died.

        A server restart, a failover or ``pg_terminate_backend`` kill the session without
        psycopg noticing until the next statement, so a dead session gets one fresh retry.
        If the server cannot be reached, this raises Django's ``OperationalError``, which
        the runner's follow mode handles like any lost connection (back off, reconnect).
        """
        import psycopg

        for attempt in range(2):
            try:
                if self._connection is None or self._connection.closed:
                    self._connection = self._connect()
                row = self._connection.execute(
                    "SELECT pg_try_advisory_lock(%s)", [self.key]
                ).fetchone()
            except psycopg.OperationalError as exc:
                self._close()
                if attempt:
                    logger.warning(
                        "Cannot reach the database to lock %s: %s",
                        self.describe(),
                        printable(exc),
                        extra={**self.log_fields(), "error": str(exc)},
                    )
                    raise OperationalError(str(exc)) from exc
            else:
                return bool(row and row[0])
        return False  # pragma: no cover - the loop returns or raises

    def renew(self) -> bool:
        if not self.held or self._connection is None:
            return False
        import psycopg

        try:
            self._connection.execute("SELECT 1")
        except psycopg.Error as exc:
            # The session, and so the lock, is gone (a restart): take it again on a new
            # session if nobody else has meanwhile; if someone has, it is theirs now.
            logger.warning(
                "The session holding the lock of %s is gone (%s); taking the lock again",
                self.describe(),
                printable(exc),
                extra={**self.log_fields(), "error": str(exc)},
            )
            self._close()
            try:
                self.held = self._try_lock()
            except OperationalError:
                self.held = False
            if self.held:
                logger.info("Took the lock of %s again", self.describe(), extra=self.log_fields())
            else:
                logger.warning(
                    "Lost the lock of %s: another runner holds it now",
                    self.describe(),
                    extra=self.log_fields(),
                )
        return self.held

    def release(self) -> None:
        import psycopg

        if self.held and self._connection is not None:
            # Closing the connection releases the lock even if the unlock fails.
            with contextlib.suppress(psycopg.Error):
                self._connection.execute("SELECT pg_advisory_unlock(%s)", [self.key])
            logger.debug("Released the lock of %s", self.describe(), extra=self.log_fields())
        self.held = False
        self._close()

    def _close(self) -> None:
        if self._connection is not None:
            try:
                self._connection.close()
            finally:
                self._connection = None

    def holder(self) -> str:
        classid, objid = (self.key >> 32) & 0xFFFFFFFF, self.key & 0xFFFFFFFF
        with connections[self.using].cursor() as cursor:
            cursor.execute(
                "SELECT a.pid, a.application_name, a.client_addr::text, a.backend_start "
                "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'advisory' AND l.granted AND l.classid::bigint = %s "
                "AND l.objid::bigint = %s AND l.objsubid = 1 "
                # Advisory locks are per database: the same key elsewhere is someone else's.
                "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                [classid, objid],
            )
            row = cursor.fetchone()
        if row is None:
            return ""
        pid, application, address, started = row
        return f"{application or 'backend'} (pid {pid}, {address or 'local'}, since {started:%H:%M:%S})"

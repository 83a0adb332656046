"""One active runner per projection and tenant.

* PostgreSQL: a session-level advisory lock held on a dedicated connection. If the process
  dies, its connection closes and PostgreSQL releases the lock at once.
* SQLite: a lease on the projection's ``ProjectionState`` row (owner + expiry), renewed by
  the heartbeat. A dead runner's lease expires after ``3 * HEARTBEAT_INTERVAL`` seconds
  (at least one), and a standby takes over then.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
from datetime import timedelta
from typing import Any, Self
from uuid import uuid4

from django.db import connections, transaction
from django.utils import timezone

__all__ = ["ProjectionLock", "lock_for", "runner_identity"]

NO_TENANT = ""


def runner_identity() -> str:
    """How a runner names itself to others: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def lock_key(name: str, tenant_id: str | None) -> int:
    """A stable signed 64-bit advisory-lock key for a projection and tenant."""
    digest = hashlib.blake2b(
        f"django_eventsource:{name}:{tenant_id or ''}".encode(), digest_size=8
    )
    return int.from_bytes(digest.digest(), "big", signed=True)


class ProjectionLock:
    """The lock of one projection and tenant; ``acquire()`` never blocks."""

    def __init__(self, name: str, tenant_id: str | None, using: str, *, ttl: float = 30.0) -> None:
        self.name = name
        self.tenant_id = tenant_id
        self.using = using
        self.ttl = ttl
        # Unique per lock object, so two runners in one process never share a lease.
        self.owner = f"{runner_identity()}#{uuid4().hex[:6]}"
        self.held = False

    #: Whether holding the lock already means the state row names :attr:`owner` (a lease is
    #: that row); otherwise the runner claims the row after acquiring the lock.
    owns_state_row = False

    def acquire(self) -> bool:
        raise NotImplementedError

    def renew(self) -> bool:
        """Keep holding the lock; False if it was lost (then stop working)."""
        return self.held

    def release(self) -> None:
        raise NotImplementedError

    def holder(self) -> str:
        """Who holds the lock now ("" if nobody)."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class PostgresAdvisoryLock(ProjectionLock):
    """``pg_try_advisory_lock`` on a connection of its own (never Django's shared one)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.key = lock_key(self.name, self.tenant_id)
        self._connection: Any = None

    def _connect(self) -> Any:
        import psycopg

        settings = connections[self.using].settings_dict
        params: dict[str, Any] = {
            "dbname": settings["NAME"],
            "user": settings.get("USER") or None,
            "password": settings.get("PASSWORD") or None,
            "host": settings.get("HOST") or None,
            "port": settings.get("PORT") or None,
            "application_name": f"django_eventsource runner {self.owner}",
            "autocommit": True,
        }
        for option in ("sslmode", "sslrootcert", "sslcert", "sslkey", "connect_timeout"):
            if option in settings.get("OPTIONS", {}):
                params[option] = settings["OPTIONS"][option]
        return psycopg.connect(**{k: v for k, v in params.items() if v is not None})

    def acquire(self) -> bool:
        if self.held and self.renew():
            return True
        self.held = self._try_lock()
        return self.held

    def _try_lock(self) -> bool:
        """``pg_try_advisory_lock`` on our session, opening a new one if the old one died.

        A server restart, a failover or ``pg_terminate_backend`` kill the session without
        psycopg noticing until the next statement, so a dead session gets one fresh retry.
        If the server cannot be reached, this raises Django's ``OperationalError``, which
        the runner's follow mode handles like any lost connection (back off, reconnect).
        """
        import psycopg
        from django.db import OperationalError

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
                    raise OperationalError(str(exc)) from exc
            else:
                return bool(row and row[0])
        return False  # pragma: no cover - the loop returns or raises

    def renew(self) -> bool:
        if not self.held or self._connection is None:
            return False
        import psycopg
        from django.db import OperationalError

        try:
            self._connection.execute("SELECT 1")
        except psycopg.Error:
            # The session, and so the lock, is gone (a restart): take it again on a new
            # session if nobody else has meanwhile; if someone has, it is theirs now.
            self._close()
            try:
                self.held = self._try_lock()
            except OperationalError:
                self.held = False
        return self.held

    def release(self) -> None:
        import psycopg

        if self.held and self._connection is not None:
            # Closing the connection releases the lock even if the unlock fails.
            with contextlib.suppress(psycopg.Error):
                self._connection.execute("SELECT pg_advisory_unlock(%s)", [self.key])
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
                "AND l.objid::bigint = %s AND l.objsubid = 1",
                [classid, objid],
            )
            row = cursor.fetchone()
        if row is None:
            return ""
        pid, application, address, started = row
        return f"{application or 'backend'} (pid {pid}, {address or 'local'}, since {started:%H:%M:%S})"


class LeaseLock(ProjectionLock):
    """A lease on the ``ProjectionState`` row, for backends without advisory locks."""

    owns_state_row = True

    def _states(self) -> Any:
        from django_eventsource.models import ProjectionState

        return ProjectionState.objects.using(self.using)

    def acquire(self) -> bool:
        from django.db.models import Q

        now = timezone.now()
        with transaction.atomic(using=self.using):
            states = self._states()
            if not states.filter(name=self.name, tenant_id=self.tenant_id or NO_TENANT).exists():
                states.create(name=self.name, tenant_id=self.tenant_id or NO_TENANT)
            taken = states.filter(
                Q(owner="") | Q(owner=self.owner) | Q(lease_until__lt=now) | Q(lease_until=None),
                name=self.name,
                tenant_id=self.tenant_id or NO_TENANT,
            ).update(owner=self.owner, lease_until=now + timedelta(seconds=self.ttl))
        self.held = bool(taken)
        return self.held

    def renew(self) -> bool:
        if not self.held:
            return False
        now = timezone.now()
        renewed = (
            self._states()
            .filter(name=self.name, tenant_id=self.tenant_id or NO_TENANT, owner=self.owner)
            .update(lease_until=now + timedelta(seconds=self.ttl))
        )
        self.held = bool(renewed)
        return self.held

    def release(self) -> None:
        if self.held:
            self._states().filter(
                name=self.name, tenant_id=self.tenant_id or NO_TENANT, owner=self.owner
            ).update(owner="", lease_until=None)
        self.held = False

    def holder(self) -> str:
        row = (
            self._states()
            .filter(
                name=self.name,
                tenant_id=self.tenant_id or NO_TENANT,
                lease_until__gte=timezone.now(),
            )
            .exclude(owner="")
            .values_list("owner", "lease_until")
            .first()
        )
        return f"{row[0]} (lease until {row[1]:%H:%M:%S})" if row else ""


def lock_for(name: str, tenant_id: str | None, using: str, *, ttl: float = 30.0) -> ProjectionLock:
    """The right lock for the database's backend."""
    if connections[using].vendor == "postgresql":
        return PostgresAdvisoryLock(name, tenant_id, using, ttl=ttl)
    return LeaseLock(name, tenant_id, using, ttl=ttl)

"""One active runner per projection and tenant.

Each backend supplies its lock (``Backend.projection_lock``):

* PostgreSQL: a session-level advisory lock held on a dedicated connection. If the process
  dies, its connection closes and PostgreSQL releases the lock at once
  (``backends/postgresql/locks.py``).
* SQLite: a lease on the projection's ``ProjectionState`` row (owner + expiry), renewed by
  the heartbeat. A dead runner's lease expires after ``3 * HEARTBEAT_INTERVAL`` seconds
  (at least one), and a standby takes over then (``backends/lease.py``); on the same host,
  a lease whose process is gone is taken over at once.
"""

from __future__ import annotations

from django.db import connections

from django_eventsource.backends import backend_for
from django_eventsource.backends.base import ProjectionLock, runner_identity
from django_eventsource.conf import get_settings

__all__ = ["ProjectionLock", "lock_for", "runner_identity"]


def lock_for(
    name: str, tenant_id: str | None, using: str, *, ttl: float | None = None
) -> ProjectionLock:
    """The right lock for the database's backend. A lease (SQLite) lasts ``ttl`` seconds
    past its last renewal; by default the heartbeat timeout (three heartbeat intervals), the
    one rule for every runner, replay or rebuild."""
    if ttl is None:
        ttl = get_settings().heartbeat_timeout
    return backend_for(connections[using]).projection_lock(name, tenant_id, using, ttl=ttl)

"""PostgreSQL: the gap-safe global order, and everything that depends on it.

The one home of the PostgreSQL-specific machinery:

* ``backend.py``: the backend (the append statement, which calls the append function of
  migration 0004, and why the causal stamp is safe), and the ``post_migrate`` guard that
  creates the function where the table exists without it;
* ``horizon.py``: the read horizon, and the transaction that holds it back;
* ``stamps.py``: stamps above the server's transaction counter (a restore), and re-basing them;
* ``locks.py``: one active runner per projection (an advisory lock on its own connection);
* ``listen.py``: waking followers with ``LISTEN``/``NOTIFY``.

The migration files keep their own frozen copy of the SQL they create.
"""

from __future__ import annotations

from django_eventsource.backends.postgresql.backend import (
    APPEND_FUNCTION,
    PostgreSQLBackend,
    ensure_append_function,
)

__all__ = ["APPEND_FUNCTION", "PostgreSQLBackend", "ensure_append_function"]

"""The transactions the library opens: [`write_transaction`][django_eventsource.transactions.write_transaction].

Every transaction the library opens writes (a lease, a status, a batch with its checkpoint,
a dead letter, a snapshot...), and many read first. On SQLite a transaction that begins
``DEFERRED`` (Django's default) takes the read lock at its first ``SELECT`` and must
upgrade it at its first write; while another connection writes, SQLite refuses that upgrade
at once with ``database is locked`` (waiting could deadlock), whatever the ``timeout``. So
on SQLite the library begins its own transactions ``IMMEDIATE``: they take the write lock at
``BEGIN``, waiting for it up to the connection's ``timeout`` as any writer does, and then
never need an upgrade. Transactions that the application opens are its own: see
``docs/settings.md`` (``transaction_mode``) and check ``django_eventsource.W004``.

When another connection holds the write lock for longer than that ``timeout``, SQLite gives
up with ``database is locked``: [`busy_error`][django_eventsource.transactions.busy_error]
tells that apart from other database errors, and the library's transactions raise it as
[`DatabaseBusy`][django_eventsource.DatabaseBusy] (PostgreSQL's ``lock_timeout`` too, for
an append).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Any

from django.db import OperationalError, connections, transaction

from django_eventsource.exceptions import DatabaseBusy

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

__all__ = ["busy_error", "is_busy", "write_transaction"]

#: The ``transaction_mode`` values that take the write lock at ``BEGIN``.
_WRITE_FIRST = frozenset({"IMMEDIATE", "EXCLUSIVE"})

#: SQLite's primary result codes for a lock it could not get: ``SQLITE_BUSY`` (another
#: connection holds it), ``SQLITE_LOCKED`` (a conflict within one connection's shared cache).
_SQLITE_BUSY_CODES = frozenset({5, 6})
_SQLITE_BUSY_MESSAGES = ("database is locked", "database table is locked")

#: PostgreSQL's ``lock_not_available``: ``lock_timeout`` expired (or a ``NOWAIT`` lock).
_PG_LOCK_NOT_AVAILABLE = "55P03"

#: Python's ``sqlite3`` waits this long for the lock when ``OPTIONS`` sets no ``timeout``.
_SQLITE_DEFAULT_TIMEOUT = 5.0


def is_busy(exc: BaseException) -> bool:
    """Whether ``exc`` is a database's refusal to wait longer for a lock another connection
    holds (SQLite's ``database is locked``, PostgreSQL's ``lock_timeout``): transient, unlike
    a lost connection or a bad statement."""
    if isinstance(exc, DatabaseBusy):
        return True
    if not isinstance(exc, OperationalError):
        return False
    cause = exc.__cause__
    code = getattr(cause, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF in _SQLITE_BUSY_CODES
    state = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
    if state is not None:
        return bool(state == _PG_LOCK_NOT_AVAILABLE)
    return str(exc).startswith(_SQLITE_BUSY_MESSAGES)


def busy_error(exc: BaseException, using: str, doing: str) -> DatabaseBusy | None:
    """``exc`` as a [`DatabaseBusy`][django_eventsource.DatabaseBusy] that says ``doing``
    (what was refused) and the timeout to raise, if [`is_busy`][django_eventsource.transactions.is_busy];
    else None. Raise it ``from`` the original error (``DatabaseBusy.__cause__`` when ``exc``
    is one already)."""
    if not is_busy(exc):
        return None
    original = exc.__cause__ if isinstance(exc, DatabaseBusy) else exc
    error = str(original).strip().splitlines()[0] if str(original).strip() else ""
    connection = connections[using]
    if connection.vendor != "sqlite":
        return DatabaseBusy(using, doing=doing, setting="lock_timeout", error=error)
    options = connection.settings_dict.get("OPTIONS") or {}
    hint = ""
    mode = getattr(connection, "transaction_mode", None) or options.get("transaction_mode")
    if connection.in_atomic_block and str(mode).upper() not in _WRITE_FIRST:
        hint = (
            "It ran inside a transaction that began DEFERRED: if that transaction read "
            "before it wrote, SQLite refused its write at once, whatever the timeout; set "
            f'DATABASES[{using!r}]["OPTIONS"]["transaction_mode"] = "IMMEDIATE" (check '
            "django_eventsource.W004)."
        )
    return DatabaseBusy(
        using,
        doing=doing,
        setting=f'DATABASES[{using!r}]["OPTIONS"]["timeout"]',
        timeout=_sqlite_timeout(connection, options),
        error=error,
        hint=hint,
    )


def _sqlite_timeout(connection: BaseDatabaseWrapper, options: dict[str, Any]) -> float:
    """The seconds the connection waits for the lock: its ``busy_timeout`` (an
    ``init_command`` or a ``PRAGMA`` may have changed what ``OPTIONS`` set), else the
    ``OPTIONS``' ``timeout``."""
    raw = connection.connection
    if raw is not None:
        try:
            row = raw.execute("PRAGMA busy_timeout").fetchone()
        except Exception:  # noqa: BLE001 (the error being reported matters, not this)
            row = None
        if row is not None:
            return float(row[0]) / 1000
    return float(options.get("timeout", _SQLITE_DEFAULT_TIMEOUT))


def write_transaction(using: str) -> AbstractContextManager[Any]:
    """``transaction.atomic(using=using)`` for a block that writes.

    On SQLite, when the block opens the transaction (it is not inside the caller's), the
    transaction begins ``IMMEDIATE`` whatever the database's ``transaction_mode``; inside
    the caller's transaction it is a savepoint, as with ``atomic``, and the caller's
    transaction decides when the lock is taken. Elsewhere it is ``atomic`` itself.

    On SQLite, a ``database is locked`` that ends the block (waiting for the lock at
    ``BEGIN``, or at ``COMMIT`` for readers to finish) is raised as
    [`DatabaseBusy`][django_eventsource.DatabaseBusy], after the rollback.
    """
    connection = connections[using]
    if connection.vendor != "sqlite":
        return transaction.atomic(using=using)
    return _BeginImmediate(connection, using, immediate=not connection.in_atomic_block)


class _BeginImmediate:
    """``atomic`` whose ``BEGIN`` is ``BEGIN IMMEDIATE`` (when ``immediate``: it opens the
    transaction): Django's SQLite wrapper begins with its ``transaction_mode`` (read from
    ``OPTIONS`` when it connects), which is set for the moment the block opens the
    transaction. A busy database's error leaves it as ``DatabaseBusy``."""

    def __init__(self, connection: BaseDatabaseWrapper, using: str, *, immediate: bool) -> None:
        self._connection = connection
        self._using = using
        self._immediate = immediate
        self._atomic = transaction.atomic(using=using)

    def __enter__(self) -> Any:
        try:
            return self._begin()
        except OperationalError as exc:
            self._raise_busy(exc)
            raise

    def _begin(self) -> Any:
        connection = self._connection
        if not self._immediate:
            return self._atomic.__enter__()
        connection.ensure_connection()  # connecting sets transaction_mode from OPTIONS
        mode = getattr(connection, "transaction_mode", None)
        if mode in _WRITE_FIRST:
            return self._atomic.__enter__()
        connection.transaction_mode = "IMMEDIATE"  # type: ignore[attr-defined]
        try:
            return self._atomic.__enter__()
        finally:
            connection.transaction_mode = mode  # type: ignore[attr-defined]

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            self._atomic.__exit__(exc_type, exc_value, traceback)
        except OperationalError as exc:  # the COMMIT
            self._raise_busy(exc)
            raise
        if exc_value is not None:
            self._raise_busy(exc_value)

    def _raise_busy(self, exc: BaseException) -> None:
        """Raise ``exc`` as ``DatabaseBusy`` if it is a busy database's (and not one yet)."""
        if isinstance(exc, DatabaseBusy):
            return
        busy = busy_error(exc, self._using, "the transaction")
        if busy is not None:
            raise busy from exc

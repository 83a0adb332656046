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
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Any

from django.db import connections, transaction

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

__all__ = ["write_transaction"]

#: The ``transaction_mode`` values that take the write lock at ``BEGIN``.
_WRITE_FIRST = frozenset({"IMMEDIATE", "EXCLUSIVE"})


def write_transaction(using: str) -> AbstractContextManager[Any]:
    """``transaction.atomic(using=using)`` for a block that writes.

    On SQLite, when the block opens the transaction (it is not inside the caller's), the
    transaction begins ``IMMEDIATE`` whatever the database's ``transaction_mode``; inside
    the caller's transaction it is a savepoint, as with ``atomic``, and the caller's
    transaction decides when the lock is taken. Elsewhere it is ``atomic`` itself.
    """
    connection = connections[using]
    if connection.vendor != "sqlite" or connection.in_atomic_block:
        return transaction.atomic(using=using)
    return _BeginImmediate(connection, using)


class _BeginImmediate:
    """``atomic`` whose ``BEGIN`` is ``BEGIN IMMEDIATE``: Django's SQLite wrapper begins
    with its ``transaction_mode`` (read from ``OPTIONS`` when it connects), which is set
    for the moment the block opens the transaction."""

    def __init__(self, connection: BaseDatabaseWrapper, using: str) -> None:
        self._connection = connection
        self._atomic = transaction.atomic(using=using)

    def __enter__(self) -> Any:
        connection = self._connection
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
        self._atomic.__exit__(exc_type, exc_value, traceback)

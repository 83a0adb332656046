"""The interface every event-store backend implements.

A backend is what differs between database vendors: the append statement and its ordering
stamp, which rows a reader may see, how values come back from the driver, how one runner per
projection is enforced, and whether followers can be woken. The store, the runner and the
status code talk to it through this interface only; the SQL lives in the backend's module
(``backends/postgresql/``, ``backends/sqlite.py``).
"""

from __future__ import annotations

import os
import socket
from abc import ABC, abstractmethod
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, Self
from uuid import UUID, uuid4

from django_eventsource.text import printable

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper
    from django.db.backends.utils import CursorWrapper

__all__ = [
    "AppendRow",
    "Backend",
    "Listener",
    "ProjectionLock",
    "runner_alive",
    "runner_identity",
]

#: One event to append: (ordinal, event_id, event_type, schema_version, aggregate_type,
#: payload JSON, metadata JSON, correlation_id, causation_id, occurred_at).
AppendRow = tuple[int, UUID, str, int, str, str, str, UUID | None, UUID | None, datetime]


def runner_identity() -> str:
    """How a runner names itself to others: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def runner_alive(owner: str, *, since: datetime | None = None) -> bool | None:
    """Whether the runner ``owner`` names (``host:pid#tag``, see `runner_identity`) is
    alive: True or False for a process of this host, None for another host's (only its
    heartbeats can tell).

    A zombie (a killed process its parent has not reaped) is gone, and so is a process
    that started after ``since`` (the runner's last beat): its pid was reused (Linux; where
    ``/proc`` cannot tell, a pid that exists counts as alive).
    """
    host, _, rest = owner.rpartition(":")
    pid = rest.split("#", 1)[0]
    if host != socket.gethostname() or not pid.isdigit():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists, under another user
        pass
    seen = _process_state(int(pid))
    if seen is None:
        return True
    state, started = seen
    if state in ("Z", "X"):  # a zombie, or dead
        return False
    return since is None or started <= since.timestamp() + 1.0  # /proc/stat's btime: 1 s


def _process_state(pid: int) -> tuple[str, float] | None:
    """Process ``pid``'s state letter (``Z``: a zombie) and when it started (epoch
    seconds), from ``/proc``; None when it cannot tell."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        with open("/proc/stat") as system:
            boot = next(float(line.split()[1]) for line in system if line.startswith("btime"))
        ticks = os.sysconf("SC_CLK_TCK")
        return fields[0], boot + int(fields[19]) / ticks
    except (OSError, ValueError, IndexError, StopIteration):
        return None


class ProjectionLock(ABC):
    """The lock that keeps one active runner per projection and tenant; ``acquire()`` never
    blocks. Each backend supplies one (`Backend.projection_lock`)."""

    #: Whether holding the lock already means the state row names `owner` (a lease is
    #: that row); otherwise the runner claims the row after acquiring the lock.
    owns_state_row: ClassVar[bool] = False

    def __init__(self, name: str, tenant_id: str | None, using: str, *, ttl: float = 30.0) -> None:
        self.name = name
        self.tenant_id = tenant_id
        self.using = using
        self.ttl = ttl
        # Unique per lock object, so two runners in one process never share a lease.
        self.owner = f"{runner_identity()}#{uuid4().hex[:6]}"
        self.held = False

    @abstractmethod
    def acquire(self) -> bool:
        """Take the lock if it is free (or already ours); never waits."""

    def renew(self) -> bool:
        """Keep holding the lock; False if it was lost (then stop working)."""
        return self.held

    @abstractmethod
    def release(self) -> None:
        """Let another runner take over."""

    @abstractmethod
    def holder(self) -> str:
        """Who holds the lock now ("" if nobody)."""

    # Log records of the lock's life, for the backends' loggers: the human text escaped,
    # the fields in ``extra`` raw.

    def log_fields(self) -> dict[str, Any]:
        return {"projection": self.name, "tenant": self.tenant_id, "owner": self.owner}

    def describe(self) -> str:
        tenant = f" (tenant {printable(self.tenant_id)})" if self.tenant_id else ""
        return f"projection {printable(self.name)}{tenant}"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Listener(Protocol):
    """A dedicated connection that wakes followers when events may have arrived (a hint)."""

    @property
    def closed(self) -> bool:
        """Whether the connection is gone (the follower then polls and reconnects)."""

    def wait(self, timeout: float) -> None:
        """Return after a notification or ``timeout`` seconds; close on a connection error."""

    def close(self) -> None: ...


#: The unique constraint on (tenant_id, aggregate_id, aggregate_version).
VERSION_CONSTRAINT = "django_eventsource_event_stream_version"


class Backend(ABC):
    """What one database vendor supplies to the store, the runner and the status code."""

    vendor: ClassVar[str]
    #: Whether the driver returns UUID and aware datetime columns as such (no conversion).
    native_types: ClassVar[bool] = False
    #: Whether rows carry a causal stamp that orders them (PostgreSQL). Without one, the
    #: position is commit order, and readers order and resume by it alone (index-backed).
    stamped: ClassVar[bool] = True

    @abstractmethod
    def append_statement(
        self,
        table: str,
        *,
        tenant_id: str,
        aggregate_id: UUID,
        recorded_at: datetime,
        rows: Sequence[AppendRow],
        expected_version: int,
        guard: bool = False,
    ) -> tuple[str, list[Any]]:
        """One statement that checks the stream's version (``expected_version``), assigns
        versions, computes the stamp and returns ``(position, version)`` per event (no row
        when the version check fails).

        With ``guard`` (the append runs inside the caller's transaction, with no savepoint
        of its own) a unique violation must leave that transaction usable: the statement
        either returns one row ``(None, None, constraint name)`` instead of raising, or
        raises an ``IntegrityError`` that rolls back the statement alone (SQLite)."""

    def is_version_conflict(self, exc: Exception) -> bool:
        """Whether an append's ``IntegrityError`` is the stream-version unique constraint
        (another writer took the version), rather than anything else."""
        return VERSION_CONSTRAINT in str(exc)

    @abstractmethod
    def horizon_sql(self) -> str | None:
        """SQL for the exclusive upper bound on visible stamps, or None when all are visible."""

    def momentarily_held(
        self, cursor: CursorWrapper, where: Sequence[str], params: Sequence[Any]
    ) -> bool:
        """Whether a short read should be made again: committed events match ``where``
        (the read's conditions, after its last event) and nothing holds the horizon for
        real. Only meaningful with a horizon; where every committed event is visible at
        once, False."""
        return False

    @abstractmethod
    def projection_lock(
        self, name: str, tenant_id: str | None, using: str, *, ttl: float
    ) -> ProjectionLock:
        """The lock that keeps one active runner for this projection and tenant."""

    @abstractmethod
    def lock_new_rows(self, connection: BaseDatabaseWrapper, keys: Sequence[int]) -> None:
        """Take the creation locks of new read-model rows (32-bit ``keys``) until the
        caller's transaction ends, so that concurrent appends cannot both insert one row."""

    @abstractmethod
    def lock_out_appends(
        self, connection: BaseDatabaseWrapper, *, exclusive: bool = False
    ) -> None:
        """Make appends wait until the caller's transaction ends, and wait for the appending
        transactions already open to end (a rebuild's reset and hand-over of an inline
        projection; ``exclusive``: a shadow swap's, in the stronger mode it takes).

        It must be the caller's first statement: at ``REPEATABLE READ`` or ``SERIALIZABLE``
        the transaction's snapshot is then taken after the appends it waited for ended, so it
        reads their events. Appends whose transaction reads under a snapshot older than the
        lock-out's commit must not apply inline projections under it: see ``inline_probe``.
        """

    def inline_probe(
        self, names: Sequence[str], tenants: Sequence[str]
    ) -> tuple[str, list[Any], str] | None:
        """What an append with inline projections reads (``projections.run_inline``): a
        statement that returns the transaction's isolation level and which of ``names`` a
        rebuild replays for one of ``tenants`` (its parameters), and one that fails with a
        serialization failure when the transaction reads under a snapshot older than the
        last lock-out (run only when the level is not READ COMMITTED). None where the ORM's
        query does: writers are serialized, no snapshot predates a lock-out."""
        return None

    def listener(self, using: str) -> Listener | None:
        """A connection that wakes followers on new events; None where they only poll."""
        return None

    @abstractmethod
    def time_bucket_sql(self, column: str) -> str:
        """SQL for the slice a timestamp column falls in: ``floor((epoch seconds - %s) * %s)``
        as an integer (the parameters: the first slice's start, in epoch seconds, and slices
        per second). Charts group by it, so the database reduces the samples."""

    def read_cursor(self, connection: BaseDatabaseWrapper) -> CursorWrapper:
        """A cursor for reading events (Django's, wrapped for logging and error mapping)."""
        return connection.cursor()

    def adapt_uuid(self, value: UUID | None) -> Any:
        """A UUID as the driver takes it in raw SQL."""
        return value

    def to_uuid(self, value: Any) -> UUID:
        """A (non-null) UUID column as read by the driver, as a UUID."""
        return value if isinstance(value, UUID) else UUID(value)

    def to_datetime(self, value: Any) -> datetime:
        """A datetime column as read by the driver, as an aware datetime."""
        return value  # type: ignore[no-any-return]

"""Constants shared by every layer. A leaf module: it imports nothing from the package."""

from __future__ import annotations

from typing import Final

__all__ = ["EVENT_TABLE", "HELD_REREADS", "NO_TENANT", "ExpectedVersion"]

#: The event table (the ``Event`` model's ``db_table``), which raw SQL reads and writes.
EVENT_TABLE: Final = "django_eventsource_event"

#: How "no tenant" is stored: ``tenant_id`` columns are never NULL, so that the unique
#: constraints that include them hold for tenant-less rows too.
NO_TENANT: Final = ""

#: How many times a read (or a count of what is held back) is done again when it stopped at
#: a momentary hold of the horizon (a transaction that ended during the read; PostgreSQL).
HELD_REREADS: Final = 3


class ExpectedVersion:
    """Special values for ``append(..., expected_version=...)``.

    A non-negative int means "the stream is exactly at this version" (0: it does not exist yet).
    """

    #: Append whatever the stream's version (still atomic, still gap-free per stream).
    ANY: Final = -1
    #: The stream must not exist yet (the same as ``0``).
    NO_STREAM: Final = 0
    #: The stream must already exist (at any version).
    STREAM_EXISTS: Final = -2

"""Detecting and repairing event stamps that sit above the server (a logical restore).

The code lives with the rest of PostgreSQL's ordering machinery, in
``django_eventsource.backends.postgresql.stamps``; this module keeps the documented import
path (``django_eventsource.maintenance.diagnose_stamps``) working.
"""

from __future__ import annotations

from django_eventsource.backends.postgresql.stamps import (
    RebaseResult,
    StampDiagnosis,
    diagnose_stamps,
    rebase_stamps,
)

__all__ = ["RebaseResult", "StampDiagnosis", "diagnose_stamps", "rebase_stamps"]

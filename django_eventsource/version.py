"""The version of django-eventsource (read by hatch at build time)."""

from __future__ import annotations

__version__ = "0.1.0"

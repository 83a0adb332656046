"""Benchmarks of django-eventsource (not part of the installed package); see README.md."""

from __future__ import annotations

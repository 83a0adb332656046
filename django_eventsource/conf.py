"""The ``EVENTSOURCE`` settings namespace.

All settings live in one dict in the project's settings module::

    EVENTSOURCE = {"BATCH_SIZE": 1000, "ERROR_POLICY": "dead_letter"}

They are read lazily (never at import time), merged over the defaults below, cached, and
re-read when a test overrides ``EVENTSOURCE``. Bad keys or values are reported by the system
checks (``django_eventsource.E001`` / ``E002``), not by an exception at first use.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, fields
from typing import Any, cast

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

__all__ = ["DEFAULTS", "ERROR_POLICIES", "EventSourceSettings", "get_settings", "validate"]

SETTING_NAME = "EVENTSOURCE"
ERROR_POLICIES = ("pause", "dead_letter")


@dataclass(frozen=True)
class EventSourceSettings:
    """The effective settings. Attribute names are the lower-cased setting keys."""

    #: The database alias that holds the event store's tables.
    database_alias: str = "default"
    #: Events read and applied per transaction by the projection runner.
    batch_size: int = 500
    #: Seconds between polls in follow mode when no notification arrives.
    poll_interval: float = 1.0
    #: PostgreSQL NOTIFY channel used to wake runners when events are appended.
    notify_channel: str = "django_eventsource"
    #: What a runner does with an event whose handler keeps failing: "pause" or "dead_letter".
    error_policy: str = "pause"
    #: Retries of a failing event (alone, with backoff) before the error policy applies.
    max_retries: int = 3
    #: Seconds before the first retry; doubled for each further one.
    retry_backoff: float = 0.2
    #: Seconds between runner heartbeats.
    heartbeat_interval: float = 5.0
    #: Module name autodiscovered in every installed app for projections (None: off).
    autodiscover_module: str | None = "projections"
    #: Extra dotted paths of modules to import for projections and events.
    projections: tuple[str, ...] = field(default_factory=tuple)
    #: Seconds between lag samples a runner records for the admin's lag chart (0: never).
    lag_sample_interval: float = 60.0
    #: Days of lag samples to keep.
    lag_history_days: int = 7


#: Every setting key with its default value.
DEFAULTS: dict[str, Any] = {
    f.name.upper(): getattr(EventSourceSettings(), f.name) for f in fields(EventSourceSettings)
}


def _raw() -> dict[str, Any]:
    value = getattr(settings, SETTING_NAME, {})
    return value if isinstance(value, dict) else {}


@functools.cache
def get_settings() -> EventSourceSettings:
    """The effective settings: ``settings.EVENTSOURCE`` over :data:`DEFAULTS`, cached."""
    # Only the exact (upper-case) keys: anything else is reported by check E001, not applied.
    values = {key.lower(): value for key, value in _raw().items() if key in DEFAULTS}
    if "projections" in values:
        values["projections"] = tuple(values["projections"] or ())
    return EventSourceSettings(**values)


@receiver(setting_changed)
def _reset_settings(*, setting: str, **kwargs: Any) -> None:
    if setting == SETTING_NAME:
        get_settings.cache_clear()


_TYPES: dict[str, tuple[type, ...]] = {
    "DATABASE_ALIAS": (str,),
    "BATCH_SIZE": (int,),
    "POLL_INTERVAL": (int, float),
    "NOTIFY_CHANNEL": (str,),
    "ERROR_POLICY": (str,),
    "MAX_RETRIES": (int,),
    "RETRY_BACKOFF": (int, float),
    "HEARTBEAT_INTERVAL": (int, float),
    "AUTODISCOVER_MODULE": (str, type(None)),
    "PROJECTIONS": (list, tuple),
    "LAG_SAMPLE_INTERVAL": (int, float),
    "LAG_HISTORY_DAYS": (int,),
}


def validate() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Problems in ``settings.EVENTSOURCE``: (unknown keys, bad values), each (key, message)."""
    raw = getattr(settings, SETTING_NAME, {})
    if not isinstance(raw, dict):
        return [], [(SETTING_NAME, f"must be a dict, not {type(raw).__name__}")]
    unknown = [(key, f"unknown setting {key!r}") for key in raw if key not in DEFAULTS]
    bad: list[tuple[str, str]] = []
    for key, value in raw.items():
        types = _TYPES.get(key)
        if types is None:
            continue
        if isinstance(value, bool) or not isinstance(value, types):
            names = " or ".join(t.__name__ for t in types)
            bad.append((key, f"must be {names}, not {type(value).__name__}"))
            continue
        value = cast(Any, value)  # isinstance() with a tuple of types narrows to object
        if key in {"BATCH_SIZE", "POLL_INTERVAL", "HEARTBEAT_INTERVAL", "LAG_HISTORY_DAYS"} and (
            value <= 0
        ):
            bad.append((key, f"must be positive, not {value!r}"))
        elif key in {"MAX_RETRIES", "RETRY_BACKOFF", "LAG_SAMPLE_INTERVAL"} and value < 0:
            bad.append((key, f"must not be negative, not {value!r}"))
        elif key == "ERROR_POLICY" and value not in ERROR_POLICIES:
            bad.append((key, f"must be one of {', '.join(ERROR_POLICIES)}, not {value!r}"))
        elif key == "NOTIFY_CHANNEL" and not value.isidentifier():
            bad.append((key, f"must be a plain identifier, not {value!r}"))
    return unknown, bad

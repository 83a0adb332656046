"""The ``EVENTSOURCE`` settings namespace.

All settings live in one dict in the project's settings module::

    EVENTSOURCE = {"BATCH_SIZE": 1000, "ERROR_POLICY": "dead_letter"}

They are read lazily (never at import time), merged over the defaults below, cached, and
re-read when a test overrides ``EVENTSOURCE``. Bad keys or values are reported by the system
checks (``django_eventsource.E001`` / ``E002``), not by an exception at first use.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field, fields
from typing import Any, cast

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

__all__ = [
    "DEFAULTS",
    "ERROR_POLICIES",
    "MAX_BATCH_SIZE",
    "EventSourceSettings",
    "check_batch_size",
    "check_seconds",
    "get_settings",
    "validate",
]

SETTING_NAME = "EVENTSOURCE"
ERROR_POLICIES = ("pause", "dead_letter")
#: The largest batch a runner reads and applies in one transaction (a batch is held in
#: memory; anything larger is a typo, and past 2**63 it would fail inside the database).
MAX_BATCH_SIZE = 1_000_000


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
    #: Seconds between runner heartbeats. A runner silent for three intervals is reported
    #: stale, and its lease (SQLite) expires.
    heartbeat_interval: float = 5.0
    #: Module name autodiscovered in every installed app for projections (None: off).
    autodiscover_module: str | None = "projections"
    #: Extra dotted paths of modules to import for projections and events.
    projections: tuple[str, ...] = field(default_factory=tuple)
    #: Seconds between lag samples a runner records for the admin's lag chart (0: never).
    lag_sample_interval: float = 60.0
    #: Days of lag samples to keep.
    lag_history_days: int = 7
    #: ``projection_status --check`` fails when events have been held back by PostgreSQL's
    #: horizon (an appending transaction that has not committed) for longer than this.
    max_held_seconds: float = 60.0
    #: ``projection_status --check``, the health view and the ``eventsource_check_ok`` metric
    #: fail when a projection lags more than this many events (None: lag is not checked).
    max_lag: int | None = None
    #: How many distinct tenants the metrics label by name (the others are counted together
    #: as ``tenant="(other)"``), so that per-tenant series stay bounded.
    metrics_max_tenants: int = 20

    @property
    def heartbeat_timeout(self) -> float:
        """Seconds without a heartbeat after which a runner counts as gone: three heartbeat
        intervals, at least one second. A `running` projection is then reported `stale`,
        and a runner's lease (SQLite) expires: one rule for replays and rebuilds."""
        return max(3 * self.heartbeat_interval, 1.0)


#: Every setting key with its default value.
DEFAULTS: dict[str, Any] = {
    f.name.upper(): getattr(EventSourceSettings(), f.name) for f in fields(EventSourceSettings)
}


def _raw() -> dict[str, Any]:
    value = getattr(settings, SETTING_NAME, {})
    return value if isinstance(value, dict) else {}


@functools.cache
def get_settings() -> EventSourceSettings:
    """The effective settings: ``settings.EVENTSOURCE`` over `DEFAULTS`, cached."""
    # Only the exact (upper-case) keys: anything else is reported by check E001, not applied.
    values = {key.lower(): value for key, value in _raw().items() if key in DEFAULTS}
    if "projections" in values:
        values["projections"] = tuple(values["projections"] or ())
    return EventSourceSettings(**values)


def database_alias(using: str | None = None) -> str:
    """``using``, or the configured ``DATABASE_ALIAS`` when it is None."""
    return get_settings().database_alias if using is None else using


def check_batch_size(value: object, name: str = "batch_size") -> int:
    """``value`` if it is an int from 1 to `MAX_BATCH_SIZE`; ValueError/TypeError naming
    ``name`` otherwise."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not 1 <= value <= MAX_BATCH_SIZE:
        raise ValueError(f"{name} must be from 1 to {MAX_BATCH_SIZE:,}, not {value}")
    return value


def check_seconds(value: object, name: str, *, zero: bool = False) -> float:
    """``value`` if it is a finite number of seconds above 0 (or 0 with ``zero``);
    ValueError/TypeError naming ``name`` otherwise. NaN and infinity are refused: a NaN
    wait returns at once (a busy loop), an infinite one never."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        rule = "finite and >= 0" if zero else "finite and > 0"
        raise ValueError(f"{name} must be a number of seconds, {rule}, not {value!r}")
    return float(value)


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
    "MAX_HELD_SECONDS": (int, float),
    "MAX_LAG": (int, type(None)),
    "METRICS_MAX_TENANTS": (int,),
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
        if key == "BATCH_SIZE" and value > MAX_BATCH_SIZE:
            bad.append((key, f"must be at most {MAX_BATCH_SIZE:,}, not {value!r}"))
        elif key in {"BATCH_SIZE", "POLL_INTERVAL", "HEARTBEAT_INTERVAL", "LAG_HISTORY_DAYS"} and (
            value <= 0
        ):
            bad.append((key, f"must be positive, not {value!r}"))
        elif (
            key in {"MAX_RETRIES", "RETRY_BACKOFF", "LAG_SAMPLE_INTERVAL", "METRICS_MAX_TENANTS"}
            and value < 0
        ):
            bad.append((key, f"must not be negative, not {value!r}"))
        elif key == "MAX_LAG" and value is not None and value < 0:
            bad.append((key, f"must be None or an int >= 0, not {value!r}"))
        elif key == "MAX_HELD_SECONDS" and not 0 <= value < float("inf"):
            bad.append((key, f"must be a finite number of seconds >= 0, not {value!r}"))
        elif key == "ERROR_POLICY" and value not in ERROR_POLICIES:
            bad.append((key, f"must be one of {', '.join(ERROR_POLICIES)}, not {value!r}"))
        elif key == "NOTIFY_CHANNEL" and not value.isidentifier():
            bad.append((key, f"must be a plain identifier, not {value!r}"))
        elif isinstance(value, float) and not math.isfinite(value):
            bad.append((key, f"must be a finite number, not {value!r}"))
    return unknown, bad

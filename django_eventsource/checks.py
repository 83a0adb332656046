"""System checks. Every id is stable and documented in ``docs/checks.md``.

Imported by ``AppConfig.ready()`` (models are loaded by then).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.db import DatabaseError, connections

from django_eventsource.backends import SUPPORTED_VENDORS
from django_eventsource.backends.postgresql.stamps import diagnose_stamps
from django_eventsource.conf import DEFAULTS, SETTING_NAME, get_settings, validate
from django_eventsource.constants import EVENT_TABLE
from django_eventsource.events import event_registry
from django_eventsource.models import CHECKPOINT_FIELDS
from django_eventsource.projections import projection_registry

ID = "django_eventsource"


@register(Tags.compatibility)
def check_settings(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """E001: unknown keys; E002: bad values; E003: an unknown database alias."""
    messages: list[CheckMessage] = []
    unknown, bad = validate()
    for key, message in unknown:
        close = difflib.get_close_matches(str(key).upper(), DEFAULTS, n=1)
        suggestion = (
            f"Did you mean {close[0]!r}?" if close else f"Valid keys: {', '.join(DEFAULTS)}."
        )
        messages.append(Error(f"{SETTING_NAME}: {message}.", hint=suggestion, id=f"{ID}.E001"))
    for key, message in bad:
        default = DEFAULTS.get(key)
        hint = f"The default is {default!r}." if key in DEFAULTS else None
        where = SETTING_NAME if key == SETTING_NAME else f"{SETTING_NAME}[{key!r}]"
        messages.append(Error(f"{where} {message}.", hint=hint, id=f"{ID}.E002"))
    if not bad:
        alias = get_settings().database_alias
        if alias not in settings.DATABASES:
            messages.append(
                Error(
                    f"{SETTING_NAME}['DATABASE_ALIAS'] is {alias!r}, which is not in DATABASES.",
                    hint=f"Use one of: {', '.join(settings.DATABASES)}.",
                    id=f"{ID}.E003",
                )
            )
    return messages


@register(Tags.compatibility)
def check_environment(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """W001: an unsupported database backend; W003: USE_TZ is off."""
    messages: list[CheckMessage] = []
    alias = get_settings().database_alias
    if isinstance(alias, str) and alias in settings.DATABASES:  # a bad type is E002
        vendor = connections[alias].vendor
        if vendor not in SUPPORTED_VENDORS:
            messages.append(
                Warning(
                    f"The event store's database {alias!r} uses the unsupported "
                    f"{vendor!r} backend.",
                    hint="Use PostgreSQL (production) or SQLite (development).",
                    id=f"{ID}.W001",
                )
            )
    if not settings.USE_TZ:
        messages.append(
            Warning(
                "USE_TZ is False: event timestamps will be stored as naive local times.",
                hint="Set USE_TZ = True (Django's default).",
                id=f"{ID}.W003",
            )
        )
    return messages


#: The SQLite ``transaction_mode`` values that take the write lock at ``BEGIN``.
_WRITE_LOCK_AT_BEGIN = ("IMMEDIATE", "EXCLUSIVE")


@register(Tags.compatibility)
def check_sqlite_transactions(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """W004: a SQLite database of the event store or of a projection whose transactions
    begin DEFERRED (no ``OPTIONS["transaction_mode"] = "IMMEDIATE"``)."""
    aliases = [get_settings().database_alias]
    aliases += [cls.using for cls in projection_registry.all() if cls.using]
    messages: list[CheckMessage] = []
    # Each alias once, in order; a bad type (E002) or an unknown alias (E003) is not ours.
    for alias in dict.fromkeys(a for a in aliases if isinstance(a, str)):
        if alias not in settings.DATABASES:
            continue
        connection = connections[alias]
        if connection.vendor != "sqlite":
            continue
        mode = (connection.settings_dict.get("OPTIONS") or {}).get("transaction_mode")
        if isinstance(mode, str) and mode.upper() in _WRITE_LOCK_AT_BEGIN:
            continue
        messages.append(
            Warning(
                f"SQLite database {alias!r} begins its transactions DEFERRED.",
                hint=f"Set DATABASES[{alias!r}]['OPTIONS'] to include "
                "{'transaction_mode': 'IMMEDIATE', 'timeout': 20}. django-eventsource "
                "begins its own transactions IMMEDIATE, but one of yours that reads before "
                "it appends or writes cannot wait for the write lock: while another "
                "connection writes, SQLite fails it at once with 'database is locked', "
                "whatever the timeout.",
                id=f"{ID}.W004",
            )
        )
    return messages


@register(Tags.models)
def check_projections(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """E004: duplicate names; E005: unknown event types; E006: read models without
    checkpoint fields; E007: an inline projection in another database than the events;
    E009: two projections writing one read model."""
    messages: list[CheckMessage] = []
    writers: dict[Any, type[Any]] = {}
    for name, first, second in projection_registry.duplicates:
        messages.append(
            Error(
                f"Two projections are named {name!r}: {_path(first)} and {_path(second)}.",
                hint="Give each projection a unique name.",
                obj=second,
                id=f"{ID}.E004",
            )
        )
    for cls in projection_registry.all():
        for event_type in sorted(cls.handled_types()):
            if event_type not in event_registry:
                messages.append(
                    Error(
                        f"Projection {cls.name!r} handles {event_type!r}, which is not a "
                        "registered event type.",
                        hint="Decorate the event class with @register_event, or fix the name.",
                        obj=cls,
                        id=f"{ID}.E005",
                    )
                )
        for model in dict.fromkeys((*cls.models, *cls.row_keys)):  # each model once
            other = writers.setdefault(model, cls)
            if other is not cls:
                # Rows embed ONE checkpoint: the second projection would find every row
                # already past its events and silently apply nothing.
                messages.append(
                    Error(
                        f"Projections {other.name!r} and {cls.name!r} both write "
                        f"{model._meta.label}.",
                        hint="A row embeds one checkpoint, so the second projection would "
                        "skip every event the first already passed. Give each projection "
                        "its own read model (or merge them into one projection).",
                        obj=model,
                        id=f"{ID}.E009",
                    )
                )
            names = {f.name for f in model._meta.get_fields()}
            missing = [f for f in CHECKPOINT_FIELDS if f not in names]
            if missing:
                messages.append(
                    Error(
                        f"Read model {model._meta.label} of projection {cls.name!r} lacks "
                        f"the checkpoint fields {', '.join(missing)}.",
                        hint="Make it inherit django_eventsource.models.CheckpointedModel.",
                        obj=model,
                        id=f"{ID}.E006",
                    )
                )
        if cls.inline and cls.using and cls.using != get_settings().database_alias:
            messages.append(
                Error(
                    f"Inline projection {cls.name!r} uses database {cls.using!r}, not the "
                    f"event store's {get_settings().database_alias!r}.",
                    hint="An inline projection shares the append's transaction: drop "
                    "'using', or make the projection asynchronous (inline = False).",
                    obj=cls,
                    id=f"{ID}.E007",
                )
            )
    return messages


@register(Tags.database)
def check_event_stamps(
    app_configs: Sequence[AppConfig] | None = None,
    databases: Sequence[str] | None = None,
    **kwargs: Any,
) -> list[CheckMessage]:
    """E008 (PostgreSQL): event stamps above the server's transaction counter (a restore).

    Runs only with ``check --database`` (and before ``migrate``), and only queries a reachable
    database whose event table exists.
    """
    alias = get_settings().database_alias
    if not databases or alias not in databases or alias not in settings.DATABASES:
        return []
    connection = connections[alias]
    if connection.vendor != "postgresql":
        return []
    try:
        with connection.cursor() as cursor:
            if EVENT_TABLE not in connection.introspection.table_names(cursor):
                return []  # not migrated yet
        diagnosis = diagnose_stamps(alias)
    except DatabaseError:
        return []  # unreachable: other checks and commands will say so
    if diagnosis is None or not diagnosis.needs_rebase:
        return []
    return [
        Error(
            f"Event stamps in {alias!r} are above the server's transaction counter.",
            hint=f"Max stamp {diagnosis.max_stamp} >= next transaction id {diagnosis.next_xid}: "
            "new events stay invisible to projections. Restored from a logical dump? Run "
            "manage.py rebase_event_stamps.",
            id=f"{ID}.E008",
        )
    ]


def _path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"

"""Whether an inline projection holds every event: the ``unbuilt`` status.

Appends apply an inline projection to the events they append, nothing else. One that is
added to a project whose store already holds events has never seen those until
``rebuild_projections <name>`` replays them; ``projection_status`` used to report it
``inline`` with lag 0 all the same. An inline projection is *built* when:

* its state row (every tenant's, ``tenant_id = ""``) has a checkpoint: a rebuild or a
  catch-up replayed the store into it;
* or a [`BuiltProjection`][django_eventsource.models.BuiltProjection] row names it:
  ``migrate`` found it registered while the store held no event (the ``post_migrate``
  handler below, which a test database's flush runs too), a shadow rebuild swapped it in,
  or it was registered when migration 0013 ran (an upgrade cannot tell which existing
  inline projections were rebuilt: it trusts them, see the status how-to).

Otherwise, once the store holds events, the status reports it ``unbuilt``, with every event
of the store as its lag, and the checks fail until it is rebuilt.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db import connections

from django_eventsource.conf import database_alias
from django_eventsource.projections import projection_registry

# Models are imported inside the functions: the runner and the status import this module.
__all__ = ["built_inline", "mark_built", "mark_inline_built_on_empty_store"]


def built_inline(names: Iterable[str], using: str) -> set[str]:
    """Of ``names``, the inline projections a `BuiltProjection` row marks as built, or whose
    every-tenant state row has a checkpoint (one query each)."""
    from django_eventsource.constants import NO_TENANT
    from django_eventsource.models import BuiltProjection, ProjectionState

    wanted = sorted(set(names))
    if not wanted:
        return set()
    marked = BuiltProjection.objects.using(using).filter(name__in=wanted)
    checkpointed = ProjectionState.objects.using(using).filter(
        name__in=wanted, tenant_id=NO_TENANT, position__isnull=False
    )
    return {*marked.values_list("name", flat=True), *checkpointed.values_list("name", flat=True)}


def mark_built(name: str, using: str, *, reason: str, position: int = 0) -> None:
    """Record that inline projection ``name`` holds every event (kept if already marked)."""
    from django_eventsource.models import BuiltProjection

    BuiltProjection.objects.using(using).get_or_create(
        name=name, defaults={"reason": reason, "position": position}
    )


def mark_inline_built_on_empty_store(sender: Any, using: str = "default", **kwargs: Any) -> None:
    """``post_migrate``: mark the registered inline projections built while the store of
    database ``using`` holds no event (a new project, a test database): the appends then
    apply them to every event there will be. Nothing happens on another database than the
    events', where the tables do not exist, or while the app's migrations are reversed."""
    from django_eventsource.models import BuiltProjection, Event

    if using != database_alias():
        return
    for migration, backwards in kwargs.get("plan") or ():
        if backwards and migration.app_label == "django_eventsource":
            return
    names = [n for n in projection_registry.names() if projection_registry.get(n).inline]
    if not names:
        return
    tables = set(connections[using].introspection.table_names())
    if not {Event._meta.db_table, BuiltProjection._meta.db_table} <= tables:
        return
    if Event.objects.using(using).exists():
        return
    for name in names:
        mark_built(name, using, reason="empty store")

"""A projection lock for backends without advisory locks (SQLite): a lease on the
projection's ``ProjectionState`` row (owner + expiry), renewed by the heartbeat.

A dead runner's lease expires after ``3 * HEARTBEAT_INTERVAL`` seconds (at least one), and a
standby takes over then; a lease whose process is gone from this host is taken over at once.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import TYPE_CHECKING

from django.db.models import Q
from django.utils import timezone

from django_eventsource.backends.base import ProjectionLock, runner_alive
from django_eventsource.constants import NO_TENANT
from django_eventsource.transactions import write_transaction

if TYPE_CHECKING:
    from django.db.models import QuerySet

    from django_eventsource.models import ProjectionState

__all__ = ["LeaseLock"]

logger = logging.getLogger(__name__)


def _process_gone(owner: str) -> bool:
    """Whether ``owner`` (``host:pid#tag``, see `runner_identity`) names a process of this
    host that no longer exists (or is a zombie). Another host's runner can only be waited
    out."""
    return runner_alive(owner) is False


class LeaseLock(ProjectionLock):
    """A lease on the ``ProjectionState`` row, for backends without advisory locks."""

    owns_state_row = True

    def _states(self) -> QuerySet[ProjectionState]:
        # Models need the app registry, which is not ready when backends are imported.
        from django_eventsource.models import ProjectionState

        return ProjectionState.objects.using(self.using)

    def acquire(self) -> bool:
        now = timezone.now()
        with write_transaction(self.using):
            states = self._states()
            mine = states.filter(name=self.name, tenant_id=self.tenant_id or NO_TENANT)
            current = mine.values_list("owner", flat=True).first()
            if current is None:
                states.create(name=self.name, tenant_id=self.tenant_id or NO_TENANT)
            free = Q(owner="") | Q(owner=self.owner) | Q(lease_until__lt=now)
            free |= Q(lease_until=None)
            if current and _process_gone(current):
                free |= Q(owner=current)  # its process died on this host: no need to wait
            taken = mine.filter(free).update(
                owner=self.owner, lease_until=now + timedelta(seconds=self.ttl)
            )
        if taken and not self.held:
            logger.info(
                "Took the lease of %s for %gs", self.describe(), self.ttl, extra=self.log_fields()
            )
        self.held = bool(taken)
        return self.held

    def renew(self) -> bool:
        if not self.held:
            return False
        now = timezone.now()
        renewed = (
            self._states()
            .filter(name=self.name, tenant_id=self.tenant_id or NO_TENANT, owner=self.owner)
            .update(lease_until=now + timedelta(seconds=self.ttl))
        )
        if not renewed:
            logger.warning(
                "Lost the lease of %s: it expired and another runner took it",
                self.describe(),
                extra=self.log_fields(),
            )
        self.held = bool(renewed)
        return self.held

    def release(self) -> None:
        if self.held:
            self._states().filter(
                name=self.name, tenant_id=self.tenant_id or NO_TENANT, owner=self.owner
            ).update(owner="", lease_until=None)
            logger.debug("Released the lease of %s", self.describe(), extra=self.log_fields())
        self.held = False

    def holder(self) -> str:
        row = (
            self._states()
            .filter(
                name=self.name,
                tenant_id=self.tenant_id or NO_TENANT,
                lease_until__gte=timezone.now(),
            )
            .exclude(owner="")
            .values_list("owner", "lease_until")
            .first()
        )
        return f"{row[0]} (lease until {row[1]:%H:%M:%S})" if row else ""

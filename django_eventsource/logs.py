"""What the package's log records share: the structured fields of an event, and the escaped
human text of a tenant.

Every module logs through its own logger (``logging.getLogger(__name__)``, so the names are
``django_eventsource.<module>``), except the runner's package, whose modules share one,
``django_eventsource.runner`` (`django_eventsource.runner.progress`); the "Monitoring"
how-to lists them and the fields each record carries in ``extra``. Human text goes through
[`printable`][django_eventsource.text.printable]; fields in ``extra`` stay raw.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django_eventsource.text import printable

if TYPE_CHECKING:
    from django_eventsource.stored import StoredEvent

__all__ = ["event_fields", "tenant_text"]


def event_fields(event: StoredEvent) -> dict[str, Any]:
    """The fields that name an event in a log record's ``extra``."""
    return {
        "event_position": event.position,
        "event_type": event.event_type,
        "event_id": str(event.event_id),
        "stream": str(event.aggregate_id),
        "stream_version": event.aggregate_version,
        "event_tenant": event.tenant_id,
    }


def tenant_text(tenant_id: str | None) -> str:
    """`` (tenant <id>)``, escaped, for a log message; empty without a tenant."""
    return f" (tenant {printable(tenant_id)})" if tenant_id else ""

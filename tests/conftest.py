"""Fixtures shared by the whole suite."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection

from django_eventsource import BaseEventStore, EventStore, InMemoryEventStore

# The fixtures we ship to users (event_store, memory_event_store, run_projections).
pytest_plugins = ["django_eventsource.testing"]


@pytest.fixture
def vendor() -> str:
    return connection.vendor


@pytest.fixture(params=["memory", "database"])
def any_store(request: pytest.FixtureRequest) -> BaseEventStore:
    """Each contract test runs against both stores (the module needs a django_db mark)."""
    return InMemoryEventStore() if request.param == "memory" else EventStore()


@pytest.fixture
def store(event_store: EventStore) -> EventStore:
    return event_store


@pytest.fixture
def child_db_url(transactional_db: Any) -> str:
    """A DATABASE_URL for subprocesses that points at the test database."""
    from tests.helpers import database_url

    return database_url()

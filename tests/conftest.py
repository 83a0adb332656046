"""Fixtures shared by the whole suite."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection

from django_eventsource import BaseEventStore, EventStore, InMemoryEventStore


@pytest.fixture
def vendor() -> str:
    return connection.vendor


@pytest.fixture(params=["memory", "database"])
def any_store(request: pytest.FixtureRequest) -> BaseEventStore:
    """Each contract test runs against both stores (the module needs a django_db mark)."""
    return InMemoryEventStore() if request.param == "memory" else EventStore()


@pytest.fixture
def store(db: Any) -> EventStore:
    return EventStore()


@pytest.fixture
def child_db_url(transactional_db: Any) -> str:
    """A DATABASE_URL for subprocesses that points at the test database."""
    from tests.helpers import database_url

    return database_url()

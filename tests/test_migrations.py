"""The models and their migrations agree: no migration is missing from the repository."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("app_label", ["django_eventsource", "testapp"])
def test_no_missing_migrations(app_label: str) -> None:
    out = StringIO()
    try:
        call_command("makemigrations", app_label, "--check", "--dry-run", stdout=out, stderr=out)
    except SystemExit:
        pytest.fail(f"{app_label} has model changes without a migration:\n{out.getvalue()}")
    assert "No changes detected" in out.getvalue()


def test_the_app_ships_its_initial_migration() -> None:
    from django.db.migrations.loader import MigrationLoader

    loader = MigrationLoader(None, ignore_no_migrations=True)
    assert ("django_eventsource", "0001_initial") in loader.disk_migrations
    assert ("testapp", "0001_initial") in loader.disk_migrations

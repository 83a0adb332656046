"""System checks: one test per id in ``django_eventsource/checks.py``, run through Django."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
from django.core.checks import CheckMessage, Error, Warning, run_checks
from django.db import connection

from django_eventsource import DeclarativeProjection, handles, projection_registry
from tests.testapp.events import TaskCreated
from tests.testapp.models import Note, TaskSummary

# A full run_checks() includes model checks, which query the database on Django 6.1
# (JSONField support on SQLite).
pytestmark = pytest.mark.django_db


def our_messages() -> list[CheckMessage]:
    """Every message of this app's checks, from a full ``run_checks()``."""
    return [m for m in run_checks() if (m.id or "").startswith("django_eventsource.")]


def ids(messages: list[CheckMessage]) -> list[str]:
    return sorted(m.id or "" for m in messages)


@pytest.fixture
def registry_snapshot() -> Iterator[None]:
    """Projections defined by a test register themselves: forget them afterwards."""
    classes = dict(projection_registry._classes)
    duplicates = list(projection_registry.duplicates)
    try:
        yield
    finally:
        projection_registry._classes.clear()
        projection_registry._classes.update(classes)
        projection_registry.duplicates[:] = duplicates


def test_the_test_settings_give_no_messages() -> None:
    assert our_messages() == []


def test_the_checks_are_registered_with_django() -> None:
    from django.core.checks import registry

    names = {getattr(check, "__name__", "") for check in registry.registry.get_checks()}
    assert {"check_settings", "check_environment", "check_projections"} <= names


# Settings ---------------------------------------------------------------------------------


def test_e001_unknown_key_with_a_suggestion(settings: Any) -> None:
    settings.EVENTSOURCE = {"BATCH_SIZ": 10}
    [message] = our_messages()
    assert message.id == "django_eventsource.E001"
    assert isinstance(message, Error)
    assert "unknown setting 'BATCH_SIZ'" in message.msg
    assert message.hint == "Did you mean 'BATCH_SIZE'?"


def test_e001_lower_case_key_is_unknown(settings: Any) -> None:
    settings.EVENTSOURCE = {"error_policy": "dead_letter"}
    [message] = our_messages()
    assert message.id == "django_eventsource.E001"
    assert message.hint == "Did you mean 'ERROR_POLICY'?"


def test_e001_without_a_close_match_lists_the_valid_keys(settings: Any) -> None:
    settings.EVENTSOURCE = {"ZZZZZZ": 1}
    [message] = our_messages()
    assert message.id == "django_eventsource.E001"
    assert message.hint is not None
    assert message.hint.startswith("Valid keys: DATABASE_ALIAS, BATCH_SIZE")


def test_e001_non_string_key(settings: Any) -> None:
    settings.EVENTSOURCE = {1: 2}
    assert ids(our_messages()) == ["django_eventsource.E001"]


def test_e002_bad_values(settings: Any) -> None:
    settings.EVENTSOURCE = {"BATCH_SIZE": 0, "ERROR_POLICY": "x"}
    messages = our_messages()
    assert ids(messages) == ["django_eventsource.E002", "django_eventsource.E002"]
    assert all(isinstance(m, Error) for m in messages)
    by_key = {m.msg.split("]")[0]: m for m in messages}
    batch = by_key["EVENTSOURCE['BATCH_SIZE'"]
    assert "must be positive, not 0" in batch.msg
    assert batch.hint == "The default is 500."
    policy = by_key["EVENTSOURCE['ERROR_POLICY'"]
    assert "must be one of pause, dead_letter, not 'x'" in policy.msg
    assert policy.hint == "The default is 'pause'."


def test_e002_wrong_type_of_alias_does_not_crash_the_checks(settings: Any) -> None:
    settings.EVENTSOURCE = {"DATABASE_ALIAS": ["default"]}
    assert ids(our_messages()) == ["django_eventsource.E002"]


def test_e002_setting_that_is_not_a_dict(settings: Any) -> None:
    settings.EVENTSOURCE = "BATCH_SIZE=5"
    [message] = our_messages()
    assert message.id == "django_eventsource.E002"
    assert message.msg == "EVENTSOURCE must be a dict, not str."


def test_e003_unknown_database_alias(settings: Any) -> None:
    settings.EVENTSOURCE = {"DATABASE_ALIAS": "events"}
    [message] = our_messages()
    assert message.id == "django_eventsource.E003"
    assert "'events'" in message.msg
    assert message.hint == "Use one of: default."


def test_w001_unsupported_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(connection, "vendor", "oracle")
    [message] = our_messages()
    assert message.id == "django_eventsource.W001"
    assert isinstance(message, Warning)
    assert "'oracle'" in message.msg


def test_w003_use_tz_off(settings: Any) -> None:
    settings.USE_TZ = False
    [message] = our_messages()
    assert message.id == "django_eventsource.W003"
    assert isinstance(message, Warning)
    assert "USE_TZ" in message.msg


def _sqlite_options(monkeypatch: pytest.MonkeyPatch, options: dict[str, Any]) -> None:
    """The event store's database as SQLite with these OPTIONS (on PostgreSQL too: the
    check reads the vendor and the settings, and never connects)."""
    monkeypatch.setattr(connection, "vendor", "sqlite")
    monkeypatch.setitem(connection.settings_dict, "OPTIONS", options)


@pytest.mark.parametrize(
    "options", [{}, {"timeout": 30}, {"transaction_mode": "DEFERRED"}, {"transaction_mode": None}]
)
def test_w004_sqlite_transactions_begin_deferred(
    monkeypatch: pytest.MonkeyPatch, options: dict[str, Any]
) -> None:
    _sqlite_options(monkeypatch, options)
    [message] = our_messages()
    assert message.id == "django_eventsource.W004"
    assert isinstance(message, Warning)
    assert message.msg == "SQLite database 'default' begins its transactions DEFERRED."
    assert "'transaction_mode': 'IMMEDIATE'" in (message.hint or "")
    assert "database is locked" in (message.hint or "")


@pytest.mark.parametrize("mode", ["IMMEDIATE", "immediate", "EXCLUSIVE"])
def test_w004_not_when_transactions_take_the_write_lock_at_begin(
    monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    _sqlite_options(monkeypatch, {"transaction_mode": mode, "timeout": 20})
    assert our_messages() == []


def test_w004_not_on_postgresql(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(connection, "vendor", "postgresql")
    monkeypatch.setitem(connection.settings_dict, "OPTIONS", {})
    assert our_messages() == []


@pytest.mark.usefixtures("registry_snapshot")
def test_w004_names_each_database_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The event store's database and the projections' (an unknown alias is another
    check's business)."""

    class Here(DeclarativeProjection):
        name = "checks_w004_here"
        using = "default"

    class Nowhere(DeclarativeProjection):
        name = "checks_w004_nowhere"
        using = "nowhere"

    _sqlite_options(monkeypatch, {})
    assert ids(our_messages()) == ["django_eventsource.W004"]


# Projections ------------------------------------------------------------------------------


@pytest.mark.usefixtures("registry_snapshot")
def test_e004_duplicate_projection_names() -> None:
    class First(DeclarativeProjection):
        name = "checks_duplicate"

    class Second(DeclarativeProjection):
        name = "checks_duplicate"

    [message] = our_messages()
    assert message.id == "django_eventsource.E004"
    assert "'checks_duplicate'" in message.msg
    assert "First" in message.msg
    assert "Second" in message.msg
    assert message.obj is Second
    assert projection_registry.get("checks_duplicate") is First


@pytest.mark.usefixtures("registry_snapshot")
def test_e005_handler_for_an_unregistered_event_type() -> None:
    class Listens(DeclarativeProjection):
        name = "checks_unknown_type"

        @handles("NoSuchEvent")
        def on_nothing(self, event: Any) -> None:
            pass

        @handles(TaskCreated)
        def on_created(self, event: TaskCreated) -> None:
            pass

    [message] = our_messages()
    assert message.id == "django_eventsource.E005"
    assert "'NoSuchEvent'" in message.msg
    assert "'checks_unknown_type'" in message.msg
    assert message.obj is Listens


@pytest.mark.usefixtures("registry_snapshot")
def test_e006_read_model_without_checkpoint_fields() -> None:
    class Notes(DeclarativeProjection):
        name = "checks_no_checkpoint"
        models = (Note,)
        row_keys: ClassVar = {Note: "text"}

    [message] = our_messages()  # Note is listed twice, but reported once
    assert message.id == "django_eventsource.E006"
    assert "testapp.Note" in message.msg
    assert "last_event_id, last_event_version, last_event_position" in message.msg
    assert message.obj is Note


@pytest.mark.usefixtures("registry_snapshot")
def test_e007_inline_projection_in_another_database() -> None:
    class Elsewhere(DeclarativeProjection):
        name = "checks_inline_elsewhere"
        inline = True
        using = "reporting"

    class Asynchronous(DeclarativeProjection):
        name = "checks_async_elsewhere"
        using = "reporting"

    class SameDatabase(DeclarativeProjection):
        name = "checks_inline_default"
        inline = True
        using = "default"

    [message] = our_messages()
    assert message.id == "django_eventsource.E007"
    assert "'checks_inline_elsewhere'" in message.msg
    assert "'reporting'" in message.msg
    assert message.obj is Elsewhere


@pytest.mark.usefixtures("registry_snapshot")
def test_e009_two_projections_write_one_model() -> None:
    class SecondBoard(DeclarativeProjection):
        name = "checks_second_board"
        row_keys: ClassVar = {TaskSummary: "task_id"}  # task_board writes it too

    [message] = our_messages()
    assert message.id == "django_eventsource.E009"
    assert "'task_board'" in message.msg and "'checks_second_board'" in message.msg
    assert "testapp.TaskSummary" in message.msg
    assert message.obj is TaskSummary
    assert "one checkpoint" in (message.hint or "")


@pytest.mark.usefixtures("registry_snapshot")
def test_registry_snapshot_restores_the_registry() -> None:
    # Sanity check of the fixture the tests above rely on.
    assert "checks_duplicate" not in projection_registry
    assert projection_registry.duplicates == []
    assert {"task_board", "tenant_stats", "task_index"} <= set(projection_registry.names())

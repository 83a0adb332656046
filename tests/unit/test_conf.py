"""The ``EVENTSOURCE`` settings namespace: defaults, overrides and validation."""

from __future__ import annotations

from dataclasses import FrozenInstanceError
from typing import Any

import pytest

from django_eventsource.conf import (
    DEFAULTS,
    ERROR_POLICIES,
    EventSourceSettings,
    get_settings,
    validate,
)


def test_defaults(settings: Any) -> None:
    settings.EVENTSOURCE = {}
    options = get_settings()
    assert options == EventSourceSettings()
    assert options.database_alias == "default"
    assert options.batch_size == 500
    assert options.poll_interval == 1.0
    assert options.notify_channel == "django_eventsource"
    assert options.error_policy == "pause"
    assert options.max_retries == 3
    assert options.retry_backoff == 0.2
    assert options.heartbeat_interval == 5.0
    assert options.autodiscover_module == "projections"
    assert options.projections == ()
    assert options.lag_sample_interval == 60.0
    assert options.lag_history_days == 7


def test_missing_setting_means_defaults(settings: Any) -> None:
    # Deleting a setting sends no setting_changed (neither does its restore): clear by hand.
    del settings.EVENTSOURCE
    get_settings.cache_clear()
    try:
        assert get_settings() == EventSourceSettings()
    finally:
        get_settings.cache_clear()


def test_defaults_table_lists_every_key_in_upper_case() -> None:
    assert DEFAULTS == {
        "DATABASE_ALIAS": "default",
        "BATCH_SIZE": 500,
        "POLL_INTERVAL": 1.0,
        "NOTIFY_CHANNEL": "django_eventsource",
        "ERROR_POLICY": "pause",
        "MAX_RETRIES": 3,
        "RETRY_BACKOFF": 0.2,
        "HEARTBEAT_INTERVAL": 5.0,
        "AUTODISCOVER_MODULE": "projections",
        "PROJECTIONS": (),
        "LAG_SAMPLE_INTERVAL": 60.0,
        "LAG_HISTORY_DAYS": 7,
        "MAX_HELD_SECONDS": 60.0,
        "MAX_LAG": None,
        "METRICS_MAX_TENANTS": 20,
    }
    assert ERROR_POLICIES == ("pause", "dead_letter")


def test_the_test_settings_are_merged_over_the_defaults() -> None:
    options = get_settings()
    assert options.retry_backoff == 0.01  # tests/settings.py
    assert options.batch_size == 500  # not set there: the default


def test_settings_are_cached_and_frozen() -> None:
    assert get_settings() is get_settings()
    with pytest.raises(FrozenInstanceError):
        get_settings().batch_size = 1  # type: ignore[misc]


def test_overriding_the_setting_resets_the_cache(settings: Any) -> None:
    before = get_settings()
    settings.EVENTSOURCE = {"BATCH_SIZE": 7, "ERROR_POLICY": "dead_letter"}
    after = get_settings()
    assert after is not before
    assert after.batch_size == 7
    assert after.error_policy == "dead_letter"
    assert after.max_retries == 3
    settings.EVENTSOURCE = {"BATCH_SIZE": 8}
    assert get_settings().batch_size == 8
    assert get_settings().error_policy == "pause"


def test_the_cache_is_restored_after_an_override(settings: Any) -> None:
    from django.test import override_settings

    with override_settings(EVENTSOURCE={"BATCH_SIZE": 3}):
        assert get_settings().batch_size == 3
    assert get_settings().batch_size == 500
    assert get_settings().retry_backoff == 0.01


def test_other_settings_do_not_reset_the_cache(settings: Any) -> None:
    before = get_settings()
    settings.DEBUG = not settings.DEBUG
    assert get_settings() is before


def test_projections_list_becomes_a_tuple(settings: Any) -> None:
    settings.EVENTSOURCE = {"PROJECTIONS": ["tests.testapp.projections"]}
    assert get_settings().projections == ("tests.testapp.projections",)
    settings.EVENTSOURCE = {"PROJECTIONS": None}
    assert get_settings().projections == ()


def test_autodiscovery_can_be_switched_off(settings: Any) -> None:
    settings.EVENTSOURCE = {"AUTODISCOVER_MODULE": None}
    assert get_settings().autodiscover_module is None


def test_unknown_keys_are_ignored_by_get_settings(settings: Any) -> None:
    settings.EVENTSOURCE = {"BATCH_SIZ": 9, "batch_size": 9, 1: 2}
    assert get_settings().batch_size == 500


def test_a_setting_that_is_not_a_dict_means_defaults(settings: Any) -> None:
    settings.EVENTSOURCE = "oops"
    assert get_settings() == EventSourceSettings()


# validate() -------------------------------------------------------------------------------


def test_the_test_settings_are_valid() -> None:
    assert validate() == ([], [])


def test_every_default_is_valid(settings: Any) -> None:
    settings.EVENTSOURCE = dict(DEFAULTS)
    assert validate() == ([], [])


def test_valid_non_default_values(settings: Any) -> None:
    settings.EVENTSOURCE = {
        "DATABASE_ALIAS": "events",
        "BATCH_SIZE": 1,
        "POLL_INTERVAL": 2,
        "NOTIFY_CHANNEL": "my_channel",
        "ERROR_POLICY": "dead_letter",
        "MAX_RETRIES": 0,
        "RETRY_BACKOFF": 0,
        "HEARTBEAT_INTERVAL": 0.5,
        "AUTODISCOVER_MODULE": None,
        "PROJECTIONS": ["a.b"],
        "LAG_SAMPLE_INTERVAL": 0,
        "LAG_HISTORY_DAYS": 1,
        "MAX_LAG": 0,
        "METRICS_MAX_TENANTS": 0,
    }
    assert validate() == ([], [])


def test_unknown_keys(settings: Any) -> None:
    settings.EVENTSOURCE = {"BATCH_SIZ": 10, "batch_size": 10}
    unknown, bad = validate()
    assert [key for key, _ in unknown] == ["BATCH_SIZ", "batch_size"]
    assert unknown[0][1] == "unknown setting 'BATCH_SIZ'"
    assert bad == []


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("BATCH_SIZE", 0, "must be positive, not 0"),
        ("BATCH_SIZE", -5, "must be positive, not -5"),
        ("BATCH_SIZE", "500", "must be int, not str"),
        ("BATCH_SIZE", 2.5, "must be int, not float"),
        ("BATCH_SIZE", True, "must be int, not bool"),
        ("POLL_INTERVAL", 0, "must be positive, not 0"),
        ("HEARTBEAT_INTERVAL", -1.0, "must be positive, not -1.0"),
        ("MAX_RETRIES", -1, "must not be negative, not -1"),
        ("RETRY_BACKOFF", -0.1, "must not be negative, not -0.1"),
        ("RETRY_BACKOFF", "1", "must be int or float, not str"),
        ("ERROR_POLICY", "x", "must be one of pause, dead_letter, not 'x'"),
        ("NOTIFY_CHANNEL", "my-channel", "must be a plain identifier, not 'my-channel'"),
        ("DATABASE_ALIAS", None, "must be str, not NoneType"),
        ("DATABASE_ALIAS", ["default"], "must be str, not list"),
        ("AUTODISCOVER_MODULE", 1, "must be str or NoneType, not int"),
        ("PROJECTIONS", "a.b", "must be list or tuple, not str"),
        ("LAG_SAMPLE_INTERVAL", -1, "must not be negative, not -1"),
        ("LAG_HISTORY_DAYS", 0, "must be positive, not 0"),
        ("LAG_HISTORY_DAYS", 1.5, "must be int, not float"),
        ("MAX_HELD_SECONDS", -1, "must be a finite number of seconds >= 0, not -1"),
        ("MAX_HELD_SECONDS", float("nan"), "must be a finite number of seconds >= 0, not nan"),
        ("MAX_HELD_SECONDS", float("inf"), "must be a finite number of seconds >= 0, not inf"),
        ("MAX_HELD_SECONDS", "60", "must be int or float, not str"),
        ("MAX_LAG", -1, "must be None or an int >= 0, not -1"),
        ("MAX_LAG", 10.5, "must be int or NoneType, not float"),
        ("METRICS_MAX_TENANTS", -1, "must not be negative, not -1"),
        ("METRICS_MAX_TENANTS", None, "must be int, not NoneType"),
    ],
)
def test_bad_values(settings: Any, key: str, value: Any, message: str) -> None:
    settings.EVENTSOURCE = {key: value}
    assert validate() == ([], [(key, message)])


def test_every_bad_value_is_reported(settings: Any) -> None:
    settings.EVENTSOURCE = {"BATCH_SIZE": 0, "ERROR_POLICY": "x", "MAX_RETRIES": 1}
    unknown, bad = validate()
    assert unknown == []
    assert [key for key, _ in bad] == ["BATCH_SIZE", "ERROR_POLICY"]


def test_a_setting_that_is_not_a_dict_is_a_bad_value(settings: Any) -> None:
    settings.EVENTSOURCE = ["BATCH_SIZE", 5]
    assert validate() == ([], [("EVENTSOURCE", "must be a dict, not list")])

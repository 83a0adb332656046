"""The reference docs quote each command's ``--help``; this keeps them from drifting.

The rendered text depends on the Python version (argparse's layout changed in 3.13), so the
test compares what the command itself says: its description and each of its own options'
help, with whitespace normalised.
"""

from __future__ import annotations

import re

import pytest
from django.core.management import BaseCommand, load_command_class

from tests.helpers import ROOT

COMMANDS_DOC = ROOT / "docs" / "commands.md"
COMMANDS = sorted(
    path.stem
    for path in (ROOT / "django_eventsource" / "management" / "commands").glob("*.py")
    if not path.stem.startswith("_")
)


def documented_help() -> dict[str, str]:
    """``{command: text}`` from the first ```text block under each ``## `command` `` heading."""
    text = COMMANDS_DOC.read_text()
    pattern = r"^## `(\w+)`\n(?:[^`#][^\n]*\n|\n)*```text\n(.*?)```"
    blocks = re.findall(pattern, text, flags=re.DOTALL | re.MULTILINE)
    return {name: normalise(body) for name, body in blocks}


def normalise(text: str) -> str:
    """One space between words, and argparse's line breaks after hyphens undone."""
    return re.sub(r"-\s+", "-", " ".join(text.split()))


def test_every_command_of_the_app_is_documented() -> None:
    assert sorted(documented_help()) == COMMANDS


@pytest.mark.parametrize("command", COMMANDS)
def test_the_documented_help_is_the_real_help(command: str) -> None:
    instance = load_command_class("django_eventsource", command)
    parser = instance.create_parser("manage.py", command)
    common = {
        option
        for action in BaseCommand().create_parser("manage.py", "x")._actions
        for option in action.option_strings
    }
    texts = [instance.help] + [
        action.help
        for action in parser._actions
        if action.help and not common.intersection(action.option_strings)
    ]
    doc = documented_help()[command]
    for text in texts:
        assert normalise(str(text)) in doc, (
            f"docs/commands.md is out of date for {command}: paste `manage.py {command} "
            f"--help` (missing: {text!r})"
        )


def test_every_setting_is_in_the_settings_reference() -> None:
    """docs/settings.md has a row per key of ``EVENTSOURCE`` (LAG_SAMPLE_INTERVAL and
    LAG_HISTORY_DAYS were missing, though the admin's docs sent readers there)."""
    from django_eventsource.conf import DEFAULTS

    rows = set(
        re.findall(
            r"^\| `([A-Z_]+)` \|", (ROOT / "docs" / "settings.md").read_text(), re.MULTILINE
        )
    )
    assert rows == set(DEFAULTS)


def test_replay_help_gives_the_workers_exit_code_as_the_guides_do() -> None:
    """A ``--follow`` worker exits 1 for a lock it lost mid-batch and had not taken back
    when it stopped, not for any lock lost mid-run (a plain failover exits 0), and for a
    projection still failed when it stops: the help said less than the guides."""
    instance = load_command_class("django_eventsource", "replay_projections")
    said = normalise(str(instance.help))
    for guide in ("workers.md", "status.md"):
        assert "mid-batch" in normalise((ROOT / "docs" / "howto" / guide).read_text())
    assert "--follow worker, what holds when it stops" in said
    assert "a lock it lost mid-batch (the batch rolled back) and has not taken back" in said
    assert "a projection still failed then" in said


def test_every_logger_of_the_app_is_in_the_monitoring_table() -> None:
    """Operators route logs by logger name: each module's logger has its rows in the table
    of docs/howto/monitoring.md (a module that logs and is missing there is invisible)."""
    import importlib
    import logging
    import pkgutil

    import django_eventsource

    names = set()
    for module_info in pkgutil.walk_packages(
        django_eventsource.__path__, "django_eventsource.", onerror=lambda name: None
    ):
        if ".migrations." in module_info.name or ".management." in module_info.name:
            continue
        module = importlib.import_module(module_info.name)
        for value in vars(module).values():
            if isinstance(value, logging.Logger) and value.name.startswith("django_eventsource"):
                names.add(value.name)
    table = (ROOT / "docs" / "howto" / "monitoring.md").read_text()
    documented = set(re.findall(r"^\| `(django_eventsource[\w.]*)` \|", table, re.MULTILINE))
    assert "django_eventsource.runner" in names  # the scan found the loggers
    assert names - documented == set(), "loggers missing from docs/howto/monitoring.md"

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

"""printable(): user-supplied text printed for people never carries control characters."""

from __future__ import annotations

import pytest

from django_eventsource.text import plural, printable


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("tenant-1", "tenant-1"),
        ("Zürich 東京 café", "Zürich 東京 café"),
        ("\x1b[2J\x1b[31mred", "\\x1b[2J\\x1b[31mred"),
        ("line\nforged line", "line\\nforged line"),
        ("a\rb\tc\x00d\x7fe", "a\\rb\\tc\\x00d\\x7fe"),
        ("\x9b31m", "\\x9b31m"),  # the C1 form of ESC [
        ("evil\u202etxt.exe", "evil\\u202etxt.exe"),
        ("x\u2028y\u2066z", "x\\u2028y\\u2066z"),
    ],
)
def test_control_characters_are_escaped_and_the_rest_kept(raw: str, shown: str) -> None:
    assert printable(raw) == shown


def test_anything_is_turned_into_text() -> None:
    assert printable(ValueError("bad\x1b]0;title\x07")) == "bad\\x1b]0;title\\x07"
    assert printable(None) == "None"
    assert printable(42) == "42"


def test_plural_says_one_in_the_singular() -> None:
    assert [plural(n, "attempt") for n in (0, 1, 2)] == ["0 attempts", "1 attempt", "2 attempts"]
    assert plural(1, "entry", "entries") == "1 entry"
    assert plural(3, "entry", "entries") == "3 entries"

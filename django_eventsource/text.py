"""Text for people: escape what a terminal or a log line would otherwise interpret.

Tenant ids, stream ids and exception messages come from users. Printed raw, an ESC sequence in
one can recolour or rewrite an operator's terminal, a newline can forge a log line, and a
bidirectional override can make text read differently than it is. A leaf module: it imports
nothing from the package, so the commands, the admin and the log messages can all use it.
"""

from __future__ import annotations

import re

__all__ = ["plural", "printable"]

# C0 and C1 control characters (newline and tab included), DEL, the line and paragraph
# separators, and the bidirectional formatting characters.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    return match.group().encode("unicode_escape").decode("ascii")


def printable(value: object) -> str:
    """``str(value)`` with control characters escaped as Python writes them (``\\x1b``,
    ``\\n``, ``\\u202e``); everything else, non-ASCII letters included, stays as it is.

    For human text only (command output, log messages); structured fields (a log record's
    ``extra``, JSON) keep the raw value.
    """
    text = value if isinstance(value, str) else str(value)
    return _UNSAFE.sub(_escape, text) if _UNSAFE.search(text) else text


def plural(count: int, noun: str, many: str | None = None) -> str:
    """``count`` and ``noun``, in the plural unless ``count`` is 1: ``plural(1, "attempt")``
    is ``"1 attempt"``, ``plural(4, "attempt")`` ``"4 attempts"`` (``many``: an irregular
    plural)."""
    return f"{count} {noun if count == 1 else many or noun + 's'}"

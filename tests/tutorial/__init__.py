"""The tutorial this library implements, and its code with only the import line changed.

``tutorial_10.txt`` is a byte-for-byte copy of the user's seed document (its SHA-256 is checked
by the tests, so nobody "fixes" the tutorial to make it pass). :func:`blocks` extracts its three
``python`` code blocks; :func:`with_import` rewrites the one ``from eventsource import ...``
statement of a block and nothing else.
"""

from __future__ import annotations

import ast
import hashlib
import re
from pathlib import Path

SEED = Path(__file__).with_name("tutorial_10.txt")
SEED_SHA256 = "f6c5406f52812200185b6489d0ea4c699e63a393cbb9588310ae71420d2d370d"

#: The tutorial's module, and ours.
TUTORIAL_MODULE = "eventsource"
AIO_MODULE = "django_eventsource.aio"

#: The database-backed stores under the tutorial's names: the import line is all that changes.
DATABASE_ALIASES = {
    "InMemoryEventStore": "EventStore as InMemoryEventStore",
    "InMemoryCheckpointStore": "DatabaseCheckpointStore as InMemoryCheckpointStore",
}

_BLOCK = re.compile(r"^```python\n(.*?)^```$", re.DOTALL | re.MULTILINE)


def seed_text() -> str:
    data = SEED.read_bytes()
    if hashlib.sha256(data).hexdigest() != SEED_SHA256:
        raise AssertionError(f"{SEED} is not the seed document any more: restore it.")
    return data.decode()


def blocks(text: str | None = None) -> list[str]:
    """The ``python`` code blocks of a Markdown document (default: the seed), in order."""
    return _BLOCK.findall(seed_text() if text is None else text)


def import_lines(block: str, module: str = TUTORIAL_MODULE) -> tuple[int, int]:
    """The 0-based [start, end) line range of the block's one ``from <module> import``."""
    found = [
        node
        for node in ast.parse(block).body
        if isinstance(node, ast.ImportFrom) and node.module == module
    ]
    if len(found) != 1:
        raise AssertionError(f"expected one 'from {module} import', found {len(found)}")
    node = found[0]
    assert node.end_lineno is not None
    return node.lineno - 1, node.end_lineno


def with_import(block: str, *, aliases: dict[str, str] | None = None) -> str:
    """The block with its tutorial import made to import from ``django_eventsource.aio``
    (``aliases`` renames imported names: the database-backed route), and nothing else."""
    lines = block.splitlines(keepends=True)
    start, end = import_lines(block)
    statement = "".join(lines[start:end])
    statement = statement.replace(f"from {TUTORIAL_MODULE} import", f"from {AIO_MODULE} import", 1)
    for name, replacement in (aliases or {}).items():
        statement, count = re.subn(rf"\b{name}\b", replacement, statement)
        assert count <= 1, f"{name} is imported {count} times"
    return "".join([*lines[:start], statement, *lines[end:]])


def outside_import(block: str, module: str) -> list[str]:
    """The block's lines, less its ``from <module> import`` statement."""
    lines = block.splitlines()
    start, end = import_lines(block, module)
    return lines[:start] + lines[end:]

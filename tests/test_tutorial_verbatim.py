"""Tutorial 10 runs as written, its import line changed to ``django_eventsource.aio``.

The three code blocks are read from ``tests/tutorial/tutorial_10.txt`` (the user's seed,
byte for byte), rewritten only in their ``from eventsource import ...`` statement, and run in
a fresh process (``tests/tutorial/run.py``) with the in-memory stores and with the
database-backed ones, on the database under test (SQLite or PostgreSQL). The route with the
database imports ``EventStore`` and ``DatabaseCheckpointStore`` under the tutorial's names:
the import line is still the only change.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from django_eventsource import EventStore, ProjectionState
from tests.helpers import ROOT, child_env
from tests.tutorial import (
    AIO_MODULE,
    DATABASE_ALIASES,
    TUTORIAL_MODULE,
    blocks,
    outside_import,
    with_import,
)

# Positions start at 1 in each test: the tutorial prints "Checkpoint: 5".
pytestmark = pytest.mark.django_db(transaction=True, reset_sequences=True)

FILES = ("checkpoint_store.py", "projection_with_checkpoints.py", "tutorial_10_checkpoints.py")
ROUTES = {"memory": None, "database": DATABASE_ALIASES}
TITLES = [f"Task {i}" for i in range(1, 9)]
#: docs/tutorial.md tells readers to run the complete example with this.
RUN_MAIN = "import runpy; runpy.run_path('tutorial_10_checkpoints.py', run_name='__main__')"


def write_blocks(directory: Path, aliases: dict[str, str] | None) -> None:
    for name, block in zip(FILES, blocks(), strict=True):
        (directory / name).write_text(with_import(block, aliases=aliases))


def run_tutorial(directory: Path, db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        check=False,
        env=child_env(db_url, DJANGO_SETTINGS_MODULE="tests.tutorial.settings"),
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_only_the_import_line_changes() -> None:
    seed = blocks()
    assert len(seed) == 3
    for aliases in ROUTES.values():
        for block in seed:
            changed = with_import(block, aliases=aliases)
            assert changed != block
            assert outside_import(changed, AIO_MODULE) == outside_import(block, TUTORIAL_MODULE)


@pytest.mark.parametrize("route", list(ROUTES))
def test_the_tutorial_runs_verbatim_and_prints_what_it_promises(
    route: str, tmp_path: Path, child_db_url: str
) -> None:
    assert EventStore().head_position() == 0
    write_blocks(tmp_path, ROUTES[route])

    done = run_tutorial(tmp_path, child_db_url, "-m", "tests.tutorial.run", str(tmp_path))

    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no warning either (a coroutine never awaited, ...)
    *printed, last = done.stdout.splitlines()
    assert printed == ["Resume from: 150", "Checkpoint: 5", "Tasks processed: 5"]
    seen: dict[str, Any] = json.loads(last.removeprefix("RESULT "))
    in_memory = route == "memory"
    assert seen["store"] == "InMemoryEventStore" if in_memory else "EventStore"
    assert seen["checkpoint_store"] == (
        "InMemoryCheckpointStore" if in_memory else "DatabaseCheckpointStore"
    )
    assert seen["snippet_store"] == seen["checkpoint_store"]
    assert seen["snippet_position"] == 150
    # The complete example's projection: five tasks, checkpoint at the fifth event.
    assert (seen["tasks"], seen["checkpoint"]) == (TITLES[:5], 5)
    # The resume snippet: three tasks arrived while it was down; only they are handled.
    resumed = seen["resume"]
    assert resumed["later"] == TITLES[5:]
    assert resumed["restarted"] == [TITLES[5:], 8]
    assert resumed["again"] == [TITLES[5:], 8]  # nothing new, nothing handled twice
    assert resumed["main_checkpoint"] == 8
    assert resumed["fresh"] == [TITLES, 8]  # no checkpoint: from the start
    assert (resumed["fresh_checkpoint"], resumed["head"]) == (8, 8)

    stored = EventStore().read_all()
    checkpoints = dict(ProjectionState.objects.values_list("name", "position"))
    if in_memory:
        assert (len(stored), checkpoints) == (0, {})
    else:
        assert [(e.position, e.aggregate_version, e.event.title) for e in stored] == [
            (i, 1, f"Task {i}") for i in range(1, 9)
        ]
        assert checkpoints == {"projection-1": 150, "main": 8, "fresh": 8}


def test_the_documented_command_runs_the_complete_example(
    tmp_path: Path, child_db_url: str
) -> None:
    write_blocks(tmp_path, None)
    done = run_tutorial(tmp_path, child_db_url, "-m", "django", "shell", "-c", RUN_MAIN)
    assert done.returncode == 0, done.stderr
    # (Django 5.2's shell may first say how many models it imported.)
    assert done.stdout.splitlines()[-2:] == ["Checkpoint: 5", "Tasks processed: 5"]


def test_the_docs_show_the_tutorial_verbatim_then_the_django_translation() -> None:
    text = (ROOT / "docs" / "tutorial.md").read_text()
    verbatim = text.index("## Run the tutorial as written")
    translation = text.index("## The Django-style translation")
    assert verbatim < translation
    shown = blocks(text[verbatim:translation])
    assert shown[:3] == [with_import(block) for block in blocks()]
    assert f'python manage.py shell -c "{RUN_MAIN}"' in text
    # Every name the verbatim route imports is documented in the API reference.
    api = (ROOT / "docs" / "api.md").read_text()
    assert re.search(rf"^::: {re.escape(AIO_MODULE)}$", api, re.MULTILINE)

"""A process that loads a task and saves it in a race: ``python -m
tests.concurrency.aggregate_worker <mode> <task id> <writer> <go file>``.

Both modes load the task (a ``SnapshottedTask``), print ``loaded <version>`` and wait until
``<go file>`` exists, so that two workers are guaranteed to hold the *same* version before
either saves. Then they record three renames titled ``w<writer>-<n>`` and save:

* ``save``: one ``Repository.save()``; prints ``{"result": "won"}`` or
  ``{"result": "conflict", "expected": ..., "actual": ...}`` on ``ConcurrencyError``.
* ``update``: ``Repository.update(..., retries=3)``, whose command waits for the go file on
  its first call only; prints ``{"result": "saved", "attempts": <command calls>}``.

Any other exception exits non-zero with its traceback on stderr.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from uuid import UUID

RENAMES = 3


def wait_for(go: Path, version: int) -> None:
    print(f"loaded {version}", flush=True)
    deadline = time.monotonic() + 60
    while not go.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{go} never appeared")
        time.sleep(0.001)


def main(mode: str, task_id: str, writer: str, go_file: str) -> None:
    import django

    django.setup()
    from django_eventsource import ConcurrencyError, EventStore
    from django_eventsource.aggregates import Repository
    from tests.testapp.aggregates import SnapshottedTask

    repo = Repository(SnapshottedTask, EventStore())
    go = Path(go_file)

    def rename(task: SnapshottedTask) -> None:
        for n in range(RENAMES):
            task.rename(f"w{writer}-{n}")

    if mode == "save":
        task = repo.load(UUID(task_id))
        wait_for(go, task.version)
        rename(task)
        try:
            repo.save(task)
        except ConcurrencyError as exc:
            result = {
                "result": "conflict",
                "expected": exc.expected_version,
                "actual": exc.actual_version,
            }
        else:
            result = {"result": "won", "version": task.version}
    elif mode == "update":
        calls = 0

        def command(task: SnapshottedTask) -> None:
            nonlocal calls
            calls += 1
            if calls == 1:
                wait_for(go, task.version)
            rename(task)

        task = repo.update(UUID(task_id), command, retries=3)
        result = {"result": "saved", "attempts": calls, "version": task.version}
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:5])

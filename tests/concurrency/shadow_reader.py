"""A reader of a projection's live table during a shadow rebuild:
``python -m tests.concurrency.shadow_reader <task_board|task_index> <file of start task ids>
<output file>``.

Reads the whole table with one SELECT (one snapshot) in a loop until SIGTERM, and writes one
JSON line per read to the output file (not to stdout: nobody drains that pipe meanwhile): how many rows, how many of the tasks that existed before the rebuild
are present, and how many of those carry the test's "old table" marker (TaskSummary:
``renames >= 1000``; TaskIndex: a title starting with ``old:``). A read that fails prints
its error instead. Prints ``{"ready": true}`` on stdout once it starts.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from typing import Any


def main(argv: list[str]) -> None:
    import django

    django.setup()
    from django.db import DatabaseError, connection

    table = {
        "task_board": ("testapp_tasksummary", "renames >= 1000"),
        "task_index": ("testapp_taskindex", "title LIKE 'old:%'"),
    }[argv[0]]
    with open(argv[1]) as f:
        start = {line.strip() for line in f if line.strip()}
    stop = False

    def handler(signum: int, frame: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, handler)
    out = open(argv[2], "w")  # noqa: SIM115 (closed when the loop ends)
    print(json.dumps({"ready": True}), flush=True)
    while not stop:
        try:
            with connection.cursor() as cursor:
                cursor.execute(f"SELECT task_id::text, {table[1]} FROM {table[0]}")
                rows = cursor.fetchall()
        except DatabaseError as exc:
            print(json.dumps({"error": str(exc)}), file=out, flush=True)
            connection.close()
            continue
        present = [marked for task, marked in rows if task in start]
        print(
            json.dumps(
                {
                    "rows": len(rows),
                    "present": len(present),
                    "marked": sum(present),
                    "at": time.time(),
                }
            ),
            file=out,
            flush=True,
        )

    out.close()


if __name__ == "__main__":
    main(sys.argv[1:])

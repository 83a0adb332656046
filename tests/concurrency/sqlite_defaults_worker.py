"""The library's own write transactions in a loop, for ``test_sqlite_defaults.py``:
``python -m tests.concurrency.sqlite_defaults_worker <role> <stop file>``.

Roles, each until the stop file exists:

* ``catchup``: ``catch_up(task_board)`` in small batches, again and again (it takes the
  projection's lease, moves its status, commits a batch per transaction, lets go);
* ``operate``: pauses and resumes ``tenant_stats`` (the state machine's transitions) while
  a follower runs it, and ends with it resumed.

Any error ends the process with its traceback (exit 1). Prints a JSON summary.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main(role: str, stop_file: str) -> None:
    import django

    django.setup()
    from django_eventsource import catch_up, control
    from django_eventsource.projections import projection_registry

    stop = Path(stop_file)
    print("started", flush=True)
    stats = {"rounds": 0, "applied": 0}
    if role == "catchup":
        projection = projection_registry.get("task_board")()
        while True:
            last = stop.exists()  # one more round after the writers finished
            result = catch_up(projection, batch_size=3, wait_for_lock=True)
            stats["rounds"] += 1
            stats["applied"] += result.events_applied
            if last:
                break
    elif role == "operate":
        while not stop.exists():
            control.pause("tenant_stats")
            time.sleep(0.005)
            control.resume("tenant_stats")
            stats["rounds"] += 1
            time.sleep(0.005)
    else:
        raise SystemExit(f"unknown role {role!r}")
    print(json.dumps(stats), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])

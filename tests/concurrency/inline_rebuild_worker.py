"""A process that rebuilds ``InlineTenantTotal`` (see ``inline_rows``) for the inline rebuild
tests: ``python -m tests.concurrency.inline_rebuild_worker``.

``rebuild GATE``: rebuilds it as ``rebuild_projections`` does (batches of 2; SIGTERM and
SIGINT stop it cleanly after the batch in hand). After its third batch has committed, it
touches ``GATE/waiting`` and waits there, between two batches (no transaction open), until
``GATE/go`` exists (at most five minutes), so that a test can act on a rebuild that is
certainly in the middle of its replay. Prints the run's outcome as JSON.

``manage ARGS…``: runs ``manage.py ARGS…`` (exit code included) with the projection
registered.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any


def main(argv: list[str]) -> None:
    import django

    django.setup()
    from tests.concurrency.inline_rows import register

    register()
    if argv[0] == "manage":
        from django.core.management import execute_from_command_line

        execute_from_command_line(["manage.py", *argv[1:]])
        return
    rebuild(Path(argv[1]))


def rebuild(gate: Path) -> None:
    from django_eventsource.rebuild import rebuild
    from tests.concurrency.inline_rows import InlineTenantTotal

    batches = 0

    def wait_at_the_gate(kind: str, **data: Any) -> None:
        nonlocal batches
        if kind != "batch":
            return
        batches += 1
        if batches != 3:
            return
        (gate / "waiting").touch()
        deadline = time.monotonic() + 300  # a test that died never opens the gate
        while not (gate / "go").exists() and time.monotonic() < deadline:
            time.sleep(0.01)

    result = rebuild(
        InlineTenantTotal(),
        batch_size=2,
        progress_callback=wait_at_the_gate,
        install_signal_handlers=True,
    )
    print(
        json.dumps(
            {
                "applied": result.events_applied,
                "failed": result.failed,
                "stopped": result.stopped,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main(sys.argv[1:])

"""Run the tutorial's three code blocks as its reader would, in a fresh process.

    DJANGO_SETTINGS_MODULE=tests.tutorial.settings python -m tests.tutorial.run DIR

``DIR`` holds ``checkpoint_store.py``, ``tutorial_10_checkpoints.py`` and
``projection_with_checkpoints.py``: the blocks, import line changed (tests/test_tutorial_verbatim.py
writes them). A fresh process with only django_eventsource installed, because the tutorial
registers its own ``TaskCreated`` (the test app has one too), as a reader's project would.

1. The checkpoint-store snippet uses top-level ``await``: it runs as ``python -m asyncio``
   runs it (compiled with ``PyCF_ALLOW_TOP_LEVEL_AWAIT``).
2. The complete example runs as ``__main__``, unmodified; a profile hook (no change to its
   code) keeps the locals of its ``main()`` so the projection and stores can be inspected.
3. The resume snippet is executed in the example's namespace (it uses ``TaskCreated``), and its
   ``CheckpointedProjection.resume`` runs against the example's own stores.

The tutorial prints its lines; the last line is ``RESULT <json>`` with what was observed.
"""

from __future__ import annotations

import ast
import asyncio
import json
import runpy
import sys
from pathlib import Path
from types import FrameType
from typing import Any
from uuid import uuid4

import django
from asgiref.sync import sync_to_async


def run_snippet(path: Path) -> dict[str, Any]:
    """Execute a snippet with top-level ``await`` as ``python -m asyncio`` does."""
    namespace: dict[str, Any] = {"__name__": "__main__"}
    code = compile(path.read_text(), str(path), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    result = eval(code, namespace)  # a coroutine when the snippet awaits
    if result is not None:
        asyncio.run(result)
    return namespace


def run_main(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``runpy.run_path(path, run_name="__main__")``; returns its globals and main()'s locals."""
    seen: dict[str, Any] = {}

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        code = frame.f_code
        if event == "return" and code.co_name == "main" and code.co_filename == str(path):
            seen.update(frame.f_locals)

    sys.setprofile(profile)
    try:
        namespace = runpy.run_path(str(path), run_name="__main__")
    finally:
        sys.setprofile(None)
    return namespace, seen


def settled() -> None:
    """tests.helpers.settled, imported once Django is set up (it imports models)."""
    from tests import helpers

    helpers.settled()


async def resume(namespace: dict[str, Any], store: Any, checkpoints: Any) -> dict[str, Any]:
    """Three tasks arrive while the projection is down; the tutorial's ``resume`` catches up."""
    task_created, projection_class = namespace["TaskCreated"], namespace["CheckpointedProjection"]
    later = []
    for i in range(6, 9):
        event = task_created(aggregate_id=uuid4(), title=f"Task {i}", aggregate_version=1)
        await store.append(event.aggregate_id, [event], expected_version=0)
        later.append(event.title)

    # A restart comes later; on PostgreSQL the appends just made may still sit behind the
    # ordering horizon while another transaction on the server runs (delayed, never lost).
    await sync_to_async(settled)()
    restarted = projection_class(checkpoints, "main")
    await restarted.resume(store)
    first = sorted(restarted.tasks.values()), restarted.last_position
    await restarted.resume(store)  # nothing new: nothing handled again
    second = sorted(restarted.tasks.values()), restarted.last_position
    fresh = projection_class(checkpoints, "fresh")  # no checkpoint: from the start
    await fresh.resume(store)
    return {
        "later": later,
        "restarted": first,
        "again": second,
        "main_checkpoint": await checkpoints.load("main"),
        "fresh": (sorted(fresh.tasks.values()), fresh.last_position),
        "fresh_checkpoint": await checkpoints.load("fresh"),
        "head": await store.head_position(),
    }


def main(directory: Path) -> None:
    django.setup()
    from django.db import connections

    snippet = run_snippet(directory / "checkpoint_store.py")
    namespace, main_locals = run_main(directory / "tutorial_10_checkpoints.py")
    projection = main_locals["projection"]
    # The tutorial's snippet, in the example's namespace: running it is the point.
    exec((directory / "projection_with_checkpoints.py").read_text(), namespace)  # noqa: S102

    async def scenario() -> dict[str, Any]:
        try:
            return await resume(namespace, main_locals["store"], main_locals["checkpoint_store"])
        finally:
            await sync_to_async(connections.close_all)()

    result = {
        "snippet_position": snippet["position"],
        "snippet_store": type(snippet["checkpoint_store"]).__name__,
        "store": type(main_locals["store"]).__name__,
        "checkpoint_store": type(main_locals["checkpoint_store"]).__name__,
        "tasks": sorted(projection.tasks.values()),
        "checkpoint": main_locals["position"],
        "resume": asyncio.run(scenario()),
    }
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main(Path(sys.argv[1]))

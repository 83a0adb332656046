"""The example project's asynchronous board under several writer processes.

Writers run the example's own services (``tasks/services.py``) in transactions that save
something else first, as a view under ``ATOMIC_REQUESTS`` does, so they take their
transaction ids early and commit out of order; some roll back. A ``replay_projections
--follow`` worker runs meanwhile. Afterwards every tenant's board must equal a fold of the
committed events in feed order, and every card its stream.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ROOT
from tests.test_example import EXAMPLE, Example, _backends, _postgres_database

pytestmark = pytest.mark.slow

WRITER = textwrap.dedent(
    """
    import json, random, time
    from django.contrib.auth.models import Group
    from django.db import transaction
    from django_eventsource import ConcurrencyError, EventStore
    from tasks import services

    class Rollback(Exception):
        pass

    rng = random.Random(SEED)
    store = EventStore()
    mine = []
    counts = {"committed": 0, "early": 0, "rolled_back": 0}
    for i in range(ROUNDS):
        try:
            with transaction.atomic():
                if rng.random() < 0.5:  # a view that saves something before it appends
                    Group.objects.create(name=f"writer-{SEED}-{i}")
                    counts["early"] += 1
                    time.sleep(rng.uniform(0, 0.01))
                try:
                    if mine and rng.random() < 0.6:
                        tenant, task = rng.choice(mine)
                        step = rng.choice(["complete", "reopen", "assign"])
                        if step == "complete":
                            services.complete_task(store, tenant, task)
                        elif step == "reopen":
                            services.reopen_task(store, tenant, task, "again")
                        else:
                            services.assign_task(store, tenant, task, rng.choice(["ada", "ken"]))
                    else:
                        tenant = rng.choice(["acme", "globex", "initech"])
                        stored = services.create_task(
                            store, tenant, f"task {SEED}-{i}", assignee=rng.choice(["", "ada"])
                        )
                        mine.append((tenant, stored[0].aggregate_id))
                except (services.TaskRuleError, ConcurrencyError):
                    pass
                time.sleep(rng.uniform(0, 0.01))
                if rng.random() < 0.1:
                    raise Rollback
        except Rollback:
            counts["rolled_back"] += 1
            continue
        counts["committed"] += 1
    print(json.dumps(counts))
    """
)

#: The boards, and the same computed from the committed events in feed order.
FOLD = textwrap.dedent(
    """
    import json
    from django_eventsource import EventStore
    from tasks.models import TaskCard, TenantBoard

    expected, cards = {}, {}
    for stored in EventStore().read_all():
        kind = stored.event_type
        board = expected.setdefault(stored.tenant_id or "", dict(
            created=0, assignments=0, completed=0, reopened=0, open=0))
        board["created"] += kind == "TaskCreated"
        board["assignments"] += kind == "TaskAssigned"
        board["completed"] += kind == "TaskCompleted"
        board["reopened"] += kind == "TaskReopened"
        board["open"] += {"TaskCreated": 1, "TaskCompleted": -1, "TaskReopened": 1}.get(kind, 0)
        board["last_event_position"] = stored.position
        cards[f"{stored.tenant_id}:{stored.aggregate_id}"] = stored.aggregate_version
    boards = {
        b.tenant_id: dict(
            created=b.created, assignments=b.assignments, completed=b.completed,
            reopened=b.reopened, open=b.open, last_event_position=b.last_event_position)
        for b in TenantBoard.objects.all()
    }
    positions = [e.position for e in EventStore().read_all()]
    print(json.dumps({
        "expected": expected, "boards": boards,
        "cards": {f"{c.tenant_id}:{c.task_id}": c.last_event_version for c in TaskCard.objects.all()},
        "streams": cards, "inverted": positions != sorted(positions),
    }))
    """
)


@pytest.fixture(params=_backends())
def example_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Example]:
    if request.param == "postgresql":
        database = _postgres_database("example_writers")
        url = next(database)
    else:
        database = None
        url = f"sqlite:///{tmp_path / 'example.sqlite3'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "EVENTSOURCE_"))}
    env.update(
        DATABASE_URL=url,
        DJANGO_SETTINGS_MODULE="example_project.settings",
        EVENTSOURCE_POLL_INTERVAL="0.05",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )
    example = Example(env)
    try:
        example.manage("migrate", "--no-input")
        yield example
    finally:
        if database is not None:
            database.close()


def start(example: Example, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(EXAMPLE / "manage.py"), *args],
        cwd=EXAMPLE,
        env=example.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_the_board_equals_a_fold_under_concurrent_writers(example_db: Example) -> None:
    postgres = example_db.env["DATABASE_URL"].startswith("postgres")
    writers_count, rounds = (5, 80) if postgres else (3, 25)
    follower = start(example_db, "replay_projections", "--follow")
    writers = [
        start(
            example_db,
            *("shell", "--no-imports", "-c"),
            WRITER.replace("SEED", str(n + 1)).replace("ROUNDS", str(rounds)),
        )
        for n in range(writers_count)
    ]
    counts: list[dict[str, int]] = []
    try:
        for writer in writers:
            out, err = writer.communicate(timeout=300)
            assert writer.returncode == 0, err
            counts.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        follower.send_signal(signal.SIGTERM)
        _, err = follower.communicate(timeout=60)
    assert follower.returncode == 0, err
    example_db.replay()  # whatever the follower had not reached yet
    facts: dict[str, Any] = json.loads(
        example_db.manage("shell", "--no-imports", "-c", FOLD).stdout.strip().splitlines()[-1]
    )
    assert set(facts["expected"]) == {"acme", "globex", "initech"}
    assert facts["boards"] == facts["expected"]
    assert facts["cards"] == facts["streams"]
    assert sum(c["early"] for c in counts) > 0 and sum(c["rolled_back"] for c in counts) > 0
    if postgres:
        assert facts["inverted"], "no event was delivered after a higher position"

"""The example project, run the way ``scripts/example`` runs it, so that it never rots.

Every step is a real ``manage.py`` process (this interpreter, no venv of its own) against a
fresh database of the suite's backend: a temporary SQLite file, or on PostgreSQL a database
of its own next to the test database. The assertions are on what the commands really did: exit codes,
``projection_status`` as JSON, and the read models compared with the stored events.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from tests.helpers import ROOT

EXAMPLE = ROOT / "example_project"
PASSWORD = "example-test-password-1"
TASKS = 30
PROJECTIONS = {"task_cards", "tenant_boards"}

#: Counts read from the database by ``manage.py shell``: the stored events per type and
#: tenant, and the read models, so that the test compares one with the other.
FACTS = textwrap.dedent(
    """
    import json
    from collections import Counter
    from django.contrib.auth import authenticate
    from django.db.models import Max
    from django_eventsource.models import Event
    from tasks.models import TaskCard, TenantBoard

    events = Counter(
        f"{tenant}:{kind}" for tenant, kind in Event.objects.values_list("tenant_id", "event_type")
    )
    streams = {
        f"{s['tenant_id']}:{s['aggregate_id']}": s["version"]
        for s in Event.objects.values("tenant_id", "aggregate_id").annotate(
            version=Max("aggregate_version")
        )
    }
    cards = {
        f"{c.tenant_id}:{c.task_id}": [c.status, c.last_event_version]
        for c in TaskCard.objects.all()
    }
    boards = {
        b.tenant_id: {
            "created": b.created, "assignments": b.assignments, "completed": b.completed,
            "reopened": b.reopened, "open": b.open, "last_event_position": b.last_event_position,
        }
        for b in TenantBoard.objects.all()
    }
    tenant_heads = {
        t["tenant_id"]: t["head"]
        for t in Event.objects.values("tenant_id").annotate(head=Max("position"))
    }
    admin = authenticate(username="admin", password=PASSWORD)
    print(json.dumps({
        "events": events, "streams": streams, "cards": cards, "boards": boards,
        "tenant_heads": tenant_heads,
        "admin": bool(admin and admin.is_superuser and admin.is_staff),
    }))
    """
).replace("PASSWORD", repr(PASSWORD))


@dataclass
class Example:
    """The example project on one database, and what its commands printed."""

    env: dict[str, str]
    outputs: dict[str, subprocess.CompletedProcess[str]] = field(default_factory=dict)
    #: :meth:`facts` right after the first replay.
    after_replay: dict[str, Any] = field(default_factory=dict)

    def manage(self, *args: str, expect: int = 0) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, str(EXAMPLE / "manage.py"), *args],
            cwd=EXAMPLE,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == expect, (
            f"manage.py {' '.join(args)} exited {done.returncode}, not {expect}:\n"
            f"{done.stdout}\n{done.stderr}"
        )
        return done

    def replay(self) -> subprocess.CompletedProcess[str]:
        """``replay_projections``, once every committed event is visible to readers.

        On PostgreSQL an open writing transaction anywhere on the server (another test run
        sharing it) holds the ordering horizon back, and the replay would rightly stop short
        of the events behind it. The example's own steps all finished, so wait for that.
        """
        if self.env["DATABASE_URL"].startswith("postgres"):
            import psycopg

            with psycopg.connect(self.env["DATABASE_URL"], autocommit=True) as db:
                for _ in range(3000):
                    hidden = db.execute(
                        "SELECT COUNT(*) FROM django_eventsource_event "
                        "WHERE stamp >= pg_snapshot_xmin(pg_current_snapshot())::text::bigint"
                    ).fetchone()
                    if not (hidden and hidden[0]):
                        break
                    time.sleep(0.02)
        return self.manage("replay_projections")

    def status(self) -> dict[str, dict[str, Any]]:
        report = json.loads(self.manage("projection_status", "--format", "json").stdout)
        return {row["projection"]: row for row in report["projections"]}

    def facts(self) -> dict[str, Any]:
        out = self.manage("shell", "--no-imports", "-c", FACTS).stdout
        return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _backends() -> list[str]:
    """The suite's own backend: the SQLite run covers SQLite, the PostgreSQL run PostgreSQL."""
    return ["postgresql" if "postgresql" in settings.DATABASES["default"]["ENGINE"] else "sqlite"]


def _postgres_database(suffix: str = "example") -> Iterator[str]:
    """A database of the example's own next to the test database; dropped afterwards."""
    import psycopg

    db = settings.DATABASES["default"]
    name = f"{db['NAME']}_{suffix}"
    user, password = db.get("USER") or "postgres", db.get("PASSWORD") or ""
    host, port = db.get("HOST") or "127.0.0.1", db.get("PORT") or 5432
    params = {"dbname": "postgres", "user": user, "password": password, "host": host}
    with psycopg.connect(**params, port=int(port), autocommit=True) as maintenance:
        maintenance.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        maintenance.execute(f'CREATE DATABASE "{name}"')
    try:
        credentials = f"{user}:{password}" if password else user
        yield f"postgres://{credentials}@{host}:{port}/{name}"
    finally:
        with psycopg.connect(**params, port=int(port), autocommit=True) as maintenance:
            maintenance.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module", params=_backends())
def example(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Example]:
    """The sequence of ``scripts/example``: migrate, admin user, history, replay."""
    if request.param == "postgresql":
        database = _postgres_database()
        url = next(database)
    else:
        database = None
        url = f"sqlite:///{tmp_path_factory.mktemp('example') / 'example.sqlite3'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "EVENTSOURCE_"))}
    env.update(
        DATABASE_URL=url,
        DJANGO_SETTINGS_MODULE="example_project.settings",
        DJANGO_SUPERUSER_PASSWORD=PASSWORD,
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )
    example = Example(env)
    try:
        example.outputs["migrate"] = example.manage("migrate", "--no-input")
        example.outputs["createsuperuser"] = example.manage(
            "createsuperuser", "--no-input", "--username", "admin", "--email", "admin@example.com"
        )
        example.outputs["simulate"] = example.manage(
            "simulate_tasks", "--tasks", str(TASKS), "--seed", "2026"
        )
        # Before the replay, the asynchronous projection lags: the check must say so.
        example.outputs["check_before"] = example.manage(
            "projection_status", "--check", "--max-lag", "0", expect=1
        )
        example.outputs["replay"] = example.replay()
        example.after_replay = example.facts()
        yield example
    finally:
        if database is not None:
            database.close()  # runs the generator's finally: drops the database


@pytest.mark.slow
def test_migrate_and_admin_user(example: Example) -> None:
    assert "Applying django_eventsource.0001_initial... OK" in example.outputs["migrate"].stdout
    assert "Applying tasks.0001_initial... OK" in example.outputs["migrate"].stdout
    assert "Superuser created successfully." in example.outputs["createsuperuser"].stdout
    assert example.after_replay["admin"] is True  # logs in with DJANGO_SUPERUSER_PASSWORD


@pytest.mark.slow
def test_status_is_caught_up_after_the_replay(example: Example) -> None:
    before = example.outputs["check_before"].stderr
    assert "Check failed: tenant_boards" in before
    assert "task_cards" not in before  # inline: current after every append
    events = sum(example.after_replay["events"].values())
    head = int(example.outputs["simulate"].stdout.split("head position ")[1].split(".")[0])
    assert f"Appended {events} events; head position {head}." in example.outputs["simulate"].stdout
    assert f"{events} events handled." in example.outputs["replay"].stdout
    status = example.status()
    assert set(status) == PROJECTIONS
    for row in status.values():
        assert (row["position"], row["head"], row["lag_events"]) == (head, head, 0), row
        assert row["last_error"] == "" and row["failed_event_position"] is None
    assert status["task_cards"]["status"] == "inline"
    assert status["tenant_boards"]["status"] == "idle"
    example.manage("projection_status", "--check", "--max-lag", "0")  # exit code 0


@pytest.mark.slow
def test_read_models_match_the_events(example: Example) -> None:
    facts = example.after_replay
    events: dict[str, int] = facts["events"]
    tenants = {key.split(":")[0] for key in events}
    assert tenants <= {"acme", "globex", "initech"} and len(tenants) >= 2

    def count(tenant: str, kind: str) -> int:
        return events.get(f"{tenant}:{kind}", 0)

    # The inline projection: one card per task stream, at the stream's last version.
    assert len(facts["cards"]) == TASKS == sum(count(t, "TaskCreated") for t in tenants)
    assert {k: v[1] for k, v in facts["cards"].items()} == facts["streams"]
    # The asynchronous projection: one board per tenant, counting that tenant's events.
    assert set(facts["boards"]) == tenants
    for tenant, board in facts["boards"].items():
        open_cards = sum(
            1
            for key, (status, _) in facts["cards"].items()
            if key.startswith(f"{tenant}:") and status == "open"
        )
        assert board == {
            "created": count(tenant, "TaskCreated"),
            "assignments": count(tenant, "TaskAssigned"),
            "completed": count(tenant, "TaskCompleted"),
            "reopened": count(tenant, "TaskReopened"),
            "open": open_cards,
            "last_event_position": facts["tenant_heads"][tenant],  # it handles every type
        }, tenant
    assert count("acme", "TaskCompleted") + count("globex", "TaskCompleted") > 0


@pytest.mark.slow
def test_running_it_again_appends_and_resumes_from_the_checkpoints(example: Example) -> None:
    """scripts/example is safe to run again: more history, caught up from the checkpoint."""
    before = sum(example.after_replay["events"].values())
    simulate = example.manage("simulate_tasks", "--tasks", "5", "--seed", "7").stdout
    added = int(simulate.split("Appended ")[1].split(" events")[0])
    assert added >= 5
    replay = example.replay().stdout
    assert f"{added} events handled." in replay  # only the new ones
    status = example.status()
    assert {row["lag_events"] for row in status.values()} == {0}
    facts = example.facts()
    assert len(facts["cards"]) == TASKS + 5
    assert sum(b["created"] for b in facts["boards"].values()) == TASKS + 5
    assert sum(facts["events"].values()) == before + added


# The testing how-to ---------------------------------------------------------------------------

HOWTO = ROOT / "docs" / "howto" / "testing.md"
#: A code block that is a file: its first line is a comment naming the file.
FILE_BLOCK = re.compile(
    r"```(?:python|toml)\n# (?P<path>[\w/.]+\.(?:py|toml))\n(?P<code>.*?)```", re.DOTALL
)


def _howto_files() -> dict[str, str]:
    return {m["path"]: m["code"] for m in FILE_BLOCK.finditer(HOWTO.read_text())}


#: The example's monitoring surfaces, through Django's test client in the example's process.
MONITORING = textwrap.dedent(
    """
    import json
    from django.test import Client
    from prometheus_client.parser import text_string_to_metric_families
    client = Client(HTTP_HOST="localhost")
    health = client.get("/eventsource/health/")
    metrics = client.get("/eventsource/metrics/")
    lag = {
        s.labels["projection"]: s.value
        for family in text_string_to_metric_families(metrics.content.decode())
        for s in family.samples
        if s.name == "eventsource_lag_events"
    }
    print(json.dumps({"health": [health.status_code, health.json()], "lag": lag}))
    """
)


@pytest.mark.slow
def test_the_example_serves_health_metrics_and_logs(example: Example) -> None:
    """The wiring of the example: the health probe and the metrics are mounted, and its
    LOGGING shows the library's records at EVENTSOURCE_LOG_LEVEL."""
    example.replay()
    out = example.manage("shell", "--no-imports", "-c", MONITORING).stdout
    seen = json.loads(out.strip().splitlines()[-1])
    assert seen["health"] == [200, {"status": "ok", "problems": []}]
    assert seen["lag"] == {"tenant_boards": 0, "task_cards": 0}
    quiet = example.manage("replay_projections", "tenant_boards")
    assert "django_eventsource" not in quiet.stderr  # WARNING by default: nothing to say
    example.env["EVENTSOURCE_LOG_LEVEL"] = "INFO"
    try:
        logged = example.manage("replay_projections", "tenant_boards")
    finally:
        del example.env["EVENTSOURCE_LOG_LEVEL"]
    assert re.search(r" INFO django_eventsource\.backends\.\S+ Took the ", logged.stderr)


def test_the_howto_names_its_files() -> None:
    assert set(_howto_files()) == {
        "conftest.py",
        "pyproject.toml",
        "tasks/tests/factories.py",
        "tasks/tests/test_projections.py",
        "tasks/tests/test_boards_testcase.py",
    }


@pytest.mark.slow
@pytest.mark.parametrize("backend", _backends())
def test_the_testing_howto_runs_in_the_example_project(backend: str, tmp_path: Path) -> None:
    """docs/howto/testing.md, copied file by file into a copy of the example project, and
    run there with pytest as a user runs it: the shipped plugin, fixtures and factories."""
    project = tmp_path / "project"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("*.sqlite3*", "__pycache__"))
    files = _howto_files()
    for path, code in files.items():
        (project / path).parent.mkdir(parents=True, exist_ok=True)
        (project / path).write_text(code)
    (project / "tasks" / "tests" / "__init__.py").write_text("")
    if backend == "postgresql":
        db = settings.DATABASES["default"]
        credentials = db.get("USER") or "postgres"
        if db.get("PASSWORD"):
            credentials += f":{db['PASSWORD']}"
        host, port = db.get("HOST") or "127.0.0.1", db.get("PORT") or 5432
        # pytest-django creates (and drops) test_<name> next to it.
        url = f"postgres://{credentials}@{host}:{port}/{db['NAME']}_howto"
    else:
        url = f"sqlite:///{tmp_path / 'howto.sqlite3'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "EVENTSOURCE_"))}
    env.update(
        DATABASE_URL=url,
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rA"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    tests = sum(
        code.count("\n    def test_") + code.count("\ndef test_") for code in files.values()
    )
    assert tests == 5
    assert re.search(rf"\b{tests} passed\b", output) and "skipped" not in output, output


# Issue 15 item 13: the demo's defaults are safe enough for a demo ---------------------------


def _import_settings(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Import the example's settings in a fresh interpreter with this environment."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DATABASE_"))}
    return subprocess.run(
        [sys.executable, "-c", "import example_project.settings"],
        cwd=EXAMPLE,
        env={**base, "DATABASE_URL": f"sqlite:///{tmp_path / 'demo.sqlite3'}", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.slow
def test_the_example_refuses_its_public_secret_key_without_debug(tmp_path: Path) -> None:
    refused = _import_settings(tmp_path, DJANGO_DEBUG="False")
    assert refused.returncode != 0
    assert "DJANGO_SECRET_KEY is not set" in refused.stderr
    assert (
        _import_settings(tmp_path, DJANGO_DEBUG="False", DJANGO_SECRET_KEY="s" * 50).returncode
        == 0
    )
    assert _import_settings(tmp_path).returncode == 0  # the demo: DEBUG on, constant key


@pytest.mark.slow
def test_the_example_sqlite_database_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    database = tmp_path / "demo.sqlite3"
    assert _import_settings(tmp_path).returncode == 0
    assert database.stat().st_mode & 0o777 == 0o600
    database.chmod(0o644)  # made by an earlier version: tightened
    assert _import_settings(tmp_path).returncode == 0
    assert database.stat().st_mode & 0o777 == 0o600


def test_scripts_example_never_prints_the_database_password() -> None:
    sys.path.insert(0, str(EXAMPLE))
    try:
        from example_project.redact import redacted
    finally:
        sys.path.remove(str(EXAMPLE))
    assert redacted("postgres://app:s3cr%40t@db.example:5433/shop") == (
        "postgres://app:***@db.example:5433/shop"
    )
    assert (
        redacted("postgres://postgres@127.0.0.1:5432/x") == "postgres://postgres@127.0.0.1:5432/x"
    )
    assert redacted("sqlite:///example.sqlite3") == "sqlite:///example.sqlite3"
    script = (ROOT / "scripts" / "example").read_text()
    printing = [
        line
        for line in script.splitlines()
        if re.match(r"\s*(step|echo|printf|cat)\b", line) and "DATABASE_URL" in line
    ]
    assert printing == []  # the script prints the redacted URL ($shown) only
    assert 'step "Migrating $shown"' in script
    assert "umask 077" in script
